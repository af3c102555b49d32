"""Met²Net (Li et al., ICCV 2025, arXiv 2507.17189): per-variable encoders + variable attention + implicit two-stage.

Arms, all with the same optimiser, steps, data and seeds, on the locally generated u, v, z, T, RH fields
(:mod:`labkit.data.fields`):

- ``persistence``: the last input frame repeated;
- ``stacked``: SimVP-like, variables stacked as channels, end-to-end;
- ``stacked_wide``: the stacked model widened until its forward FLOPs reach Met²Net's (capacity control);
- ``pervar_e2e``: Met²Net's network (per-variable enc/dec + variable attention) trained end-to-end;
- ``met2net``: the same network trained with the implicit two-stage scheme (:class:`labkit.stage.ImplicitTwoStage`);
- ``pervar_explicit``: the same network trained explicitly in two stages (autoencoder, then latent translator).

Checkpoints are selected on the validation split (mean normalised MSE), never on test. Metrics are per variable,
in the generator's physical units and in z-units; RMSE = sqrt(pooled MSE), not a mean of per-batch RMSEs.

This module holds the config, presets, :func:`run` and the comparison with the paper; the fields, windows and
scoring live in :mod:`labkit.experiments.met2net_data`, the arms' models and training in
:mod:`labkit.experiments.met2net_arms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import profile
from labkit.experiments import (
    check_types,
    require_device,
    require_divisible,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_subset,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.experiments.met2net_arms import ARMS, ArmRun, build_model, forward_flops, train_arm
from labkit.experiments.met2net_data import FieldData, batch, evaluate, forecast, load_data

PAPER_RELATIVE_MSE = {"T": -28.82, "RH": -23.39}  # % MSE change reported in the abstract (temperature, humidity)


@dataclass
class Config:
    height: int = 16  # grid rows ("latitude"); the paper uses 32 (5.625 deg)
    width: int = 32  # grid columns; the paper uses 64
    t_in: int = 6  # input frames (paper: 12)
    t_out: int = 6  # forecast frames (paper: 12)
    frames: int = 100  # frames per trajectory after spin-up
    n_train: int = 12  # training trajectories
    n_val: int = 2  # validation trajectories (checkpoint selection only)
    n_test: int = 4  # test trajectories
    stride: int = 2  # frames between window starts
    frame_interval: float = 1.0  # generator time between frames (larger = harder, less persistent)
    data_seed: int = 0  # generator seed (the same data for every model seed)
    hid_s: int = 8  # encoder/decoder width per variable (paper: 32)
    n_layers: int = 2  # encoder/decoder conv layers N_S (paper: 2 at 5.625 deg)
    d_model: int = 32  # per-variable translator width hid_T (paper: 256)
    heads: int = 4  # variable-attention heads (paper: 8)
    n_blocks: int = 2  # translator blocks N_T (paper: 8)
    stacked_hid_s: int = 16  # stacked encoder width (sees all variables at once)
    stacked_hid_t: int = 64  # stacked translator width
    stacked_blocks: int = 2  # stacked translator blocks
    wide_max_factor: float = 8.0  # stacked_wide: largest width multiplier tried when matching FLOPs
    momentum: float = 0.9  # Met²Net EMA momentum of the frozen translator copy (paper config: 0.9)
    enc_momentum: float = 0.0  # encoder/decoder copies: 0 = hard copy (official HEAD), >0 = EMA (first commit)
    latent_weight: float = 1.0  # weight of the latent loss (official: 1:1)
    explicit_ae_fraction: float = 0.5  # pervar_explicit: share of steps spent on the autoencoder stage
    arms: tuple[str, ...] = ("persistence", "stacked", "pervar_e2e", "met2net", "stacked_wide")  # see ARMS
    seeds: int = 3  # model seeds per arm (0 .. seeds-1)
    epochs: int = 8  # passes over the training windows
    batch_size: int = 16  # windows per step (paper: 16)
    lr: float = 1e-3  # AdamW peak learning rate (paper: 1e-3, cosine)
    weight_decay: float = 0.0  # AdamW weight decay
    eval_every: int = 1  # epochs between validation checks for checkpoint selection
    lat_weighted: bool = False  # weight metrics by cos(latitude), treating rows as -90..90 deg
    max_steps: int | None = None  # cap on optimiser steps (smoke runs)
    device: str = "auto"  # "auto": CUDA when present
    threads: int = 1  # torch intra-op threads (1 is fastest for small models on 2 shared cores)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        check_types(self)
        require_positive(self, "height", "width", "t_in", "t_out", "frames", "n_train", "n_val", "n_test", "stride",
                         "frame_interval", "hid_s", "n_layers", "d_model", "heads", "n_blocks", "stacked_hid_s",
                         "stacked_hid_t", "stacked_blocks", "seeds", "epochs", "batch_size", "lr", "eval_every",
                         "max_steps", "threads")
        require_non_negative(self, "data_seed", "latent_weight", "weight_decay")
        require_within(self, "momentum", 0, 1)
        require_within(self, "enc_momentum", 0, 1)
        require_within(self, "explicit_ae_fraction", 0, 1, "()")
        require_within(self, "wide_max_factor", 1, math.inf, "[)")
        require_non_empty(self, "arms")
        require_subset("arms", self.arms, ARMS)
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
        "seeds": 2,
        "epochs": 1,
        "batch_size": 8,
        "progress": False,
    },
    "cpu": {"seeds": 3, "epochs": 6, "stride": 3},
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
        "stacked_hid_s": 64,
        "stacked_hid_t": 256,
        "stacked_blocks": 8,
        "seeds": 5,
        "epochs": 30,
        "batch_size": 16,
        "arms": ARMS,
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

    metrics: pd.DataFrame  # seed, arm, variable, units, mse, mae, rmse  (units: "physical" | "normalised")
    lead: pd.DataFrame  # seed, arm, variable, lead, mse_z, mse_phys
    history: pd.DataFrame  # seed, arm, step, epoch, rec, latent, val_mse_z, ema_gap
    attention: pd.DataFrame  # seed, arm, query, key, weight (test-set mean over blocks and heads)
    cost: pd.DataFrame  # arm, params, forward_flops, seconds (mean over seeds), best_epoch
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
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "variable": name,
                    "units": units,
                    "unit": data.units[v] if units == "physical" else "z",
                    "mse": m,
                    "mae": float(mae[:, v].mean()),
                    "rmse": math.sqrt(m),
                }
            )
    return rows


def _lead_rows(seed: int, arm: str, scores: dict[str, Any], data: FieldData, t_out: int) -> list[dict[str, Any]]:
    """Rows of ``Results.lead``: test MSE per variable and lead time, in z-units and physical units."""
    return [
        {
            "seed": seed,
            "arm": arm,
            "variable": name,
            "lead": lead + 1,
            "mse_z": float(scores["mse_z"][lead, v]),
            "mse_phys": float(scores["mse_phys"][lead, v]),
        }
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


def _cost_row(seed: int, result: ArmRun, flops: int) -> dict[str, Any]:
    """One arm and seed's parameters, forward FLOPs, training seconds and selected epoch."""
    return {
        "seed": seed,
        "arm": result.arm,
        "params": result.params,
        "forward_flops": flops,
        "seconds": result.seconds,
        "best_epoch": result.best_epoch,
    }


