"""C-Mixup (Yao et al., NeurIPS 2022): ERM, mixup, manifold mixup, feature-similarity mixup and C-Mixup on
regression, with the bandwidth chosen on validation, as the official code (github.com/huaxiuyao/C-Mixup) trains them.

One loop serves every arm: Adam, MSE, λ ~ Beta(α, α) per batch, partners from the whole training set (or, for
images with ``image_scope="batch"``, the official batch-level kernel), the best-validation-MSE checkpoint.
Results are tidy tables; nothing here draws or prints.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from labkit import mixup, seed_everything, stats
from labkit.data import regression
from labkit.experiments import (
    check_types,
    require_choice,
    require_device,
    require_non_empty,
    require_positive,
    require_subset,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.models.regressors import CNNRegressor, MLPRegressor

ARMS = ("erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup", "cmixup_manifold")
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
KERNEL_ARMS = {"feature_mixup": "feature_sigmas", "cmixup": "sigmas", "cmixup_manifold": "sigmas"}

# The paper's abstract: C-Mixup's improvement over the best prior approach (reference lines only).
PAPER_RELATIVE_IMPROVEMENT = {"in-distribution": 6.56, "task generalization": 4.76, "out-of-distribution": 5.82}


@dataclass
class Config:
    datasets: list[str] = field(
        default_factory=lambda: ["single_index", "concrete_lowdata", "rcf_mnist"]
    )  # see DATASETS
    arms: list[str] = field(default_factory=lambda: ["erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup"])
    seeds: int = 5  # seeds 0..seeds-1; each seed also draws the data split, shared by every arm (paired)
    image_seeds: int = 3  # seeds for the image (RCF) datasets, which cost ~10x a tabular run
    sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])  # C-Mixup σ grid, in units of std(y_train)
    image_sigmas: list[float] = field(default_factory=lambda: [0.3, 1.0])  # C-Mixup σ grid for RCF (official ≈ 0.7)
    feature_sigmas: list[float] = field(default_factory=lambda: [0.5])  # feature σ grid, × median ‖x_i − x_j‖
    alpha: float = 2.0  # Beta(α, α) for λ; the official code uses 2.0 for almost every dataset
    lam_per: str = "batch"  # "batch": one λ per minibatch (official src/); "sample": one per example (PovertyMap)
    epochs: int = 100  # tabular epochs (official Airfoil: 100)
    batch_size: int = 32  # tabular minibatch (official: 16 Airfoil, 32 NO2/SkillCraft)
    lr: float = 1e-2  # Adam learning rate for the tabular MLP (official Airfoil / SkillCraft: 1e-2)
    hidden: int = 128  # MLP width (official: 128)
    low_data_n: int = 200  # training rows for "concrete_lowdata"
    single_index_n: int = 300  # training rows for "single_index"
    image_epochs: int = 8  # epochs for RCF
    image_batch_size: int = 64  # official RCF-MNIST: 64
    image_lr: float = 1e-3  # CNN from scratch (official pretrained ResNet-18 used 7e-5)
    image_train: int | None = 2000  # base training images for RCF (None: all)
    image_eval: int = 1000  # base validation / test images for RCF
    image_rotations: int = 1  # angles drawn per base image
    image_size: int = 14  # side after resizing (MNIST 28 -> 14 keeps CPU runs short)
    image_width: int = 16  # CNN channels in the first conv (doubling per block)
    image_scope: str = "batch"  # C-Mixup kernel for images: "batch" (official RCF-MNIST) or "dataset"
    angle_range: float = 360.0  # RCF rotations θ ~ U[0, angle_range); label θ/360
    threads: int = 1  # torch intra-op threads (1 is fastest for these models on 2 shared cores)
    device: str = "cpu"  # "cpu", "cuda" or "auto"

    def __post_init__(self) -> None:
        check_types(self)
        require_non_empty(self, "datasets", "arms", "sigmas", "image_sigmas", "feature_sigmas")
        require_subset("datasets", self.datasets, DATASETS)
        require_subset("arms", self.arms, ARMS)
        require_positive(self, "seeds", "image_seeds", "sigmas", "image_sigmas", "feature_sigmas", "alpha", "epochs",
                         "batch_size", "lr", "hidden", "low_data_n", "single_index_n", "image_epochs",
                         "image_batch_size", "image_lr", "image_train", "image_eval", "image_rotations", "image_size",
                         "image_width", "threads")
        require_within(self, "angle_range", 0, 360, "(]")
        require_choice(self, "lam_per", ("batch", "sample"))
        require_choice(self, "image_scope", ("batch", "dataset"))
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": ["single_index", "rcf_digits"],
        "seeds": 2,
        "image_seeds": 1,
        "epochs": 4,
        "sigmas": [0.3, 1.0],
        "image_sigmas": [1.0],
        "image_epochs": 1,
        "image_train": 300,
        "image_eval": 200,
        "image_size": 8,
        "image_width": 8,
        "single_index_n": 120,
    },
    "cpu": {},
    "gpu": {
        "datasets": ["single_index", "concrete", "concrete_lowdata", "diabetes", "cigar", "produc", "rcf_mnist"],
        "arms": list(ARMS),
        "seeds": 10,
        "image_seeds": 5,
        "sigmas": [0.03, 0.1, 0.3, 1.0, 3.0],
        "image_sigmas": [0.1, 0.3, 0.7, 1.0],
        "feature_sigmas": [0.1, 0.2, 0.5],
        "image_epochs": 30,
        "image_train": None,
        "image_eval": 10000,
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
        )
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def _metrics(pred: torch.Tensor, y: torch.Tensor, domain: np.ndarray | None) -> dict[str, float]:
    err = (pred - y).double()
    out = {"rmse": float(err.square().mean().sqrt())}
    nz = y.abs() > 0
    out["mape"] = float((err[nz].abs() / y[nz].abs()).mean() * 100) if nz.any() else float("nan")
    if domain is not None:
        d = torch.as_tensor(domain)
        out["worst_rmse"] = max(float(err[d == k].square().mean().sqrt()) for k in d.unique())
    return out


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(x[s : s + chunk]) for s in range(0, len(x), chunk)])
    model.train()
    return out


def _pair_sampler(
    arm: str, tx: torch.Tensor, ty: torch.Tensor, sigma: float | None, image: bool, cfg: Config, gen: torch.Generator
) -> tuple[mixup.CMixupSampler | mixup.UniformSampler | None, float]:
    """The partner sampler of ``arm`` and its bandwidth (NaN without a kernel): uniform (mixup), a kernel over labels
    (C-Mixup) or over inputs (feature-similarity mixup); None for ERM and for batch-level C-Mixup on images."""
    n = len(ty)
    bandwidth = float("nan")
    sampler: mixup.CMixupSampler | mixup.UniformSampler | None = None
    if arm in ("mixup", "manifold_mixup"):
        sampler = mixup.UniformSampler(n)
    elif arm in ("cmixup", "cmixup_manifold"):
        bandwidth = mixup.bandwidth_from_std(ty, sigma)
        if not (image and cfg.image_scope == "batch"):
            sampler = mixup.CMixupSampler(ty, bandwidth, mode="auto")
    elif arm == "feature_mixup":
        flat = tx.reshape(n, -1).double()
        sub = flat[torch.randperm(n, generator=gen)[:1000]]
        bandwidth = float(torch.pdist(sub).median()) * sigma
        sampler = mixup.CMixupSampler(flat, bandwidth, mode="dense" if n <= 4096 else "truncated")
    return sampler, bandwidth


def _mixup_loss(
    model: torch.nn.Module,
    manifold: mixup.ManifoldMixup | None,
    sampler: mixup.CMixupSampler | mixup.UniformSampler | None,
    bandwidth: float,
    idx: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    cfg: Config,
    gen: torch.Generator,
) -> tuple[torch.Tensor, float, float]:
    """MSE on the batch ``idx`` mixed with sampled partners (inputs, or hidden states with ``manifold``); also the
    batch's self-pair rate and mean label gap |y_i - y_j| of its pairs."""
    bs, n = len(idx), len(ty)
    x, y = tx[idx], ty[idx]
    if sampler is not None:
        partner = sampler.sample(idx, gen)
    else:  # official batch-level C-Mixup: candidates = anchors + a random partner batch
        pool = torch.cat([idx, torch.randint(0, n, (bs,), generator=gen)])
        partner = pool[mixup.within_batch_partners(ty[idx].cpu(), bandwidth, ty[pool].cpu(), gen)]
    lam = mixup.beta_lambda(cfg.alpha, () if cfg.lam_per == "batch" else bs, gen).to(tx.device)
    x2, y2 = tx[partner.to(tx.device)], ty[partner.to(tx.device)]
    if manifold is not None:
        _, y_mix = mixup.mix(x, y, x2, y2, lam)
        loss = torch.nn.functional.mse_loss(manifold(x, x2, lam), y_mix)
    else:
        x_mix, y_mix = mixup.mix(x, y, x2, y2, lam)
        loss = torch.nn.functional.mse_loss(model(x_mix), y_mix)
    return loss, mixup.self_pair_rate(idx, partner), float((ty[idx] - y2).norm(dim=1).mean())


