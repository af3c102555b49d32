"""The forecasters of Met²Net's arms: trivial forecasts, the stacked SimVP-like model (also widened until its FLOPs
match Met²Net's) and Met²Net's per-variable network (:mod:`labkit.models.forecaster`)."""

from __future__ import annotations

import torch
from torch import nn

from labkit import profile
from labkit.experiments.met2net.config import ARMS, PER_VARIABLE, Config
from labkit.experiments.met2net.data import FieldData
from labkit.models.forecaster import Persistence, PerVariableForecaster, StackedForecaster


class Climatology(nn.Module):
    """The training-set mean of every variable at every grid point, forecast for every lead time (z-units)."""

    def __init__(self, mean_field: torch.Tensor, t_in: int, t_out: int) -> None:
        super().__init__()
        if mean_field.dim() != 3:
            raise ValueError(f"expected a V x H x W mean field, got shape {tuple(mean_field.shape)}")
        self.register_buffer("mean_field", mean_field)
        self.t_in, self.t_out = t_in, t_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x.dim() != 5 or x.shape[2:] != self.mean_field.shape:
            raise ValueError(f"expected B x T x {tuple(self.mean_field.shape)}, got {tuple(x.shape)}")
        return self.mean_field.expand(x.shape[0], self.t_out, *self.mean_field.shape), None


def build_model(arm: str, cfg: Config, n_vars: int, data: FieldData | None = None) -> nn.Module:
    """The forecaster for ``arm`` (``stacked_wide`` is sized by :func:`wide_factor`; ``climatology`` needs ``data``)."""
    if arm == "persistence":
        return Persistence(n_vars, cfg.t_in, cfg.t_out)
    if arm == "climatology":
        if data is None:
            raise ValueError("the climatology arm is built from the training split: pass data")
        return Climatology(data.splits["train"].mean(dim=(0, 1)), cfg.t_in, cfg.t_out)
    if arm in PER_VARIABLE:
        return PerVariableForecaster(
            n_vars, cfg.t_in, cfg.t_out, cfg.hid_s, cfg.n_layers, cfg.d_model, cfg.heads, cfg.n_blocks,
            layout=cfg.layout, ffn=cfg.translator, drop_path=cfg.drop_path,
            mixing="none" if arm == "met2net_noattn" else "attention",
        )
    if arm == "stacked":
        return _stacked(cfg, n_vars, 1.0)
    if arm == "stacked_wide":
        return _stacked(cfg, n_vars, wide_factor(cfg, n_vars))
    raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")


def _stacked(cfg: Config, n_vars: int, factor: float) -> StackedForecaster:
    hid = max(2, 2 * round(cfg.stacked_hid_s * factor / 2))
    return StackedForecaster(
        n_vars, cfg.t_in, cfg.t_out, hid, cfg.n_layers, max(4, round(cfg.stacked_hid_t * factor)), cfg.stacked_blocks,
        block=cfg.translator, drop_path=cfg.drop_path,
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
