"""C-Mixup's parameters: the datasets and arms, the validation grid each mixup arm tunes, the training budget, and
the presets (smoke / cpu / gpu as data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from labkit import config
from labkit.config import NON_EMPTY, UNIQUE, BudgetFactor, Count, Device, Interval, Positive

ARMS = ("erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup", "cmixup_manifold")  # the arms that train
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
# The hyper-parameter each arm tunes on validation: (column, tabular grid field, image grid field).
TUNED = {
    "mixup": ("alpha", "alphas", "image_alphas"),
    "manifold_mixup": ("alpha", "alphas", "image_alphas"),
    "feature_mixup": ("sigma", "feature_sigmas", "image_feature_sigmas"),
    "cmixup": ("sigma", "sigmas", "image_sigmas"),
    "cmixup_manifold": ("sigma", "sigmas", "image_sigmas"),
}

Grid = Annotated[list[float], Interval("(0, inf)"), NON_EMPTY, UNIQUE]  # a validation grid: distinct positive values


@dataclass
class Config:
    datasets: Annotated[list[Literal[*DATASETS]], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["single_index", "concrete_lowdata", "rcf_digits"]
    )  # RCF from sklearn digits: rotation is learnable at 12 px over 180°, MNIST at 14 px is not
    arms: Annotated[list[Literal[*ARMS]], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["erm", "mixup", "feature_mixup", "cmixup"]
    )
    seeds: Count = 10  # seeds 0..seeds-1; each seed also draws the data split, shared by every arm (paired)
    image_seeds: Count = 5  # seeds 0..image_seeds-1 for the image (RCF) datasets, which cost ~10x a tabular run
    sigmas: Grid = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0])  # C-Mixup σ grid, × std(y_train)
    alphas: Grid = field(default_factory=lambda: [0.2, 0.5, 1.0, 2.0, 4.0])  # mixup α grid (same size: budget)
    feature_sigmas: Grid = field(
        default_factory=lambda: [0.1, 0.2, 0.5, 1.0, 2.0]
    )  # feature-similarity σ grid, × median ‖x_i − x_j‖
    image_sigmas: Grid = field(default_factory=lambda: [0.1, 0.3, 1.0])  # C-Mixup σ grid for RCF
    image_alphas: Grid = field(default_factory=lambda: [0.5, 2.0, 4.0])  # mixup α grid for RCF
    image_feature_sigmas: Grid = field(default_factory=lambda: [0.2, 0.5, 1.0])  # feature σ grid for RCF
    alpha: Positive = 2.0  # Beta(α, α) for C-Mixup and feature mixup; the official code uses 2.0 almost everywhere
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
    image_epochs: Count = 60  # most epochs for RCF (early stopping ends most runs in 15-35)
    image_patience: Count = 5  # RCF: epochs without a clear validation improvement before stopping
    image_batch_size: Count = 64  # official RCF-MNIST: 64
    image_lr: Positive = 3e-3  # CNN from scratch (official pretrained ResNet-18 used 7e-5); plateaus in ~15-30 epochs
    image_train: Count | None = 2000  # base training images for RCF (None: all)
    image_eval: Count = 1000  # base validation / test images for RCF
    image_rotations: Count = 1  # angles drawn per base image
    image_size: Count = 12  # side after resizing (digits 8 -> 12; MNIST 28 -> 12 keeps CPU runs short)
    image_width: Count = 8  # CNN channels in the first conv (doubling per block); 8 learns RCF-digits as well as 16
    image_scope: Literal["batch", "dataset"] = "batch"  # C-Mixup kernel for images: per batch (official) or dataset
    angle_range: Annotated[float, Interval("(0, 360]")] = 180.0  # RCF θ ~ U[0, this), label θ/360 (official: 360)
    image_exclude_digits: Annotated[list[int], Interval("[0, inf)")] = field(
        default_factory=lambda: [0, 1, 8]
    )  # RCF: drop 180°-symmetric digits
    image_minority: Literal["random", "inverted"] = "random"  # RCF minority colour (official "inverted": a shortcut)
    threads: Count = 1  # torch intra-op threads per worker (1 is fastest for these models on 2 shared cores)
    workers: Count = 1  # processes training jobs in parallel (2 on a 2-core machine)
    device: Device = "cpu"  # "cpu", "cuda" or "auto"

    def __post_init__(self) -> None:
        config.check(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": ["single_index", "rcf_digits"],
        "seeds": 2,
        "image_seeds": 2,
        "epochs": 6,
        "patience": 2,
        "sigmas": [0.3, 1.0],
        "alphas": [0.5, 2.0],
        "feature_sigmas": [0.5, 1.0],
        "image_sigmas": [1.0],
        "image_alphas": [2.0],
        "image_feature_sigmas": [0.5],
        "image_epochs": 2,
        "image_patience": 1,
        "image_train": 300,
        "image_eval": 200,
        "image_size": 8,
        "image_width": 8,
        "single_index_n": 120,
    },
    "cpu": {"workers": 2},
    "gpu": {
        "datasets": ["single_index", "concrete", "concrete_lowdata", "diabetes", "cigar", "produc", "rcf_mnist"],
        "arms": list(ARMS),
        "image_seeds": 10,
        "image_sigmas": [0.03, 0.1, 0.3, 1.0, 3.0],
        "image_alphas": [0.2, 0.5, 1.0, 2.0, 4.0],
        "image_feature_sigmas": [0.1, 0.2, 0.5, 1.0, 2.0],
        "image_epochs": 60,
        "image_patience": 6,
        "image_train": None,
        "image_eval": 10000,
        "image_lr": 1e-3,
        "image_size": 28,
        "image_width": 32,
        "device": "auto",
    },
}


def grid(arm: str, cfg: Config, image: bool) -> tuple[str | None, list[float | None]]:
    """The tuned hyper-parameter of ``arm`` (``"sigma"``, ``"alpha"`` or None) and its validation grid."""
    if arm not in TUNED:
        return None, [None]
    column, tabular, images = TUNED[arm]
    return column, list(getattr(cfg, images if image else tabular))
