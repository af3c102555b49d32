"""Figures and widget views for the C-Mixup notebook: pairing heat-maps, the claims with their intervals, results
with Student-t intervals, RMSE vs the tuned parameter, training curves with the longer reruns of the convergence check,
mixed RCF examples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm

from labkit import mixup, protocol
from labkit.data.regression import RegressionSplits
from labkit.experiments.cmixup.claims import TOLERANCE_PCT
from labkit.experiments.cmixup.config import ARMS
from labkit.views.claims import claims_forest as forest
from labkit.widgets import view

if TYPE_CHECKING:
    from ipywidgets import Widget


def _order(arms: Iterable[str]) -> list[str]:
    """``arms`` in the paper's order (:data:`ARMS`), then any others (``mean``, ``best_prior``) as they came."""
    present = list(dict.fromkeys(arms))
    return [a for a in ARMS if a in present] + [a for a in present if a not in ARMS]


def pairing(labels: np.ndarray, sigma_std: float, n_show: int = 300, seed: int = 0) -> plt.Figure:
    """Partner probabilities over labels sorted by value — vanilla mixup (uniform) vs C-Mixup at ``sigma_std`` — and
    the histogram of label gaps |y_i − y_j| of sampled pairs."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).reshape(len(labels), -1)[:, 0]
    rng = np.random.default_rng(seed)
    show = torch.as_tensor(np.sort(rng.choice(len(y), min(n_show, len(y)), replace=False)))
    ys, _ = torch.sort(y[show])
    bandwidth = mixup.bandwidth_from_std(y, sigma_std)
    probs = mixup.kernel_probabilities(ys[:, None], ys[:, None], bandwidth)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    uniform = np.full(probs.shape, 1 / probs.shape[1])
    norm = LogNorm(vmin=max(1e-4, 0.1 / probs.shape[1]), vmax=float(probs.max()))  # log scale: the tails show
    for ax, mat, title in (
        (axes[0], uniform, "vanilla mixup (uniform)"),
        (axes[1], probs.clamp_min(norm.vmin).numpy(), f"C-Mixup σ = {sigma_std:g} std = {bandwidth:.3g}"),
    ):
        im = ax.imshow(mat, cmap="viridis", norm=norm, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("partner (sorted by y)")
        ax.set_ylabel("anchor (sorted by y)")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    idx = torch.arange(len(y)).repeat(max(1, 5000 // len(y) + 1))
    gen = torch.Generator().manual_seed(seed)
    sampler = mixup.CMixupSampler(y, bandwidth)
    gaps_c = (y[sampler.sample(idx, gen)] - y[idx]).abs().numpy()
    gaps_u = (y[mixup.UniformSampler(len(y)).sample(idx, gen)] - y[idx]).abs().numpy()
    bins = np.linspace(0, float(y.max() - y.min()), 40)
    axes[2].hist(gaps_u, bins=bins, alpha=0.6, density=True, label="vanilla mixup")
    axes[2].hist(gaps_c, bins=bins, alpha=0.6, density=True, label="C-Mixup")
    rate = mixup.self_pair_rate(idx, sampler.sample(idx, gen))
    axes[2].set_title(f"|y_i − y_j| of sampled pairs (C-Mixup self-pairs {rate:.1%})", fontsize=10)
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    return fig


def results_bars(scores: pd.DataFrame, metric: str = "test_rmse") -> plt.Figure:
    """One panel per dataset: mean ``metric`` per arm with a Student-t 95 % interval over seeds, seeds as dots."""
    scores = scores.dropna(subset=[metric])
    names = list(dict.fromkeys(scores["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = scores[scores["dataset"] == name]
        order = _order(sub["arm"])
        summary = protocol.t_summary(sub, "arm", metric).set_index("arm").reindex(order)
        pos = np.arange(len(order))
        err = np.vstack([summary["mean"] - summary["low"], summary["high"] - summary["mean"]])
        ax.bar(pos, summary["mean"], yerr=np.nan_to_num(err), capsize=3, color="tab:blue", alpha=0.6)
        for i, arm in enumerate(order):
            vals = sub.loc[sub["arm"] == arm, metric]
            ax.plot(np.full(len(vals), i), vals, "k.", markersize=3)
        ax.set_xticks(pos, order, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{name}: {metric}", fontsize=10)
        lo, hi = sub[metric].min(), sub[metric].max()
        ax.set_ylim(lo - 0.3 * (hi - lo), hi + 0.2 * (hi - lo))
    fig.tight_layout()
    return fig


def claims_forest(claims: pd.DataFrame) -> plt.Figure:
    """Every judged claim: C-Mixup's % improvement, paired by seed (see :func:`labkit.views.claims.claims_forest`)."""
    return forest(claims, TOLERANCE_PCT, "C-Mixup improvement, % of RMSE (paired by seed)")


