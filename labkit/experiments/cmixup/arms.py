"""C-Mixup's arms and their training (Yao et al., NeurIPS 2022; github.com/huaxiuyao/C-Mixup ``src/algorithm.py``):
ERM, mixup, manifold mixup, feature-similarity mixup and C-Mixup on regression, every (dataset, seed, arm, grid value)
trained by :func:`compute`, the only code of this paper that trains.

One loop serves every arm (:func:`train_arm`): Adam, MSE, λ ~ Beta(α, α) per batch, partners from the whole training
set (or, for images with ``image_scope="batch"``, the official batch-level kernel), the best-validation-MSE
checkpoint. Every mixup arm mixes hidden states after the trunk (manifold mixup: the official ``--use_manifold 1``;
the MLP's first block, the ResNet's residual stages before pooling); ``*_input`` arms mix inputs. Models: the official
tabular MLP, and for RCF a small CIFAR-style ResNet from scratch (:class:`labkit.models.vision.ResNet`). Unlike the
official fixed 100 epochs, a run stops once validation MSE has not improved by
``min_improvement`` (relative) for ``patience`` epochs, so every arm is trained to its plateau. Whether that plateau is
real is checked by rerunning the first seed of every trained arm at its configuration chosen on validation
(:func:`select`) with cap and patience scaled (:func:`longer`): with the same seed the longer run replays the
report's run and continues it. The trivial baseline ``mean`` (predict the training mean, :func:`mean_predictor`) is
scored per seed too. Jobs run in ``cfg.workers`` spawned processes (:func:`labkit.jobs.run_jobs`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from labkit import mixup, seed_everything, selection
from labkit.data import regression
from labkit.experiments import Computed
from labkit.experiments.cmixup.config import (
    ARMS,
    KERNEL,
    MIXUP_ARMS,
    SELF_PAIR_MAX,
    TRIVIAL,
    Config,
    configurations,
    method,
)
from labkit.experiments.cmixup.data import is_image, seeds, split
from labkit.jobs import run_jobs
from labkit.models.regressors import MLPRegressor
from labkit.models.vision import ResNet

Job = tuple[str, int, str, float | None, float | None]  # dataset, seed, arm, σ, α


def _metrics(pred: torch.Tensor, y: torch.Tensor, domain: np.ndarray | None) -> dict[str, float]:
    err = (pred - y).double()
    out = {"rmse": float(err.square().mean().sqrt())}
    nz = y.abs() > 0
    out["mape"] = float((err[nz].abs() / y[nz].abs()).mean() * 100) if nz.any() else float("nan")
    if domain is not None:
        d = torch.as_tensor(domain)
        out["worst_rmse"] = max(float(err[d == k].square().mean().sqrt()) for k in d.unique())
    return out


def mean_predictor(data: regression.RegressionSplits) -> dict[str, float]:
    """The trivial baseline: predict the training mean everywhere (validation and test RMSE, MAPE, worst domain)."""
    mean = torch.from_numpy(data.train_y).double().mean(0, keepdim=True)
    val = _metrics(mean.expand(len(data.val_y), -1), torch.from_numpy(data.val_y).double(), None)
    test = _metrics(mean.expand(len(data.test_y), -1), torch.from_numpy(data.test_y).double(), data.test_domain)
    row = {"val_rmse": val["rmse"], "test_rmse": test["rmse"], "test_mape": test["mape"]}
    if data.test_domain is not None:
        row["worst_rmse"] = test["worst_rmse"]
    return row


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
    kernel = KERNEL.get(method(arm))
    if arm in MIXUP_ARMS and kernel is None:
        sampler = mixup.UniformSampler(n)
    elif kernel == "y":
        bandwidth = mixup.bandwidth_from_std(ty, sigma)
        if not (image and cfg.image_scope == "batch"):
            sampler = mixup.CMixupSampler(ty, bandwidth, mode="auto")
    elif kernel == "x":
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
    alpha: float,
    lam_per: str,
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
    lam = mixup.beta_lambda(alpha, () if lam_per == "batch" else bs, gen).to(tx.device)
    x2, y2 = tx[partner.to(tx.device)], ty[partner.to(tx.device)]
    x_mix, y_mix = mixup.mix(x, y, x2, y2, lam)
    pred = manifold(x, x2, lam) if manifold is not None else model(x_mix)
    loss = torch.nn.functional.mse_loss(pred, y_mix)
    return loss, mixup.self_pair_rate(idx, partner), float((ty[idx] - y2).norm(dim=1).mean())


def train_arm(
    data: regression.RegressionSplits,
    arm: str,
    seed: int,
    cfg: Config,
    sigma: float | None = None,
    image: bool = False,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Train one arm on one split; validation / test metrics of the best-validation-MSE checkpoint (and, where the
    data has one, RMSE on the in-distribution copy of the test split: ``iid_test_rmse``).

    ``sigma`` is the bandwidth in units of std(y_train) (C-Mixup) or of the median pairwise input distance
    (feature-similarity mixup); ``alpha`` the Beta(α, α) parameter (default ``cfg.alpha``). Also returned: the last
    epoch's test metrics, the best and last epochs, the validation MSE per epoch (``val_curve``), the self-pair rate
    and the mean label gap |y_i − y_j| of sampled pairs.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {list(ARMS)}")
    start = time.perf_counter()
    alpha = cfg.alpha if alpha is None else alpha
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
        ResNet(tx.shape[1], cfg.image_width, depth=1, classes=ty.shape[1])
        if image
        else MLPRegressor(tx.shape[1], cfg.hidden, ty.shape[1])
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.image_lr if image else cfg.lr)
    sampler, bandwidth = _pair_sampler(arm, tx, ty, sigma, image, cfg, gen)
    tx, ty = tx.to(dev), ty.to(dev)
    trunk = "blocks" if image else "block1"  # where the official forward_mixup mixes: after the trunk / first block
    manifold = mixup.manifold_mixup(model, trunk) if arm in MIXUP_ARMS and arm == method(arm) else None
    max_epochs, patience = (cfg.image_epochs, cfg.image_patience) if image else (cfg.epochs, cfg.patience)
    best, best_state, best_epoch, clear_best, clear_epoch = float("inf"), None, -1, float("inf"), 0
    self_pairs, gaps, steps, curve = 0.0, 0.0, 0, []
    loss_fn = torch.nn.functional.mse_loss
    for epoch in range(max_epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - bs + 1, bs):  # the last partial batch is dropped, as the official loader does
            idx = order[s : s + bs]
            if arm == "erm":
                loss = loss_fn(model(tx[idx]), ty[idx])
            else:
                loss, self_pair, gap = _mixup_loss(
                    model, manifold, sampler, bandwidth, idx, tx, ty, alpha, cfg.lam_per, gen
                )
                self_pairs += self_pair
                gaps += gap
                steps += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = float(loss_fn(_predict(model, vx), vy))
        curve.append(val)
        if val <= best:  # non-strict, as the official code
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
        if val < clear_best * (1 - cfg.min_improvement):  # a clear improvement restarts the patience
            clear_best, clear_epoch = val, epoch
        elif epoch - clear_epoch >= patience:
            break
    last = _metrics(_predict(model, sx), sy, data.test_domain)
    model.load_state_dict(best_state)
    chosen = _metrics(_predict(model, sx), sy, data.test_domain)
    iid = None
    if data.iid_test_x is not None:
        ix, iy = torch.from_numpy(data.iid_test_x).to(dev), torch.from_numpy(data.iid_test_y).to(dev)
        iid = _metrics(_predict(model, ix), iy, None)["rmse"]
    if manifold is not None:
        manifold.remove()
    row = {
        "val_rmse": best**0.5,
        "test_rmse": chosen["rmse"],
        "test_mape": chosen["mape"],
        "test_rmse_last": last["rmse"],
        "bandwidth": bandwidth,
        "best_epoch": best_epoch,
        "epochs_run": len(curve),
        "self_pair_rate": self_pairs / steps if steps else float("nan"),
        "pair_gap": gaps / steps if steps else float("nan"),
        "val_curve": curve,
    }
    if data.test_domain is not None:
        row["worst_rmse"], row["worst_rmse_last"] = chosen["worst_rmse"], last["worst_rmse"]
    if iid is not None:
        row["iid_test_rmse"] = iid
    row["seconds"] = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------------------------- jobs
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


def _run_job(job: tuple[Config, str, int, str, float | None, float | None]) -> dict[str, Any]:
    """Train one (dataset, seed, arm, σ, α) and return its row (a worker process entry point)."""
    cfg, name, seed, arm, sigma, alpha = job
    data = split(name, seed, cfg)
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


def jobs(cfg: Config) -> list[Job]:
    """Every (dataset, seed, arm, σ, α) the report trains: each arm at every setting it tunes on validation."""
    return [
        (name, seed, arm, sigma, alpha)
        for name in cfg.datasets
        for seed in seeds(name, cfg)
        for arm in cfg.arms
        for sigma, alpha in configurations(arm, cfg, is_image(name))
    ]


def sizes(cfg: Config) -> dict[str, int]:
    """Trained runs per dataset (seeds × configurations), to read the cost of a preset."""
    out: dict[str, int] = {}
    for name, *_ in jobs(cfg):
        out[name] = out.get(name, 0) + 1
    return out


def _train(cfg: Config, todo: list[Job], progress: bool, chunksize: int, desc: str) -> list[dict[str, Any]]:
    """Rows of the jobs ``todo`` under ``cfg``, in job order, in ``cfg.workers`` spawned processes."""
    return run_jobs(_run_job, [(cfg, *job) for job in todo], workers=cfg.workers, desc=desc, progress=progress,
                    chunksize=chunksize)


def _rerun_longer(cfg: Config, selected: pd.DataFrame, progress: bool) -> list[dict[str, Any]]:
    """The convergence check's runs: the first seed of every trained arm at its chosen configuration, trained again
    under :func:`longer` (image jobs first and one job per task, so two workers finish together)."""
    def value(v: float) -> float | None:
        return None if pd.isna(v) else float(v)

    first = selected[selected["seed"] == 0]
    todo = [(r.dataset, 0, r.arm, value(r.sigma), value(r.alpha)) for r in first.itertuples()]
    todo.sort(key=lambda job: not is_image(job[0]))
    rows = _train(longer(cfg), todo, progress, chunksize=1, desc=f"C-Mixup runs at {cfg.budget_factor:g}x")
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


def pairing(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, mixup arm and (σ, α) setting: the mean self-pair rate and validation RMSE over seeds, and whether
    the setting may be chosen: a setting pairing a sample with itself more often than :data:`SELF_PAIR_MAX` mostly
    trains on unmixed samples (it is ERM under another name), so selection skips it."""
    mixing = runs[runs["arm"].isin(MIXUP_ARMS)]
    key = ["dataset", "arm", "sigma", "alpha"]
    table = mixing.groupby(key, sort=False, dropna=False)[["self_pair_rate", "val_rmse"]].mean().reset_index()
    return table.assign(eligible=~(table["self_pair_rate"] > SELF_PAIR_MAX))


