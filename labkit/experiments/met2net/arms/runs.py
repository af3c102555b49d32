"""Every arm x seed of Met²Net trained and scored: the raw tables the judgement reads (:func:`compute`).

``met2net`` runs once per momentum in ``cfg.momentums``; the momentum with the best mean validation MSE
(:func:`chosen_momentum`) is the one ``met2net_noattn`` and the longer-budget reruns train with, and the one the
judgement reports. The first seed of every trained arm (met2net at the chosen momentum) also runs at
``cfg.budget_factor`` x the budget for the convergence check, and the first ``cfg.long_seeds`` seeds of ``met2net`` and
``pervar_e2e`` do, so implicit vs end-to-end is also judged beyond the budget. With ``cfg.vary_data`` every seed
trains and is scored on its own draw of the fields (:func:`labkit.experiments.met2net.data.data_seed`). Nothing here
judges: claims, sanity, the momentum sweep and the cost table are built from these tables by
:mod:`labkit.experiments.met2net.summary`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from labkit import profile, selection
from labkit.experiments import ARTEFACT_LIMIT_BYTES, Computed
from labkit.experiments.met2net.arms.models import build_model, forward_flops
from labkit.experiments.met2net.arms.training import longer_budget, train_arm
from labkit.experiments.met2net.config import ARMS, LONG_ARMS, TRIVIAL, Config
from labkit.experiments.met2net.data import FieldData, batch, evaluate, forecast, load_data
from labkit.jobs import run_jobs

FORECAST_WINDOWS = 4  # test windows whose seed-0 forecasts the forecast viewer browses (fewer if they would not fit)
FORECAST_PREFIX = "forecast/"  # tensor names: forecast/<arm> (z-units, S x t_out x V x H x W), forecast/windows


@dataclass(frozen=True)
class Job:
    """One (arm, seed, momentum) to train at ``budget`` x the configured budget (``progress``: a bar over steps)."""

    cfg: Config
    arm: str
    seed: int
    momentum: float | None
    budget: float = 1.0
    progress: bool = False


@dataclass
class JobResult:
    """What :func:`run_job` keeps of one trained and scored job: its rows of the computed tables."""

    job: Job
    run: dict[str, Any]  # a row of the runs table
    metric_rows: list[dict[str, Any]]
    lead_rows: list[dict[str, Any]]
    attention_rows: list[dict[str, Any]]
    history: pd.DataFrame
    forecast: np.ndarray | None  # seed 0 at budget 1: z-unit forecasts of the windows of forecast_windows()


def forecast_windows(cfg: Config, data: FieldData) -> np.ndarray:
    """The test windows the forecast viewer shows: up to :data:`FORECAST_WINDOWS`, as many as keep every arm's
    float32 forecasts within 90 % of the artefact limit of a report."""
    window_bytes = 4 * cfg.t_out * len(data.variables) * cfg.height * cfg.width * len(cfg.arms)
    n = max(1, min(FORECAST_WINDOWS, ARTEFACT_LIMIT_BYTES * 9 // 10 // window_bytes))
    return np.linspace(0, len(data.windows["test"]) - 1, n).astype(int)


def _metric_rows(job: Job, scores: dict[str, Any], data: FieldData) -> list[dict[str, Any]]:
    """Rows of the run_metrics table: per variable, test MSE, MAE and RMSE in physical units and in z-units."""
    rows = []
    for units, mse, mae in (
        ("physical", scores["mse_phys"], scores["mae_phys"]),
        ("normalised", scores["mse_z"], scores["mae_z"]),
    ):
        for v, name in enumerate(data.variables):
            m = float(mse[:, v].mean())
            rows.append({"seed": job.seed, "arm": job.arm, "momentum": job.momentum, "variable": name,
                         "units": units, "unit": data.units[v] if units == "physical" else "z", "mse": m,
                         "mae": float(mae[:, v].mean()), "rmse": math.sqrt(m)})
    return rows


def _lead_rows(job: Job, scores: dict[str, Any], data: FieldData) -> list[dict[str, Any]]:
    """Rows of the run_lead table: test MSE per variable and lead time, in z-units and physical units."""
    return [
        {"seed": job.seed, "arm": job.arm, "momentum": job.momentum, "variable": name, "lead": lead + 1,
         "mse_z": float(scores["mse_z"][lead, v]), "mse_phys": float(scores["mse_phys"][lead, v])}
        for v, name in enumerate(data.variables)
        for lead in range(job.cfg.t_out)
    ]


def _attention_rows(job: Job, attention: np.ndarray | None, data: FieldData) -> list[dict[str, Any]]:
    """Rows of the run_attention table: the test-set mean variable attention (query x key); none for arms without."""
    if attention is None:
        return []
    return [
        {"seed": job.seed, "arm": job.arm, "momentum": job.momentum, "query": kq, "key": kk,
         "weight": float(attention[q, k])}
        for q, kq in enumerate(data.variables)
        for k, kk in enumerate(data.variables)
    ]


def run_job(job: Job) -> JobResult:
    """Train one arm for one seed (and momentum) at ``job.budget`` x the configured budget, score it on validation
    and test (the function :func:`labkit.jobs.run_jobs` maps, in worker processes too)."""
    data = load_data(job.cfg, seed=job.seed)
    cfg = job.cfg if job.budget == 1 else longer_budget(job.cfg, job.budget)
    device = profile.resolve_device(cfg.device)
    result = train_arm(job.arm, cfg, job.seed, data, job.momentum, job.progress)
    val = float(evaluate(result.model, data, "val", cfg, device)["mse_z"].mean())
    scores = evaluate(result.model, data, "test", cfg, device)
    run = {"arm": job.arm, "seed": job.seed, "momentum": job.momentum, "budget": job.budget, "val_mse_z": val,
           "test_mse_z": float(scores["mse_z"].mean()), "params": result.params, "best_epoch": result.best_epoch,
           "epochs_run": result.epochs_run, "seconds": result.seconds}
    sample = None
    if job.seed == 0 and job.budget == 1:
        x, _ = batch(data, "test", forecast_windows(cfg, data), cfg, device)
        with torch.no_grad():
            sample = forecast(result.model.eval(), x)[0].float().cpu().numpy()
    return JobResult(job, run, _metric_rows(job, scores, data), _lead_rows(job, scores, data),
                     _attention_rows(job, scores["attention"], data),
                     result.history.assign(seed=job.seed, arm=job.arm), sample)


def chosen_momentum(runs: pd.DataFrame) -> float:
    """Met²Net's EMA momentum with the best mean validation MSE over seeds at budget 1
    (:func:`labkit.selection.select_best` on validation rows only): the one its claims are judged at and
    ``met2net_noattn`` trains with."""
    sweep = runs[(runs["arm"] == "met2net") & (runs["budget"] == 1)]
    val = sweep[["momentum", "seed", "val_mse_z"]].rename(columns={"val_mse_z": "mse_z"}).assign(split="val")
    return float(selection.select_best(val, "momentum", "mse_z")["momentum"])


def _history(done: list[JobResult]) -> pd.DataFrame:
    """The training histories of ``done``, one table, with the momentum each ran at (NaN for arms without one)."""
    history = pd.concat([r.history for r in done], ignore_index=True)
    return history.assign(momentum=np.repeat([r.job.momentum for r in done], [len(r.history) for r in done]))


def _long_seeds(cfg: Config, arm: str) -> range:
    """The seeds of ``arm`` rerun at ``cfg.budget_factor`` x the budget: seed 0 (the convergence check), and the first
    ``cfg.long_seeds`` for the two arms (:data:`LONG_ARMS`) of implicit vs end-to-end (judged there too)."""
    return range(cfg.long_seeds if arm in LONG_ARMS else 1)


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Train and score every arm x seed (and met2net momentum), the budget-check reruns, and the seed-0 forecasts.

    Computed tables: ``runs`` (one row per trained job, in the order they ran: arm, seed, momentum, budget,
    validation and test MSE, params, forward FLOPs, epochs; the longer-budget reruns of :func:`_long_seeds` too), and
    for every job at budget 1, ordered by seed then arm: ``run_metrics`` (per variable, physical and z-units),
    ``run_lead`` (per lead time), ``run_history`` (losses per step, validation MSE per epoch) and ``run_attention``
    (variable attention). Tensors: the seed-0 forecasts of
    a few test windows per arm (met2net at the chosen momentum). Timings: training seconds per arm.
    """
    data = load_data(cfg, progress)
    n_vars = len(data.variables)
    seeds = range(cfg.seeds)
    long = cfg.budget_factor
    bars = progress and cfg.workers == 1  # a bar per job only when jobs run in this process
    first = [a for a in cfg.arms if a != "met2net_noattn"]
    jobs = [Job(cfg, arm, s, m, 1.0, bars) for arm in first for s in seeds
            for m in (cfg.momentums if arm == "met2net" else (None,))]
    jobs += [Job(cfg, arm, s, None, long, bars) for arm in first if arm not in (*TRIVIAL, "met2net")
             for s in _long_seeds(cfg, arm)]
    jobs.sort(key=lambda j: (ARMS.index(j.arm), j.budget), reverse=True)  # slow arms and long runs first
    done = run_jobs(run_job, jobs, workers=cfg.workers, desc="met2net arms x seeds", progress=progress)
    momentum = cfg.momentum
    if "met2net" in cfg.arms:
        momentum = chosen_momentum(pd.DataFrame([r.run for r in done]))
    second = [Job(cfg, arm, s, momentum, long, bars) for arm in ("met2net", "met2net_noattn") if arm in cfg.arms
              for s in _long_seeds(cfg, arm)]
    second += [Job(cfg, "met2net_noattn", s, momentum, 1.0, bars) for s in seeds if "met2net_noattn" in cfg.arms]
    if second:
        done += run_jobs(run_job, second, workers=cfg.workers, desc="met2net at the chosen momentum",
                         progress=progress)
    flops = {arm: forward_flops(build_model(arm, cfg, n_vars, data), cfg, n_vars) for arm in cfg.arms}
    runs = pd.DataFrame([{**r.run, "forward_flops": flops[r.job.arm]} for r in done]).drop(columns="seconds")
    short = sorted((r for r in done if r.job.budget == 1), key=lambda r: (r.job.seed, cfg.arms.index(r.job.arm)))
    tables = {
        "runs": runs,
        "run_metrics": pd.DataFrame([row for r in short for row in r.metric_rows]),
        "run_lead": pd.DataFrame([row for r in short for row in r.lead_rows]),
        "run_history": _history(short),
        "run_attention": pd.DataFrame([row for r in short for row in r.attention_rows],
                                      columns=["seed", "arm", "momentum", "query", "key", "weight"]),
    }
    shown = [r for r in short if r.forecast is not None and (r.job.arm != "met2net" or r.job.momentum == momentum)]
    tensors = {f"{FORECAST_PREFIX}{r.job.arm}": torch.from_numpy(r.forecast) for r in shown}
    tensors[f"{FORECAST_PREFIX}windows"] = torch.from_numpy(forecast_windows(cfg, data))
    chosen = [r for r in done if r.job.arm != "met2net" or r.job.momentum == momentum]
    timings = {f"train_seconds_{arm}": float(np.mean([r.run["seconds"] for r in chosen
                                                      if r.job.arm == arm and r.job.budget == 1]))
               for arm in cfg.arms}
    timings |= {f"budget_seconds_{arm}": float(np.mean([r.run["seconds"] for r in chosen
                                                        if r.job.arm == arm and r.job.budget > 1]))
                for arm in dict.fromkeys(r.job.arm for r in chosen if r.job.budget > 1)}
    return Computed(tables, tensors, timings)
