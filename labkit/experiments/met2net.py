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
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit import profile, seed_everything
from labkit.data.fields import FieldPhysics, Normalizer, check_fields, generate
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
from labkit.models.forecaster import Persistence, PerVariableForecaster, StackedForecaster, count_parameters
from labkit.stage import ImplicitTwoStage, explicit_two_stage_losses, freeze_schedule, parameter_distance

ARMS = ("persistence", "stacked", "stacked_wide", "pervar_e2e", "met2net", "pervar_explicit")
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


# ------------------------------------------------------------------------------------------------------------ data


@dataclass
class FieldData:
    """Normalised splits (torch, ``traj x frame x V x H x W``), the normalizer and window starts per split."""

    splits: dict[str, torch.Tensor]  # z-units
    normalizer: Normalizer  # train-split statistics
    variables: tuple[str, ...]  # names
    units: tuple[str, ...]  # physical units
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # (n_windows, 2): trajectory, first frame


def load_data(cfg: Config) -> FieldData:
    """Generate (or read from the cache) the fields, split by trajectory, normalise with training statistics."""
    n_traj = cfg.n_train + cfg.n_val + cfg.n_test
    fields_ = generate(
        n_traj,
        cfg.frames,
        cfg.height,
        cfg.width,
        cfg.data_seed,
        physics=FieldPhysics(frame_interval=cfg.frame_interval),
        progress=cfg.progress,
    )
    check_fields(fields_.data, n_vars=len(fields_.variables), t_in=cfg.t_in, t_out=cfg.t_out)
    parts = fields_.split(cfg.n_val, cfg.n_test)
    if cfg.n_val < 1:
        raise ValueError(f"n_val must be >= 1: checkpoints are selected on validation, never on test; got {cfg.n_val}")
    norm = Normalizer.fit(parts["train"])
    splits = {k: torch.from_numpy(norm.normalize(v).astype(np.float32)) for k, v in parts.items()}
    span = cfg.t_in + cfg.t_out
    windows = {}
    for k, v in splits.items():
        starts = np.arange(0, v.shape[1] - span + 1, cfg.stride)
        windows[k] = np.stack(np.meshgrid(np.arange(v.shape[0]), starts, indexing="ij"), -1).reshape(-1, 2)
    return FieldData(splits, norm, fields_.variables, fields_.units, windows)


def batch(data: FieldData, split: str, idx: np.ndarray, cfg: Config, device: torch.device):
    """Inputs ``x`` (B x t_in x V x H x W) and targets ``y`` (B x t_out x ...) for window indices ``idx``."""
    w = data.windows[split][idx]
    frames = torch.as_tensor(w[:, 1:2] + np.arange(cfg.t_in + cfg.t_out)[None])
    seq = data.splits[split][torch.as_tensor(w[:, 0:1]), frames].to(device)
    return seq[:, : cfg.t_in], seq[:, cfg.t_in :]


def latitude_weights(height: int) -> torch.Tensor:
    """cos(latitude) for rows at cell centres from -90 to 90 deg, normalised to mean 1 (WeatherBench convention)."""
    lat = torch.linspace(-90 + 90 / height, 90 - 90 / height, height)
    w = torch.cos(torch.deg2rad(lat))
    return w / w.mean()


# ---------------------------------------------------------------------------------------------------------- models


def build_model(arm: str, cfg: Config, n_vars: int) -> nn.Module:
    """The forecaster for ``arm`` (``stacked_wide`` is sized by :func:`wide_factor`)."""
    if arm == "persistence":
        return Persistence(n_vars, cfg.t_in, cfg.t_out)
    if arm in ("pervar_e2e", "met2net", "pervar_explicit"):
        return PerVariableForecaster(
            n_vars, cfg.t_in, cfg.t_out, cfg.hid_s, cfg.n_layers, cfg.d_model, cfg.heads, cfg.n_blocks
        )
    if arm == "stacked":
        return _stacked(cfg, n_vars, 1.0)
    if arm == "stacked_wide":
        return _stacked(cfg, n_vars, wide_factor(cfg, n_vars))
    raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")


