"""A small causal-LM training loop shared by notebooks: AdamW, warm-up + cosine schedule, clipping, tqdm.

Hooks make it reusable without copies: ``step_context(step)`` wraps each forward (e.g. a skip budget that ramps),
``extra_loss(model)`` adds a term after the forward (e.g. a gate penalty), ``loss_fn(model, batch)`` replaces the
default next-token cross-entropy, ``on_checkpoint(done)`` scores the model part-way (early stopping on validation).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm


def cosine_lr(step: int, steps: int, warmup_steps: int = 0, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def next_token_loss(model: nn.Module, batch: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM; ``batch`` is input ids or a dict of model kwargs with labels."""
    if isinstance(batch, dict):
        kwargs = dict(batch)
        kwargs.setdefault("labels", kwargs["input_ids"])
        kwargs.setdefault("use_cache", False)
        return model(**kwargs).loss
    return model(input_ids=batch, labels=batch, use_cache=False).loss


def _param_groups(model: nn.Module, parameters: Iterable[Any] | None, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters as AdamW groups with a peak ``lr`` each (a plain iterable becomes one group)."""
    items = list(parameters if parameters is not None else model.parameters())
    if not any(isinstance(item, dict) for item in items):
        return [{"params": [p for p in items if p.requires_grad], "lr": lr}]
    if not all(isinstance(item, dict) and "params" in item for item in items):
        raise ValueError("parameters must be all tensors or all dicts with a 'params' key (AdamW parameter groups)")
    groups = []
    for item in items:
        group_lr = item.get("lr", lr)
        if group_lr <= 0:
            raise ValueError(f"expected a parameter group lr > 0, got {group_lr}")
        groups.append({**item, "params": [p for p in item["params"] if p.requires_grad], "lr": group_lr})
    return [g for g in groups if g["params"]]


def train_causal_lm(
    model: nn.Module,
    batches: Callable[[int], Any] | Iterable[Any],
    steps: int,
    lr: float,
    *,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = next_token_loss,
    step_context: Callable[[int], Any] | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
    schedule_steps: int | None = None,
    checkpoints: Collection[int] = (),
    on_checkpoint: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> pd.DataFrame:
    """Train ``model`` for ``steps`` AdamW steps on ``batches`` (a function of the step, or an iterable).

    ``parameters`` may also be AdamW parameter groups (dicts with ``"params"`` and an optional peak ``"lr"``, default
    ``lr``): every group follows the same warm-up/cosine schedule scaled to its own peak.
    ``schedule_steps`` (default ``steps``) is the schedule's horizon: training may stop before it, as a run stopped
    early on validation does. After ``done`` steps for each ``done`` in ``checkpoints``, ``on_checkpoint(done)`` runs
    with the model in eval mode and the RNG state restored afterwards, so a run stopped at ``done`` trains exactly as
    one checkpointed there.
    Returns one row per step: ``step``, ``loss`` (the task loss), ``extra`` (the added term, 0 without one), ``lr``
    (the schedule applied to ``lr``).
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"expected steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    horizon = steps if schedule_steps is None else schedule_steps
    if horizon < steps:
        raise ValueError(f"schedule_steps={horizon} is shorter than steps={steps}: the schedule must cover the run")
    outside = sorted(c for c in checkpoints if not 1 <= c <= steps)
    if outside or (checkpoints and on_checkpoint is None):
        raise ValueError(
            f"checkpoints must lie in 1..steps={steps} and need on_checkpoint; got {sorted(checkpoints)}"
            + (f" (outside: {outside})" if outside else ", no on_checkpoint")
        )
    groups = _param_groups(model, parameters, lr)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    peaks = [g["lr"] for g in optimizer.param_groups]
    iterator = None if callable(batches) else iter(batches)
    device = next(model.parameters()).device
    model.train()
    rows = []
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        batch = batches(step) if iterator is None else next(iterator)
        if torch.is_tensor(batch):
            batch = batch.to(device)
        elif isinstance(batch, dict):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        scale = cosine_lr(step, horizon, warmup_steps, min_lr_ratio)
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * scale
        with step_context(step) if step_context is not None else contextlib.nullcontext():
            loss = loss_fn(model, batch)
            extra = extra_loss(model) if extra_loss is not None else torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        (loss + extra).backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        rows.append({"step": step, "loss": float(loss.detach()), "extra": float(extra.detach()), "lr": lr * scale})
        if step + 1 in checkpoints and on_checkpoint is not None:
            model.eval()
            cuda = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # scoring draws no random numbers the training would see
                on_checkpoint(step + 1)
            model.train()
    model.eval()
    return pd.DataFrame(rows)
