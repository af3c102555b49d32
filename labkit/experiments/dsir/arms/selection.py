"""DSIR's selection arms: the k chunks each method picks for a target's split, and the KL reduction that scores them.

Every method sees the whole corpus with the split's fit, held-out, validation and reserved chunks excluded
(``exclude=``), which equals selecting from the pool without copying it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from labkit.experiments.dsir.config import METHODS, SMOOTHED, TARGETS, TUNED, Config, HeuristicSetting
from labkit.experiments.dsir.data import Prepared, Split
from labkit.select import (
    gumbel_top_k,
    heuristic_select,
    kl_reduction,
    random_select,
    target_likelihood_select,
    tfidf_select,
)


def select(
    method: str,
    prepared: Prepared,
    split: Split,
    target: str,
    k: int,
    seed: int,
    cfg: Config,
    setting: Any = None,
) -> np.ndarray:
    """Indices into the corpus of the k chunks ``method`` picks from ``split.pool``.

    ``setting`` is a tuned method's (:data:`~labkit.experiments.dsir.config.TUNED`) setting from its grid, chosen on
    validation (default: the grid's first); "dsir", "dsir-topk" and "anti-dsir" use the config's
    ``target_pseudocount`` (the paper's 0 by default), the other methods have no knob.
    """
    if method in TUNED and setting is None:
        setting = cfg.grid(method)[0]
    drawn = split.drawn()
    fit_feats = prepared.features.subset(split.fit)
    if method == "random":
        return split.pool[random_select(len(split.pool), k, seed)]
    if method in ("dsir", "dsir-topk", SMOOTHED, "anti-dsir"):
        pc = setting if method == SMOOTHED else None
        dsir = prepared.dsir(cfg, pc).fit(prepared.features, fit_feats, exclude=drawn)
        if method == "anti-dsir":
            weights = dsir.log_weights()
            weights[drawn] = np.inf
            return gumbel_top_k(-weights, k, top_k=True)
        return dsir.resample(k, seed=seed, top_k=method == "dsir-topk", temperature=cfg.temperature)
    if method in ("heuristic", "heuristic-words"):
        raw = prepared.matrix if method == "heuristic" else prepared.words()
        return heuristic_select(raw, raw[split.fit], k, seed, **HeuristicSetting(*setting)._asdict(),
                                num_buckets=raw.shape[1], exclude=drawn)
    if method == "target-likelihood":
        return target_likelihood_select(prepared.matrix, fit_feats, k, num_buckets=cfg.num_buckets,
                                        target_pseudocount=setting, exclude=drawn)
    if method == "tfidf":
        return tfidf_select(prepared.matrix, fit_feats, k, num_buckets=cfg.num_buckets, tf=setting, exclude=drawn)
    if method == "expert":  # oracle: the target's own labels first, then its source, then random
        corpus = prepared.corpus
        own = np.isin(corpus.label.to_numpy(), TARGETS[target])
        same_source = np.isin(corpus.source.to_numpy(), corpus.source.iloc[split.fit].unique())
        rank = np.random.default_rng(seed).random(len(corpus)) - 2.0 * own - 1.0 * same_source
        rank[drawn] = np.inf
        return np.argsort(rank, kind="stable")[:k]
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def kl_scorer(
    prepared: Prepared, split: Split, cfg: Config, total_counts: np.ndarray | None = None
) -> Callable[[np.ndarray], float]:
    """KL reduction of a selection (chunk ids -> float) toward the split's held-out chunks, against its pool.

    The pool's counts leave out the split's fit, held-out and reserved chunks, which no method may select.
    """
    total = prepared.features.total_counts() if total_counts is None else total_counts
    eval_counts = prepared.features.total_counts(split.eval)
    pool_counts = total - prepared.features.total_counts(split.drawn())

    def score(chosen: np.ndarray) -> float:
        return kl_reduction(
            prepared.features.total_counts(chosen),
            eval_counts,
            pool_counts,
            pseudocount=cfg.pseudocount,
            num_buckets=cfg.num_buckets,
        )

    return score
