"""Sparse Model Soups' parameters: the data and network, the prune-retrain schedule, the m ingredients per phase, the
arms to run, the paired seeds and the budget check; plus the names of the arms every room shares."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from labkit import config
from labkit.config import BudgetFactor, Count, Device, Interval, NonNegative, Positive

DATASETS = ("mnist", "mnist1d", "digits")
ARCHS = ("mlp", "cnn", "resnet")
VARY = ("seed", "lr", "wd")  # what differs between the ingredients of one phase

# Arms named outside the trained chains (IMP, IMP m x, SWA, SMS uniform, SMS greedy): compute labels its rows with
# them and the claims compare them.
CHANCE = "chance (majority class)"  # the trivial baseline of the sanity check: the test set's most frequent label
DENSE = "dense"  # the pretrained model every chain of a seed starts from (phase 0): the health reference
INGREDIENT = "ingredient"  # a retrained copy of an SMS phase (``phases.member`` says which)
GREEDY_OF_UNIFORM = "SMS greedy (uniform chain)"  # the greedy soup of the uniform chain's ingredients
BEST_INGREDIENT = "best ingredient (val)"  # the last phase's ingredient with the best validation accuracy
MEAN_INGREDIENT = "ingredients (mean)"  # the mean accuracy of the last phase's ingredients
NAIVE = "naive average (different masks)"
REPRUNED = "naive average re-pruned"

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
    vary: Literal[*VARY] = "lr"  # what differs between ingredients (the trial's lr gave more diversity)
    spread: Annotated[tuple[float, float], Interval("(0, inf)")] = (0.5, 1.5)  # vary="lr"/"wd": factors spaced
    # evenly over this range
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
    ood: str = "rotate:35+noise:0.25"  # corruption of the test set (labkit.data.corruptions spec)
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
    # old 5 epochs on 10k), 10 dense epochs, 5 paired seeds, greedy soup and SWA as their own chains, 2 workers:
    # ~12 min wall on 2 idle cores (estimate from timed jobs; see the notebook's cost cell)
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
        "ood": "rotate:35+noise:0.25",
        "threads": 4,
    },
}


def trained_arms(cfg: Config) -> list[str]:
    """The arms trained for every seed, one job each, longest first (better load balance over workers)."""
    jobs = ["SMS uniform"] + ["SMS greedy"] * cfg.greedy_chain + [f"IMP {cfg.m}x"] * cfg.imp_mx + ["SWA"] * cfg.swa
    return jobs + ["IMP"]


def longer(cfg: Config) -> Config:
    """The budget check's config: every phase's retraining ``budget_factor`` x longer in epochs (rounded up), so IMP
    m x, each SWA cycle and each SMS ingredient retrain that much longer too, with the same LLR shape (the warm-up is
    a fraction of each retrain and the decay reaches 0 at its end); the dense pretraining likewise (its own rerun).
    The reruns skip what is not a trained arm: IMP's extra chains of the naive average (``naive_runs=0``)."""
    return dataclasses.replace(cfg, retrain_epochs=math.ceil(cfg.budget_factor * cfg.retrain_epochs),
                               pretrain_epochs=math.ceil(cfg.budget_factor * cfg.pretrain_epochs), naive_runs=0)
