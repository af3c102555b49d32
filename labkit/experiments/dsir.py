"""DSIR (Xie et al., NeurIPS 2023): select k chunks for a target from a labelled offline pool, compare methods.

For every seed × target: draw the target's fit sample and held-out evaluation chunks from its labelled domain
(the rest of the domain stays in the pool), let each method pick k chunks, then score the selection by KL
reduction (hashed n-grams, vs the held-out chunks) and by the held-out loss of a language model trained on it:
a bigram LM (nats/token) and optionally a tiny byte-level transformer (bits/byte), which also trains on the target's
own held-in text (the premise arm, "target"); with ``classify`` also the classification track
(:mod:`labkit.experiments.dsir_classify`). The config, pool, splits and selection arms are in
:mod:`labkit.experiments.dsir_setup` (arrows: dsir → dsir_classify → dsir_setup); the claims and their verdicts
(protocol v2, labkit issue #24) in :mod:`labkit.experiments.dsir_claims`. DSIR's target pseudocount is chosen on
validation chunks of each target, never on the held-out (test) chunks; the budget check scores validation text too.
Nothing here draws or prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from labkit import seed_everything
from labkit.data import corpora
from labkit.experiments import configure as _configure
from labkit.experiments.dsir_classify import run_classification
from labkit.experiments.dsir_setup import (
    CLASSIFY_TASKS,
    METHODS,
    TARGETS,
    TINY_TRACK,
    VARIANTS,
    Config,
    Prepared,
    Split,
    budget_steps,
    byte_lm,
    feature_cache,
    fork_map,
    held_in_target,
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
    "CLASSIFY_TASKS", "CONTROLS", "METHODS", "PAPER_R", "PREMISE_ARM", "PRESETS", "TARGETS", "VARIANTS", "Config",
    "Prepared", "Results", "Split", "byte_lm", "config_dict", "configure", "dsir_gaps", "explorer_weights",
    "feature_cache", "headline_metrics", "held_in_target", "kl_scorer", "method_correlation", "paired_gaps",
    "prepare", "run", "select", "split_target", "targets_below", "train_bytes", "train_byte_lm",
]
GAP_REFERENCES = ("random", "heuristic", "heuristic-words")  # DSIR's per-target detail is paired against these
SCORE_COLUMNS = ("kl_reduction", "bigram_nats_per_token", "label_precision")  # per-method means in the headline

PREMISE_ARM = "target"  # the tiny transformer trained on the target's own held-in text (the premise claim's arm)
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
    # Measured per job (1 thread): a bigram cell (8 methods + 3 DSIR pseudocounts) ≈ 8.5 CPU-s, a tiny-LM run ≈ 45–55,
    # a continued-pretraining job ≈ 27, the base LM ≈ 75. Tiny transformer: 2 cells × (3 methods + target) and the
    # budget check's 4 runs at 2× steps; classification: 20 jobs and 2 at 2× steps. v1 took 650 s wall; v2 adds an
    # estimated ≈ 175 s, +27 % (the budget reruns ≈ 205 s, the premise arm ≈ 40 s, less ≈ 80 s no longer spent
    # training a transformer at the two DSIR pseudocounts not chosen).
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


def train_byte_lm(train_texts: list[str], cfg: Config, seed: int, budget: float = 1.0) -> tuple[Any, list[float]]:
    """A tiny byte-level causal transformer trained on ``train_texts`` for ``budget`` × ``lm_steps`` steps, and its
    training-loss curve (score it with :func:`labkit.models.byte_lm.bits_per_byte`)."""
    from labkit.profile import resolve_device

    seed_everything(seed, threads=cfg.threads)
    model = byte_lm(cfg, seed).to(resolve_device(cfg.device))
    curve = train_bytes(model, byte_lm_module.byte_tensor(train_texts), budget_steps(cfg.lm_steps, budget), cfg.lm_lr,
                        cfg, seed)
    return model, curve


@dataclass
class Results:
    """Tidy tables of one run."""

    scores: pd.DataFrame  # seed, target, method, kl_reduction, bigram_nats_per_token, label_precision (test split)
    picks: pd.DataFrame  # seed, target, method, label, count: what each selection contained
    tiny_lm: pd.DataFrame  # seed, target, method (+ "target", the premise arm), bits_per_byte, kl_reduction
    skipped_targets: dict[str, str]  # target -> reason
    classify: pd.DataFrame = field(default_factory=pd.DataFrame)  # seed, target, method, accuracy, macro_f1, ...
    classify_skipped: dict[str, str] = field(default_factory=dict)  # classification target -> reason
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)  # DSIR per target pseudocount: split val and test
    chosen_pseudocount: float = 0.0  # the target pseudocount of the "dsir" arm, chosen on validation
    # the budget check's runs, both tracks: track, arm, seed ("target/seed"), budget (1 or budget_factor), steps,
    # validation_bits_per_byte; and their training-loss curves keyed (track, arm, budget), for figures only
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget_curves: dict[tuple[str, str, float], list[float]] = field(default_factory=dict)


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
    out: dict[str, list] = {"rows": [], "picks": [], "sweep": []}
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
    return out


def _pick_rows(picked: np.ndarray, seed: int, target: str, method: str) -> list[dict]:
    """The 12 most picked labels of a selection, the rest as "other"."""
    counts = pd.Series(picked).value_counts()
    return [{"seed": seed, "target": target, "method": method, "label": label, "count": int(count)}
            for label, count in [*counts.iloc[:12].items(), ("other", int(counts.iloc[12:].sum()))] if count]


def _tiny_job(args: tuple[Config, int, str, str, float, bool, float]) -> dict[str, Any]:
    """One tiny-transformer run: ``method``'s selection (DSIR at target pseudocount ``pc``), or the target's held-in
    text for the premise arm, at ``budget`` × ``lm_steps``. At budget 1 its row (held-out bits per byte, the test
    split); with ``validate`` the bits per byte of the split's validation chunks (the budget check's metric)."""
    cfg, seed, target, method, budget, validate, pc = args
    prepared: Prepared = _SHARED["prepared"]
    split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
    if method == PREMISE_ARM:
        chosen = held_in_target(prepared, split, target)
    else:
        k = min(cfg.budget_k, len(split.pool))
        dsir_pc = pc if method == "dsir" else None  # the other DSIR-based methods keep the config's
        chosen = select(method, prepared, split, target, k, seed, cfg, target_pseudocount=dsir_pc)
    texts = prepared.corpus.text.to_numpy()
    model, curve = train_byte_lm(list(texts[chosen]), cfg, seed, budget)
    out: dict[str, Any] = {"curve": curve, "validation": float("nan"), "row": None}
    if validate:
        out["validation"] = byte_lm_module.bits_per_byte(model, byte_lm_module.byte_tensor(list(texts[split.val])),
                                                         cfg.lm_context)
    if budget == 1:
        held = byte_lm_module.bits_per_byte(model, byte_lm_module.byte_tensor(list(texts[split.eval])), cfg.lm_context)
        kl = kl_scorer(prepared, split, cfg, _SHARED["total_counts"])(chosen)
        out["row"] = {"seed": seed, "target": target, "method": method, "bits_per_byte": held, "kl_reduction": kl}
    return out


def _tiny_track(
    cfg: Config, targets: list[str], pc: float, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str, float], list[float]]]:
    """The transformer track: every configured (seed, target) cell × method, plus the premise arm (the target's
    held-in text, same steps × windows of bytes) where random selection runs; and the budget check, which reruns the
    first cell's arms at ``budget_factor`` × the steps. Returns the rows, the budget runs and their curves."""
    empty = (pd.DataFrame(), pd.DataFrame(), {})
    if cfg.downstream not in ("tiny_lm", "both"):
        return empty
    cells = [(s, t) for s in cfg.seeds if s in cfg.tiny_lm_seeds for t in targets if t in cfg.tiny_lm_targets]
    arms = [m for m in cfg.methods if m in cfg.tiny_lm_methods]
    arms += [PREMISE_ARM] if "random" in arms else []
    if not cells or not arms:
        return empty
    first = cells[0]
    jobs = [(cfg, *first, arm, cfg.budget_factor, True, pc) for arm in arms]  # the longest first
    jobs += [(cfg, s, t, arm, 1.0, (s, t) == first, pc) for s, t in cells for arm in arms]
    done = fork_map(_tiny_job, jobs, cfg.workers, "dsir tiny transformer", progress)
    rows, budget, curves = [], [], {}
    for (_, seed, target, arm, factor, validate, _), out in zip(jobs, done, strict=True):
        if out["row"] is not None:
            rows.append(out["row"])
        if validate:
            budget.append({"track": TINY_TRACK, "arm": arm, "seed": f"{target}/{seed}", "budget": factor,
                           "steps": budget_steps(cfg.lm_steps, factor), "validation_bits_per_byte": out["validation"]})
            curves[(TINY_TRACK, arm, factor)] = out["curve"]
    budget = pd.DataFrame(budget).sort_values(["budget"], kind="stable", ignore_index=True)
    return pd.DataFrame(rows), budget, curves


