"""DSIR's compute: build the pool, run every track, return the raw tables (the only code of the paper that trains).

For every seed × target: draw the target's fit sample and held-out evaluation chunks from its labelled domain
(the rest of the domain stays in the pool), let each method pick k chunks, then score the selection by KL
reduction (hashed n-grams, vs the held-out chunks) and by the held-out loss of a language model trained on it:
a bigram LM (nats/token) and optionally a tiny byte-level transformer (bits/byte), which also trains on the target's
own held-in text (the premise arm, "target"); with ``classify`` also the classification track. "dsir" runs at the
paper's setting (the config's ``target_pseudocount``, 0 by default); the target pseudocount of labkit's smoothed
variant ("dsir-smoothed") is chosen on validation chunks of each target, never on the held-out (test) chunks; the
budget check scores validation text too.
"""

from __future__ import annotations

import time

import pandas as pd

from labkit import seed_everything, selection
from labkit.experiments import Computed
from labkit.experiments.dsir.arms.classify import run_classification
from labkit.experiments.dsir.arms.lm import bigram_cells, shared_pool, tiny_track
from labkit.experiments.dsir.config import Config
from labkit.experiments.dsir.data import Prepared, prepare

CURVE_COLUMNS = ["track", "arm", "budget", "block", "training_loss"]  # the computed table of budget-run loss curves
SKIPPED_COLUMNS = ["track", "target", "reason"]  # the computed table of targets a track could not run


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Build (or load from the labkit cache) the pool for ``cfg``, then run every track on it (:func:`compute_on`);
    the timings say how long each part took."""
    start = time.perf_counter()
    seed_everything(0, threads=cfg.threads)
    prepared = prepare(cfg, progress=progress)
    prepared_at = time.perf_counter()
    computed = compute_on(cfg, prepared, progress)
    computed.timings = {"prepare_seconds": prepared_at - start, "run_seconds": time.perf_counter() - prepared_at}
    return computed


def choose_pseudocount(cfg: Config, sweep: pd.DataFrame) -> float:
    """The "dsir-smoothed" arm's target pseudocount: the lowest mean validation bigram loss of the sweep
    (:func:`labkit.selection.select_best` on its validation rows); the grid's first value when there is nothing to
    choose on (no sweep, no validation chunks or no bigram LM)."""
    if len(sweep) and cfg.n_val > 0 and cfg.downstream in ("bigram", "both"):
        return float(selection.select_best(sweep[sweep.split == "val"], "target_pseudocount",
                                          "bigram_nats_per_token")["target_pseudocount"])
    return cfg.target_pseudocounts[0]


def compute_on(cfg: Config, prepared: Prepared, progress: bool = True) -> Computed:
    """Every seed × target × method on the pool ``prepared``: selection, KL reduction, bigram-LM loss, label
    precision; then the transformer and classification tracks with their budget checks.

    "dsir-smoothed" runs at every ``target_pseudocounts`` value; the one :func:`choose_pseudocount` picks becomes its
    arm, and only it trains a transformer. Jobs run in ``cfg.workers`` forked processes when more than one. Tables:
    ``scores``, ``picks``, ``sweep``, ``tiny_lm``, ``classify``, ``budget_runs`` (the budget check's runs of both
    tracks), ``budget_curves`` (their training-loss curves) and ``skipped`` (targets a track could not run, and why).
    """
    if "heuristic-words" in cfg.methods:
        prepared.words()  # built once, before forking
    targets = [t for t in cfg.targets if t not in prepared.skipped_targets]
    with shared_pool(prepared):
        cells = bigram_cells(cfg, targets, progress)
        sweep = pd.DataFrame([r for c in cells for r in c["sweep"]])
        chosen = choose_pseudocount(cfg, sweep)
        tiny, budget, curves = tiny_track(cfg, targets, chosen, progress)

    def keep(rows: list[dict]) -> pd.DataFrame:  # drop the dsir-smoothed rows at pseudocounts not chosen
        frame = pd.DataFrame(rows)
        if "target_pseudocount" not in frame:
            return frame
        pc = frame.pop("target_pseudocount")
        return frame[pc.isna() | (pc == chosen)].reset_index(drop=True)

    skipped = [("selection", t, why) for t, why in prepared.skipped_targets.items()]
    classify = pd.DataFrame()
    if cfg.classify:
        track = run_classification(cfg, prepared, progress=progress, target_pseudocount=chosen)
        classify = track.table
        budget = pd.concat([budget, track.budget], ignore_index=True)
        curves |= track.budget_curves
        skipped += [("classification", t, why) for t, why in track.skipped.items()]
    curve_rows = [(name, arm, factor, block, loss) for (name, arm, factor), curve in curves.items()
                  for block, loss in enumerate(curve)]
    tables = {
        "scores": keep([r for c in cells for r in c["rows"]]),
        "picks": keep([r for c in cells for r in c["picks"]]),
        "sweep": sweep,
        "tiny_lm": tiny,
        "classify": classify,
        "budget_runs": budget,
        "budget_curves": pd.DataFrame(curve_rows, columns=CURVE_COLUMNS),
        "skipped": pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
    }
    return Computed(tables)
