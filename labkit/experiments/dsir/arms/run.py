"""DSIR's compute: build the pool, run every track, return the raw tables (the only code of the paper that trains).

For every seed × target: draw the target's fit sample and held-out evaluation chunks from its labelled domain
(the rest of the domain stays in the pool), let each method pick k chunks, then score the selection by KL
reduction (hashed n-grams, vs the held-out chunks) and by the held-out loss of a language model trained on it:
a bigram LM (nats/token) and optionally a tiny byte-level transformer (bits/byte), which also trains on the target's
own held-in text (the premise arm, "target"); with ``classify`` also the classification track, with ``llm`` the
paper's own setting (SmolLM2 continued pretraining on the selections, bits/byte). "dsir" runs at the
paper's setting (the config's ``target_pseudocount``, 0 by default); every tuned method (labkit's smoothed DSIR,
heuristic classification, target likelihood, TF-IDF; ``TUNED``) chooses its setting from a grid on validation chunks
of each target, never on the held-out (test) chunks; the budget check scores validation text too.
"""

from __future__ import annotations

import time

import pandas as pd

from labkit import seed_everything, selection
from labkit.experiments import Computed
from labkit.experiments.dsir.arms.classify import run_classification
from labkit.experiments.dsir.arms.llm import llm_track, load_llm
from labkit.experiments.dsir.arms.lm import bigram_cells, shared_pool, tiny_track
from labkit.experiments.dsir.config import TUNED, Config, HeuristicSetting
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


def choose_settings(cfg: Config, sweep: pd.DataFrame) -> dict[str, int]:
    """Each tuned method that ran -> the index into its grid with the lowest mean validation bigram loss over every
    (seed, target) cell (:func:`labkit.selection.select_best` on the sweep's validation rows); the grid's first when
    there is nothing to choose on (no validation chunks or no bigram LM)."""
    if not len(sweep):
        return {}
    can_choose = cfg.n_val > 0 and cfg.downstream in ("bigram", "both")
    return {method: int(selection.select_best(rows, "setting", "bigram_nats_per_token")["setting"]) if can_choose
            else 0 for method, rows in sweep[sweep.split == "val"].groupby("method", sort=False)}


def tuning_table(cfg: Config, sweep: pd.DataFrame) -> pd.DataFrame:
    """Per tuned method: the knob (its Config field), the grid, its size, the setting chosen on validation (the
    sweep's ``chosen`` rows, marked when it ran) and its mean validation and test bigram loss (test shown, never
    used)."""
    rows = []
    for method, mine in sweep[sweep.chosen].groupby("method", sort=False) if len(sweep) else ():
        index = int(mine.setting.iloc[0])
        grid = cfg.grid(method)
        knob = TUNED[method] + (f" ({', '.join(HeuristicSetting._fields)})" if TUNED[method] == "heuristic_grid"
                                else "")
        rows.append({"method": method, "knob": knob, "grid": "; ".join(map(str, grid)), "grid_size": len(grid),
                     "chosen": str(grid[index]),
                     "validation_nats_per_token": float(mine[mine.split == "val"].bigram_nats_per_token.mean()),
                     "test_nats_per_token": float(mine[mine.split == "test"].bigram_nats_per_token.mean())})
    return pd.DataFrame(rows, columns=["method", "knob", "grid", "grid_size", "chosen", "validation_nats_per_token",
                                       "test_nats_per_token"])


def compute_on(cfg: Config, prepared: Prepared, progress: bool = True) -> Computed:
    """Every seed × target × method on the pool ``prepared``: selection, KL reduction, bigram-LM loss, label
    precision; then the transformer, SmolLM2 and classification tracks with their budget checks.

    Each tuned method runs at every setting of its grid; the one :func:`choose_settings` picks becomes its arm, and
    only it trains a transformer. Jobs run in ``cfg.workers`` forked processes when more than one. Tables:
    ``scores``, ``picks``, ``sweep``, ``tiny_lm``, ``llm``, ``classify``, ``budget_runs`` (the budget check's runs of
    every trained track), ``budget_curves`` (their training-loss curves) and ``skipped`` (targets a track could not
    run, and why).
    """
    loaded = load_llm(cfg) if cfg.llm else None  # a missing model or a bad llm_layers fails here, not after an hour
    if "heuristic-words" in cfg.methods:
        prepared.words()  # built once, before forking
    targets = [t for t in cfg.targets if t not in prepared.skipped_targets]
    with shared_pool(prepared):
        cells = bigram_cells(cfg, targets, progress)
        sweep = pd.DataFrame([r for c in cells for r in c["sweep"]])
        chosen = choose_settings(cfg, sweep)
        if len(sweep):
            sweep["chosen"] = sweep.setting == sweep.method.map(chosen)  # the one record of the choice
        settings = {method: cfg.grid(method)[index] for method, index in chosen.items()}
        tiny, budget, curves = tiny_track(cfg, targets, settings, progress)
        llm, llm_budget, llm_curves = llm_track(cfg, targets, settings, loaded, progress)
    budget = pd.concat([budget, llm_budget], ignore_index=True)
    curves |= llm_curves

    def keep(rows: list[dict]) -> pd.DataFrame:  # drop the tuned methods' rows at settings not chosen
        frame = pd.DataFrame(rows)
        if "setting" not in frame:
            return frame
        index = frame.pop("setting")
        return frame[index.isna() | (index == frame.method.map(chosen))].reset_index(drop=True)

    skipped = [("selection", t, why) for t, why in prepared.skipped_targets.items()]
    classify = pd.DataFrame()
    if cfg.classify:
        track = run_classification(cfg, prepared, progress=progress, settings=settings)
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
        "llm": llm,
        "classify": classify,
        "budget_runs": budget,
        "budget_curves": pd.DataFrame(curve_rows, columns=CURVE_COLUMNS),
        "skipped": pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
    }
    return Computed(tables)
