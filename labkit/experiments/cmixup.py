"""C-Mixup (Yao et al., NeurIPS 2022): ERM, mixup, manifold mixup, feature-similarity mixup and C-Mixup on
regression, under the reproduction protocol (:mod:`labkit.protocol`).

- Every arm trains with the same loop (:mod:`labkit.experiments.cmixup_train`: Adam, MSE, λ ~ Beta(α, α) per batch,
  the best-validation-MSE checkpoint, early stopping on validation so each run reaches its plateau).
- Convergence that can fail: the first seed of every trained arm at its chosen configuration is rerun at
  ``budget_factor`` × the budget (:func:`longer`: epoch cap *and* patience scaled, since early stopping, not the cap,
  ends every run), and :func:`labkit.protocol.budget_check` compares the two validation RMSEs.
- Equal tuning budget: C-Mixup's σ, feature-similarity mixup's σ and vanilla mixup's α are each chosen on
  validation rows only (:func:`labkit.protocol.select_best`) from grids of the same size.
- The trivial baseline ``mean`` (predict the training mean) and ``best_prior`` (per dataset, the non-C-Mixup arm
  with the best validation RMSE: the paper's "best prior approach") join the per-seed scores.
- Claims are data in :mod:`labkit.experiments.cmixup_claims`, judged with paired Student-t intervals; a mixup arm
  whose chosen kernel mostly pairs a sample with itself is flagged there (it is ERM under another name).

(dataset, seed, arm, configuration) jobs run in ``cfg.workers`` spawned processes. Nothing here draws or prints.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from labkit import protocol
from labkit.data import regression
from labkit.experiments import (
    check_types,
    cmixup_claims,
    require_choice,
    require_device,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_subset,
    require_unique,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.experiments.cmixup_train import ARMS, mean_predictor, train_arm

__all__ = [
    "ARMS",
    "DATASETS",
    "PRESETS",
    "Config",
    "Results",
    "configure",
    "load",
    "mean_predictor",
    "run",
    "train_arm",
]

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
KERNEL_ARMS = {arm: grids[1] for arm, grids in TUNED.items() if grids[0] == "sigma"}
GRIDS = tuple(dict.fromkeys(field for _, *fields in TUNED.values() for field in fields))  # every grid field

# The paper's abstract: C-Mixup's improvement over the best prior approach (labelled references only). Its third
# number (+4.76 % task generalization, meta-regression) is not tested here.
PAPER_RELATIVE_IMPROVEMENT = {"in-distribution": 6.56, "out-of-distribution": 5.82}


@dataclass
class Config:
    datasets: list[str] = field(
        default_factory=lambda: ["single_index", "concrete_lowdata", "rcf_digits"]
    )  # see DATASETS (RCF from sklearn digits: rotation is learnable at 12 px over 180°, MNIST at 14 px is not)
    arms: list[str] = field(default_factory=lambda: ["erm", "mixup", "feature_mixup", "cmixup"])  # see ARMS
    seeds: int = 10  # seeds 0..seeds-1; each seed also draws the data split, shared by every arm (paired)
    image_seeds: int = 5  # seeds for the image (RCF) datasets, which cost ~10x a tabular run
    sigmas: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0])  # C-Mixup σ grid, × std(y_train)
    alphas: list[float] = field(default_factory=lambda: [0.2, 0.5, 1.0, 2.0, 4.0])  # mixup α grid (same size: budget)
    feature_sigmas: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.5, 1.0, 2.0]
    )  # feature-similarity σ grid, × median ‖x_i − x_j‖
    image_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])  # C-Mixup σ grid for RCF
    image_alphas: list[float] = field(default_factory=lambda: [0.5, 2.0, 4.0])  # mixup α grid for RCF
    image_feature_sigmas: list[float] = field(default_factory=lambda: [0.2, 0.5, 1.0])  # feature σ grid for RCF
    alpha: float = 2.0  # Beta(α, α) for C-Mixup and feature mixup; the official code uses 2.0 almost everywhere
    lam_per: str = "batch"  # "batch": one λ per minibatch (official src/); "sample": one per example (PovertyMap)
    epochs: int = 400  # most tabular epochs (early stopping usually ends a run sooner; official: 100 fixed)
    patience: int = 40  # tabular: epochs without a clear validation improvement before stopping (>= 10 % of a run)
    min_improvement: float = 0.01  # relative drop of validation MSE that counts as an improvement
    budget_factor: float = 2.0  # convergence check: seed 0 of each chosen arm rerun with epoch caps and patience × this
    batch_size: int = 32  # tabular minibatch (official: 16 Airfoil, 32 NO2/SkillCraft)
    lr: float = 1e-2  # Adam learning rate for the tabular MLP (official Airfoil / SkillCraft: 1e-2)
    hidden: int = 128  # MLP width (official: 128)
    low_data_n: int = 200  # training rows for "concrete_lowdata"
    single_index_n: int = 300  # training rows for "single_index"
    image_epochs: int = 60  # most epochs for RCF (early stopping ends most runs in 15-35)
    image_patience: int = 5  # RCF: epochs without a clear validation improvement before stopping
    image_batch_size: int = 64  # official RCF-MNIST: 64
    image_lr: float = 3e-3  # CNN from scratch (official pretrained ResNet-18 used 7e-5); plateaus in ~15-30 epochs
    image_train: int | None = 2000  # base training images for RCF (None: all)
    image_eval: int = 1000  # base validation / test images for RCF
    image_rotations: int = 1  # angles drawn per base image
    image_size: int = 12  # side after resizing (digits 8 -> 12; MNIST 28 -> 12 keeps CPU runs short)
    image_width: int = 8  # CNN channels in the first conv (doubling per block); 8 learns RCF-digits as well as 16
    image_scope: str = "batch"  # C-Mixup kernel for images: "batch" (official RCF-MNIST) or "dataset"
    angle_range: float = 180.0  # RCF rotations θ ~ U[0, angle_range), label θ/360 (official 360: unlearnable here)
    image_exclude_digits: list[int] = field(default_factory=lambda: [0, 1, 8])  # RCF: drop 180°-symmetric digits
    image_minority: str = "random"  # RCF minority training colour: "random" or "inverted" (official; a shortcut)
    threads: int = 1  # torch intra-op threads per worker (1 is fastest for these models on 2 shared cores)
    workers: int = 1  # processes training jobs in parallel (2 on a 2-core machine)
    device: str = "cpu"  # "cpu", "cuda" or "auto"

    def __post_init__(self) -> None:
        check_types(self)
        require_non_empty(self, "datasets", "arms", *GRIDS)
        require_subset("datasets", self.datasets, DATASETS)
        require_subset("arms", self.arms, ARMS)
        require_positive(
            self,
            "seeds",
            "image_seeds",
            *GRIDS,
            "alpha",
            "epochs",
            "patience",
            "batch_size",
            "lr",
            "hidden",
            "low_data_n",
            "single_index_n",
            "image_epochs",
            "image_patience",
            "image_batch_size",
            "image_lr",
            "image_train",
            "image_eval",
            "image_rotations",
            "image_size",
            "image_width",
            "threads",
            "workers",
        )
        require_unique(self, *GRIDS)
        require_non_negative(self, "image_exclude_digits")
        require_within(self, "min_improvement", 0, 1, "[)")
        require_within(self, "budget_factor", 2, math.inf, "[)")  # the protocol's longer run is >= 2x the budget
        require_within(self, "angle_range", 0, 360, "(]")
        require_choice(self, "lam_per", ("batch", "sample"))
        require_choice(self, "image_scope", ("batch", "dataset"))
        require_choice(self, "image_minority", ("random", "inverted"))
        require_device(self)


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


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


def load(name: str, seed: int, cfg: Config) -> regression.RegressionSplits:
    """One dataset by name (see ``DATASETS``); the split depends on ``seed``."""
    if name == "single_index":
        return regression.single_index(seed, n_train=cfg.single_index_n)
    if name in ("concrete", "concrete_lowdata"):
        return regression.concrete(seed, n_train=cfg.low_data_n if name == "concrete_lowdata" else None)
    if name == "diabetes":
        return regression.diabetes(seed)
    if name in ("cigar", "produc"):
        return regression.panel(name, seed)
    if name == "diamonds":
        return regression.diamonds(seed)
    if name in ("rcf_mnist", "rcf_digits"):
        from labkit.data import images

        base = images.mnist() if name == "rcf_mnist" else images.digits(seed)
        size = cfg.image_size if name == "rcf_mnist" else max(cfg.image_size, 8)
        return regression.rcf(
            base,
            seed,
            n_train=cfg.image_train,
            n_eval=cfg.image_eval,
            rotations=cfg.image_rotations if name == "rcf_mnist" else max(cfg.image_rotations, 3),
            size=size,
            angle_range=cfg.angle_range,
            exclude_digits=tuple(cfg.image_exclude_digits),
            minority=cfg.image_minority,
        )
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def is_image(name: str) -> bool:
    """True for the RCF image datasets (own seeds, grids and CNN)."""
    return name.startswith("rcf")


def longer(cfg: Config) -> Config:
    """``cfg`` at ``budget_factor`` × the training budget, for the convergence check: the tabular and image epoch caps
    *and* patiences are scaled (rounded up). Early stopping, not the cap, ends every run today, so scaling the cap
    alone would change nothing; with the patience scaled too, a run whose validation MSE still creeps down (less than
    ``min_improvement`` per patience window, more per scaled window) trains on. Same seed, optimiser, constant
    learning rate and stopping rule (same schedule shape): the longer run replays the report's run and continues it."""
    f = cfg.budget_factor
    return dataclasses.replace(
        cfg,
        epochs=math.ceil(cfg.epochs * f),
        patience=math.ceil(cfg.patience * f),
        image_epochs=math.ceil(cfg.image_epochs * f),
        image_patience=math.ceil(cfg.image_patience * f),
    )


