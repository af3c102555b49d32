"""How Met²Net's arms are trained: one schedule for every arm, and the longer budget of the convergence check.

Every trained arm gets the same optimiser (AdamW; the learning rate halves when validation MSE stalls for
``lr_patience + 1`` epochs), data and seeds, and trains until its validation MSE has not improved by ``min_improvement``
(relative) for ``patience`` epochs, or ``epochs`` run out; the weights kept are those with the best validation MSE
(z-units), never chosen on test. Whether that budget suffices is checked by rerunning one seed at a longer one
(:func:`longer_budget`, judged by :func:`labkit.protocol.budget_check`): the stopping rule itself cannot tell a plateau
from a slow descent.
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


@dataclass
class ArmRun:
    """A trained arm: the model (validation-best weights), its training history and its cost."""

    arm: str
    seed: int
    model: nn.Module
    history: pd.DataFrame  # step, epoch, rec, latent, val_mse_z, ema_gap
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
    """``cfg`` with every duration of the training schedule scaled by ``factor``: the epoch cap, the epochs without a
    clear gain before early stopping (``patience``) and before the learning rate halves (``ReduceLROnPlateau`` halves
    it on the ``lr_patience + 1``-th such epoch), the explicit scheme's autoencoder stage and ``max_steps``.

    The run is the same schedule stretched in time, and a genuinely longer budget: with only the cap raised, early
    stopping and the halving learning rate would end it where the 1x run ended. ``min_improvement`` (a relative
    threshold, not a duration) stays.
    """
    if not factor >= 1:
        raise ValueError(f"a longer budget needs factor >= 1, got {factor}")

    def scale(epochs: int) -> int:
        return math.ceil(epochs * factor)

    return dataclasses.replace(
        cfg, epochs=scale(cfg.epochs), patience=scale(cfg.patience), lr_patience=scale(cfg.lr_patience + 1) - 1,
        explicit_ae_epochs=scale(cfg.explicit_ae_epochs),
        max_steps=None if cfg.max_steps is None else scale(cfg.max_steps),
    )


def train_arm(
    arm: str, cfg: Config, seed: int, data: FieldData, momentum: float | None = None, progress: bool = False
) -> ArmRun:
    """Train one arm until validation MSE plateaus; keep the weights with the best validation MSE (z-units);
    ``progress``: a bar over steps.

    ``pervar_explicit`` first trains the autoencoder alone for ``cfg.explicit_ae_epochs`` epochs, then the translator
    on the frozen encoder's latents; only the second stage is early-stopped and selected.
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
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=cfg.lr_patience,
                                                       threshold=cfg.min_improvement)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, since_best, step, epoch = math.inf, None, 0, 0, 0, 0
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc=f"{arm} seed {seed}", disable=not progress, leave=False)
    while step < total and since_best < cfg.patience:
        epoch += 1
        autoencoding = epoch <= ae_epochs
        if arm == "pervar_explicit":
            groups = {"autoencoder": nn.ModuleList([net.encoder, net.decoder]), "translator": net.translator}
            freeze_schedule(groups, {"autoencoder": (0, 1), "translator": (1, None)}, 0 if autoencoding else 1)
        model.train()
        order = torch.randperm(n_win, generator=gen).numpy()
        for i in range(min(steps_per_epoch, total - step)):
            x, y = batch(data, "train", order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, device)
            losses = _losses(arm, model, net, x, y, autoencoding)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            if arm.startswith("met2net"):
                model.after_step()  # EMA / hard copy after the optimiser step
            step += 1
            bar.update(1)
            rows.append({"step": step, "epoch": epoch, **{k: float(v.detach()) for k, v in losses.items()
                                                          if k != "loss"}})
        if autoencoding:
            continue
        val = evaluate(model, data, "val", cfg, device)["mse_z"].mean().item()
        sched.step(val)
        rows[-1]["val_mse_z"] = val
        if arm.startswith("met2net"):
            rows[-1]["ema_gap"] = parameter_distance(model.translator_k, model.translator)
        if val < best:  # keep the best weights; only a clear improvement resets the early-stopping count
            since_best = 0 if val < best * (1 - cfg.min_improvement) else since_best + 1
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
        else:
            since_best += 1
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return ArmRun(arm, seed, model, pd.DataFrame(rows), best_epoch, epoch, params, time.perf_counter() - t0,
                  momentum if arm.startswith("met2net") else None)
