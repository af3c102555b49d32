"""Sparse Model Soups (Zimmer, Spiegel, Pokutta, ICLR 2024, arXiv 2306.16788) against IMP, at small scale.

Arms, all at the same final sparsity and paired by seed: IMP (one prune-retrain chain); IMP m x (retrained m x
longer per phase: equal compute); SMS with a uniform and with a greedy soup (each phase retrains m copies of one
pruned model, soups them, and starts the next phase from the soup); the last phase's ingredients; their
prediction ensemble (m x inference); and the naive average of independent IMP chains (different masks), before
and after re-pruning it to the target. BatchNorm is recalibrated after every retrain and merge, for every arm.

This module holds the config, presets, the arms of one seed and :func:`run`; the data, the retraining loop and the
IMP and SMS chains live in :mod:`labkit.experiments.sparse_soups_arms`, the settings searched are declared in
``labkit/experiments/explorations/sparse_soups.toml`` (``labkit explore``).
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
from torch import nn

from labkit import merge, prune
from labkit.experiments import (
    check_types,
    require_choice,
    require_device,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_unique,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.experiments.sparse_soups_arms import (
    Clock,
    Data,
    evaluate,
    imp_chain,
    load_data,
    loaded,
    phase_row,
    recalibrate,
    scores,
    sms_chain,
    train,
)
from labkit.models.vision import VisionConfig, build, predict
from labkit.profile import seed_everything


@dataclass
class Config:
    data: str = "mnist"  # "mnist" (50k/10k/10k, fetched cache) | "mnist1d" (generated locally) | "digits" (smoke)
    n_train: int = 10_000  # training examples used (a seeded subset; 0 = all): small enough for 2 CPU cores
    arch: str = "mlp"  # "mlp" (LeNet-300-100 + BN) | "cnn" | "resnet" (GPU)
    width: int = 300  # mlp: first hidden width (second = width // 3); cnn/resnet: first-stage channels
    depth: int = 1  # resnet blocks per stage
    pretrain_epochs: int = 20  # dense training before the first prune
    phases: int = 4  # prune-retrain phases (k in the paper)
    goal_sparsity: float = 0.99  # final global sparsity over conv/linear weights, incl. first and last layer
    retrain_epochs: int = 5  # epochs per retrain (per ingredient and per IMP phase)
    m: int = 4  # ingredients per phase (and independent IMP chains for the naive-average arm)
    vary: str = "lr"  # what differs between ingredients: "seed" | "lr" | "wd" (the trial's lr gave more diversity)
    spread: tuple[float, float] = (0.5, 1.5)  # vary="lr"/"wd": factors spaced evenly over this range
    lr: float = 0.1  # peak LR (SMS: 0.1); retraining uses LLR: 10 % warm-up, then linear to 0
    weight_decay: float = 1e-4  # SMS default
    momentum: float = 0.9  # SGD with Nesterov, as SMS
    batch_size: int = 128  # SMS's MNIST batch size
    warmup_frac: float = 0.1  # LLR warm-up fraction of each retrain
    bn_frac: float = 0.2  # fraction of the training set used to recalibrate BN (SMS: 0.2)
    greedy_strict: bool = False  # False: add an ingredient if val acc does not drop (>=, SMS); True: > (model-soups)
    greedy_chain: bool = False  # True: greedy soup as its own chain (2x SMS cost); False: greedy soups of the
    # uniform chain's ingredients, reported as "SMS greedy (uniform chain)" (keeps the cpu preset near 10 min)
    imp_mx: bool = True  # run the equal-compute IMP m x arm
    naive_runs: int = 3  # independent IMP chains averaged naively (different masks); 0 or 1 skips the arm
    ood: str = "rotate:35+noise:0.25"  # corruption of the test set (labkit.data.corruptions spec)
    augment: float = 0.0  # training augmentation: random rotation up to this many degrees (+ shifts of 2/28)
    curve_points: int = 11  # alphas on the interpolation paths
    seeds: tuple[int, ...] = (0, 1, 2)  # paired seeds: each seed runs every arm
    threads: int = 1  # torch threads: 1 is fastest for a small MLP on 2 shared cores
    device: str = "auto"  # "auto" -> CUDA when present

    def __post_init__(self) -> None:
        check_types(self)
        require_choice(self, "data", ("mnist", "mnist1d", "digits"))
        require_choice(self, "arch", ("mlp", "cnn", "resnet"))
        require_choice(self, "vary", ("seed", "lr", "wd"))
        require_positive(self, "width", "depth", "pretrain_epochs", "phases", "retrain_epochs", "m", "spread", "lr",
                         "batch_size", "threads")
        require_non_negative(self, "n_train", "weight_decay", "naive_runs", "augment", "seeds")
        require_within(self, "goal_sparsity", 0, 1, "()")
        require_within(self, "momentum", 0, 1, "[)")
        require_within(self, "warmup_frac", 0, 1, "[)")
        require_within(self, "bn_frac", 0, 1, "(]")
        require_within(self, "curve_points", 2, math.inf, "[)")
        if self.spread[0] > self.spread[1]:
            raise ValueError(f"parameter 'spread' must be (low, high) with low <= high, got {self.spread!r}")
        require_non_empty(self, "seeds")
        require_unique(self, "seeds")
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": "digits",
        "n_train": 0,
        "width": 64,
        "pretrain_epochs": 3,
        "phases": 2,
        "goal_sparsity": 0.8,
        "retrain_epochs": 1,
        "m": 2,
        "naive_runs": 2,
        "seeds": (0,),
        "curve_points": 3,
        "batch_size": 64,
    },
    "cpu": {},
    "gpu": {
        "arch": "resnet",
        "width": 16,
        "depth": 1,
        "n_train": 0,
        "pretrain_epochs": 30,
        "phases": 3,
        "goal_sparsity": 0.95,
        "retrain_epochs": 5,
        "m": 5,
        "augment": 10.0,
        "seeds": (0, 1, 2, 3, 4),
        "greedy_chain": True,
        "naive_runs": 5,
        "ood": "rotate:35+noise:0.25",
        "threads": 4,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


@dataclass
class Results:
    """Tidy tables; ``final`` has one row per seed x arm at the last phase."""

    phases: pd.DataFrame  # seed, chain, phase, sparsity, arm, member, test_acc, ood_acc, ece, val_acc
    final: pd.DataFrame  # seed, arm, sparsity, test_acc, ood_acc, ece
    naive: pd.DataFrame  # seed, mean_mask_iou, naive_sparsity, goal
    curves: pd.DataFrame  # seed, path, alpha, test_acc, ood_acc, sparsity
    soups: pd.DataFrame  # seed, chain, phase, chosen, max_l2, mean_l2, mean_angle_degrees, mean_to_average
    checks: dict[str, bool] = field(default_factory=dict)  # sanity assertions that held
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per arm (all seeds)


def _dense(cfg: Config, data: Data, seed: int, clock: Clock, rows: list[dict[str, Any]]) -> nn.Module:
    """The dense model every chain of ``seed`` starts from (pretrained, BN recalibrated); logged as phase 0."""
    shape = tuple(data.train_x.shape[1:])
    template = build(VisionConfig(cfg.arch, shape, int(data.train_y.max()) + 1, cfg.width, cfg.depth))
    template = template.to(data.train_x.device)
    start = time.perf_counter()
    dense = train(
        template, data, cfg, epochs=cfg.pretrain_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=seed * 7919
    )
    recalibrate(dense, data, cfg)
    clock.add("dense", start)
    rows.append(phase_row(seed, "dense", 0, "dense", -1, dense, data))
    return dense


def _ingredient_rows(cfg: Config, seed: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final rows read off the uniform chain's last phase: its greedy soup (without a greedy chain of its own) and
    the mean and best of its ingredients."""
    last = [r for r in rows if r["chain"] == "SMS uniform" and r["phase"] == cfg.phases]
    out = []
    if not cfg.greedy_chain:
        out += [
            {k: r[k] for k in ("seed", "sparsity", "test_acc", "ood_acc", "ece")}
            | {"arm": "SMS greedy (uniform chain)"}
            for r in last
            if r["arm"] == "SMS greedy (uniform chain)"
        ]
    ing = [r for r in last if r["arm"] == "ingredient"]
    for label, pick in (("ingredients (mean)", np.mean), ("ingredients (best)", np.max)):
        out.append(
            {
                "seed": seed,
                "arm": label,
                "sparsity": float(np.mean([r["sparsity"] for r in ing])),
                **{k: float(pick([r[k] for r in ing])) for k in ("test_acc", "ood_acc", "ece")},
            }
        )
    return out


