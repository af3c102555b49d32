"""Figures for the Sparse Model Soups notebook: each returns a matplotlib figure (widgets redraw the same ones)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from labkit import plots, protocol
from labkit.experiments.sparse_soups.config import NAIVE, REPRUNED, REPRUNED_RETRAINED
from labkit.experiments.sparse_soups.data import Data
from labkit.stats import summarize

HEADLINE = ["IMP", "SWA", "SMS uniform", "SMS greedy", "SMS greedy (uniform chain)"]  # arms always shown first


def arm_order(final: pd.DataFrame) -> list[str]:
    """Arms in a reading order: the paper's comparison first, then the references."""
    arms = list(dict.fromkeys(final.arm))
    first = [a for a in arms if a in HEADLINE or a.startswith("IMP ")]
    return first + [a for a in arms if a not in first]


def sample_grid(data: Data, n: int = 8) -> plt.Figure:
    """Test examples (top) and, below them, each OOD corruption of the same examples."""
    sets = {"clean": data.test_x, **data.ood}
    fig, axes = plt.subplots(len(sets), n, figsize=(1.2 * n, 1.4 * len(sets)), squeeze=False)
    for i in range(n):
        for row, x in enumerate(sets.values()):
            ax = axes[row, i]
            img = x[i].detach().cpu().numpy()
            if img.shape[0] == 1 and img.ndim == 3:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.plot(img.ravel(), lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(str(int(data.test_y[i])), fontsize=9)
    for row, name in enumerate(sets):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def final_figure(final: pd.DataFrame) -> plt.Figure:
    """Clean and OOD test accuracy per arm at the final sparsity: mean, bootstrap 95 % CI, seeds as dots."""
    order = arm_order(final)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    titles = ("clean test", "OOD test (mean over corruptions)")
    for ax, metric, title in zip(axes, ("test_acc", "ood_acc"), titles, strict=True):
        plots.bars_ci(final, "arm", metric, ax=ax, order=order)
        stats = summarize(final, "arm", metric)
        lo, hi = stats["low"].min(), stats["high"].max()
        ax.set_ylim(lo - 0.3 * (hi - lo + 0.1), hi + 0.2 * (hi - lo + 0.1))
        ax.set_title(f"{title} accuracy (%)")
        ax.set_xlabel("")
    fig.tight_layout()
    return fig


def paired_diffs(final: pd.DataFrame, ref: str, metric: str) -> pd.DataFrame:
    """Per arm: mean paired difference to ``ref`` over seeds with its Student-t 95 % interval, and n."""
    base = final[final.arm == ref].set_index("seed")[metric]
    rows = []
    for arm in [a for a in arm_order(final) if a != ref]:
        d = (final[final.arm == arm].set_index("seed")[metric] - base).dropna()
        mean, low, high = protocol.student_t_ci(d.to_numpy())
        rows.append({"arm": arm, "mean_diff": mean, "low": low, "high": high, "n": len(d)})
    return pd.DataFrame(rows)


def paired_figure(final: pd.DataFrame, ref: str = "IMP") -> plt.Figure:
    """Per-seed paired difference to ``ref`` (percentage points), mean and Student-t 95 % interval, for each arm."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, metric in zip(axes, ("test_acc", "ood_acc"), strict=True):
        diff = paired_diffs(final, ref, metric)
        y = np.arange(len(diff))
        ax.errorbar(diff.mean_diff, y, xerr=[diff.mean_diff - diff.low, diff.high - diff.mean_diff], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, diff.arm)
        ax.set_xlabel(f"{metric} − {ref} (pp, paired by seed)")
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def phase_figure(phases: pd.DataFrame, phase: int, metric: str = "test_acc") -> plt.Figure:
    """Left: accuracy against sparsity over phases for every chain. Right: one phase, ingredients vs soups."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    chains = phases[
        (phases.member < 0)
        & (
            phases.arm.isin(["IMP", "SWA", "SMS uniform", "SMS greedy", "SMS greedy (uniform chain)"])
            | phases.arm.str.match(r"IMP \d+x")
        )
    ]
    for arm, group in chains.groupby("arm", sort=False):
        stats = group.groupby("phase").agg(sparsity=("sparsity", "mean"), value=(metric, "mean"))
        left.plot(100 * stats.sparsity, stats.value, marker="o", label=arm)
    ing = phases[(phases.arm == "ingredient") & (phases.chain == "SMS uniform")]
    left.scatter(100 * ing.sparsity, ing[metric], s=10, color="grey", alpha=0.5, label="ingredients (SMS uniform)")
    left.axvline(100 * ing[ing.phase == phase].sparsity.mean(), color="grey", ls=":", lw=1)
    left.set_xlabel("sparsity (%)")
    left.set_ylabel(metric)
    left.legend(fontsize="small")
    now = phases[(phases.phase == phase) & (phases.chain.isin(["SMS uniform", "IMP"]))]
    seeds = sorted(now.seed.unique())
    for k, seed in enumerate(seeds):
        rows = now[now.seed == seed]
        ingr = rows[rows.arm == "ingredient"]
        right.scatter(
            np.full(len(ingr), k) + np.linspace(-0.15, 0.15, len(ingr)),
            ingr[metric],
            color="grey",
            s=18,
            label="ingredients" if k == 0 else None,
        )
        for arm, marker, color in (
            ("SMS uniform", "*", "C1"),
            ("SMS greedy (uniform chain)", "D", "C2"),
            ("IMP", "s", "C0"),
        ):
            val = rows[rows.arm == arm][metric]
            if len(val):
                right.scatter([k], val, marker=marker, s=90, color=color, label=arm if k == 0 else None, zorder=3)
    right.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    right.set_title(f"phase {phase}: soup vs its own ingredients")
    right.legend(fontsize="small")
    fig.tight_layout()
    return fig


