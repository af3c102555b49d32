"""Figures and widget views for the C-Mixup notebook: pairing heat-maps, results with intervals, RMSE vs σ,
paired differences against ERM, relative improvements next to the paper's, and mixed RCF examples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm

from labkit import mixup, plots
from labkit.data.regression import RegressionSplits
from labkit.widgets import view

if TYPE_CHECKING:
    from ipywidgets import Widget

ARM_ORDER = ["erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup", "cmixup_manifold"]


def _order(arms: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(arms))
    return [a for a in ARM_ORDER if a in present] + [a for a in present if a not in ARM_ORDER]


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


def results_bars(selected: pd.DataFrame, metric: str = "test_rmse") -> plt.Figure:
    """One panel per dataset: mean ``metric`` per arm with bootstrap 95 % intervals and seeds as dots."""
    names = list(dict.fromkeys(selected["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = selected[selected["dataset"] == name]
        plots.bars_ci(sub, "arm", metric, ax=ax, order=_order(sub["arm"]))
        ax.set_title(name, fontsize=10)
        lo, hi = sub[metric].min(), sub[metric].max()
        ax.set_ylim(lo - 0.3 * (hi - lo), hi + 0.2 * (hi - lo))
    fig.tight_layout()
    return fig


def paired_differences(diffs: pd.DataFrame, metric: str = "test_rmse") -> plt.Figure:
    """Mean paired (per-seed) difference to ERM with bootstrap 95 % intervals; below 0 = better than ERM."""
    names = list(dict.fromkeys(diffs["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = diffs[diffs["dataset"] == name].set_index("arm").reindex(_order(diffs[diffs["dataset"] == name]["arm"]))
        pos = np.arange(len(sub))
        err = np.vstack([sub["mean_diff"] - sub["low"], sub["high"] - sub["mean_diff"]])
        colors = [
            "tab:green" if h < 0 else ("tab:red" if lo > 0 else "tab:gray")
            for lo, h in zip(sub["low"], sub["high"], strict=True)
        ]
        ax.barh(pos, sub["mean_diff"], xerr=err, color=colors, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(pos, sub.index)
        ax.invert_yaxis()
        ax.set_title(f"{name}: {metric} − ERM (paired)", fontsize=10)
    fig.tight_layout()
    return fig


def sigma_curves(runs: pd.DataFrame, arm: str = "cmixup") -> plt.Figure:
    """Validation and test RMSE against σ (in std(y) units) per dataset, with ERM and mixup as flat references."""
    names = [n for n in dict.fromkeys(runs["dataset"]) if (runs[(runs["dataset"] == n)]["arm"] == arm).any()]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = runs[(runs["dataset"] == name) & (runs["arm"] == arm)]
        long = pd.concat(
            [sub.assign(split="test", rmse=sub["test_rmse"]), sub.assign(split="val", rmse=sub["val_rmse"])]
        )
        plots.mean_ci(long, "sigma", "rmse", hue="split", ax=ax)
        for ref, style in (("erm", "--"), ("mixup", ":")):
            base = runs[(runs["dataset"] == name) & (runs["arm"] == ref)]
            if len(base):
                ax.axhline(base["test_rmse"].mean(), color="black", linestyle=style, linewidth=1, label=f"{ref} (test)")
        ax.set_xscale("log")
        ax.set_xlabel("σ (units of std(y_train))")
        ax.set_title(f"{name}: {arm}", fontsize=10)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def relative_improvements(rel: pd.DataFrame, paper: dict[str, float], ood: set[str]) -> plt.Figure:
    """Our C-Mixup improvement (%) over the best other arm and over ERM per dataset, with the paper's abstract
    numbers as labelled reference lines (ID for in-distribution sets, OOD for shifted ones)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    pos = np.arange(len(rel))
    ax.bar(pos - 0.2, rel["vs_best_other_pct"], 0.4, label="vs best other arm (ours)")
    ax.bar(pos + 0.2, rel["vs_erm_pct"], 0.4, label="vs ERM (ours)")
    ax.set_xticks(pos, [f"{d}\n({'OOD' if d in ood else 'ID'})" for d in rel["dataset"]], fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    plots.reference_line(ax, paper["in-distribution"], f"ID +{paper['in-distribution']}% vs best prior")
    plots.reference_line(
        ax, paper["out-of-distribution"], f"OOD +{paper['out-of-distribution']}% vs best prior", linestyle=":"
    )
    ax.set_ylabel("C-Mixup improvement, % of RMSE")
    ax.legend(fontsize="x-small")
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


def examples_view(
    data: RegressionSplits, sigma_std: float, lam: float = 0.5, enabled: bool = True
) -> Widget | None:
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
