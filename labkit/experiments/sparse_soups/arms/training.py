"""The retraining loop, scoring and prune-retrain chains of the Sparse Model Soups arms.

IMP (one prune-retrain chain), SWA (one chain whose phases average the ends of m retraining cycles) and SMS (per
phase: prune the soup, retrain m copies, soup them) share one SGD retraining loop with SMS's linear schedule;
BatchNorm is recalibrated after every retrain and every merge. The last phase's retrains record a validation curve
for the figures; convergence is checked by a rerun at a longer budget
(:func:`labkit.experiments.sparse_soups.config.longer`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import merge, prune
from labkit.calibration import expected_calibration_error
from labkit.data import corruptions
from labkit.experiments.sparse_soups.config import GREEDY_OF_UNIFORM, INGREDIENT, Config, factors, ood_metric
from labkit.experiments.sparse_soups.data import Data
from labkit.models.vision import predict


# ---------------------------------------------------------------------------------------------------------- scoring
def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Accuracy (%) from the integer count of correct predictions: exact at the split's resolution (10,000 images:
    0.01 pp), so two runs that differ by 20 images differ by exactly 0.2 (a float32 mean would not)."""
    return 100 * int((probs.argmax(-1) == labels).sum()) / len(labels)


def scores(probs_test: Tensor, probs_ood: dict[str, Tensor], data: Data) -> dict[str, float]:
    """Test accuracy (%), OOD accuracy (%) per corruption and their mean (``ood_acc``), and test ECE, from class
    probabilities (a model's, or an ensemble's mean); ``probs_ood`` maps each corruption spec to its probabilities."""
    ood = {ood_metric(spec): accuracy(probs, data.test_y) for spec, probs in probs_ood.items()}
    return {
        "test_acc": accuracy(probs_test, data.test_y),
        "ood_acc": float(np.mean(list(ood.values()))),
        **ood,
        "ece": expected_calibration_error(probs_test, data.test_y),
    }


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """Test and OOD accuracy (%) and test ECE."""
    return scores(predict(model, data.test_x), {spec: predict(model, x) for spec, x in data.ood.items()}, data)


def val_acc(model: nn.Module, data: Data) -> float:
    """Validation accuracy (%): what the greedy soup and checkpoint choices may look at, never test."""
    return accuracy(predict(model, data.val_x), data.val_y)


def phase_row(seed: int, chain: str, phase: int, arm: str, member: int, model: nn.Module, data: Data) -> dict[str, Any]:
    """One row of the computed ``phases`` table: a model of ``chain`` after ``phase`` (``member`` -1: not an
    ingredient)."""
    return {
        "seed": seed,
        "chain": chain,
        "phase": phase,
        "sparsity": prune.sparsity(model),
        "arm": arm,
        "member": member,
        **evaluate(model, data),
        "val_acc": val_acc(model, data),
    }


# --------------------------------------------------------------------------------------------------------- training
def variant(cfg: Config, j: int) -> dict[str, float]:
    """Peak ``lr``, ``weight_decay`` and ``augment`` (rotation degrees) of ingredient ``j``. Seeds always differ; each
    knob named in ``vary`` is scaled by one of :func:`factors`, the k-th varied knob by factor (j + k) mod m, so
    two knobs varied together do not rise together (ingredient 0: the lowest lr, the second-lowest wd)."""
    f = factors(cfg)
    scale = {knob: float(f[(j + k) % len(f)]) for k, knob in enumerate(k for k in cfg.vary if k != "seed")}
    return {"lr": cfg.lr * scale.get("lr", 1.0), "weight_decay": cfg.weight_decay * scale.get("wd", 1.0),
            "augment": cfg.augment * scale.get("augment", 1.0)}


def retrain_seed(seed: int, phase: int, j: int) -> int:
    """Ingredient j's seed in a phase; IMP chain j uses the same one, which pairs IMP with ingredient 0."""
    return seed * 100_003 + phase * 101 + j


