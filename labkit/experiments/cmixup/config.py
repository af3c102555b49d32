"""C-Mixup's parameters: the datasets and arms, the validation grid each mixup arm tunes, the training budget, and
the presets (smoke / cpu / gpu as data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from labkit import config
from labkit.config import NON_EMPTY, UNIQUE, BudgetFactor, Count, Device, Interval, Positive

# The arms that train. Every mixup arm mixes hidden states after the model's trunk (manifold mixup, the official
# recipe's --use_manifold 1); the "_input" variants mix inputs instead and are labelled as such in every table.
ARMS = ("erm", "mixup", "feature_mixup", "cmixup", "mixup_input", "feature_mixup_input", "cmixup_input")
MIXUP_ARMS = ARMS[1:]
SELF_PAIR_MAX = 0.5  # a mixup setting pairing a sample with itself more often than with all others together is ERM
TRIVIAL = "mean"  # the trivial baseline's arm name: predict the training mean (scored, never trained)
DATASETS = (
    "single_index",
    "concrete",
    "concrete_lowdata",
    "diabetes",
    "cigar",
    "produc",
    "diamonds",
    "rcf_mnist",
    "rcf_digits",
)
# The kernel each mixup arm draws partners with: none (uniform), over labels (C-Mixup) or over inputs (feature).
KERNEL = {"mixup": None, "feature_mixup": "x", "cmixup": "y"}
# The bandwidth grid of each kernel: (tabular field, image field). Every mixup arm also tunes α (alphas).
SIGMA_GRIDS = {"cmixup": ("sigmas", "image_sigmas"), "feature_mixup": ("feature_sigmas", "image_feature_sigmas")}


def method(arm: str) -> str:
    """The method an arm runs, without its mixing variant: ``"cmixup_input"`` → ``"cmixup"``."""
    return arm.removesuffix("_input")


Grid = Annotated[list[float], Interval("(0, inf)"), NON_EMPTY, UNIQUE]  # a validation grid: distinct positive values


@dataclass
class Config:
    datasets: Annotated[list[Literal[*DATASETS]], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["single_index", "concrete_lowdata", "rcf_mnist"]
    )  # rcf_mnist: the paper's RCF-MNIST built on MNIST (FashionMNIST ships in no package), the official colour rule
    arms: Annotated[list[Literal[*ARMS]], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["erm", "mixup", "feature_mixup", "cmixup", "mixup_input", "cmixup_input"]
    )
    seeds: Count = 10  # seeds 0..seeds-1; each seed also draws the data split, shared by every arm (paired)
    image_seeds: Count = 5  # seeds 0..image_seeds-1 for the image (RCF) datasets, which cost ~10x a tabular run
    alphas: Grid = field(default_factory=lambda: [0.5, 2.0])  # Beta(α, α) grid every mixup arm tunes (official: 2.0)
    sigmas: Grid = field(default_factory=lambda: [0.3, 1.0])  # C-Mixup σ grid, × std(y_train)
    feature_sigmas: Grid = field(
        default_factory=lambda: [0.5, 1.0]
    )  # feature-similarity σ grid, × median ‖x_i − x_j‖ (same size as sigmas: equal tuning budget)
    image_alphas: Grid = field(default_factory=lambda: [0.5, 2.0])  # α grid for RCF (official 2.0)
    # C-Mixup σ for RCF: 0.69 std(y) ≈ the official 0.2 (y ~ U[0, 1))
    image_sigmas: Grid = field(default_factory=lambda: [0.69])
    image_feature_sigmas: Grid = field(default_factory=lambda: [1.0])  # feature σ grid for RCF (size of image_sigmas)
    alpha: Positive = 2.0  # Beta(α, α) of a direct train_arm call without one (the official default)
    lam_per: Literal["batch", "sample"] = "batch"  # "batch": one λ per minibatch (official src/); "sample": per example
    epochs: Count = 400  # most tabular epochs (early stopping usually ends a run sooner; official: 100 fixed)
    patience: Count = 40  # tabular: epochs without a clear validation improvement before stopping (>= 10 % of a run)
    min_improvement: Annotated[float, Interval("[0, 1)")] = 0.01  # relative val-MSE drop that counts as an improvement
    budget_factor: BudgetFactor = 2.0  # convergence check: seed 0 of each chosen arm rerun, caps and patience × this
    batch_size: Count = 32  # tabular minibatch (official: 16 Airfoil, 32 NO2/SkillCraft)
    lr: Positive = 1e-2  # Adam learning rate for the tabular MLP (official Airfoil / SkillCraft: 1e-2)
    hidden: Count = 128  # MLP width (official: 128)
    low_data_n: Count = 200  # training rows for "concrete_lowdata"
    single_index_n: Count = 300  # training rows for "single_index"
    image_epochs: Count = 10  # most epochs for RCF (official: 30 fixed, pretrained); cost: docs/reviews/cmixup-rcf.md
    image_patience: Count = 3  # RCF: epochs without a clear validation improvement before stopping
    image_batch_size: Count = 64  # official RCF-MNIST: 64
    image_lr: Positive = 1e-3  # small ResNet from scratch (official pretrained ResNet-18: 7e-5)
    image_train: Count | None = 2500  # base training images for RCF (None: all; official 40k FashionMNIST)
    image_eval: Count = 1000  # base validation / test images for RCF (official 10k)
    image_rotations: Count = 1  # angles drawn per base image (official: 1)
    image_size: Count = 28  # side after resizing (official 28)
    image_width: Count = 8  # ResNet channels of the first stage (w, 2w, 4w; ResNet-18: 64..512)
    image_scope: Literal["batch", "dataset"] = "batch"  # C-Mixup kernel for images: per batch (official) or dataset
    angle_range: Annotated[float, Interval("(0, 360]")] = 360.0  # RCF θ ~ U[0, this), label θ/360 (official: 360)
    image_exclude_digits: Annotated[list[int], Interval("[0, inf)")] = field(
        default_factory=list
    )  # RCF: digits left out (earlier replicas dropped the 180°-symmetric 0, 1, 8; official: none)
    image_minority: Literal["random", "inverted"] = "inverted"  # RCF minority colour (official: inverted)
    threads: Count = 1  # torch intra-op threads per worker (1 is fastest for these models on 2 shared cores)
    workers: Count = 1  # processes training jobs in parallel (2 on a 2-core machine)
    device: Device = "cpu"  # "cpu", "cuda" or "auto"

    def __post_init__(self) -> None:
        config.check(self)
        for label, feature in zip(*SIGMA_GRIDS.values(), strict=True):  # C-Mixup's and feature mixup's σ grids
            a, b = len(getattr(self, label)), len(getattr(self, feature))
            if a != b:
                raise ValueError(
                    f"{label} and {feature} must have the same size (equal tuning budget), got {a} and {b}"
                )


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": ["single_index", "rcf_digits"],
        "seeds": 2,
        "image_seeds": 2,
        "epochs": 6,
        "patience": 2,
        "alphas": [0.5, 2.0],
        "sigmas": [0.3, 1.0],
        "feature_sigmas": [0.5, 1.0],
        "image_alphas": [2.0],
        "image_epochs": 2,
        "image_patience": 1,
        "image_train": 200,
        "image_eval": 150,
        "image_size": 8,
        "image_width": 4,
        "single_index_n": 120,
    },
    # ≤ 45 min on 2 idle cores (estimate from rates measured on a loaded machine: docs/reviews/cmixup-rcf.md)
    "cpu": {"workers": 2},
    "gpu": {
        "datasets": ["single_index", "concrete", "concrete_lowdata", "diabetes", "cigar", "produc", "rcf_mnist"],
        "arms": list(ARMS),
        "seeds": 10,
        "image_seeds": 10,
        "alphas": [0.2, 0.5, 1.0, 2.0, 4.0],
        "sigmas": [0.1, 0.3, 1.0],
        "feature_sigmas": [0.2, 0.5, 1.0],
        "image_alphas": [0.2, 0.5, 1.0, 2.0, 4.0],
        "image_sigmas": [0.35, 0.69, 1.4],
        "image_feature_sigmas": [0.5, 1.0, 2.0],
        "image_epochs": 30,
        "image_patience": 8,
        "image_train": None,
        "image_eval": 10000,
        "image_width": 32,
        "device": "auto",
    },
}


def configurations(arm: str, cfg: Config, image: bool) -> list[tuple[float | None, float | None]]:
    """The (σ, α) settings ``arm`` tunes on validation: ERM none ``[(None, None)]``; every mixup arm α over ``alphas``
    (``image_alphas``), and a kernel arm its bandwidth σ over its grid too (grids of equal size: equal budget)."""
    if arm == "erm":
        return [(None, None)]
    alphas = cfg.image_alphas if image else cfg.alphas
    fields = SIGMA_GRIDS.get(method(arm))
    sigmas = [None] if fields is None else getattr(cfg, fields[image])
    return [(s, a) for s in sigmas for a in alphas]
