"""What Met²Net's computed tables show: the momentum chosen on validation, the tables at that momentum, the claims
(:mod:`labkit.experiments.met2net.claims`, premise first), sanity and budget checks, and the readings the notebook
prints (:func:`judge`, :func:`verdict_text`, :func:`headline_metrics`, :func:`relative_change`).

Checkpoints and the momentum are selected on the validation split, never on test. Every trained arm also ran its
first seed at ``cfg.budget_factor`` times the budget (:func:`labkit.experiments.met2net.arms.longer_budget`; met2net
and pervar_e2e their first ``cfg.long_seeds``); an arm whose validation MSE still drops there by more than the claims'
tolerance is not converged, and the claims resting on it are inconclusive. Skill vs persistence is judged per lead and
variable too (:func:`labkit.experiments.met2net.claims.lead_skill`). Metrics are per variable, in the generator's
physical units and in z-units; RMSE = sqrt(pooled MSE).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from labkit import protocol
from labkit.data.fields import dependent_variables
from labkit.experiments import Computed, Results
from labkit.experiments.met2net import claims
from labkit.experiments.met2net.arms import FORECAST_PREFIX, chosen_momentum
from labkit.experiments.met2net.config import Config
from labkit.experiments.met2net.data import FieldData, batch

PAPER_RELATIVE_MSE = {"T": -28.82, "RH": -23.39}  # % MSE change reported in the abstract (temperature, humidity)


def _at_momentum(table: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """The rows of ``table`` at Met²Net's chosen momentum (rows of the other arms all stay), without the column."""
    keep = (table["arm"] != "met2net") | (table["momentum"] == momentum)
    return table[keep].drop(columns="momentum").reset_index(drop=True)