def soup_vs_ingredients(phases: pd.DataFrame, chain: str = "SMS uniform") -> pd.DataFrame:
    """Per seed and phase of ``chain``: its soup minus the mean of its ingredients and minus the ingredient with the
    best validation accuracy, on validation (what the premises are judged on, after every phase) and on test
    (pp)."""
    rows = phases[(phases.chain == chain) & (phases.phase > 0)]
    ing = rows[rows.arm == "ingredient"]
    soup = rows[rows.arm == chain].set_index(["seed", "phase"])
    best = ing.loc[ing.groupby(["seed", "phase"]).val_acc.idxmax()].set_index(["seed", "phase"])
    mean = ing.groupby(["seed", "phase"])[["val_acc", "test_acc"]].mean()
    out = {}
    for metric, split in (("val_acc", "val"), ("test_acc", "test")):
        out[f"{split}: soup − mean ingredient"] = soup[metric] - mean[metric]
        out[f"{split}: soup − best ingredient"] = soup[metric] - best[metric]
    return pd.DataFrame(out)


def naive_figure(final: pd.DataFrame, naive: pd.DataFrame) -> plt.Figure:
    """Naive averaging of differently-masked IMP runs: the sparsity it loses, and accuracy before and after re-pruning
    (and after re-pruning plus retraining)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    goal = float(naive.goal.iloc[0])
    left.bar(
        ["goal", "naive average"],
        [100 * goal, 100 * naive.naive_sparsity.mean()],
        yerr=[0, 100 * naive.naive_sparsity.std(ddof=0)],
        capsize=3,
        color=["C0", "C3"],
    )
    left.set_ylim(100 * min(goal, naive.naive_sparsity.min()) - 3, 100)
    left.set_ylabel("sparsity (%)")
    left.set_title(f"mask IoU between IMP runs: {naive.mean_mask_iou.mean():.2f}")
    arms = ["IMP", "SMS uniform", NAIVE, REPRUNED, REPRUNED_RETRAINED]
    plots.bars_ci(final[final.arm.isin(arms)], "arm", "test_acc", ax=right, order=arms)
    sub = final[final.arm.isin(arms)]
    right.set_ylim(sub.test_acc.min() - 1, sub.test_acc.max() + 0.5)
    right.set_xlabel("")
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, alpha: float | None = None, metric: str = "test_acc") -> plt.Figure:
    """Accuracy and sparsity along the straight line between two models: same mask vs different masks."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    plots.mean_ci(curves, "alpha", metric, hue="path", ax=left)
    plots.mean_ci(curves.assign(sparsity=100 * curves.sparsity), "alpha", "sparsity", hue="path", ax=right)
    right.set_ylabel("sparsity (%)")
    if alpha is not None:
        for ax in (left, right):
            ax.axvline(alpha, color="grey", ls=":", lw=1)
        at = curves[np.isclose(curves.alpha, alpha)].groupby("path")[metric].mean()
        left.set_title("; ".join(f"{p.split(' (')[0]}: {v:.2f}" for p, v in at.items()), fontsize=9)
    fig.tight_layout()
    return fig


def convergence_figure(val_curves: pd.DataFrame) -> plt.Figure:
    """The last phase's validation accuracy along its retraining, per arm (mean over seeds and ingredients; the judged
    ``convergence_curves`` table): a picture only; the sanity table's *converged* comes from the rerun at a longer
    budget (the ``budget`` table)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for arm, group in val_curves.groupby("arm", sort=False):
        curve = group.groupby("point")["val_acc"].mean()
        ax.plot(curve.index / curve.index.max(), curve.to_numpy(), marker=".", label=arm)
    ax.set_xlabel("fraction of the last phase's retraining (SWA: its last cycle)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