def grid(arm: str, cfg: Config, image: bool) -> tuple[str | None, list[float | None]]:
    """The tuned hyper-parameter of ``arm`` (``"sigma"``, ``"alpha"`` or None) and its validation grid."""
    if arm not in TUNED:
        return None, [None]
    column, tabular, images = TUNED[arm]
    return column, list(getattr(cfg, images if image else tabular))


# --------------------------------------------------------------------------------------------------------- runs
@dataclass
class Results:
    """Tidy tables from :func:`run`."""

    runs: pd.DataFrame  # every trained configuration: dataset, arm, seed, sigma, alpha, metrics, epochs, seconds
    curves: pd.DataFrame  # dataset, arm, seed, sigma, alpha, budget, epoch, val_mse (every run and every rerun)
    validation: pd.DataFrame  # the selection table: dataset, arm, seed, sigma, alpha, split ("val"), val_rmse
    chosen: pd.DataFrame  # dataset, arm, parameter, value, grid: the configuration chosen on validation
    scores: pd.DataFrame  # per (dataset, arm, seed) of the chosen configurations, plus "mean" and "best_prior"
    claims: pd.DataFrame  # labkit.protocol.claims_table: claim, role, effect [interval], verdicts, sanity, rule
    sanity: pd.DataFrame  # dataset, arm, converged, budget_1x / budget_long, self_pair_rate, beats_trivial, flags
    budget: pd.DataFrame  # the convergence check: dataset, arm, seed, budget, val RMSE at 1x and longer, epochs run
    reruns: pd.DataFrame  # the longer runs themselves (columns of ``runs`` plus budget)


