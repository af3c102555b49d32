"""The fields, windows and scores of the Met²Net experiment (:mod:`labkit.experiments.met2net`).

Splits are whole trajectories of the locally generated fields (:mod:`labkit.data.fields`; the variables are
``cfg.variables``), normalised with training statistics; every model seed draws its own fields (:func:`data_seed`).
The cpu selection includes ``sst``, a slab heated by ``flux``, whose next frame needs the flux of its current frame,
which no frame of sst shows: in the default fields each variable's own history already reveals its advection (removing
attention cost the earlier cpu report only ~5 %), so sst is what lets cross-variable dependence matter.

Scores are pooled per (lead, variable) squared and absolute errors, in z-units and in the generator's physical units;
RMSE = sqrt(pooled MSE), not a mean of per-batch RMSEs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from labkit.data.fields import FieldPhysics, Normalizer, check_fields, generate
from labkit.experiments.met2net.config import Config
from labkit.stage import ImplicitTwoStage


@dataclass
class FieldData:
    """Normalised splits (torch, ``traj x frame x V x H x W``), the normalizer and window starts per split."""

    splits: dict[str, torch.Tensor]  # z-units
    normalizer: Normalizer  # train-split statistics
    variables: tuple[str, ...]  # names
    units: tuple[str, ...]  # physical units
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # (n_windows, 2): trajectory, first frame


def data_seed(cfg: Config, seed: int) -> int:
    """The generator seed of model seed ``seed``: ``cfg.data_seed + seed`` when ``cfg.vary_data`` (every seed draws
    its own trajectories, so intervals over seeds hold data noise), else ``cfg.data_seed``."""
    return cfg.data_seed + (seed if cfg.vary_data else 0)


def load_data(cfg: Config, progress: bool = False, seed: int = 0) -> FieldData:
    """Generate (or read from the cache) the fields of model seed ``seed`` (:func:`data_seed`), split by trajectory,
    normalise with training statistics (``progress``: a bar while generating)."""
    n_traj = cfg.n_train + cfg.n_val + cfg.n_test
    fields_ = generate(
        n_traj,
        cfg.frames,
        cfg.height,
        cfg.width,
        data_seed(cfg, seed),
        physics=FieldPhysics(frame_interval=cfg.frame_interval),
        variables=cfg.variables,
        progress=progress,
    )
    check_fields(fields_.data, n_vars=len(fields_.variables), t_in=cfg.t_in, t_out=cfg.t_out)
    parts = fields_.split(cfg.n_val, cfg.n_test)  # n_val >= 1 (a Count): checkpoints are selected on validation
    norm = Normalizer.fit(parts["train"])
    splits = {k: torch.from_numpy(norm.normalize(v).astype(np.float32)) for k, v in parts.items()}
    span = cfg.t_in + cfg.t_out
    windows = {}
    for k, v in splits.items():
        starts = np.arange(0, v.shape[1] - span + 1, cfg.stride)
        windows[k] = np.stack(np.meshgrid(np.arange(v.shape[0]), starts, indexing="ij"), -1).reshape(-1, 2)
    return FieldData(splits, norm, fields_.variables, fields_.units, windows)


def batch(
    data: FieldData, split: str, idx: np.ndarray, cfg: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
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


# ------------------------------------------------------------------------------------------------------- scoring
def forecast(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forecast of ``model`` for inputs ``x`` and its variable attention (None for models without one)."""
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
        pred, attn = forecast(model, x)
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