def train(
    model: nn.Module,
    data: Data,
    cfg: Config,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
    masks: prune.Masks | None = None,
    warmup_frac: float = 0.0,
    curve: list[float] | None = None,
    augment: float | None = None,
) -> nn.Module:
    """SGD (Nesterov) with a linear schedule: ``warmup_frac`` warm-up to ``lr``, then linear to 0 (SMS's LLR).

    A fresh optimizer per call, as SMS; with ``masks`` pruned weights stay exactly zero (gradients and state masked).
    With ``curve``, validation accuracy is appended at ``cfg.val_points`` evenly spaced steps (the last at the end).
    ``augment``: random rotation degrees of the batches (None: ``cfg.augment``; images only).
    """
    degrees = cfg.augment if augment is None else augment
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=weight_decay
    )
    handle = prune.apply_masks(model, masks, optimizer=opt) if masks else None
    n = len(data.train_y)
    per_epoch = math.ceil(n / cfg.batch_size)
    total, warm = epochs * per_epoch, int(warmup_frac * epochs * per_epoch)
    points = cfg.val_points if curve is not None else 0
    checks = {math.ceil(total * (k + 1) / points) for k in range(points)}
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(data.train_x.device)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            x = data.train_x[idx]
            if degrees and data.images:
                x = corruptions.affine(x, degrees, 2 / 28, gen)
            scale = (step + 1) / warm if step < warm else (total - step) / max(total - warm, 1)
            for group in opt.param_groups:
                group["lr"] = lr * scale
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), data.train_y[idx]).backward()
            opt.step()
            step += 1
            if step in checks:
                curve.append(val_acc(model, data))
                model.train()
    if curve is not None and checks and step < max(checks):  # the last batch was skipped (a single example)
        curve.append(val_acc(model, data))
    if handle is not None:
        handle.remove()
    return model