def select(runs: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per dataset and tuned arm, the (σ, α) setting with the best mean validation RMSE among its eligible settings
    (:func:`pairing`; if none is eligible, among all, and the sanity check flags the arm), by
    ``selection.select_best`` on validation rows only. Returns the validation table, the chosen settings and the
    chosen runs."""
    validation = runs[["dataset", "arm", "seed", "sigma", "alpha", "val_rmse"]].assign(split="val")
    rates = pairing(runs).set_index(["dataset", "arm", "sigma", "alpha"])["eligible"]
    chosen, keep = [], []
    for (name, arm), group in runs.groupby(["dataset", "arm"], sort=False):
        settings = configurations(arm, cfg, is_image(name))
        if len(settings) == 1:
            keep.append(group)
            continue
        by = ["alpha"] if KERNEL[method(arm)] is None else ["sigma", "alpha"]
        at = pd.MultiIndex.from_frame(group[["dataset", "arm", "sigma", "alpha"]])
        eligible = group[rates.reindex(at).fillna(True).to_numpy(bool)]
        pool = eligible if len(eligible) else group
        best = selection.select_best(validation.loc[pool.index], by, "val_rmse")
        sigma, alpha = best.get("sigma", math.nan), best["alpha"]
        pick = (group["alpha"] == alpha) & (group["sigma"].isna() if pd.isna(sigma) else group["sigma"] == sigma)
        chosen.append({"dataset": name, "arm": arm, "sigma": sigma, "alpha": alpha, "settings": len(settings),
                       "eligible": int(pool[by].drop_duplicates().shape[0]) if len(eligible) else 0})
        keep.append(group[pick])
    return validation, pd.DataFrame(chosen), pd.concat(keep, ignore_index=True)


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Every dataset × seed × arm × grid value trained, the first seed of each arm chosen on validation rerun at
    ``budget_factor`` × the budget, and the mean predictor scored. Computed tables: ``runs`` (one row per trained
    configuration), ``reruns`` (the longer runs, with ``budget``), ``curves`` (validation MSE per epoch of both) and
    ``trivial`` (the ``mean`` predictor per dataset and seed); seconds go to the timings (they vary run to run)."""
    rows = _train(cfg, jobs(cfg), progress, chunksize=4, desc="C-Mixup runs")
    runs = _table(rows)
    longer_rows = _rerun_longer(cfg, select(runs, cfg)[2], progress)
    reruns = _table(longer_rows)
    trivial = pd.DataFrame([
        {"dataset": name, "arm": TRIVIAL, "seed": seed, **mean_predictor(split(name, seed, cfg))}
        for name in cfg.datasets
        for seed in seeds(name, cfg)
    ])
    key = ["dataset", "arm", "seed", "sigma", "alpha"]
    timings = {
        "train_seconds_total": float(runs["seconds"].sum()),
        "budget_seconds_total": float(reruns["seconds"].sum()),
        "run_seconds": runs[[*key, "epochs_run", "seconds"]],
        "budget_run_seconds": reruns[[*key, "budget", "epochs_run", "seconds"]],
    }
    tables = {
        "runs": runs.drop(columns="seconds"),
        "reruns": reruns.drop(columns="seconds"),
        "curves": _curves(rows + longer_rows),
        "trivial": trivial,
    }
    return Computed(tables, timings=timings)
