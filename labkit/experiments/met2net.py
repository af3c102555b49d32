"""Met²Net (Li et al., ICCV 2025, arXiv 2507.17189): per-variable encoders + variable attention + implicit two-stage.

Arms, all with the same optimiser, data, seeds and early-stopping rule, on locally generated fields whose variables
differ in statistics and scale (wind, temperature, bounded humidity, intermittent heavy-tailed precipitation, cloud
fraction, a fine-scale advected tracer; :mod:`labkit.data.fields`):

- ``persistence`` (the last input frame repeated) and ``climatology`` (the training mean per grid point);
- ``stacked``: SimVP-like, variables stacked as channels, end-to-end;
- ``stacked_wide``: the stacked model widened until its forward FLOPs reach Met²Net's (capacity control);
- ``pervar_e2e``: Met²Net's network (per-variable enc/dec + variable attention) trained end-to-end;
- ``pervar_explicit``: the same network trained explicitly in two stages (autoencoder, then latent translator);
- ``met2net``: the same network trained with the implicit two-stage scheme (:class:`labkit.stage.ImplicitTwoStage`),
  its EMA momentum chosen on validation among ``cfg.momentums``;
- ``met2net_noattn``: Met²Net without cross-variable attention (variables never interact), same momentum.

Checkpoints and the momentum are selected on the validation split, never on test; claims are judged by
:mod:`labkit.experiments.met2net_claims`, premise (attention beats no attention) first. Every trained arm also runs
its first seed at ``cfg.budget_factor`` times the budget (the epoch cap, patiences and stages stretched alike:
:func:`labkit.experiments.met2net_arms.longer_budget`); an arm whose validation MSE still drops there by more than the
claims' tolerance is not converged, and the claims resting on it are inconclusive.

Metrics are per variable, in the generator's physical units and in z-units; RMSE = sqrt(pooled MSE). The fields,
windows and scoring live in :mod:`labkit.experiments.met2net_data`, the arms' models and training in
:mod:`labkit.experiments.met2net_arms`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from labkit import profile, protocol
from labkit.data.fields import ALL_VARIABLES
from labkit.experiments import (
    check_types,
    met2net_claims,
    require_device,
    require_divisible,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_subset,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.experiments.met2net_arms import ARMS, TRIVIAL, ArmRun, build_model, forward_flops, longer_budget, train_arm
from labkit.experiments.met2net_data import FieldData, batch, evaluate, forecast, load_data
from labkit.stage import ImplicitTwoStage

PAPER_RELATIVE_MSE = {"T": -28.82, "RH": -23.39}  # % MSE change reported in the abstract (temperature, humidity)
VARIABLES = ("u", "v", "T", "RH", "precip", "tracer")  # heterogeneous statistics and scales: see labkit.data.fields


@dataclass
class Config:
    height: int = 16  # grid rows ("latitude"); the paper uses 32 (5.625 deg)
    width: int = 16  # grid columns; the paper uses 64
    variables: tuple[str, ...] = VARIABLES  # generated variables (5-9), see labkit.data.fields.ALL_VARIABLES
    t_in: int = 4  # input frames (paper: 12)
    t_out: int = 4  # forecast frames (paper: 12)
    frames: int = 100  # frames per trajectory after spin-up
    n_train: int = 12  # training trajectories
    n_val: int = 3  # validation trajectories (checkpoints, early stopping and the momentum are chosen here)
    n_test: int = 4  # test trajectories
    stride: int = 4  # frames between window starts
    frame_interval: float = 1.0  # generator time between frames (larger = harder, less persistent)
    data_seed: int = 0  # generator seed (the same data for every model seed)
    hid_s: int = 8  # encoder/decoder width per variable (paper: 32)
    n_layers: int = 2  # encoder/decoder conv layers N_S (paper: 2 at 5.625 deg)
    d_model: int = 32  # per-variable translator width hid_T (paper: 256)
    heads: int = 4  # variable-attention heads (paper: 8)
    n_blocks: int = 2  # translator blocks N_T (paper: 8)
    translator: str = "conv"  # translator block: "conv" (light) or "tau" (TAU block, as in the paper's code)
    drop_path: float = 0.0  # stochastic depth in translator blocks (paper: 0.1)
    layout: str = "auto"  # per-variable conv layout: "grouped" | "modulelist" | "auto" (the faster one per device)
    stacked_hid_s: int = 16  # stacked encoder width (sees all variables at once)
    stacked_hid_t: int = 64  # stacked translator width
    stacked_blocks: int = 2  # stacked translator blocks
    wide_max_factor: float = 8.0  # stacked_wide: largest width multiplier tried when matching FLOPs
    momentum: float = 0.9  # EMA momentum of the frozen translator copy when none is swept (paper config: 0.9)
    momentums: tuple[float, ...] = (0.9,)  # met2net: candidate momentums, the best on validation is reported
    enc_momentum: float = 0.0  # encoder/decoder copies: 0 = hard copy (official HEAD), >0 = EMA (first commit)
    latent_weight: float = 1.0  # weight of the latent loss (official: 1:1)
    explicit_ae_epochs: int = 10  # pervar_explicit: epochs of autoencoder training before the translator stage
    arms: tuple[str, ...] = ARMS  # see labkit.experiments.met2net_arms.ARMS
    seeds: int = 5  # model seeds per arm (0 .. seeds-1)
    budget_factor: float = 2.0  # convergence check: seed 0 of every trained arm rerun at this x the budget (>= 2)
    epochs: int = 50  # maximum epochs (early stopping usually ends a run sooner)
    patience: int = 5  # epochs without a clear validation improvement before stopping
    lr_patience: int = 1  # the learning rate halves on the (lr_patience + 1)-th epoch without a clear improvement
    min_improvement: float = 0.01  # relative drop of validation MSE that counts as an improvement
    batch_size: int = 16  # windows per step (paper: 16)
    lr: float = 2e-3  # AdamW initial learning rate (paper: 1e-3 with a cosine schedule)
    weight_decay: float = 0.0  # AdamW weight decay
    lat_weighted: bool = False  # weight metrics by cos(latitude), treating rows as -90..90 deg
    max_steps: int | None = None  # cap on optimiser steps (smoke runs)
    device: str = "auto"  # "auto": CUDA when present
    threads: int = 1  # torch intra-op threads per worker (1 is fastest for small models on 2 shared cores)
    workers: int = 1  # processes training (arm, seed) jobs in parallel (2 on a 2-core machine)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        check_types(self)
        require_positive(self, "height", "width", "t_in", "t_out", "frames", "n_train", "n_val", "n_test", "stride",
                         "frame_interval", "hid_s", "n_layers", "d_model", "heads", "n_blocks", "stacked_hid_s",
                         "stacked_hid_t", "stacked_blocks", "seeds", "epochs", "patience", "lr_patience",
                         "batch_size", "lr", "explicit_ae_epochs", "max_steps", "threads", "workers")
        require_non_negative(self, "data_seed", "latent_weight", "weight_decay")
        require_within(self, "min_improvement", 0, 1, "[)")
        require_within(self, "budget_factor", 2, math.inf, "[)")
        require_within(self, "momentum", 0, 1)
        for m in self.momentums:
            if not 0 <= m <= 1:
                raise ValueError(f"parameter 'momentums' must hold values in [0, 1], got {m} in {self.momentums}")
        require_non_empty(self, "momentums")
        require_within(self, "enc_momentum", 0, 1)
        require_within(self, "drop_path", 0, 1, "[)")
        require_within(self, "wide_max_factor", 1, math.inf, "[)")
        require_non_empty(self, "arms")
        require_subset("arms", self.arms, ARMS)
        require_subset("variables", self.variables, ALL_VARIABLES)
        require_subset("translator", (self.translator,), ("conv", "tau"))
        require_subset("layout", (self.layout,), ("auto", "grouped", "modulelist"))
        if not 2 <= len(self.variables) <= len(ALL_VARIABLES) or len(set(self.variables)) != len(self.variables):
            raise ValueError(f"parameter 'variables' must name 2..{len(ALL_VARIABLES)} distinct variables, got "
                             f"{self.variables}")
        require_divisible(self, "d_model", "heads")
        for name in ("hid_s", "stacked_hid_s"):  # GroupNorm(2, hid) per variable
            if getattr(self, name) % 2:
                raise ValueError(f"parameter {name!r} must be even (GroupNorm splits it in 2), got "
                                 f"{getattr(self, name)}")
        scale = 2 ** (self.n_layers // 2)  # the encoder halves H and W at every second layer
        for name in ("height", "width"):
            if getattr(self, name) % scale:
                raise ValueError(f"parameter {name!r} must be divisible by {scale} (2^(n_layers // 2) with n_layers="
                                 f"{self.n_layers}), got {getattr(self, name)}")
        if self.frames < self.t_in + self.t_out:
            raise ValueError(f"parameter 'frames' must be >= t_in + t_out ({self.t_in} + {self.t_out}) for one "
                             f"window, got {self.frames}")
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "height": 8,
        "width": 16,
        "variables": ("u", "v", "T", "RH", "precip"),
        "t_in": 3,
        "t_out": 3,
        "frames": 20,
        "n_train": 3,
        "n_val": 1,
        "n_test": 1,
        "stride": 4,
        "hid_s": 4,
        "d_model": 8,
        "heads": 2,
        "n_blocks": 1,
        "stacked_hid_s": 8,
        "stacked_hid_t": 16,
        "stacked_blocks": 1,
        "wide_max_factor": 3.0,
        "momentums": (0.5, 0.9),
        "explicit_ae_epochs": 1,
        "seeds": 2,
        "epochs": 3,
        "patience": 2,
        "batch_size": 8,
        "progress": False,
    },
    "cpu": {"momentums": (0.9, 0.99), "workers": 2},
    "gpu": {
        "height": 32,
        "width": 64,
        "t_in": 12,
        "t_out": 12,
        "frames": 200,
        "n_train": 128,
        "n_val": 16,
        "n_test": 16,
        "stride": 4,
        "hid_s": 32,
        "d_model": 256,
        "heads": 8,
        "n_blocks": 8,
        "translator": "tau",
        "drop_path": 0.1,
        "stacked_hid_s": 64,
        "stacked_hid_t": 256,
        "stacked_blocks": 8,
        "momentums": (0.5, 0.9, 0.99),
        "epochs": 50,
        "patience": 6,
        "threads": 8,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


# --------------------------------------------------------------------------------------------------------- runs


@dataclass
class Results:
    """Tidy tables from :func:`run` plus the seed-0 models for figures and widgets."""

    metrics: pd.DataFrame  # seed, arm, variable, units, unit, mse, mae, rmse, skill  (units: physical | normalised)
    lead: pd.DataFrame  # seed, arm, variable, lead, mse_z, mse_phys
    history: pd.DataFrame  # seed, arm, step, epoch, rec, latent, val_mse_z, ema_gap
    attention: pd.DataFrame  # seed, arm, query, key, weight (test-set mean over blocks and heads)
    cost: pd.DataFrame  # arm, params, forward_flops, seconds (mean over seeds), best_epoch, epochs_run
    scores: pd.DataFrame  # arm, seed, mse_z, mse_<variable>, skill_vs_persistence, val_mse_z
    sweep: pd.DataFrame  # met2net momentum sweep: momentum, seed, split (val | test), mse_z, selected
    claims: pd.DataFrame  # labkit.protocol.claims_table: claim, role, effect [interval], tolerance, verdicts, rule
    sanity: pd.DataFrame  # arm, converged (at the longer budget), budget_1x, budget_long, beats_trivial, flags
    budget: pd.DataFrame  # arm, seed, budget, val_mse_z at 1x and longer, improvement (%), converged, epochs, seconds
    models: dict[str, nn.Module]  # seed-0 models by arm
    data: FieldData  # the splits used


def _metric_rows(seed: int, arm: str, scores: dict[str, Any], data: FieldData) -> list[dict[str, Any]]:
    """Rows of ``Results.metrics``: per variable, test MSE, MAE and RMSE in physical units and in z-units."""
    rows = []
    for units, mse, mae in (
        ("physical", scores["mse_phys"], scores["mae_phys"]),
        ("normalised", scores["mse_z"], scores["mae_z"]),
    ):
        for v, name in enumerate(data.variables):
            m = float(mse[:, v].mean())
            rows.append({"seed": seed, "arm": arm, "variable": name, "units": units,
                         "unit": data.units[v] if units == "physical" else "z", "mse": m,
                         "mae": float(mae[:, v].mean()), "rmse": math.sqrt(m)})
    return rows


def _lead_rows(seed: int, arm: str, scores: dict[str, Any], data: FieldData, t_out: int) -> list[dict[str, Any]]:
    """Rows of ``Results.lead``: test MSE per variable and lead time, in z-units and physical units."""
    return [
        {"seed": seed, "arm": arm, "variable": name, "lead": lead + 1, "mse_z": float(scores["mse_z"][lead, v]),
         "mse_phys": float(scores["mse_phys"][lead, v])}
        for v, name in enumerate(data.variables)
        for lead in range(t_out)
    ]


def _attention_rows(seed: int, arm: str, attention: np.ndarray | None, data: FieldData) -> list[dict[str, Any]]:
    """Rows of ``Results.attention``: the test-set mean variable attention (query x key); none for arms without."""
    if attention is None:
        return []
    return [
        {"seed": seed, "arm": arm, "query": kq, "key": kk, "weight": float(attention[q, k])}
        for q, kq in enumerate(data.variables)
        for k, kk in enumerate(data.variables)
    ]


@dataclass
class _Job:
    """One trained and scored (arm, seed, momentum): everything :func:`run` keeps of it."""

    arm: str
    seed: int
    momentum: float | None
    metric_rows: list[dict[str, Any]]
    lead_rows: list[dict[str, Any]]
    attention_rows: list[dict[str, Any]]
    history: pd.DataFrame
    cost: dict[str, Any]
    val_mse_z: float
    test_mse_z: float
    state: dict[str, torch.Tensor] | None  # seed 0 at budget 1 only
    budget: float = 1.0  # x the configured training budget (see longer_budget)


def _run_job(args: tuple[Config, str, int, float | None, float]) -> _Job:
    """Train one arm for one seed (and momentum) at ``budget`` x the configured budget, score it on validation and
    test (a worker process entry point)."""
    cfg, arm, seed, momentum, budget = args
    data = load_data(cfg)
    cfg = cfg if budget == 1 else longer_budget(cfg, budget)
    device = profile.resolve_device(cfg.device)
    result: ArmRun = train_arm(arm, cfg, seed, data, momentum)
    val = float(evaluate(result.model, data, "val", cfg, device)["mse_z"].mean())
    scores = evaluate(result.model, data, "test", cfg, device)
    cost = {"seed": seed, "arm": arm, "params": result.params, "seconds": result.seconds,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    state = {k: v.cpu() for k, v in result.model.state_dict().items()} if seed == 0 and budget == 1 else None
    return _Job(arm, seed, momentum, _metric_rows(seed, arm, scores, data),
                _lead_rows(seed, arm, scores, data, cfg.t_out), _attention_rows(seed, arm, scores["attention"], data),
                result.history.assign(seed=seed, arm=arm), cost, val, float(scores["mse_z"].mean()), state, budget)


def _run_jobs(cfg: Config, jobs: list[tuple[str, int, float | None, float]], desc: str) -> list[_Job]:
    """Run ``jobs`` (arm, seed, momentum, budget) in order, in ``cfg.workers`` spawned processes when more than one
    (results in job order)."""
    args = [(dataclasses.replace(cfg, progress=False) if cfg.workers > 1 else cfg, *job) for job in jobs]
    if cfg.workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=context) as pool:
            return list(tqdm(pool.map(_run_job, args), total=len(jobs), desc=desc, disable=not cfg.progress))
    return [_run_job(a) for a in tqdm(args, desc=desc, disable=not cfg.progress)]


def _momentum_sweep(jobs: list[_Job]) -> tuple[pd.DataFrame, float]:
    """The met2net momentum sweep as a table, and the momentum with the best mean validation MSE."""
    rows = [{"momentum": j.momentum, "seed": j.seed, "split": split, "mse_z": value}
            for j in jobs for split, value in (("val", j.val_mse_z), ("test", j.test_mse_z))]
    sweep = pd.DataFrame(rows)
    chosen = float(protocol.select_best(sweep[sweep["split"] == "val"], "momentum", "mse_z")["momentum"])
    return sweep.assign(selected=sweep["momentum"] == chosen), chosen


def _budget_table(done: list[_Job]) -> pd.DataFrame:
    """The budget check's runs: arm, seed, budget, validation MSE (what the check judges), epochs and seconds, for
    every (arm, seed) that also ran at a longer budget."""
    longer = {(j.arm, j.seed) for j in done if j.budget > 1}
    rows = [{"arm": j.arm, "seed": j.seed, "budget": j.budget, "val_mse_z": j.val_mse_z,
             "best_epoch": j.cost["best_epoch"], "epochs_run": j.cost["epochs_run"], "seconds": j.cost["seconds"]}
            for j in done if (j.arm, j.seed) in longer]
    return pd.DataFrame(rows, columns=["arm", "seed", "budget", "val_mse_z", "best_epoch", "epochs_run", "seconds"])


def _budget_report(converged: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The budget check (:func:`labkit.protocol.budget_check` rows) with the epochs each run took and the seconds
    the longer run cost."""
    short = runs[runs["budget"] == 1].set_index(["arm", "seed"])
    long = runs[runs["budget"] > 1].set_index(["arm", "seed"])
    extra = pd.DataFrame({"best_epoch_1x": short["best_epoch"], "best_epoch_long": long["best_epoch"],
                          "epochs_run_1x": short["epochs_run"], "epochs_run_long": long["epochs_run"],
                          "seconds_long": long["seconds"]})
    return converged.merge(extra.rename_axis(["arm", "seed"]).reset_index(), on=["arm", "seed"], how="left")


