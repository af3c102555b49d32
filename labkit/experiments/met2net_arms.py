"""The arms of the Met²Net experiment (:mod:`labkit.experiments.met2net`): their forecasters and how each is trained.

Every arm gets the same optimiser (AdamW, cosine schedule), steps, data and seeds; the weights kept are those with
the best validation MSE (z-units), never chosen on test.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit import profile, seed_everything
from labkit.experiments.met2net_data import FieldData, batch, evaluate
from labkit.models.forecaster import Persistence, PerVariableForecaster, StackedForecaster, count_parameters
from labkit.stage import ImplicitTwoStage, explicit_two_stage_losses, freeze_schedule, parameter_distance

if TYPE_CHECKING:
    from labkit.experiments.met2net import Config

ARMS = ("persistence", "stacked", "stacked_wide", "pervar_e2e", "met2net", "pervar_explicit")


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


# -------------------------------------------------------------------------------------------------------- training
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


def _with_training_scheme(arm: str, net: nn.Module, cfg: Config) -> nn.Module:
    """``met2net``: the network inside the implicit two-stage scheme (:class:`labkit.stage.ImplicitTwoStage`);
    every other arm trains the network itself."""
    if arm != "met2net":
        return net
    return ImplicitTwoStage(net.encoder, net.translator, net.decoder, cfg.momentum, cfg.enc_momentum, cfg.latent_weight)


def _losses(
    arm: str, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, ae_steps: int
) -> dict[str, torch.Tensor]:
    """The losses of one step (``"loss"`` is optimised): Met²Net's reconstruction + latent losses, the explicit
    scheme's autoencoder then translator stage, or plain reconstruction MSE."""
    if arm == "met2net":
        return model.losses(x, y)
    if arm == "pervar_explicit":
        phase = "autoencoder" if step < ae_steps else "translator"
        groups = {"autoencoder": nn.ModuleList([net.encoder, net.decoder]), "translator": net.translator}
        freeze_schedule(groups, {"autoencoder": (0, ae_steps), "translator": (ae_steps, None)}, step)
        return explicit_two_stage_losses(net.encoder, net.translator, net.decoder, x, y, phase)
    rec = F.mse_loss(model(x)[0], y)
    return {"rec": rec, "loss": rec}


def train_arm(arm: str, cfg: Config, seed: int, data: FieldData) -> ArmRun:
    """Train one arm with AdamW + cosine schedule; keep the weights with the best validation MSE (z-units)."""
    device = profile.resolve_device(cfg.device)
    seed_everything(seed, threads=cfg.threads)
    net = build_model(arm, cfg, len(data.variables)).to(device)
    model = _with_training_scheme(arm, net, cfg).to(device)
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
    best, best_state, best_epoch, step = math.inf, None, 0, 0
    bar = tqdm(total=total, desc=f"{arm} seed {seed}", disable=not cfg.progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n_win, generator=gen).numpy()
        for i in range(min(steps_per_epoch, total - step)):
            x, y = batch(data, "train", order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, device)
            losses = _losses(arm, model, net, x, y, step, ae_steps)
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
