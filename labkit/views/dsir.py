"""Figures and the widget view of the DSIR notebook: per-target losses, KL reduction vs loss, what was picked."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from labkit import plots, widgets
from labkit.experiments.dsir.claims import method_means
from labkit.experiments.dsir.config import LLM_TRACK, METHODS
from labkit.experiments.dsir.summary import CORRELATION_VARIANTS
from labkit.select import HashedFeatures, ShardedFeatures, gumbel_top_k, kl_reduction

if TYPE_CHECKING:
    from ipywidgets import Widget

METHOD_ORDER = list(METHODS)


def _order(methods: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(methods))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


def loss_bars(
    scores: pd.DataFrame, value: str = "bigram_nats_per_token", ylabel: str = "held-out nats/token", anti: bool = False
) -> plt.Figure:
    """Per target: mean held-out loss of each method's selection with bootstrap 95 % intervals over seeds."""
    data = scores if anti else scores[scores.method != "anti-dsir"]
    targets = list(dict.fromkeys(data.target))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(targets)), 4.5))
    plots.bars_ci(data, "target", value, hue="method", ax=ax, order=targets, hue_order=_order(data.method))
    ax.set_ylabel(ylabel + " (lower is better)")
    low = float(data[value].min())
    ax.set_ylim(bottom=max(0.0, low - 0.5))
    ax.legend(title="method", fontsize="small", ncol=4)
    ax.set_title("Downstream loss of an LM trained on each selection" + ("" if anti else " (anti-DSIR omitted)"))
    fig.tight_layout()
    return fig