def run(cfg: Config) -> Results:
    """Every arm x seed: train, select on validation, score on test. Returns tidy tables."""
    data = load_data(cfg)
    n_vars = len(data.variables)
    device = profile.resolve_device(cfg.device)
    metric_rows, lead_rows, hist, attn_rows, cost_rows = [], [], [], [], []
    models: dict[str, nn.Module] = {}
    flops = {arm: forward_flops(build_model(arm, cfg, n_vars), cfg, n_vars) for arm in cfg.arms}
    for seed in range(cfg.seeds):
        for arm in cfg.arms:
            result = train_arm(arm, cfg, seed, data)
            scores = evaluate(result.model, data, "test", cfg, device)
            metric_rows += _metric_rows(seed, arm, scores, data)
            lead_rows += _lead_rows(seed, arm, scores, data, cfg.t_out)
            hist.append(result.history.assign(seed=seed, arm=arm))
            attn_rows += _attention_rows(seed, arm, scores["attention"], data)
            cost_rows.append(_cost_row(seed, result, flops[arm]))
            if seed == 0:
                models[arm] = result.model
    cost = (
        pd.DataFrame(cost_rows)
        .groupby("arm", sort=False)
        .agg(
            params=("params", "first"),
            forward_flops=("forward_flops", "first"),
            seconds=("seconds", "mean"),
            best_epoch=("best_epoch", "mean"),
        )
        .reset_index()
    )
    return Results(
        pd.DataFrame(metric_rows),
        pd.DataFrame(lead_rows),
        pd.concat(hist, ignore_index=True),
        pd.DataFrame(attn_rows),
        cost,
        models,
        data,
    )


def relative_change(
    metrics: pd.DataFrame,
    arm: str = "met2net",
    units: str = "physical",
    baselines: tuple[str, ...] = ("stacked", "stacked_wide", "pervar_e2e"),
) -> pd.DataFrame:
    """Per variable: % MSE change of ``arm`` vs the best baseline (lowest seed-mean MSE), next to the paper's."""
    df = metrics[metrics["units"] == units]
    mean = df.groupby(["variable", "arm"], sort=False)["mse"].mean().unstack("arm")
    present = [b for b in baselines if b in mean.columns]
    if arm not in mean.columns or not present:
        raise ValueError(f"need arm {arm!r} and one of {baselines}; have {list(mean.columns)}")
    rows = []
    for var, row in mean.iterrows():
        best = min(present, key=lambda b: row[b])
        rows.append(
            {
                "variable": var,
                "arm": arm,
                "best_baseline": best,
                "baseline_mse": row[best],
                "arm_mse": row[arm],
                "relative_change_pct": 100 * (row[arm] / row[best] - 1),
                "vs_stacked_pct": 100 * (row[arm] / row["stacked"] - 1) if "stacked" in mean else np.nan,
                "paper_pct": PAPER_RELATIVE_MSE.get(var, np.nan),
            }
        )
    return pd.DataFrame(rows)


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