def train_arm(
    data: regression.RegressionSplits, arm: str, seed: int, cfg: Config, sigma: float | None = None, image: bool = False
) -> dict[str, float]:
    """Train one arm on one split and return validation / test metrics of the best-validation-MSE checkpoint.

    ``sigma`` is the bandwidth in units of std(y_train) (C-Mixup) or of the median pairwise input distance
    (feature-similarity mixup). Also returned: the last epoch's test metrics, the self-pair rate and the mean label
    gap |y_i − y_j| of sampled pairs.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {list(ARMS)}")
    seed_everything(seed, threads=cfg.threads)
    dev = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    gen = torch.Generator().manual_seed(seed)
    tx, ty = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    vx, vy = torch.from_numpy(data.val_x).to(dev), torch.from_numpy(data.val_y).to(dev)
    sx, sy = torch.from_numpy(data.test_x).to(dev), torch.from_numpy(data.test_y).to(dev)
    n, bs = len(ty), cfg.image_batch_size if image else cfg.batch_size
    if n < 2 * bs:
        bs = max(2, n // 2)
    model = (
        CNNRegressor(tx.shape[1], cfg.image_width, d_out=ty.shape[1])
        if image
        else MLPRegressor(tx.shape[1], cfg.hidden, ty.shape[1])
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.image_lr if image else cfg.lr)
    sampler, bandwidth = _pair_sampler(arm, tx, ty, sigma, image, cfg, gen)
    tx, ty = tx.to(dev), ty.to(dev)
    manifold = mixup.manifold_mixup(model, "block1") if arm.endswith("manifold") or arm == "manifold_mixup" else None
    best, best_state, best_epoch = float("inf"), None, -1
    self_pairs, gaps, steps = 0.0, 0.0, 0
    loss_fn = torch.nn.functional.mse_loss
    for epoch in range(cfg.image_epochs if image else cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - bs + 1, bs):  # the last partial batch is dropped, as the official loader does
            idx = order[s : s + bs]
            if arm == "erm":
                loss = loss_fn(model(tx[idx]), ty[idx])
            else:
                loss, self_pair, gap = _mixup_loss(model, manifold, sampler, bandwidth, idx, tx, ty, cfg, gen)
                self_pairs += self_pair
                gaps += gap
                steps += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = float(loss_fn(_predict(model, vx), vy))
        if val <= best:  # non-strict, as the official code
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
    last = _metrics(_predict(model, sx), sy, data.test_domain)
    model.load_state_dict(best_state)
    chosen = _metrics(_predict(model, sx), sy, data.test_domain)
    if manifold is not None:
        manifold.remove()
    row = {
        "val_rmse": best**0.5,
        "test_rmse": chosen["rmse"],
        "test_mape": chosen["mape"],
        "test_rmse_last": last["rmse"],
        "bandwidth": bandwidth,
        "best_epoch": best_epoch,
        "self_pair_rate": self_pairs / steps if steps else float("nan"),
        "pair_gap": gaps / steps if steps else float("nan"),
    }
    if data.test_domain is not None:
        row["worst_rmse"], row["worst_rmse_last"] = chosen["worst_rmse"], last["worst_rmse"]
    return row


def _grid(arm: str, cfg: Config, image: bool) -> list[float | None]:
    if arm not in KERNEL_ARMS:
        return [None]
    return list(cfg.image_sigmas if image and KERNEL_ARMS[arm] == "sigmas" else getattr(cfg, KERNEL_ARMS[arm]))


def run(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """Every dataset × seed × arm × bandwidth in ``cfg``: one row per trained model (tidy)."""
    jobs = []
    for name in cfg.datasets:
        image = name.startswith("rcf")
        for seed in range(cfg.image_seeds if image else cfg.seeds):
            for arm in cfg.arms:
                jobs += [(name, seed, arm, sigma, image) for sigma in _grid(arm, cfg, image)]
    rows, cache = [], {}
    for name, seed, arm, sigma, image in tqdm(jobs, disable=not progress, desc="C-Mixup runs"):
        if (name, seed) not in cache:
            cache = {(name, seed): load(name, seed, cfg)}  # keep one split in memory at a time
        data = cache[(name, seed)]
        start = time.perf_counter()
        row = train_arm(data, arm, seed, cfg, sigma, image)
        rows.append(
            {
                "dataset": name,
                "arm": arm,
                "seed": seed,
                "sigma": np.nan if sigma is None else sigma,
                **row,
                "seconds": time.perf_counter() - start,
                "n_train": data.notes["n_train"],
            }
        )
    return pd.DataFrame(rows)


def select_sigma(runs: pd.DataFrame, metric: str = "val_rmse") -> pd.DataFrame:
    """Keep, for each dataset and kernel arm, the σ with the lowest mean validation RMSE over seeds (the paper tunes
    σ per dataset); other arms pass through. One row per dataset × arm × seed, with ``chosen_sigma``."""
    keep = []
    for (_, arm), group in runs.groupby(["dataset", "arm"], sort=False):
        if arm in KERNEL_ARMS:
            means = group.groupby("sigma")[metric].mean()
            group = group[group["sigma"] == means.idxmin()]
        keep.append(group.assign(chosen_sigma=group["sigma"]))
    return pd.concat(keep, ignore_index=True)


def relative_improvement(selected: pd.DataFrame, metric: str = "test_rmse", arm: str = "cmixup") -> pd.DataFrame:
    """Per dataset: ``arm``'s % improvement in mean ``metric`` over ERM and over the best other arm, as the paper's
    "improvement over the best prior approach" (positive = ``arm`` better)."""
    rows = []
    for name, group in selected.groupby("dataset", sort=False):
        means = group.groupby("arm")[metric].mean()
        if arm not in means:
            continue
        others = means.drop(arm)
        best_other = others.idxmin()
        rows.append(
            {
                "dataset": name,
                "metric": metric,
                arm: means[arm],
                "erm": means.get("erm", np.nan),
                "best_other_arm": best_other,
                "best_other": others[best_other],
                "vs_erm_pct": 100 * (means.get("erm", np.nan) - means[arm]) / means.get("erm", np.nan),
                "vs_best_other_pct": 100 * (others[best_other] - means[arm]) / others[best_other],
            }
        )
    return pd.DataFrame(rows)


def paired_differences(selected: pd.DataFrame, ood: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per dataset, every arm's test RMSE minus ERM's paired by seed (and worst-domain RMSE on ``ood`` datasets,
    as ``"<dataset> (worst)"``), and C-Mixup minus vanilla mixup; mean differences with bootstrap intervals."""
    diffs, vs_mixup = [], []
    for name, group in selected.groupby("dataset", sort=False):
        diffs.append(stats.paired_diff(group, "arm", "erm", "test_rmse").assign(dataset=name, metric="test_rmse"))
        if {"mixup", "cmixup"} <= set(group["arm"]):
            pair = group[group["arm"].isin(["mixup", "cmixup"])]
            vs_mixup.append(
                stats.paired_diff(pair, "arm", "mixup", "test_rmse").assign(dataset=name, metric="test_rmse")
            )
        if name in ood:
            worst = stats.paired_diff(group, "arm", "erm", "worst_rmse")
            diffs.append(worst.assign(dataset=f"{name} (worst)", metric="worst_rmse"))
    return pd.concat(diffs, ignore_index=True), pd.concat(vs_mixup, ignore_index=True) if vs_mixup else pd.DataFrame()