def _ensemble_row(cfg: Config, data: Data, seed: int, ingredients: list[nn.Module]) -> dict[str, Any]:
    """The last phase's ingredients as a prediction ensemble (mean probabilities: m x the inference cost)."""
    probs_t = torch.stack([predict(i, data.test_x) for i in ingredients]).mean(0)
    probs_o = torch.stack([predict(i, data.ood_x) for i in ingredients]).mean(0)
    return {
        "seed": seed,
        "arm": f"prediction ensemble ({cfg.m}x inference)",
        "sparsity": prune.sparsity(ingredients[0]),
        **scores(probs_t, probs_o, data),
    }


def _naive_average(
    cfg: Config, data: Data, seed: int, dense: nn.Module, imp: list[tuple[nn.Module, prune.Masks]], clock: Clock
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Final rows of the naive average of independent IMP chains (different masks), before and after re-pruning it
    to the goal, and its row of ``Results.naive`` (how much the masks overlap)."""
    start = time.perf_counter()
    avg = loaded(dense, merge.average([m.state_dict() for m, _ in imp]), data, cfg)
    out = [{"seed": seed, "arm": "naive average (different masks)", "sparsity": prune.sparsity(avg),
            **evaluate(avg, data)}]
    pruned = copy.deepcopy(avg)
    prune.apply_masks(pruned, prune.magnitude_masks(pruned, cfg.goal_sparsity)).remove()
    recalibrate(pruned, data, cfg)
    out.append({"seed": seed, "arm": "naive average re-pruned", "sparsity": prune.sparsity(pruned),
                **evaluate(pruned, data)})
    ious = [prune.mask_iou(imp[a][1], imp[b][1]) for a in range(len(imp)) for b in range(a + 1, len(imp))]
    naive = {
        "seed": seed,
        "mean_mask_iou": float(np.mean(ious)),
        "runs": len(imp),
        "naive_sparsity": prune.sparsity(avg),
        "goal": cfg.goal_sparsity,
    }
    clock.add("naive average", start)
    return out, [naive]


def _interpolation_curves(
    cfg: Config, data: Data, seed: int, dense: nn.Module, ingredients: list[nn.Module],
    imp: list[tuple[nn.Module, prune.Masks]], clock: Clock,
) -> list[dict[str, Any]]:
    """Scores along straight lines between two models with the same mask (SMS ingredients) and, with several IMP
    chains, two with different masks (BN recalibrated at every point)."""
    start = time.perf_counter()
    rows = []
    alphas = np.linspace(0, 1, cfg.curve_points)
    paths = {"same mask (SMS ingredients 0, 1)": ingredients[:2]}
    if len(imp) > 1:
        paths["different masks (IMP runs 0, 1)"] = [imp[0][0], imp[1][0]]
    for path, (a, b) in paths.items() if cfg.m > 1 else []:
        for alpha in alphas:
            mdl = loaded(dense, merge.lerp(a.state_dict(), b.state_dict(), float(alpha)), data, cfg)
            rows.append(
                {"seed": seed, "path": path, "alpha": float(alpha), "sparsity": prune.sparsity(mdl),
                 **evaluate(mdl, data)}
            )
    clock.add("curves", start)
    return rows


def run_seed(cfg: Config, data: Data, seed: int, clock: Clock) -> dict[str, list[dict[str, Any]]]:
    """Every arm for one seed; returns row lists for the Results tables."""
    seed_everything(seed, threads=cfg.threads)
    rows: list[dict[str, Any]] = []
    soup_rows: list[dict[str, Any]] = []
    dense = _dense(cfg, data, seed, clock, rows)
    imp = [
        imp_chain(dense, data, cfg, seed, c, cfg.retrain_epochs, clock, "IMP" if c == 0 else f"IMP run {c}", rows)
        for c in range(max(1, cfg.naive_runs))
    ]
    final = {"IMP": imp[0][0]}
    if cfg.imp_mx:
        mx = f"IMP {cfg.m}x"
        final[mx] = imp_chain(dense, data, cfg, seed, 0, cfg.m * cfg.retrain_epochs, clock, mx, rows)[0]
    final["SMS uniform"], _, ingredients = sms_chain(dense, data, cfg, seed, "uniform", clock, rows, soup_rows)
    if cfg.greedy_chain:
        final["SMS greedy"] = sms_chain(dense, data, cfg, seed, "greedy", clock, rows, soup_rows)[0]
    out = [{"seed": seed, "arm": a, "sparsity": prune.sparsity(mdl), **evaluate(mdl, data)} for a, mdl in final.items()]
    out += _ingredient_rows(cfg, seed, rows)
    out.append(_ensemble_row(cfg, data, seed, ingredients))
    naive_rows: list[dict[str, Any]] = []
    if len(imp) > 1:
        averaged, naive_rows = _naive_average(cfg, data, seed, dense, imp, clock)
        out += averaged
    curve_rows = _interpolation_curves(cfg, data, seed, dense, ingredients, imp, clock)
    return {"phases": rows, "final": out, "naive": naive_rows, "curves": curve_rows, "soups": soup_rows}


def comparison(final: pd.DataFrame, ref: str = "IMP") -> pd.DataFrame:
    """Per arm: mean sparsity, clean/OOD accuracy (mean, sd over seeds) and the paired difference to ``ref``."""
    from labkit.stats import paired_diff

    stats = final.groupby("arm", sort=False).agg(
        sparsity=("sparsity", "mean"),
        test_acc=("test_acc", "mean"),
        test_sd=("test_acc", "std"),
        ood_acc=("ood_acc", "mean"),
        ood_sd=("ood_acc", "std"),
        seeds=("seed", "nunique"),
    )
    for metric, short in (("test_acc", "test"), ("ood_acc", "ood")):
        diff = paired_diff(final, "arm", ref, metric).set_index("arm")
        stats[f"{short}_vs_{ref}"] = diff.mean_diff
        stats[f"{short}_vs_{ref}_low"] = diff.low
        stats[f"{short}_vs_{ref}_high"] = diff.high
    return stats.reset_index()


def run(cfg: Config, data: Data | None = None, progress: bool = True) -> Results:
    """All arms for every seed in ``cfg.seeds``; sanity checks (exact sparsity, shared masks) raise if violated."""
    from tqdm.auto import tqdm

    data = data if data is not None else load_data(cfg)
    clock = Clock()
    tables: dict[str, list[dict]] = {k: [] for k in ("phases", "final", "naive", "curves", "soups")}
    for seed in tqdm(cfg.seeds, desc="seeds", disable=not progress):
        for name, rows in run_seed(cfg, data, seed, clock).items():
            tables[name] += rows
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    final = frames["final"]
    exact = final[final.arm.isin(["IMP", "SMS uniform", "SMS greedy", "SMS greedy (uniform chain)", f"IMP {cfg.m}x"])]
    checks = {
        "final sparsity equals goal (1e-4) for IMP and SMS": bool(
            (exact.sparsity - cfg.goal_sparsity).abs().max() < 1e-4
        ),
        "ingredients share one mask before every soup": bool(frames["soups"].masks_identical.all()),
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise AssertionError(f"sanity checks failed: {failed}")
    return Results(
        frames["phases"],
        final,
        frames["naive"],
        frames["curves"],
        frames["soups"],
        checks,
        {k: round(v, 2) for k, v in clock.seconds.items()},
    )