def _stacked(cfg: Config, n_vars: int, factor: float) -> StackedForecaster:
    hid = max(2, 2 * round(cfg.stacked_hid_s * factor / 2))
    return StackedForecaster(
        n_vars, cfg.t_in, cfg.t_out, hid, cfg.n_layers, max(4, round(cfg.stacked_hid_t * factor)), cfg.stacked_blocks
    )


def forward_flops(model: nn.Module, cfg: Config, n_vars: int) -> int:
    """Forward FLOPs for one window (2 per multiply-add, counted by :func:`labkit.profile.count_flops`)."""
    x = torch.zeros(1, cfg.t_in, n_vars, cfg.height, cfg.width)
    with torch.no_grad():
        return profile.count_flops(lambda: model(x))


def wide_factor(cfg: Config, n_vars: int) -> float:
    """The smallest width multiplier (steps of 0.25) at which the stacked model's FLOPs reach Met²Net's."""
    target = forward_flops(build_model("met2net", cfg, n_vars), cfg, n_vars)
    factor = 1.0
    while factor < cfg.wide_max_factor and forward_flops(_stacked(cfg, n_vars, factor), cfg, n_vars) < target:
        factor += 0.25
    return factor


# ---------------------------------------------------------------------------------------------------- evaluation


def _predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(model, ImplicitTwoStage):  # the reported forecast dec_k(trans(enc_k(x)))
        z, attn = model.translator(model.encoder_k(x))
        return model.decoder_k(z), attn
    return model(x)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: FieldData, split: str, cfg: Config, device: torch.device, max_windows: int | None = None
) -> dict[str, Any]:
    """Pooled per-(lead, variable) squared and absolute errors in z-units and physical units, and mean attention."""
    model.eval()
    n = len(data.windows[split]) if max_windows is None else min(max_windows, len(data.windows[split]))
    n_vars = len(data.variables)
    sq = torch.zeros(cfg.t_out, n_vars, dtype=torch.float64)
    ab = torch.zeros_like(sq)
    weights = latitude_weights(cfg.height).to(device)[:, None] if cfg.lat_weighted else None
    attn_sum, attn_n = None, 0
    for start in range(0, n, 64):
        idx = np.arange(start, min(n, start + 64))
        x, y = batch(data, split, idx, cfg, device)
        pred, attn = _predict(model, x)
        err = pred.float() - y
        e2, e1 = err.pow(2), err.abs()
        if weights is not None:
            e2, e1 = e2 * weights, e1 * weights
        sq += e2.mean(dim=(-1, -2)).sum(0).double().cpu()
        ab += e1.mean(dim=(-1, -2)).sum(0).double().cpu()
        if attn is not None:
            a = attn.float().mean(dim=(1, 2)).sum(0).cpu()  # average blocks and heads
            attn_sum = a if attn_sum is None else attn_sum + a
            attn_n += attn.shape[0]
    std = torch.as_tensor(data.normalizer.std, dtype=torch.float64)
    return {
        "mse_z": sq / n,
        "mae_z": ab / n,
        "mse_phys": sq / n * std**2,
        "mae_phys": ab / n * std,
        "attention": None if attn_sum is None else (attn_sum / attn_n).numpy(),
    }


# ------------------------------------------------------------------------------------------------------ training


@dataclass
class ArmRun:
    """A trained arm: the model (validation-best weights), its training history and its cost."""

    arm: str
    seed: int
    model: nn.Module
    history: pd.DataFrame  # step, epoch, rec, latent, val_mse_z, ema_gap
    best_epoch: int
    params: int
    seconds: float