_SPLITS: dict[tuple[str, int], regression.RegressionSplits] = {}  # per-process cache of the last loaded split


def _split(name: str, seed: int, cfg: Config) -> regression.RegressionSplits:
    if (name, seed) not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[(name, seed)] = load(name, seed, cfg)
    return _SPLITS[(name, seed)]


def _run_job(args: tuple[Config, str, int, str, float | None, float | None]) -> dict[str, Any]:
    """Train one (dataset, seed, arm, σ, α) and return its row (a worker process entry point)."""
    cfg, name, seed, arm, sigma, alpha = args
    data = _split(name, seed, cfg)
    row = train_arm(data, arm, seed, cfg, sigma, is_image(name), alpha)
    return {
        "dataset": name,
        "arm": arm,
        "seed": seed,
        "sigma": sigma,
        "alpha": alpha,
        **row,
        "n_train": data.notes["n_train"],
    }


def _jobs(cfg: Config) -> list[tuple[str, int, str, float | None, float | None]]:
    jobs = []
    for name in cfg.datasets:
        for seed in range(cfg.image_seeds if is_image(name) else cfg.seeds):
            for arm in cfg.arms:
                column, values = grid(arm, cfg, is_image(name))
                jobs += [
                    (name, seed, arm, v if column == "sigma" else None, v if column == "alpha" else None)
                    for v in values
                ]
    return jobs