def run(cfg: Config, prepared: Prepared | None = None, progress: bool = True) -> Results:
    """Every seed × target × method: selection, KL reduction, bigram-LM loss, label precision; then the transformer
    and classification tracks with their budget checks.

    DSIR runs at every ``target_pseudocount``; the one with the lowest mean validation bigram loss
    (:func:`labkit.protocol.select_best` on the validation rows) becomes the "dsir" arm, and only it trains a
    transformer. Jobs run in ``cfg.workers`` forked processes when more than one.
    """
    from labkit import protocol

    seed_everything(0, threads=cfg.threads)
    prepared = prepared or prepare(cfg, progress=progress)
    if "heuristic-words" in cfg.methods:
        prepared.words()  # built once, before forking
    _SHARED.update(prepared=prepared, total_counts=prepared.features.total_counts())
    targets = [t for t in cfg.targets if t not in prepared.skipped_targets]
    try:
        cells = fork_map(_run_cell, [(cfg, s, t) for s in cfg.seeds for t in targets], cfg.workers,
                         "dsir seeds × targets", progress)
        sweep = pd.DataFrame([r for c in cells for r in c["sweep"]])
        chosen = cfg.target_pseudocount
        if len(sweep) and cfg.n_val > 0 and cfg.downstream in ("bigram", "both"):
            chosen = float(protocol.select_best(sweep[sweep.split == "val"], "target_pseudocount",
                                                "bigram_nats_per_token")["target_pseudocount"])
        elif len(sweep):  # nothing to choose on: the first value of the sweep
            chosen = cfg.target_pseudocounts[0]
        tiny, budget, budget_curves = _tiny_track(cfg, targets, chosen, progress)
    finally:
        _SHARED.clear()

    def keep(rows: list[dict]) -> pd.DataFrame:  # drop the DSIR rows at pseudocounts not chosen
        frame = pd.DataFrame(rows)
        if "target_pseudocount" not in frame:
            return frame
        pc = frame.pop("target_pseudocount")
        return frame[pc.isna() | (pc == chosen)].reset_index(drop=True)

    scores = keep([r for c in cells for r in c["rows"]])
    results = Results(scores, keep([r for c in cells for r in c["picks"]]), tiny, prepared.skipped_targets,
                      sweep=sweep, chosen_pseudocount=chosen, budget=budget, budget_curves=budget_curves)
    if cfg.classify:
        track = run_classification(cfg, prepared, progress=progress, target_pseudocount=chosen)
        results.classify, results.classify_skipped = track.table, track.skipped
        results.budget = pd.concat([results.budget, track.budget], ignore_index=True)
        results.budget_curves |= track.budget_curves
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

