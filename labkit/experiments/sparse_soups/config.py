"""Sparse Model Soups' parameters: the data and network, the prune-retrain schedule, the m ingredients per phase, the
arms to run, the paired seeds and the budget check; plus the names of the arms every room shares."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np

from labkit import config
from labkit.config import NON_EMPTY, UNIQUE, BudgetFactor, Check, Count, Device, Interval, NonNegative, Positive
from labkit.data import corruptions

DATASETS = ("mnist", "mnist1d", "digits")
ARCHS = ("mlp", "cnn", "resnet")
VARY = ("seed", "lr", "wd", "augment")  # what may differ between the ingredients of one phase (seeds always do)

# Arms named outside the trained chains (IMP, IMP m x, SWA, SMS uniform, SMS greedy): compute labels its rows with
# them and the claims compare them.
CHANCE = "chance (majority class)"  # the trivial baseline of the sanity check: the test set's most frequent label
DENSE = "dense"  # the pretrained model every chain of a seed starts from (phase 0): the health reference
INGREDIENT = "ingredient"  # a retrained copy of an SMS phase (``phases.member`` says which)
GREEDY_OF_UNIFORM = "SMS greedy (uniform chain)"  # the greedy soup of the uniform chain's ingredients
BEST_INGREDIENT = "best ingredient (val)"  # the last phase's ingredient with the best validation accuracy
MEAN_INGREDIENT = "ingredients (mean)"  # the mean accuracy of the last phase's ingredients
NAIVE = "naive average (different masks)"
REPRUNED = "naive average re-pruned"  # re-pruned to the goal, no retraining (shown, not a claim's baseline)
REPRUNED_RETRAINED = "naive average re-pruned + retrained"  # ... then retrained as long as one SMS phase (m x)

Vary = Annotated[tuple[Literal[*VARY], ...], NON_EMPTY, UNIQUE]  # the knobs spread over the m ingredients
Corruptions = Annotated[tuple[str, ...], NON_EMPTY, UNIQUE, Check(corruptions.check_spec)]  # one OOD test set each

NonNegativeFloat = Annotated[float, Interval("[0, inf)")]
UnitInterval = Annotated[float, Interval("[0, 1)")]


@dataclass
class Config:
    data: Literal[*DATASETS] = "mnist"  # "mnist" (50k/10k/10k, fetched cache) | "mnist1d" (generated) | "digits"
    n_train: NonNegative = 10_000  # training examples used (a seeded subset; 0 = all): small enough for 2 CPU cores
    arch: Literal[*ARCHS] = "mlp"  # "mlp" (LeNet-300-100 + BN) | "cnn" | "resnet" (GPU)
    width: Count = 300  # mlp: first hidden width (second = width // 3); cnn/resnet: first-stage channels
    depth: Count = 1  # resnet blocks per stage
    pretrain_epochs: Count = 20  # dense training before the first prune
    phases: Count = 4  # prune-retrain phases (k in the paper)
    goal_sparsity: Annotated[float, Interval("(0, 1)")] = 0.99  # final global sparsity over conv/linear weights
    retrain_epochs: Count = 5  # epochs per retrain (per ingredient and per IMP phase)
    m: Count = 4  # ingredients per phase (and independent IMP chains for the naive-average arm)
    vary: Vary = ("lr",)  # knobs that differ between ingredients on top of their seeds (the trial's lr gave more
    # diversity); "seed" alone: seeds only. Each varied knob scales by factors spaced evenly over `spread` (see
    # `variant`); "augment" scales the rotation degrees of `augment`. The baselines are tuned over `lr_grid` either way
    spread: Annotated[tuple[float, float], Interval("(0, inf)")] = (0.5, 1.5)  # factor range of each varied knob
    lr: Positive = 0.1  # peak LR (SMS: 0.1); retraining uses LLR: 10 % warm-up, then linear to 0
    weight_decay: NonNegativeFloat = 1e-4  # SMS default
    momentum: UnitInterval = 0.9  # SGD with Nesterov, as SMS
    batch_size: Count = 128  # SMS's MNIST batch size
    warmup_frac: UnitInterval = 0.1  # LLR warm-up fraction of each retrain
    bn_frac: Annotated[float, Interval("(0, 1]")] = 0.2  # fraction of the training set recalibrating BN (SMS: 0.2)
    greedy_strict: bool = False  # False: add an ingredient if val acc does not drop (>=, SMS); True: > (model-soups)
    greedy_chain: bool = False  # True: greedy soup as its own chain (2x SMS cost); False: greedy soups of the
    # uniform chain's ingredients, reported as "SMS greedy (uniform chain)" (keeps the cpu preset near 10 min)
    imp_mx: bool = True  # run the equal-compute IMP m x arm
    swa: bool = True  # run the SWA arm (m retraining cycles per phase, cycle ends averaged: equal compute)
    naive_runs: NonNegative = 3  # independent IMP chains averaged naively (different masks); 0 or 1 skips the arm
    ood: Corruptions = ("rotate:35", "noise:0.5", "contrast:0.3")  # OOD test sets, one corruption type each
    # (labkit.data.corruptions specs; "ood_acc" is their mean, as CIFAR-10-C reports the mean over corruptions). A
    # dense MLP (2 epochs, 10k MNIST; 96.0 % clean) scored 82.7 / 60.1 / 70.7 % on them; blur:1 (95.5) was too mild
    augment: NonNegativeFloat = 0.0  # training augmentation: random rotation up to this many degrees (+ 2/28 shifts)
    curve_points: Annotated[int, Interval("[2, inf)")] = 11  # alphas on the interpolation paths
    seeds: Count = 3  # paired seeds 0 .. seeds-1: each seed runs every arm
    val_points: Annotated[int, Interval("[2, inf)")] = 10  # validation evaluations along each last-phase retrain
    # (a figure; convergence is the budget check)
    budget_factor: BudgetFactor = 2.0  # convergence check: the first seed's trained arms rerun with every retrain
    # (and the dense pretraining) this many times longer in epochs, rounded up; the same LLR shape (see `longer`)
    threads: Count = 1  # torch threads: 1 is fastest for a small MLP on 2 shared cores
    workers: Count = 1  # processes running (arm, seed) jobs in parallel (2 on a 2-core machine)
    device: Device = "auto"  # "auto" -> CUDA when present

    def __post_init__(self) -> None:
        config.check(self)
        if self.spread[0] > self.spread[1]:
            raise ValueError(f"parameter 'spread' must be (low, high) with low <= high, got {self.spread!r}")
        if "augment" in self.vary and (self.augment == 0 or self.data == "mnist1d"):
            raise ValueError(f"parameter 'vary' includes 'augment', which scales `augment` on an image dataset: "
                             "expected augment > 0 and an image dataset ('mnist' or 'digits'), got augment="
                             f"{self.augment!r}, "
                             f"data={self.data!r}")


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
        "greedy_chain": True,
        "seeds": 3,
        "curve_points": 3,
        "batch_size": 64,
    },
    # cpu: all 50k MNIST training images (the 10k subset saturated), 2 retrain epochs per phase (782 steps: twice the
    # old 5 epochs on 10k), 10 dense epochs, 5 paired seeds, greedy soup and SWA as their own chains, 2 workers.
    # The last report (before tuning) took 940 s wall, 1630 CPU-s of jobs; tuning IMP, IMP 4x and SWA over 4 lrs
    # and retraining the re-pruned average bring the jobs to ~3500 CPU-s: ~35 min wall on 2 idle cores (estimate)
    "cpu": {
        "n_train": 0,
        "pretrain_epochs": 10,
        "retrain_epochs": 2,
        "seeds": 5,
        "greedy_chain": True,
        "workers": 2,
    },
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
        "seeds": 5,
        "greedy_chain": True,
        "naive_runs": 5,
        "threads": 4,
    },
}


def trained_arms(cfg: Config) -> list[str]:
    """The arms trained for every seed, one job each (tuned arms: one per learning rate), longest first (better load
    balance over workers)."""
    jobs = ["SMS uniform"] + ["SMS greedy"] * cfg.greedy_chain + [f"IMP {cfg.m}x"] * cfg.imp_mx + ["SWA"] * cfg.swa
    return jobs + ["IMP"]


def tuned_arms(cfg: Config) -> list[str]:
    """The baselines whose learning rate is tuned on validation over :func:`lr_grid` (SMS's own spread is its
    recipe, so it is not tuned)."""
    return [a for a in trained_arms(cfg) if not a.startswith("SMS ")]


def lr_grid(cfg: Config) -> tuple[float, ...]:
    """The peak learning rates the baselines are tuned over: the ones ``vary=("lr",)`` ingredients retrain with
    (``lr`` times ``m`` factors spaced evenly over ``spread``), whatever ``vary`` is, so no baseline sees fewer."""
    return tuple(float(cfg.lr * f) for f in factors(cfg))


def factors(cfg: Config) -> np.ndarray:
    """The ``m`` factors spaced evenly over ``spread`` (1 when m = 1): what the varied knobs of ingredients scale by."""
    return np.linspace(*cfg.spread, cfg.m) if cfg.m > 1 else np.ones(1)


def ood_metric(spec: str) -> str:
    """The score column of one OOD test set (``"ood_acc"`` alone is the mean over :attr:`Config.ood`)."""
    return f"ood_acc[{spec}]"


def longer(cfg: Config) -> Config:
    """The budget check's config: every phase's retraining ``budget_factor`` x longer in epochs (rounded up), so IMP
    m x, each SWA cycle and each SMS ingredient retrain that much longer too, with the same LLR shape (the warm-up is
    a fraction of each retrain and the decay reaches 0 at its end); the dense pretraining likewise (its own rerun)."""
    return dataclasses.replace(cfg, retrain_epochs=math.ceil(cfg.budget_factor * cfg.retrain_epochs),
                               pretrain_epochs=math.ceil(cfg.budget_factor * cfg.pretrain_epochs))