def train_arm(arm: str, cfg: Config, seed: int, data: FieldData) -> ArmRun:
    """Train one arm with AdamW + cosine schedule; keep the weights with the best validation MSE (z-units)."""
    device = profile.resolve_device(cfg.device)
    seed_everything(seed, threads=cfg.threads)
    n_vars = len(data.variables)
    net = build_model(arm, cfg, n_vars).to(device)
    model: nn.Module = net
    if arm == "met2net":
        model = ImplicitTwoStage(
            net.encoder, net.translator, net.decoder, cfg.momentum, cfg.enc_momentum, cfg.latent_weight
        ).to(device)
    params = count_parameters(net)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if arm == "persistence":
        val = evaluate(model, data, "val", cfg, device)["mse_z"].mean().item()
        rows.append({"step": 0, "epoch": 0, "val_mse_z": val})
        return ArmRun(arm, seed, model, pd.DataFrame(rows), 0, 0, time.perf_counter() - t0)
    n_win = len(data.windows["train"])
    steps_per_epoch = max(1, n_win // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    ae_steps = int(cfg.explicit_ae_fraction * total)
    groups = (
        {"autoencoder": nn.ModuleList([net.encoder, net.decoder]), "translator": net.translator}
        if arm == "pervar_explicit"
        else {}
    )
    best, best_state, best_epoch, step = math.inf, None, 0, 0
    bar = tqdm(total=total, desc=f"{arm} seed {seed}", disable=not cfg.progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n_win, generator=gen).numpy()
        for i in range(steps_per_epoch):
            if step >= total:
                break
            x, y = batch(data, "train", order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, device)
            if arm == "met2net":
                losses = model.losses(x, y)
            elif arm == "pervar_explicit":
                phase = "autoencoder" if step < ae_steps else "translator"
                freeze_schedule(groups, {"autoencoder": (0, ae_steps), "translator": (ae_steps, None)}, step)
                losses = explicit_two_stage_losses(net.encoder, net.translator, net.decoder, x, y, phase)
            else:
                rec = F.mse_loss(model(x)[0], y)
                losses = {"rec": rec, "loss": rec}
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            if arm == "met2net":
                model.after_step()  # EMA / hard copy after the optimiser step
            step += 1
            bar.update(1)
            rows.append(
                {"step": step, "epoch": epoch, **{k: float(v.detach()) for k, v in losses.items() if k != "loss"}}
            )
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or step >= total:
            val = evaluate(model, data, "val", cfg, device)["mse_z"].mean().item()
            rows[-1]["val_mse_z"] = val
            if arm == "met2net":
                rows[-1]["ema_gap"] = parameter_distance(model.translator_k, model.translator)
            if val < best and (arm != "pervar_explicit" or step > ae_steps):
                best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
        if step >= total:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return ArmRun(arm, seed, model, pd.DataFrame(rows), best_epoch, params, time.perf_counter() - t0)


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
            for units, mse, mae in (
                ("physical", scores["mse_phys"], scores["mae_phys"]),
                ("normalised", scores["mse_z"], scores["mae_z"]),
            ):
                for v, name in enumerate(data.variables):
                    m = float(mse[:, v].mean())
                    metric_rows.append(
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
            for v, name in enumerate(data.variables):
                for lead in range(cfg.t_out):
                    lead_rows.append(
                        {
                            "seed": seed,
                            "arm": arm,
                            "variable": name,
                            "lead": lead + 1,
                            "mse_z": float(scores["mse_z"][lead, v]),
                            "mse_phys": float(scores["mse_phys"][lead, v]),
                        }
                    )
            hist.append(result.history.assign(seed=seed, arm=arm))
            if scores["attention"] is not None:
                for q, kq in enumerate(data.variables):
                    for k, kk in enumerate(data.variables):
                        attn_rows.append(
                            {
                                "seed": seed,
                                "arm": arm,
                                "query": kq,
                                "key": kk,
                                "weight": float(scores["attention"][q, k]),
                            }
                        )
            cost_rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "params": result.params,
                    "forward_flops": flops[arm],
                    "seconds": result.seconds,
                    "best_epoch": result.best_epoch,
                }
            )
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
            out[arm] = data.normalizer.denormalize(_predict(model, x)[0].float().cpu()).numpy()
    return out