def _sweep(runs: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """Met²Net's momentum sweep: validation and test MSE of every (momentum, seed), and which momentum was chosen."""
    met2net = runs[(runs["arm"] == "met2net") & (runs["budget"] == 1)]
    rows = [{"momentum": r.momentum, "seed": r.seed, "split": split, "mse_z": value}
            for r in met2net.itertuples() for split, value in (("val", r.val_mse_z), ("test", r.test_mse_z))]
    sweep = pd.DataFrame(rows, columns=["momentum", "seed", "split", "mse_z"])
    return sweep.assign(selected=sweep["momentum"] == momentum)


def _with_skill(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with the skill vs persistence (1 − MSE / persistence MSE of the same seed, variable and units)."""
    persistence = metrics[metrics["arm"] == "persistence"].set_index(["seed", "variable", "units"])["mse"]
    if persistence.empty:
        return metrics
    key = pd.MultiIndex.from_frame(metrics[["seed", "variable", "units"]])
    return metrics.assign(skill=1 - metrics["mse"].to_numpy() / persistence.reindex(key).to_numpy())


def _cost(runs: pd.DataFrame, cfg: Config, timings: dict[str, float]) -> pd.DataFrame:
    """Per arm: params, forward FLOPs per window, mean training seconds (a timing), best and last epoch (means)."""
    short = runs[runs["budget"] == 1].assign(order=lambda t: t["arm"].map(cfg.arms.index))
    short = short.sort_values(["seed", "order"], kind="stable")
    cost = (short.groupby("arm", sort=False)
            .agg(params=("params", "first"), forward_flops=("forward_flops", "first"),
                 best_epoch=("best_epoch", "mean"), epochs_run=("epochs_run", "mean"))
            .reset_index())
    cost.insert(3, "seconds", [timings.get(f"train_seconds_{arm}", math.nan) for arm in cost["arm"]])
    return cost


def _budget_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The budget check's runs: arm, seed, budget, validation MSE (what the check judges), test MSE (what the long
    claims compare) and epochs, for every (arm, seed) that also ran at a longer budget."""
    longer = set(runs.loc[runs["budget"] > 1, ["arm", "seed"]].itertuples(index=False, name=None))
    rerun = [(arm, seed) in longer for arm, seed in zip(runs["arm"], runs["seed"], strict=True)]
    columns = ["arm", "seed", "budget", "val_mse_z", "test_mse_z", "best_epoch", "epochs_run"]
    return runs.loc[rerun, columns].reset_index(drop=True)


def _budget_report(converged: pd.DataFrame, runs: pd.DataFrame, timings: dict[str, float]) -> pd.DataFrame:
    """The budget check (:func:`labkit.protocol.budget_check` rows) with the epochs each run took and the seconds
    the longer run cost (a timing)."""
    short = runs[runs["budget"] == 1].set_index(["arm", "seed"])
    long = runs[runs["budget"] > 1].set_index(["arm", "seed"])
    extra = pd.DataFrame({"best_epoch_1x": short["best_epoch"], "best_epoch_long": long["best_epoch"],
                          "epochs_run_1x": short["epochs_run"], "epochs_run_long": long["epochs_run"]})
    report = converged.merge(extra.rename_axis(["arm", "seed"]).reset_index(), on=["arm", "seed"], how="left")
    return report.assign(seconds_long=[timings.get(f"budget_seconds_{arm}", math.nan) for arm in report["arm"]])


def judge(cfg: Config, computed: Computed) -> Results:
    """Choose Met²Net's momentum on validation, keep every table at it, and judge the claims (premise first) with
    the sanity and budget checks. Tables: the computed ones, and ``metrics`` (with skill), ``lead``, ``skill`` (vs
    persistence per arm, variable and lead), ``history``, ``attention``, ``cost``, ``scores`` (per arm and seed),
    ``sweep``, ``claims``, ``sanity`` and ``budget``."""
    tables, timings = computed.tables, computed.timings
    runs = tables["runs"]
    momentum = chosen_momentum(runs) if "met2net" in cfg.arms else cfg.momentum
    runs_chosen = _at_momentum(runs, momentum)
    metrics = _with_skill(_at_momentum(tables["run_metrics"], momentum))
    history = _at_momentum(tables["run_history"], momentum)
    budget_runs = _budget_runs(runs_chosen)
    dependent = dependent_variables(cfg.variables)
    scores = claims.per_seed_scores(metrics, history, dependent)
    lead = _at_momentum(tables["run_lead"], momentum)
    skill = claims.lead_skill(lead)
    claims_table, sanity, converged = claims.verdicts(scores, budget_runs, skill, dependent)
    judged = {
        "metrics": metrics, "lead": lead, "skill": skill, "history": history,
        "attention": _at_momentum(tables["run_attention"], momentum), "cost": _cost(runs_chosen, cfg, timings),
        "scores": scores, "sweep": _sweep(runs, momentum), "claims": claims_table, "sanity": sanity,
        "budget": _budget_report(converged, budget_runs, timings),
    }
    return Results(cfg, {**tables, **judged}, computed)


def relative_change(scores: pd.DataFrame, arm: str = "met2net", baseline: str = "stacked_wide") -> pd.DataFrame:
    """Per variable: % MSE change of ``arm`` vs ``baseline`` (fixed in advance), paired by seed with a Student-t
    interval, next to the paper's number where it reports one."""
    rows = []
    for col in [c for c in scores.columns if claims.variable_of(c)]:
        a = scores[scores["arm"] == arm].set_index("seed")[col]
        b = scores[scores["arm"] == baseline].set_index("seed")[col]
        if a.empty or b.empty:
            raise ValueError(f"need arms {arm!r} and {baseline!r} in the scores; have {sorted(set(scores['arm']))}")
        mean, low, high = protocol.student_t_ci((100 * (a / b.loc[a.index] - 1)).to_numpy())
        var = col.removeprefix("mse_")
        rows.append({"variable": var, "arm": arm, "baseline": baseline, "relative_change_pct": mean, "low": low,
                     "high": high, "n": len(a), "paper_pct": PAPER_RELATIVE_MSE.get(var, np.nan)})
    return pd.DataFrame(rows)


def verdict_text(results: Results) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, every claim with its effect, interval, n
    and verdict, then the sanity flags and the momentum chosen on validation."""
    chosen = results.sweep.loc[results.sweep["selected"], "momentum"]
    notes = [] if chosen.empty else [f"met2net momentum chosen on validation: {float(chosen.iloc[0]):g}"]
    notes += [line for line in [claims.lead_one_summary(results.sanity)] if line]
    ok = "every trained arm converged at the longer budget and beat persistence on the mean over leads and variables"
    return protocol.verdict_text(results.claims, results.sanity, ok, notes=notes)


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per arm mean z-MSE and skill, per arm and variable z-MSE, each claim's effect."""
    scores = results.scores.groupby("arm", sort=False).mean(numeric_only=True)
    out = {f"mean_normalised_mse_{arm}": float(v) for arm, v in scores["mse_z"].items()}
    if "skill_vs_persistence" in scores:
        out |= {f"skill_vs_persistence_{arm}": float(v) for arm, v in scores["skill_vs_persistence"].items()}
    norm = results.metrics[results.metrics["units"] == "normalised"]
    out |= {f"normalised_mse_{arm}_{var}": float(v)
            for (arm, var), v in norm.groupby(["arm", "variable"], sort=False)["mse"].mean().items()}
    out |= {f"claim_{r.claim}_pct": float(r.mean) for r in results.claims.itertuples()}
    chosen = results.sweep.loc[results.sweep["selected"], "momentum"]
    if not chosen.empty:
        out["met2net_momentum"] = float(chosen.iloc[0])
    return out


def sample_forecasts(results: Results, data: FieldData) -> dict[str, np.ndarray]:
    """Truth and each arm's seed-0 forecasts (stored by ``compute``) for a few test windows, in physical units
    (``S x t x V x H x W``); ``data`` is :func:`labkit.experiments.met2net.data.load_data` of the run's config."""
    cfg, tensors = results.config, results.computed.tensors
    windows = tensors[f"{FORECAST_PREFIX}windows"].numpy()
    _, y = batch(data, "test", windows, cfg, torch.device("cpu"))
    out = {"truth": data.normalizer.denormalize(y).numpy()}
    for arm in (a for a in cfg.arms if f"{FORECAST_PREFIX}{a}" in tensors):
        out[arm] = data.normalizer.denormalize(tensors[f"{FORECAST_PREFIX}{arm}"].to(torch.float32)).numpy()
    return out