def run(cfg: Config) -> Results:
    """Every arm x seed: train, select on validation, score on test, judge the claims. Returns tidy tables.

    ``met2net`` runs once per momentum in ``cfg.momentums``; the one with the best mean validation MSE is reported
    as ``met2net`` (and used by ``met2net_noattn``), the others stay in ``Results.sweep``. The first seed of every
    trained arm (met2net at the chosen momentum) also runs at ``cfg.budget_factor`` x the budget for the
    convergence check; those runs feed only ``Results.budget`` and the sanity table.
    """
    data = load_data(cfg)
    n_vars = len(data.variables)
    seeds = range(cfg.seeds)
    long = cfg.budget_factor
    first = [a for a in cfg.arms if a != "met2net_noattn"]
    jobs = [(arm, s, m, 1.0) for arm in first for s in seeds
            for m in (cfg.momentums if arm == "met2net" else (None,))]
    jobs += [(arm, seeds[0], None, long) for arm in first if arm not in (*TRIVIAL, "met2net")]
    jobs.sort(key=lambda j: (ARMS.index(j[0]), j[3]), reverse=True)  # slow arms and long runs first: load balance
    done = _run_jobs(cfg, jobs, "met2net arms x seeds")
    sweep, momentum = pd.DataFrame(columns=["momentum", "seed", "split", "mse_z", "selected"]), cfg.momentum
    if "met2net" in cfg.arms:
        sweep, momentum = _momentum_sweep([j for j in done if j.arm == "met2net"])
        done = [j for j in done if j.arm != "met2net" or j.momentum == momentum]
    second = [(arm, seeds[0], momentum, long) for arm in ("met2net", "met2net_noattn") if arm in cfg.arms]
    second += [("met2net_noattn", s, momentum, 1.0) for s in seeds if "met2net_noattn" in cfg.arms]
    if second:
        done += _run_jobs(cfg, second, "met2net at the chosen momentum")
    budget_runs = _budget_table(done)
    done = [j for j in done if j.budget == 1]
    done.sort(key=lambda j: (j.seed, cfg.arms.index(j.arm)))
    flops = {arm: forward_flops(build_model(arm, cfg, n_vars, data), cfg, n_vars) for arm in cfg.arms}
    metrics = pd.DataFrame([r for j in done for r in j.metric_rows])
    persistence = metrics[metrics["arm"] == "persistence"].set_index(["seed", "variable", "units"])["mse"]
    if not persistence.empty:
        key = pd.MultiIndex.from_frame(metrics[["seed", "variable", "units"]])
        metrics["skill"] = 1 - metrics["mse"].to_numpy() / persistence.reindex(key).to_numpy()
    history = pd.concat([j.history for j in done], ignore_index=True)
    cost = (
        pd.DataFrame([{**j.cost, "forward_flops": flops[j.arm]} for j in done])
        .groupby("arm", sort=False)
        .agg(params=("params", "first"), forward_flops=("forward_flops", "first"), seconds=("seconds", "mean"),
             best_epoch=("best_epoch", "mean"), epochs_run=("epochs_run", "mean"))
        .reset_index()
    )
    scores = met2net_claims.per_seed_scores(metrics, history)
    claims, checks, converged = met2net_claims.verdicts(scores, budget_runs)
    models = {}
    for j in done:
        if j.state is not None:
            model = build_model(j.arm, cfg, n_vars, data)
            if j.arm.startswith("met2net"):
                model = ImplicitTwoStage(model.encoder, model.translator, model.decoder, momentum)
            model.load_state_dict(j.state)
            models[j.arm] = model.to(profile.resolve_device(cfg.device)).eval()
    return Results(metrics, pd.DataFrame([r for j in done for r in j.lead_rows]), history,
                   pd.DataFrame([r for j in done for r in j.attention_rows]), cost, scores, sweep, claims, checks,
                   _budget_report(converged, budget_runs), models, data)


def relative_change(scores: pd.DataFrame, arm: str = "met2net", baseline: str = "stacked_wide") -> pd.DataFrame:
    """Per variable: % MSE change of ``arm`` vs ``baseline`` (fixed in advance), paired by seed with a Student-t
    interval, next to the paper's number where it reports one."""
    rows = []
    for col in [c for c in scores.columns if c.startswith("mse_") and c != "mse_z"]:
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
    ok = "every trained arm converged at the longer budget; every arm beat persistence"
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


def sample_forecasts(results: Results, cfg: Config, n_samples: int = 4) -> dict[str, np.ndarray]:
    """Truth and each seed-0 model's forecasts for a few test windows, in physical units (``S x t x V x H x W``)."""
    device = profile.resolve_device(cfg.device)
    data = results.data
    idx = np.linspace(0, len(data.windows["test"]) - 1, n_samples).astype(int)
    x, y = batch(data, "test", idx, cfg, device)
    out = {"truth": data.normalizer.denormalize(y.cpu()).numpy()}
    with torch.no_grad():
        for arm, model in results.models.items():
            model.eval()
            out[arm] = data.normalizer.denormalize(forecast(model, x)[0].float().cpu()).numpy()
    return out