def kl_vs_loss(
    table: pd.DataFrame,
    intervals: pd.DataFrame,
    value: str,
    downstream: str,
    paper_r: dict[str, float] | None = None,
    variants: tuple[str, ...] = ("methods once (claim)", "methods once, without random"),
) -> plt.Figure:
    """KL reduction vs −``value``, one point per method counted (mean over targets, each over seeds), one panel per
    correlation variant; each title gives that variant's row of ``intervals`` (the judged ``correlation_intervals``:
    r, Fisher-z interval, n), so the figure shows exactly the r the claims and the headline use."""
    rows = intervals[intervals.downstream == downstream].set_index("variant")
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.5), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        frame = method_means(table, value, CORRELATION_VARIANTS[variant])
        ax.scatter(frame.kl_reduction, -frame[value], s=40)
        for method, row in frame.iterrows():
            ax.annotate(method, (row.kl_reduction, -row[value]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        r = rows.loc[variant]
        ax.set_title(f"{variant}: r = {r.r:.2f} [{r.low:.2f}, {r.high:.2f}] (n = {r.n_methods})", fontsize=10)
        ax.set_xlabel("KL reduction (nats, vs held-out target)")
        ax.set_ylabel(f"−{value} (higher is better)")
    fig.suptitle(f"KL reduction vs the {downstream}'s held-out loss (Fisher-z 95 % intervals)", fontsize=11)
    if paper_r:
        text = "paper (reference, downstream accuracy, BERT scale): " + "; ".join(
            f"r = {v} {k}" for k, v in paper_r.items()
        )
        fig.text(0.5, -0.02, text, ha="center", fontsize=9, color="grey")
    fig.tight_layout()
    return fig


def picks_histogram(picks: pd.DataFrame, target: str, seed: int = 0, top: int = 8) -> plt.Figure:
    """What each method picked for ``target``: share of the selection per label (the ``top`` labels, rest pooled)."""
    sub = picks[(picks.target == target) & (picks.seed == seed)]
    totals = sub.groupby("label")["count"].sum().sort_values(ascending=False)
    keep = [label for label in totals.index if label != "other"][:top]
    methods = _order(sub.method)
    table = pd.DataFrame(0.0, index=methods, columns=keep + ["other"])
    for method, group in sub.groupby("method"):
        counts = group.set_index("label")["count"]
        share = counts / counts.sum()
        for label, value in share.items():
            table.loc[method, label if label in keep else "other"] += value
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(methods) + 1.5))
    left = np.zeros(len(methods))
    colors = plt.get_cmap("tab10")
    for j, column in enumerate(table.columns):
        ax.barh(
            methods, table[column], left=left, color=colors(j % 10) if column != "other" else "lightgrey", label=column
        )
        left += table[column].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("share of the selection")
    ax.set_title(f"What each method picked for target {target} (seed {seed})")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def explorer_figure(
    weights: dict,
    features: HashedFeatures | ShardedFeatures,
    labels: np.ndarray,
    target: str,
    k: int,
    temperature: float = 1.0,
    pseudocount: float = 1.0,
    top: int = 8,
) -> plt.Figure:
    """DSIR's picks at budget k for one target (labels) and its KL reduction as k grows, from cached weights."""
    entry = weights[target]
    pool, log_w = entry["pool"], entry["log_weights"]
    k = int(min(max(k, 1), len(pool)))
    chosen = pool[gumbel_top_k(log_w, k, seed=0, temperature=temperature)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    counts = pd.Series(labels[chosen]).value_counts()
    shown = counts.iloc[:top]
    axes[0].barh(list(shown.index)[::-1], shown.to_numpy()[::-1])
    axes[0].set_title(f"{target}: DSIR picks at k = {k} (T = {temperature:g}); {len(counts)} labels", fontsize=10)
    axes[0].set_xlabel("chunks")
    grid = np.unique(np.geomspace(50, len(pool), 12).astype(int))
    kls = []
    for kk in grid:
        picked = pool[gumbel_top_k(log_w, int(kk), seed=0, temperature=temperature)]
        kls.append(
            kl_reduction(
                features.total_counts(picked),
                entry["eval_counts"],
                entry["pool_counts"],
                pseudocount=pseudocount,
                num_buckets=features.num_buckets,
            )
        )
    axes[1].plot(grid, kls, marker="o")
    axes[1].axvline(k, color="grey", linestyle="--")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("k (chunks selected)")
    axes[1].set_ylabel("KL reduction (nats)")
    axes[1].set_title("KL reduction of DSIR's selection vs budget", fontsize=10)
    fig.tight_layout()
    return fig


def explorer(
    weights: dict,
    features: HashedFeatures | ShardedFeatures,
    labels: np.ndarray,
    target: str,
    k: int,
    enabled: bool = True,
) -> Widget | None:
    """Widget: a target dropdown, a k slider and a temperature slider redrawing :func:`explorer_figure`."""
    if not enabled:
        return None
    import ipywidgets as w

    targets = list(weights)
    pool_max = max(len(v["pool"]) for v in weights.values())
    controls = {
        "target": w.Dropdown(options=targets, value=target if target in targets else targets[0], description="target"),
        "k": w.IntSlider(
            value=int(k), min=50, max=min(pool_max, 20000), step=50, description="k", continuous_update=False
        ),
        "temperature": w.FloatLogSlider(
            value=1.0, base=10, min=-1, max=2, description="temperature", continuous_update=False
        ),
    }
    return widgets.view(
        lambda target, k, temperature: explorer_figure(weights, features, labels, target, k, temperature),
        controls,
        enabled=enabled,
    )


def lm_bars(
    tiny: pd.DataFrame, title: str = "Tiny byte-level transformer trained on each selection"
) -> plt.Figure:
    """Held-out bits/byte of a model trained on each selection (the tiny transformer, or SmolLM2 continued on it) per
    target and method."""
    fig, ax = plt.subplots(figsize=(8, 4))
    plots.bars_ci(tiny, "target", "bits_per_byte", hue="method", ax=ax, hue_order=_order(tiny.method))
    ax.set_ylim(bottom=max(0.0, float(tiny.bits_per_byte.min()) - 0.5))
    ax.set_ylabel("held-out bits/byte (lower is better)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def classify_bars(classify: pd.DataFrame) -> plt.Figure:
    """Downstream classification after continued pretraining: accuracy and macro-F1 per target and method."""
    methods = ["base"] + [m for m in _order(classify.method) if m != "base"]
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 3.2 * classify.target.nunique()), 4.2))
    for ax, value, label in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1"), strict=True):
        plots.bars_ci(classify, "target", value, hue="method", ax=ax, hue_order=methods)
        targets = list(dict.fromkeys(classify.target))
        chance = (1.0 / classify.groupby("target").n_tags.first()).reindex(targets)
        ax.hlines(
            chance,
            np.arange(len(targets)) - 0.45,
            np.arange(len(targets)) + 0.45,
            colors="black",
            linestyles="--",
            linewidth=1,
            zorder=4,
            label="chance (1 / tags)",
        )
        ax.set_ylabel(f"held-out {label} (higher is better)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle("Linear probe of the target's domain tags after continued pretraining on each selection", fontsize=11)
    fig.tight_layout()
    return fig


def budget_curves(budget: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """The budget check's runs (``budget_runs``), one panel per trained track: each arm's training loss (``curves``,
    the ``budget_curves`` table: one row per block of steps) at 1x (solid) and at the longer budget (dashed) against
    the step, the same schedule stretched; the check itself reads validation text."""
    tracks = list(dict.fromkeys(budget.track))
    fig, axes = plt.subplots(1, len(tracks), figsize=(6 * len(tracks), 4), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, track in zip(axes[0], tracks, strict=True):
        rows = budget[budget.track == track]
        for j, arm in enumerate(_order(rows.arm)):
            for r in rows[rows.arm == arm].itertuples():
                run = (curves.track == track) & (curves.arm == arm) & (curves.budget == r.budget)
                curve = curves[run].sort_values("block").training_loss.to_numpy()
                steps = (np.arange(len(curve)) + 0.5) * r.steps / len(curve)  # each point: the mean of a block of steps
                ax.plot(steps, curve, color=colors(j % 10), linestyle="-" if r.budget == 1 else "--",
                        label=f"{arm} ({r.budget:g}x: {r.steps} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss (nats/{'token' if track == LLM_TRACK else 'byte'})")
        ax.set_title(f"{track}, {rows.seed.iloc[0]}: 1x and longer budget", fontsize=10)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
