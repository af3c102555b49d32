"""DSIR (Xie et al., NeurIPS 2023): select k chunks for a target from a labelled offline pool, compare methods.

For every seed × target: draw the target's fit sample and held-out evaluation chunks from its labelled domain
(the rest of the domain stays in the pool), let each method pick k chunks, then score the selection by KL
reduction (hashed n-grams, vs the held-out chunks) and by the held-out loss of a language model trained on it:
a bigram LM (nats/token) and optionally a tiny byte-level transformer (bits/byte); with ``classify`` also the
classification track (:mod:`labkit.experiments.dsir_classify`). The config, pool, splits and selection arms are in
:mod:`labkit.experiments.dsir_setup` (arrows: dsir → dsir_classify → dsir_setup); the claims and their verdicts
(labkit issue #14 protocol) in :mod:`labkit.experiments.dsir_claims`. DSIR's target pseudocount is chosen on
validation chunks of each target, never on the held-out (test) chunks. Nothing here draws or prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from labkit import seed_everything
from labkit.data import corpora
from labkit.experiments import configure as _configure
from labkit.experiments.dsir_classify import run_classification
from labkit.experiments.dsir_setup import (
    CLASSIFY_TASKS,
    METHODS,
    TARGETS,
    VARIANTS,
    Config,
    Prepared,
    Split,
    byte_lm,
    feature_cache,
    kl_scorer,
    paired_gaps,
    prepare,
    select,
    split_target,
    train_bytes,
)
from labkit.models import byte_lm as byte_lm_module
from labkit.models.ngram_lm import BigramLM

__all__ = [  # the setup's names are part of this experiment's API (the notebook reads them from here)
    "CLASSIFY_TASKS", "CONTROLS", "METHODS", "PAPER_R", "PRESETS", "TARGETS", "VARIANTS", "Config", "Prepared",
    "Results", "Split", "byte_lm", "byte_lm_bits_per_byte", "config_dict", "configure", "dsir_gaps",
    "explorer_weights", "feature_cache", "headline_metrics", "kl_scorer", "method_correlation", "paired_gaps",
    "prepare", "run", "select", "split_target", "targets_below", "train_bytes",
]
GAP_REFERENCES = ("random", "heuristic", "heuristic-words")  # DSIR's per-target detail is paired against these
SCORE_COLUMNS = ("kl_reduction", "bigram_nats_per_token", "label_precision")  # per-method means in the headline

CONTROLS = ("random", "anti-dsir")  # left out of the "without controls" correlation
# KL reduction vs downstream accuracy across methods, as each version of the paper states it (reference only).
PAPER_R = {"NeurIPS 2023 (final)": 0.82, "arXiv abstract (earlier version)": 0.89}


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "sources": list(corpora.LOCAL_SOURCES),
        "max_chunks": {"man": 2500, "python": 1500},
        "targets": ["python-topics", "man2-syscalls"],
        "methods": ["random", "dsir", "heuristic", "heuristic-words", "expert", "anti-dsir"],
        "n_fit": 40,
        "n_eval": 40,
        "n_val": 20,
        "target_pseudocounts": [0.0, 1.0],
        "budget_k": 150,
        "seeds": [0],
        "vocab_size": 3000,
        "tiny_lm_targets": ["python-topics"],
        "tiny_lm_methods": ["random", "dsir"],
        "lm_steps": 3,
        "lm_context": 32,
        "lm_batch": 4,
        "lm_hidden": 32,
        "lm_layers": 1,
        "lm_heads": 2,
        "classify": True,
        "classify_targets": ["python-topics"],
        "classify_methods": ["random", "dsir"],
        "classify_seeds": [0],
        "classify_train": 6,
        "classify_eval": 6,
        "base_chunks": 200,
        "base_steps": 2,
        "continue_steps": 2,
    },
    # cpu: ≥ 5 seeds, 2 workers; the classification track reduced to 2 targets × (random, DSIR), 100 continued steps.
    # Measured per job (1 thread): a bigram cell (8 methods + 3 DSIR pseudocounts) ≈ 8.5 CPU-s, a tiny-LM run ≈ 55,
    # a continued-pretraining job ≈ 27, the base LM ≈ 75: ≈ 1,300 CPU-s, ≈ 12 min wall on 2 idle cores.
    "cpu": {
        "seeds": [0, 1, 2, 3, 4],
        "workers": 2,
        "classify": True,
        "classify_methods": ["random", "dsir"],
        "classify_seeds": [0, 1, 2, 3, 4],
        "continue_steps": 100,
    },
    "gpu": {
        "max_chunks": {},
        "seeds": [0, 1, 2],
        "budget_k": 5000,
        "tiny_lm_targets": list(TARGETS)[:8],
        "tiny_lm_methods": list(METHODS),
        "tiny_lm_seeds": [0, 1, 2],
        "lm_steps": 2000,
        "lm_context": 256,
        "lm_batch": 64,
        "lm_hidden": 384,
        "lm_layers": 6,
        "lm_heads": 6,
        "lm_lr": 1e-3,
        "device": "auto",
        "classify": True,
        "classify_targets": list(TARGETS)[:8],
        "classify_methods": list(METHODS),
        "base_chunks": 50000,
        "base_steps": 3000,
        "continue_steps": 1000,
        "continue_lr": 3e-4,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


def byte_lm_bits_per_byte(
    train_texts: list[str], eval_texts: list[str], cfg: Config, seed: int, with_curve: bool = False
) -> float | tuple[float, list[float]]:
    """Train a tiny byte-level causal transformer on ``train_texts``; held-out bits per byte on ``eval_texts``
    (and its training-loss curve with ``with_curve``)."""
    from labkit.profile import resolve_device

    seed_everything(seed, threads=cfg.threads)
    data, held = byte_lm_module.byte_tensor(train_texts), byte_lm_module.byte_tensor(eval_texts)
    window = cfg.lm_context + 1
    if len(data) <= window or len(held) <= window:
        raise ValueError(f"need more than {window} bytes of training and held-out text, got {len(data)}/{len(held)}")
    model = byte_lm(cfg, seed).to(resolve_device(cfg.device))
    curve = train_bytes(model, data, cfg.lm_steps, cfg.lm_lr, cfg, seed)
    bpb = byte_lm_module.bits_per_byte(model, held, cfg.lm_context)
    return (bpb, curve) if with_curve else bpb


@dataclass
class Results:
    """Tidy tables of one run."""

    scores: pd.DataFrame  # seed, target, method, kl_reduction, bigram_nats_per_token, label_precision (test split)
    picks: pd.DataFrame  # seed, target, method, label, count: what each selection contained
    tiny_lm: pd.DataFrame  # seed, target, method, bits_per_byte, kl_reduction
    skipped_targets: dict[str, str]  # target -> reason
    classify: pd.DataFrame = field(default_factory=pd.DataFrame)  # seed, target, method, accuracy, macro_f1, ...
    classify_skipped: dict[str, str] = field(default_factory=dict)  # classification target -> reason
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)  # DSIR per target pseudocount: split val and test
    chosen_pseudocount: float = 0.0  # the target pseudocount of the "dsir" arm, chosen on validation
    curves: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (method, "target/seed") -> loss curve
    classify_curves: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # same, continued pretraining


_SHARED: dict[str, Any] = {}  # the prepared pool for forked workers (inherited, never pickled)


def _run_cell(args: tuple[Config, int, str]) -> dict[str, list]:
    """One seed × target: every method's selection and scores, and DSIR at every target pseudocount (val + test)."""
    cfg, seed, target = args
    prepared: Prepared = _SHARED["prepared"]
    labels = prepared.corpus.label.to_numpy()
    split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
    k = min(cfg.budget_k, len(split.pool))
    kl_of = kl_scorer(prepared, split, cfg, _SHARED["total_counts"])
    held, val = prepared.encoded.subset(split.eval), prepared.encoded.subset(split.val)
    out: dict[str, list] = {"rows": [], "picks": [], "tiny": [], "sweep": [], "curves": []}
    bigram = cfg.downstream in ("bigram", "both")
    chosen_of = {}
    for pc in cfg.target_pseudocounts if "dsir" in cfg.methods else []:
        chosen = chosen_of[pc] = select("dsir", prepared, split, target, k, seed, cfg, target_pseudocount=pc)
        lm = BigramLM(prepared.vocab_size, cfg.discount).fit(prepared.encoded.subset(chosen)) if bigram else None
        for name, ids, enc in (("val", split.val, val), ("test", split.eval, held)):
            loss = lm.cross_entropy(enc) if lm is not None and len(ids) else float("nan")
            out["sweep"].append({"seed": seed, "target": target, "target_pseudocount": pc, "split": name,
                                 "bigram_nats_per_token": loss,  # KL reduction is scored toward test only
                                 "kl_reduction": kl_of(chosen) if name == "test" else float("nan")})
    for method in cfg.methods:
        # DSIR: one row per target pseudocount (the sweep's test loss); run() keeps the one chosen on validation
        for pc, chosen in chosen_of.items() if method == "dsir" else [(None, None)]:
            chosen = select(method, prepared, split, target, k, seed, cfg) if pc is None else chosen
            kl = kl_of(chosen)
            row = {"seed": seed, "target": target, "method": method, "k": k, "kl_reduction": kl,
                   "label_precision": float(np.isin(labels[chosen], TARGETS[target]).mean())}
            if bigram and pc is None:
                lm = BigramLM(prepared.vocab_size, cfg.discount).fit(prepared.encoded.subset(chosen))
                row["bigram_nats_per_token"] = lm.cross_entropy(held)
            elif bigram:
                row["bigram_nats_per_token"] = next(r["bigram_nats_per_token"] for r in out["sweep"]
                                                    if r["target_pseudocount"] == pc and r["split"] == "test")
            tag = {} if pc is None else {"target_pseudocount": pc}
            out["rows"].append({**row, **tag})
            out["picks"] += [{**r, **tag} for r in _pick_rows(labels[chosen], seed, target, method)]
            curves: list = []
            out["tiny"] += [{**r, **tag} for r in _tiny_rows(cfg, prepared, split, chosen, seed, target, method, kl,
                                                             curves)]
            out["curves"] += [(key, curve, pc) for key, curve in curves]
    return out


