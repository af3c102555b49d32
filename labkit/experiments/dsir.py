"""DSIR (Xie et al., NeurIPS 2023): select k chunks for a target from a labelled offline pool, compare methods.

For every seed × target: draw the target's fit sample and held-out evaluation chunks from its labelled domain
(the rest of the domain stays in the pool), let each method pick k chunks, then score the selection by KL
reduction (hashed n-grams, vs the held-out chunks) and by the held-out loss of a language model trained on it:
a bigram LM (nats/token) and optionally a tiny byte-level transformer (bits/byte); with ``classify`` also the
classification track (:mod:`labkit.experiments.dsir_classify`). The config, pool, splits and selection arms are in
:mod:`labkit.experiments.dsir_setup` (arrows: dsir → dsir_classify → dsir_setup). Nothing here draws or prints.
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
    "CLASSIFY_TASKS", "CONTROLS", "METHODS", "PAPER_R", "PRESETS", "TARGETS", "Config", "Prepared", "Results", "Split",
    "byte_lm", "byte_lm_bits_per_byte", "config_dict", "configure", "explorer_weights", "feature_cache", "kl_scorer",
    "method_correlation", "paired_gaps", "prepare", "run", "select", "split_target", "train_bytes",
]

CONTROLS = ("random", "anti-dsir")  # left out of the "without controls" correlation
# KL reduction vs downstream accuracy across methods, as each version of the paper states it (reference only).
PAPER_R = {"NeurIPS 2023 (final)": 0.82, "arXiv abstract (earlier version)": 0.89}


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "sources": list(corpora.LOCAL_SOURCES),
        "max_chunks": {"man": 2500, "python": 1500},
        "targets": ["python-topics", "man2-syscalls"],
        "methods": ["random", "dsir", "heuristic", "expert", "anti-dsir"],
        "n_fit": 40,
        "n_eval": 40,
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
    "cpu": {},  # classify stays off: ~15 CPU-min at its defaults, beyond the cpu preset's budget
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


def byte_lm_bits_per_byte(train_texts: list[str], eval_texts: list[str], cfg: Config, seed: int) -> float:
    """Train a tiny byte-level causal transformer on ``train_texts``; held-out bits per byte on ``eval_texts``."""
    from labkit.profile import resolve_device

    seed_everything(seed, threads=cfg.threads)
    data, held = byte_lm_module.byte_tensor(train_texts), byte_lm_module.byte_tensor(eval_texts)
    window = cfg.lm_context + 1
    if len(data) <= window or len(held) <= window:
        raise ValueError(f"need more than {window} bytes of training and held-out text, got {len(data)}/{len(held)}")
    model = byte_lm(cfg, seed).to(resolve_device(cfg.device))
    train_bytes(model, data, cfg.lm_steps, cfg.lm_lr, cfg, seed)
    return byte_lm_module.bits_per_byte(model, held, cfg.lm_context)


@dataclass
class Results:
    """Tidy tables of one run."""

    scores: pd.DataFrame  # seed, target, method, kl_reduction, bigram_nats_per_token, label_precision
    picks: pd.DataFrame  # seed, target, method, label, count: what each selection contained
    tiny_lm: pd.DataFrame  # seed, target, method, bits_per_byte, kl_reduction
    skipped_targets: dict[str, str]  # target -> reason
    classify: pd.DataFrame = field(default_factory=pd.DataFrame)  # seed, target, method, accuracy, macro_f1, ...
    classify_skipped: dict[str, str] = field(default_factory=dict)  # classification target -> reason


def run(cfg: Config, prepared: Prepared | None = None, progress: bool = True) -> Results:
    """Every seed × target × method: selection, KL reduction, bigram-LM loss, label precision (+ transformer)."""
    seed_everything(0, threads=cfg.threads)
    prepared = prepared or prepare(cfg, progress=progress)
    labels = prepared.corpus.label.to_numpy()
    targets = [t for t in cfg.targets if t not in prepared.skipped_targets]
    rows, pick_rows, lm_rows = [], [], []
    total_counts = prepared.features.total_counts()
    cells = [(s, t) for s in cfg.seeds for t in targets]
    for seed, target in tqdm(cells, desc="dsir seeds × targets", disable=not progress):
        split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed)
        k = min(cfg.budget_k, len(split.pool))
        kl_of = kl_scorer(prepared, split, cfg, total_counts)
        held = prepared.encoded.subset(split.eval)
        for method in cfg.methods:
            chosen = select(method, prepared, split, target, k, seed, cfg)
            kl = kl_of(chosen)
            row = {
                "seed": seed,
                "target": target,
                "method": method,
                "k": k,
                "kl_reduction": kl,
                "label_precision": float(np.isin(labels[chosen], TARGETS[target]).mean()),
            }
            if cfg.downstream in ("bigram", "both"):
                lm = BigramLM(prepared.vocab_size, cfg.discount).fit(prepared.encoded.subset(chosen))
                row["bigram_nats_per_token"] = lm.cross_entropy(held)
            rows.append(row)
            counts = pd.Series(labels[chosen]).value_counts()  # the 12 most picked labels, the rest as "other"
            for label, count in [*counts.iloc[:12].items(), ("other", int(counts.iloc[12:].sum()))]:
                if count:
                    pick_rows.append(
                        {"seed": seed, "target": target, "method": method, "label": label, "count": int(count)}
                    )
            if (
                cfg.downstream in ("tiny_lm", "both")
                and target in cfg.tiny_lm_targets
                and method in cfg.tiny_lm_methods
                and seed in cfg.tiny_lm_seeds
            ):
                texts = prepared.corpus.text.to_numpy()
                bpb = byte_lm_bits_per_byte(list(texts[chosen]), list(texts[split.eval]), cfg, seed)
                lm_rows.append(
                    {"seed": seed, "target": target, "method": method, "bits_per_byte": bpb, "kl_reduction": kl}
                )
    results = Results(pd.DataFrame(rows), pd.DataFrame(pick_rows), pd.DataFrame(lm_rows), prepared.skipped_targets)
    if cfg.classify:
        results.classify, results.classify_skipped = run_classification(cfg, prepared, progress=progress)
    return results


def method_correlation(
    scores: pd.DataFrame, loss: str = "bigram_nats_per_token", controls: tuple[str, ...] = CONTROLS
) -> pd.DataFrame:
    """Pearson and Spearman r of KL reduction vs −loss, one point per method (mean over targets and seeds).

    As in the paper, methods are averaged over targets first; reported with and without the controls.
    """
    from scipy import stats

    per_method = scores.groupby("method", sort=False)[["kl_reduction", loss]].mean()
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


def explorer_weights(cfg: Config, prepared: Prepared, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per target: the pool ids, their DSIR log weights and the held-out counts, for widgets that vary k."""
    out = {}
    total = prepared.features.total_counts()
    for target in cfg.targets:
        if target in prepared.skipped_targets:
            continue
        split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed)
        dsir = prepared.dsir(cfg).fit(
            prepared.features, prepared.features.subset(split.fit), exclude=np.concatenate([split.fit, split.eval])
        )
        out[target] = {
            "pool": split.pool,
            "log_weights": dsir.log_weights()[split.pool],
            "eval_counts": prepared.features.total_counts(split.eval),
            "pool_counts": total - prepared.features.total_counts(np.concatenate([split.fit, split.eval])),
        }
    return out


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for reports)."""
    return asdict(cfg)