def sigma_curves(runs: pd.DataFrame, arm: str = "cmixup", parameter: str = "sigma") -> plt.Figure:
    """Validation and test RMSE against ``arm``'s tuned parameter per dataset (mean ± Student-t interval over
    seeds), with ERM's test RMSE as a flat reference. Only validation chose the value."""
    names = [n for n in dict.fromkeys(runs["dataset"]) if (runs[(runs["dataset"] == n)]["arm"] == arm).any()]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = runs[(runs["dataset"] == name) & (runs["arm"] == arm)]
        for col, style in (("val_rmse", "o-"), ("test_rmse", "s--")):
            summary = protocol.t_summary(sub, parameter, col).sort_values(parameter)
            ax.plot(summary[parameter], summary["mean"], style, label=col)
            ax.fill_between(summary[parameter], summary["low"], summary["high"], alpha=0.2)
        base = runs[(runs["dataset"] == name) & (runs["arm"] == "erm")]
        if len(base):
            ax.axhline(base["test_rmse"].mean(), color="black", linestyle=":", linewidth=1, label="erm (test)")
        ax.set_xscale("log")
        ax.set_xlabel(f"{parameter}" + (" (units of std(y_train))" if arm.startswith("cmixup") else ""))
        ax.set_title(f"{name}: {arm}", fontsize=10)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame, scores: pd.DataFrame, name: str) -> plt.Figure:
    """Validation MSE per epoch of the chosen configuration of each arm on dataset ``name`` (one line per seed; the
    longer rerun of the convergence check dotted), with the mean predictor's validation MSE: what the budget and
    near-chance sanity checks compare."""
    chosen = scores[(scores["dataset"] == name) & ~scores["arm"].isin(["mean", "best_prior"])]
    key = ["dataset", "arm", "seed", "sigma", "alpha"]
    sub = curves.merge(chosen[key], on=key)
    if "budget" not in sub.columns:
        sub = sub.assign(budget=1.0)
    arms = _order(sub["arm"])
    fig, axes = plt.subplots(1, len(arms), figsize=(3.3 * len(arms), 3.0), squeeze=False, sharey=True)
    trivial = scores[(scores["dataset"] == name) & (scores["arm"] == "mean")]["val_rmse"].mean() ** 2
    for ax, arm in zip(axes[0], arms, strict=True):
        mine = sub[sub["arm"] == arm]
        for _, group in mine[mine["budget"] == 1].groupby("seed"):
            ax.plot(group["epoch"], group["val_mse"], linewidth=0.8)
        for (seed, budget), group in mine[mine["budget"] > 1].groupby(["seed", "budget"]):
            ax.plot(group["epoch"], group["val_mse"], "k:", linewidth=1.2, label=f"seed {seed} at {budget:g}x")
        ax.axhline(trivial, color="black", linestyle="--", linewidth=1, label="mean predictor")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {arm}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation MSE")
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def mixed_examples(data: RegressionSplits, sigma_std: float, lam: float, n: int = 5, seed: int = 0) -> plt.Figure:
    """RCF images mixed with a uniform partner (top) and a C-Mixup partner (bottom) at weight λ, with their labels."""
    y = torch.from_numpy(data.train_y)
    x = torch.from_numpy(data.train_x)
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(len(y), generator=gen)[:n]
    rows = [
        ("mixup", mixup.UniformSampler(len(y)).sample(anchors, gen)),
        ("C-Mixup", mixup.CMixupSampler(y, mixup.bandwidth_from_std(y, sigma_std)).sample(anchors, gen)),
    ]
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.2))
    for r, (name, partner) in enumerate(rows):
        xm, ym = mixup.mix(x[anchors], y[anchors], x[partner], y[partner], lam)
        for c in range(n):
            img = ((xm[c].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
            axes[r, c].imshow(img)
            axes[r, c].set_title(
                f"{float(y[anchors[c]]):.2f}⊕{float(y[partner[c]]):.2f}→{float(ym[c]):.2f}", fontsize=7
            )
            axes[r, c].axis("off")
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"λ = {lam:g}; labels anchor ⊕ partner → mixed (θ/360)", fontsize=9)
    fig.tight_layout()
    return fig


def pairing_view(labels: np.ndarray, sigma_std: float, enabled: bool = True) -> Widget | None:
    """Widget: a σ slider (units of std(y)) redrawing the pairing heat-maps and the gap histogram."""
    if not enabled:
        return None
    import ipywidgets as w

    slider = w.FloatLogSlider(
        value=sigma_std, base=10, min=-2, max=1, step=0.1, description="σ / std(y)", continuous_update=False
    )
    return view(lambda sigma: pairing(labels, sigma), {"sigma": slider})


def examples_view(data: RegressionSplits, sigma_std: float, lam: float = 0.5, enabled: bool = True) -> Widget | None:
    """Widget: σ and λ sliders redrawing a few mixed RCF examples (uniform vs C-Mixup partners)."""
    if not enabled:
        return None
    import ipywidgets as w

    controls = {
        "sigma": w.FloatLogSlider(
            value=sigma_std, base=10, min=-2, max=1, step=0.1, description="σ / std(y)", continuous_update=False
        ),
        "lam": w.FloatSlider(value=lam, min=0.0, max=1.0, step=0.05, description="λ", continuous_update=False),
    }
    return view(lambda sigma, lam: mixed_examples(data, sigma, lam), controls)