def _pick_rows(picked: np.ndarray, seed: int, target: str, method: str) -> list[dict]:
    """The 12 most picked labels of a selection, the rest as "other"."""
    counts = pd.Series(picked).value_counts()
    return [{"seed": seed, "target": target, "method": method, "label": label, "count": int(count)}
            for label, count in [*counts.iloc[:12].items(), ("other", int(counts.iloc[12:].sum()))] if count]


def _tiny_rows(cfg: Config, prepared: Prepared, split: Split, chosen: np.ndarray, seed: int, target: str,
               method: str, kl: float, curves: list) -> list[dict]:
    """The transformer track's row for this cell and method when the config asks for it (its curve into curves)."""
    if not (cfg.downstream in ("tiny_lm", "both") and target in cfg.tiny_lm_targets
            and method in cfg.tiny_lm_methods and seed in cfg.tiny_lm_seeds):
        return []
    texts = prepared.corpus.text.to_numpy()
    bpb, curve = byte_lm_bits_per_byte(list(texts[chosen]), list(texts[split.eval]), cfg, seed, with_curve=True)
    curves.append(((method, f"{target}/{seed}"), curve))
    return [{"seed": seed, "target": target, "method": method, "bits_per_byte": bpb, "kl_reduction": kl}]


def run(cfg: Config, prepared: Prepared | None = None, progress: bool = True) -> Results:
    """Every seed × target × method: selection, KL reduction, bigram-LM loss, label precision (+ transformer).

    DSIR runs at every ``target_pseudocount``; the one with the lowest mean validation bigram loss
    (:func:`labkit.protocol.select_best` on the validation rows) becomes the "dsir" arm. Cells run in ``cfg.workers``
    forked processes when more than one.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from labkit import protocol

    seed_everything(0, threads=cfg.threads)
    prepared = prepared or prepare(cfg, progress=progress)
    if "heuristic-words" in cfg.methods:
        prepared.words()  # built once, before forking
    _SHARED.update(prepared=prepared, total_counts=prepared.features.total_counts())
    targets = [t for t in cfg.targets if t not in prepared.skipped_targets]
    jobs = [(cfg, s, t) for s in cfg.seeds for t in targets]
    try:
        if cfg.workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=context) as pool:
                cells = list(tqdm(pool.map(_run_cell, jobs), total=len(jobs), desc="dsir cells", disable=not progress))
        else:
            cells = [_run_cell(j) for j in tqdm(jobs, desc="dsir seeds × targets", disable=not progress)]
    finally:
        _SHARED.clear()
    sweep = pd.DataFrame([r for c in cells for r in c["sweep"]])
    chosen = cfg.target_pseudocount
    if len(sweep) and cfg.n_val > 0 and cfg.downstream in ("bigram", "both"):
        chosen = float(protocol.select_best(sweep[sweep.split == "val"], "target_pseudocount",
                                            "bigram_nats_per_token")["target_pseudocount"])
    elif len(sweep):  # nothing to choose on: the first value of the sweep
        chosen = cfg.target_pseudocounts[0]

    def keep(rows: list[dict]) -> pd.DataFrame:  # drop the DSIR rows at pseudocounts not chosen
        frame = pd.DataFrame(rows)
        if "target_pseudocount" not in frame:
            return frame
        pc = frame.pop("target_pseudocount")
        return frame[pc.isna() | (pc == chosen)].reset_index(drop=True)

    scores = keep([r for c in cells for r in c["rows"]])
    curves = {key: curve for c in cells for key, curve, pc in c["curves"] if pc is None or pc == chosen}
    results = Results(scores, keep([r for c in cells for r in c["picks"]]), keep([r for c in cells for r in c["tiny"]]),
                      prepared.skipped_targets, sweep=sweep, chosen_pseudocount=chosen, curves=curves)
    if cfg.classify:
        results.classify, results.classify_skipped, results.classify_curves = run_classification(
            cfg, prepared, progress=progress, target_pseudocount=chosen, with_curves=True
        )
    return results


def method_correlation(
    scores: pd.DataFrame,
    loss: str = "bigram_nats_per_token",
    controls: tuple[str, ...] = CONTROLS,
    variants: tuple[str, ...] = VARIANTS,
) -> pd.DataFrame:
    """Pearson and Spearman r of KL reduction vs −loss, one point per method (mean over targets and seeds).

    As in the paper, methods are averaged over targets first; reported with and without the controls. ``variants``
    (DSIR top-k, heuristic classification on words) are left out so that each method counts once.
    """
    from scipy import stats

    per_method = scores[~scores.method.isin(variants)].groupby("method", sort=False)[["kl_reduction", loss]].mean()
    rows = []
    for name, frame in (
        ("all methods", per_method),
        ("without controls", per_method.drop(index=[c for c in controls if c in per_method.index])),
    ):
        n = len(frame)
        if n >= 3:
            pearson = float(stats.pearsonr(frame.kl_reduction, -frame[loss])[0])
            spearman = float(stats.spearmanr(frame.kl_reduction, -frame[loss])[0])
        else:
            pearson = spearman = float("nan")
        rows.append({"methods": name, "n_methods": n, "pearson_r": pearson, "spearman_r": spearman, "loss": loss})
    return pd.DataFrame(rows)


def dsir_gaps(scores: pd.DataFrame) -> pd.DataFrame:
    """DSIR minus each of :data:`GAP_REFERENCES` that ran, per target and overall (:func:`paired_gaps`, bootstrap
    95 %): the per-target detail behind the verdicts (which use Student-t intervals over targets)."""
    refs = [ref for ref in GAP_REFERENCES if ref in set(scores.method)]
    if "dsir" not in set(scores.method) or not refs:
        methods = sorted(set(scores.method))
        raise ValueError(f"dsir_gaps needs DSIR and one of {GAP_REFERENCES} in scores; got methods {methods}")
    return pd.concat([paired_gaps(scores, "dsir", ref) for ref in refs], ignore_index=True)


def targets_below(gaps: pd.DataFrame, reference: str = "random") -> tuple[int, int]:
    """(targets whose whole DSIR − ``reference`` interval lies below 0, i.e. DSIR's loss is lower; targets)."""
    rows = gaps[(gaps.comparison == f"dsir − {reference}") & (gaps.target != "all")]
    return int((rows.high < 0).sum()), len(rows)


def headline_metrics(
    results: Results,
    claims: pd.DataFrame,
    correlation: pd.DataFrame,
    gaps: pd.DataFrame,
    classify_table: pd.DataFrame,
) -> dict[str, float]:
    """Numbers a rerun reproduces: per method the mean KL reduction, bigram loss and label precision; the correlations;
    DSIR's paired gaps; each claim's effect and interval; the tiny-LM and classification tracks per cell."""
    out: dict[str, float] = {}
    means = results.scores.groupby("method", sort=False)[list(SCORE_COLUMNS)].mean()
    for method, row in means.iterrows():
        out |= {f"{method}/{column}": float(value) for column, value in row.items()}
    for r in correlation.itertuples():
        out[f"pearson_r/{r.methods}"] = float(r.pearson_r)
        out[f"spearman_r/{r.methods}"] = float(r.spearman_r)
    for r in gaps.itertuples():
        key = f"{r.comparison}/{r.target}"
        out |= {f"{key}/mean_diff": float(r.mean_diff), f"{key}/ci_low": float(r.low), f"{key}/ci_high": float(r.high)}
    out["dsir_beats_random_targets"] = float(targets_below(gaps)[0])
    out["dsir_target_pseudocount"] = float(results.chosen_pseudocount)
    for r in claims.itertuples():
        out |= {f"claim/{r.claim}/effect": float(r.mean), f"claim/{r.claim}/ci_low": float(r.low),
                f"claim/{r.claim}/ci_high": float(r.high)}
    for r in results.tiny_lm.itertuples():
        out[f"tiny_lm/{r.target}/{r.method}/seed{r.seed}/bits_per_byte"] = float(r.bits_per_byte)
    for r in classify_table.itertuples():
        out[f"classify/{r.target}/{r.method}/accuracy"] = float(r.accuracy)
        out[f"classify/{r.target}/{r.method}/macro_f1"] = float(r.macro_f1)
    return out


def explorer_weights(cfg: Config, prepared: Prepared, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per target: the pool ids, their DSIR log weights (at ``cfg.target_pseudocount``) and the held-out counts, for
    widgets that vary k."""
    out = {}
    total = prepared.features.total_counts()
    for target in cfg.targets:
        if target in prepared.skipped_targets:
            continue
        split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
        dsir = prepared.dsir(cfg).fit(prepared.features, prepared.features.subset(split.fit), exclude=split.drawn())
        out[target] = {
            "pool": split.pool,
            "log_weights": dsir.log_weights()[split.pool],
            "eval_counts": prepared.features.total_counts(split.eval),
            "pool_counts": total - prepared.features.total_counts(split.drawn()),
        }
    return out


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for reports)."""
    return asdict(cfg)