def recalibrate(model: nn.Module, data: Data, cfg: Config) -> nn.Module:
    """BN statistics from the first ``bn_frac`` of the (unshuffled) training set, cumulative average."""
    n = max(cfg.batch_size, int(cfg.bn_frac * len(data.train_y)))
    batches = [data.train_x[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    return merge.recalibrate_bn(model, batches)


def loaded(template: nn.Module, sd: dict[str, Tensor], data: Data, cfg: Config) -> nn.Module:
    """A copy of ``template`` holding ``sd``, with BN recalibrated (SMS does this after every merge)."""
    model = copy.deepcopy(template)
    model.load_state_dict(sd)
    return recalibrate(model, data, cfg)


class Clock:
    """Wall seconds per arm, summed over seeds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        """Add the seconds since ``start`` (a ``time.perf_counter()`` reading) to ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------- chains
def imp_chain(
    dense: nn.Module,
    data: Data,
    cfg: Config,
    seed: int,
    chain: int,
    epochs: int,
    clock: Clock,
    name: str,
    rows: list[dict[str, Any]],
    lr: float,
    curve: list[float] | None = None,
) -> tuple[nn.Module, prune.Masks]:
    """IMP: prune to each phase's target, retrain ``epochs`` at peak ``lr`` with the chain's seeds;
    chain 0 logs its phases. ``curve`` receives the last phase's validation curve."""
    start = time.perf_counter()
    model, masks = copy.deepcopy(dense), None
    for p, target in enumerate(prune.imp_schedule(cfg.goal_sparsity, cfg.phases), start=1):
        masks = prune.magnitude_masks(model, target, prev_masks=masks)
        train(
            model,
            data,
            cfg,
            epochs=epochs,
            lr=lr,
            weight_decay=cfg.weight_decay,
            seed=retrain_seed(seed, p, chain),
            masks=masks,
            warmup_frac=cfg.warmup_frac,
            curve=curve if p == cfg.phases else None,
        )
        recalibrate(model, data, cfg)
        if chain == 0:
            rows.append(phase_row(seed, name, p, name, -1, model, data))
    clock.add(name, start)
    return model, masks


def _ingredients(
    model: nn.Module, masks: prune.Masks, data: Data, cfg: Config, seed: int, phase: int, name: str,
    rows: list[dict[str, Any]], curves: list[list[float]] | None,
) -> list[nn.Module]:
    """The m retrained copies of the pruned ``model`` of one SMS phase (each with its own seed and ``variant``);
    with ``curves``, each ingredient's validation curve is appended to it."""
    ingredients = []
    for j in range(cfg.m):
        curve: list[float] | None = [] if curves is not None else None
        ing = train(
            copy.deepcopy(model),
            data,
            cfg,
            epochs=cfg.retrain_epochs,
            **variant(cfg, j),
            seed=retrain_seed(seed, phase, j),
            masks=masks,
            warmup_frac=cfg.warmup_frac,
            curve=curve,
        )
        if curves is not None:
            curves.append(curve)
        recalibrate(ing, data, cfg)
        rows.append(phase_row(seed, name, phase, INGREDIENT, j, ing, data))
        ingredients.append(ing)
    return ingredients


def _soup_row(
    sds: list[dict[str, Tensor]], zeros: prune.Masks, masks: prune.Masks, chosen: list[int], cfg: Config, seed: int,
    chain: str, phase: int,
) -> dict[str, Any]:
    """One row of the computed ``soups`` table: how far apart the ingredients are, and whether they shared one mask."""
    dist = merge.soup_distances(sds)
    off = ~torch.eye(cfg.m, dtype=torch.bool)
    return {
        "seed": seed,
        "chain": chain,
        "phase": phase,
        "chosen": len(chosen),
        "max_l2": float(dist["l2"][off].max()) if cfg.m > 1 else 0.0,
        "mean_l2": float(dist["l2"][off].mean()) if cfg.m > 1 else 0.0,
        "mean_angle_degrees": float(dist["angle_degrees"][off].mean()) if cfg.m > 1 else 0.0,
        "mean_to_average": float(dist["to_average"].mean()),
        "masks_identical": all(torch.equal(zeros[k].cpu(), masks[k].cpu()) for k in masks),
    }


def sms_chain(
    dense: nn.Module,
    data: Data,
    cfg: Config,
    seed: int,
    mode: str,
    clock: Clock,
    rows: list[dict[str, Any]],
    soup_rows: list[dict[str, Any]],
    curves: list[list[float]] | None = None,
) -> tuple[nn.Module, prune.Masks, list[nn.Module]]:
    """One SMS chain: per phase prune the soup, retrain m copies, soup them (``mode``), recalibrate.

    ``curves`` receives the last phase's ingredients' validation curves."""
    start = time.perf_counter()
    name = f"SMS {mode}"
    model, masks, ingredients = copy.deepcopy(dense), None, []
    for p, target in enumerate(prune.imp_schedule(cfg.goal_sparsity, cfg.phases), start=1):
        masks = prune.magnitude_masks(model, target, prev_masks=masks)
        prune.apply_masks(model, masks).remove()
        ingredients = _ingredients(model, masks, data, cfg, seed, p, name, rows, curves if p == cfg.phases else None)
        sds = [i.state_dict() for i in ingredients]
        zeros = merge.shared_mask(sds, "zeros")  # raises unless the ingredients share one mask exactly
        soups = {"uniform": merge.average(sds, masks=masks)}
        soups["greedy"], chosen, _ = merge.greedy_soup(
            sds,
            lambda sd, template=model: val_acc(loaded(template, sd, data, cfg), data),
            strict=cfg.greedy_strict,
            masks=masks,
        )
        for kind in ("uniform", "greedy") if not cfg.greedy_chain or mode == "uniform" else ("greedy",):
            soup = loaded(model, soups[kind], data, cfg)
            arm = f"SMS {kind}" if kind == mode else GREEDY_OF_UNIFORM
            rows.append(phase_row(seed, name, p, arm, -1, soup, data))
        soup_rows.append(_soup_row(sds, zeros, masks, chosen, cfg, seed, name, p))
        model = loaded(model, soups[mode], data, cfg)
    clock.add(name, start)
    return model, masks, ingredients


def swa_chain(
    dense: nn.Module, data: Data, cfg: Config, seed: int, clock: Clock, rows: list[dict[str, Any]], lr: float,
    curve: list[float] | None = None,
) -> nn.Module:
    """SWA along one run (Izmailov et al. 2018, cyclical LR): per phase, prune, retrain m cycles of the same LLR
    schedule (peak ``lr``) one after the other, and average the m cycle ends (one mask, so no
    sparsity is lost); the same retrain compute as SMS and IMP m x. ``curve`` receives the last phase's last cycle's
    validation curve."""
    start = time.perf_counter()
    model, masks = copy.deepcopy(dense), None
    for p, target in enumerate(prune.imp_schedule(cfg.goal_sparsity, cfg.phases), start=1):
        masks = prune.magnitude_masks(model, target, prev_masks=masks)
        ends = []
        for c in range(cfg.m):
            train(model, data, cfg, epochs=cfg.retrain_epochs, lr=lr, weight_decay=cfg.weight_decay,
                  seed=retrain_seed(seed, p, c), masks=masks, warmup_frac=cfg.warmup_frac,
                  curve=curve if p == cfg.phases and c == cfg.m - 1 else None)
            ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        model = loaded(model, merge.average(ends, masks=masks), data, cfg)
        rows.append(phase_row(seed, "SWA", p, "SWA", -1, model, data))
    clock.add("SWA", start)
    return model