def _run_jobs(
    cfg: Config,
    jobs: list[tuple[str, int, str, float | None, float | None]],
    progress: bool,
    chunksize: int = 4,
    desc: str = "C-Mixup runs",
) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``cfg.workers`` spawned processes when more than one (results in job order)."""
    args = [(cfg, *job) for job in jobs]
    if cfg.workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=context) as pool:
            return list(
                tqdm(pool.map(_run_job, args, chunksize=chunksize), total=len(jobs), desc=desc, disable=not progress)
            )
    return [_run_job(a) for a in tqdm(args, desc=desc, disable=not progress)]


def _rerun_longer(cfg: Config, selected: pd.DataFrame, progress: bool) -> list[dict[str, Any]]:
    """The convergence check's runs: the first seed of every trained arm at its chosen configuration, trained again
    under :func:`longer` (image jobs first and one job per task, so two workers finish together)."""
    def value(v: float) -> float | None:
        return None if pd.isna(v) else float(v)

    first = selected[selected["seed"] == 0]
    jobs = [(r.dataset, 0, r.arm, value(r.sigma), value(r.alpha)) for r in first.itertuples()]
    jobs.sort(key=lambda job: not is_image(job[0]))
    rows = _run_jobs(longer(cfg), jobs, progress, chunksize=1, desc=f"C-Mixup runs at {cfg.budget_factor:g}x")
    return [{**r, "budget": cfg.budget_factor} for r in rows]


def _curves(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The validation MSE per epoch of every run in ``rows`` (budget 1 unless the row says otherwise)."""
    key = ["dataset", "arm", "seed", "sigma", "alpha"]
    curves = pd.DataFrame(
        [
            {**{k: r[k] for k in key}, "budget": r.get("budget", 1.0), "epoch": e, "val_mse": v}
            for r in rows
            for e, v in enumerate(r["val_curve"])
        ]
    )
    curves[["sigma", "alpha"]] = curves[["sigma", "alpha"]].astype(float)
    return curves


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run in ``rows`` (its curve left out), σ and α as floats (NaN where the arm has none)."""
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "val_curve"} for r in rows])
    table[["sigma", "alpha"]] = table[["sigma", "alpha"]].astype(float)
    return table


def _select(runs: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per dataset and tuned arm, the grid value with the best mean validation RMSE (protocol.select_best on
    validation rows only). Returns the validation table, the chosen configurations and the chosen runs."""
    validation = runs[["dataset", "arm", "seed", "sigma", "alpha", "val_rmse"]].assign(split="val")
    chosen, keep = [], []
    for (name, arm), group in runs.groupby(["dataset", "arm"], sort=False):
        column, values = grid(arm, cfg, is_image(name))
        if column is None:
            keep.append(group)
            continue
        val = validation.loc[group.index]
        value = protocol.select_best(val, column, "val_rmse")[column]
        chosen.append(
            {
                "dataset": name,
                "arm": arm,
                "parameter": column,
                "value": value,
                "grid": ", ".join(f"{v:g}" for v in values),
            }
        )
        keep.append(group[group[column] == value])
    return validation, pd.DataFrame(chosen), pd.concat(keep, ignore_index=True)


def run(cfg: Config, progress: bool = True) -> Results:
    """Every dataset × seed × arm × grid value: train, select on validation, rerun the first seed of each chosen arm
    at ``budget_factor`` × the budget, judge the claims (tidy tables)."""
    rows = _run_jobs(cfg, _jobs(cfg), progress)
    runs = _table(rows)
    validation, chosen, selected = _select(runs, cfg)
    longer_rows = _rerun_longer(cfg, selected, progress)
    reruns = _table(longer_rows)
    curves = _curves(rows + longer_rows)
    trivial = []
    for name in cfg.datasets:
        for seed in range(cfg.image_seeds if is_image(name) else cfg.seeds):
            trivial.append({"dataset": name, "arm": "mean", "seed": seed, **mean_predictor(_split(name, seed, cfg))})
    scores = cmixup_claims.per_seed_scores(selected, pd.DataFrame(trivial), validation)
    budget_runs = pd.concat([selected[selected["seed"] == 0].assign(budget=1.0), reruns], ignore_index=True)
    claims, checks, budget = cmixup_claims.verdicts(scores, budget_runs)
    return Results(runs, curves, validation, chosen, scores, claims, checks, budget, reruns)


# ------------------------------------------------------------------------------------------------------ reading
def verdict_text(results: Results) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, every claim with its effect, interval, n
    and verdict, then sanity flags and the choices made on validation."""
    picks = [f"{r.dataset}/{r.arm} {r.parameter}={r.value:g}" for r in results.chosen.itertuples()]
    notes = ["chosen on validation: " + ", ".join(picks)] if picks else []
    ok = (f"every trained arm converged (seed 0 at {results.budget['budget'].max():g}x the budget), every mixup arm "
          "mixed and every arm beat the mean predictor")
    return protocol.verdict_text(results.claims, results.sanity, ok, notes=notes)


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per dataset and arm test (and worst-domain) RMSE and the self-pair rate of
    mixup arms, each claim's effect."""
    out = {}
    means = results.scores.groupby(["dataset", "arm"], sort=False).mean(numeric_only=True)
    for (name, arm), row in means.iterrows():
        for col in ("test_rmse", "worst_rmse", "self_pair_rate"):
            if col in row and pd.notna(row[col]):
                out[f"{name}/{arm}/{col}"] = float(row[col])
    for r in results.claims.itertuples():
        out[f"claim/{r.claim.replace(' (ID)', '_id').replace(': ', '/')}_pct"] = float(r.mean)
    return out


def sizes(cfg: Config) -> dict[str, int]:
    """Trained runs per dataset (seeds × configurations), to read the cost of a preset."""
    out: dict[str, int] = {}
    for name, *_ in _jobs(cfg):
        out[name] = out.get(name, 0) + 1
    return out
