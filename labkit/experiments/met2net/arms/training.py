"""How Met²Net's arms are trained: one schedule for every arm, and the longer budget of the convergence check.

Every trained arm gets the same optimiser, data and seeds and the official recipe's schedule (ShremG/Met2Net,
``configs/weather/mv5my_5_625/its.py``: AdamW at ``lr`` with cosine decay over a fixed budget of ``epochs``, no warm-up;
here per step, to ``min_lr_ratio`` x ``lr``). Nothing stops a run early: every run trains its whole budget, and the
weights kept are those with the best validation MSE (z-units), never chosen on test. Whether the budget suffices is
judged only by rerunning seeds at a longer one (:func:`longer_budget`: the same cosine stretched over
``budget_factor`` x the epochs, judged by :func:`labkit.protocol.budget_check`), never by the rule that ended training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit import profile, seed_everything
from labkit.experiments.met2net.arms.models import build_model
from labkit.experiments.met2net.config import TRIVIAL, Config
from labkit.experiments.met2net.data import FieldData, batch, evaluate
from labkit.models.forecaster import count_parameters
from labkit.stage import ImplicitTwoStage, explicit_two_stage_losses, freeze_schedule, parameter_distance
from labkit.train import cosine_lr


@dataclass
class ArmRun:
    """A trained arm: the model (validation-best weights), its training history and its cost."""

    arm: str
    seed: int
    model: nn.Module
    history: pd.DataFrame  # step, epoch, lr, rec, latent, val_mse_z, ema_gap
    best_epoch: int  # 0 for arms without training
    epochs_run: int
    params: int
    seconds: float
    momentum: float | None = None  # met2net arms: the EMA momentum of the translator copy


def _with_training_scheme(arm: str, net: nn.Module, cfg: Config, momentum: float) -> nn.Module:
    """``met2net*``: the network inside the implicit two-stage scheme (:class:`labkit.stage.ImplicitTwoStage`);
    every other arm trains the network itself."""
    if not arm.startswith("met2net"):
        return net
    return ImplicitTwoStage(net.encoder, net.translator, net.decoder, momentum, cfg.enc_momentum, cfg.latent_weight)


def _losses(
    arm: str, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor, autoencoding: bool
) -> dict[str, torch.Tensor]:
    """The losses of one step (``"loss"`` is optimised): Met²Net's reconstruction + latent losses, the explicit
    scheme's autoencoder or translator stage, or plain forecast MSE."""
    if arm.startswith("met2net"):
        return model.losses(x, y)
    if arm == "pervar_explicit":
        phase = "autoencoder" if autoencoding else "translator"
        return explicit_two_stage_losses(net.encoder, net.translator, net.decoder, x, y, phase)
    rec = F.mse_loss(model(x)[0], y)
    return {"rec": rec, "loss": rec}


def longer_budget(cfg: Config, factor: float) -> Config:
    """``cfg`` with every duration of the training schedule scaled by ``factor``: the epochs the cosine decays over,
    the explicit scheme's autoencoder stage and ``max_steps``; the peak and floor learning rates stay, so the run is
    the same schedule stretched in time."""
    if not factor >= 1:
        raise ValueError(f"a longer budget needs factor >= 1, got {factor}")

    def scale(epochs: int) -> int:
        return math.ceil(epochs * factor)

    return dataclasses.replace(
        cfg, epochs=scale(cfg.epochs), explicit_ae_epochs=scale(cfg.explicit_ae_epochs),
        max_steps=None if cfg.max_steps is None else scale(cfg.max_steps),
    )


def train_arm(
    arm: str, cfg: Config, seed: int, data: FieldData, momentum: float | None = None, progress: bool = False
) -> ArmRun:
    """Train one arm for its whole budget (cosine decay over ``cfg.epochs``); keep the weights with the best
    validation MSE (z-units); ``progress``: a bar over steps.

    ``pervar_explicit`` first trains the autoencoder alone for ``cfg.explicit_ae_epochs`` epochs, then the translator
    on the frozen encoder's latents for ``cfg.epochs``, each stage with its own cosine decay; only the second stage
    is selected on validation.
    """
    device = profile.resolve_device(cfg.device)
    seed_everything(seed, threads=cfg.threads)
    momentum = cfg.momentum if momentum is None else momentum
    net = build_model(arm, cfg, len(data.variables), data).to(device)
    model = _with_training_scheme(arm, net, cfg, momentum).to(device)
    params = count_parameters(net)
    t0 = time.perf_counter()
    if arm in TRIVIAL:
        val = evaluate(model, data, "val", cfg, device)["mse_z"].mean().item()
        history = pd.DataFrame([{"step": 0, "epoch": 0, "val_mse_z": val}])
        return ArmRun(arm, seed, model, history, 0, 0, 0, time.perf_counter() - t0)
    n_win = len(data.windows["train"])
    steps_per_epoch = max(1, n_win // cfg.batch_size)
    ae_epochs = cfg.explicit_ae_epochs if arm == "pervar_explicit" else 0
    total = (cfg.epochs + ae_epochs) * steps_per_epoch
    total = total if cfg.max_steps is None else min(cfg.max_steps, total)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    stages = {True: ae_epochs * steps_per_epoch, False: cfg.epochs * steps_per_epoch}  # autoencoding: its steps
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, step, epoch = math.inf, None, 0, 0, 0
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc=f"{arm} seed {seed}", disable=not progress, leave=False)
    while step < total:
        epoch += 1
        autoencoding = epoch <= ae_epochs
        if arm == "pervar_explicit":
            groups = {"autoencoder": nn.ModuleList([net.encoder, net.decoder]), "translator": net.translator}
            freeze_schedule(groups, {"autoencoder": (0, 1), "translator": (1, None)}, 0 if autoencoding else 1)
        model.train()
        order = torch.randperm(n_win, generator=gen).numpy()
        for i in range(min(steps_per_epoch, total - step)):
            x, y = batch(data, "train", order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, device)
            in_stage = step - (0 if autoencoding else stages[True])
            lr = cfg.lr * cosine_lr(in_stage, stages[autoencoding], min_ratio=cfg.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            losses = _losses(arm, model, net, x, y, autoencoding)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            if arm.startswith("met2net"):
                model.after_step()  # EMA / hard copy after the optimiser step
            step += 1
            bar.update(1)
            rows.append({"step": step, "epoch": epoch, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()
                                                          if k != "loss"}})
        if autoencoding:
            continue
        val = evaluate(model, data, "val", cfg, device)["mse_z"].mean().item()
        rows[-1]["val_mse_z"] = val
        if arm.startswith("met2net"):
            rows[-1]["ema_gap"] = parameter_distance(model.translator_k, model.translator)
        if val < best:  # keep the validation-best weights (selection, not stopping: the run goes on)
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return ArmRun(arm, seed, model, pd.DataFrame(rows), best_epoch, epoch, params, time.perf_counter() - t0,
                  momentum if arm.startswith("met2net") else None)