def outcomes(diffs: pd.DataFrame, arm: str = "cmixup") -> pd.DataFrame:
    """``arm``'s outcome per dataset from paired RMSE differences: "better" (interval below 0), "worse", "tied"."""
    if diffs.empty:
        return pd.DataFrame(columns=["dataset", "outcome", "mean_diff"])
    rows = diffs[diffs["arm"] == arm]
    words = {-1: "better", 0: "tied", 1: "worse"}
    return pd.DataFrame(
        {
            "dataset": rows["dataset"].to_numpy(),
            "outcome": [words[stats.interval_sign(r.low, r.high)] for r in rows.itertuples()],
            "mean_diff": rows["mean_diff"].to_numpy(),
        }
    )


def verdict(diffs: pd.DataFrame, vs_mixup: pd.DataFrame, rel: pd.DataFrame) -> str:
    """The report's one-line "what held": C-Mixup vs ERM and vs mixup (interval outcomes) and the relative
    improvements next to the paper's (references only)."""

    def tally(frame: pd.DataFrame) -> str:
        counts = frame["outcome"].value_counts()
        return (
            f"better on {counts.get('better', 0)}/{len(frame)}, tied on {counts.get('tied', 0)}, "
            f"worse on {counts.get('worse', 0)}"
        )

    vs_erm = outcomes(diffs[~diffs["dataset"].str.endswith("(worst)")])
    relative = "; ".join(
        f"{r.dataset}: {r.vs_best_other_pct:+.1f}% vs best other ({r.best_other_arm}), {r.vs_erm_pct:+.1f}% vs ERM"
        for r in rel.itertuples()
    )
    paper = ", ".join(f"{v:+.2f}% {k}" for k, v in PAPER_RELATIVE_IMPROVEMENT.items())
    return (
        f"C-Mixup vs ERM (paired test RMSE, 95% CI): {tally(vs_erm)}; vs vanilla mixup: {tally(outcomes(vs_mixup))}. "
        f"Relative improvement: {relative} (paper, vs best prior: {paper})."
    )
