"""One C-Mixup training run (Yao et al., NeurIPS 2022; github.com/huaxiuyao/C-Mixup ``src/algorithm.py``): ERM,
mixup, manifold mixup, feature-similarity mixup or C-Mixup on one split, with early stopping on validation.

One loop serves every arm: Adam, MSE, λ ~ Beta(α, α) per batch, partners from the whole training set (or, for
images with ``image_scope="batch"``, the official batch-level kernel), the best-validation-MSE checkpoint. Unlike the
official fixed 100 epochs, a run stops once validation MSE has not improved by ``min_improvement`` (relative) for
``patience`` epochs, so every arm is trained to its plateau. Whether that plateau is real is checked by rerunning with
cap and patience scaled (:func:`labkit.experiments.cmixup.longer`): with the same seed the longer run replays this one
and continues it.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from labkit import mixup, seed_everything
from labkit.data import regression
from labkit.models.regressors import CNNRegressor, MLPRegressor

if TYPE_CHECKING:
    from labkit.experiments.cmixup import Config

ARMS = ("erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup", "cmixup_manifold")


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
    """Train one arm on one split; validation / test metrics of the best-validation-MSE checkpoint.

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
        CNNRegressor(tx.shape[1], cfg.image_width, d_out=ty.shape[1])
        if image
        else MLPRegressor(tx.shape[1], cfg.hidden, ty.shape[1])
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.image_lr if image else cfg.lr)
    sampler, bandwidth = _pair_sampler(arm, tx, ty, sigma, image, cfg, gen)
    tx, ty = tx.to(dev), ty.to(dev)
    manifold = mixup.manifold_mixup(model, "block1") if arm in ("manifold_mixup", "cmixup_manifold") else None
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
    row["seconds"] = time.perf_counter() - start
    return row
