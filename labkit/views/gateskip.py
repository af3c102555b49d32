"""Figures and widget controls of the GateSkip notebook (static matplotlib first; widgets redraw these)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import plots, protocol, skip
from labkit.data import sequences
from labkit.experiments.gateskip.arms.grid import CONTROL
from labkit.views.claims import claims_forest as forest


def _curve(group: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    rows = []
    for _, pts in group.groupby("budget", sort=True):
        mean, low, high = protocol.student_t_ci(pts[y].to_numpy())
        rows.append({"x": pts[x].mean(), "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows).sort_values("x")


def quality_vs_saved(curves: pd.DataFrame, task: str, metric: str, dense_label: str = "dense fine-tune") -> plt.Figure:
    """Quality against compute saved on test, all arms, in the paper's token x branch fraction and in executed FLOPs.

    Lines: mean over seeds, bands: Student-t 95 % interval; x is the mean measured saving at each budget.
    """
    sub = curves[(curves.task == task) & (curves.split == "test")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, x, label in zip(
        axes,
        ("skipped_fraction", "flops_saved"),
        ("compute saved: token x branch fraction (paper)", "compute saved: executed FLOPs (compact)"),
        strict=True,
    ):
        if x not in sub or sub[x].isna().all():  # FLOPs are counted on text only (a pretrained LLM's stage 2)
            ax.text(0.5, 0.5, "not counted for this task", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        for arm, group in sub[sub.arm != "dense"].groupby("arm", sort=False):
            color = plots.color(arm)
            stats = _curve(group, x, metric)
            style = "--" if "random rank" in arm else "-"
            ax.plot(stats.x, stats["mean"], style, marker="o", ms=3, color=color, label=arm)
            ax.fill_between(stats.x, stats.low, stats.high, color=color, alpha=0.15, linewidth=0)
        dense = sub[sub.arm == "dense"][metric].mean()
        ax.axhline(dense, color=plots.color("dense"), lw=0.8, ls=":", label=dense_label)
        for level, style in ((0.9, "-."), (0.95, "--")):
            ax.axhline(
                level * dense if metric != "bpb" else dense / level,
                color="grey",
                lw=0.8,
                ls=style,
                label=f"{level:.0%} of dense" if metric != "bpb" else f"dense / {level:g}",
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    drawn = [ax for ax in axes if ax.get_legend_handles_labels()[0]]  # a task without FLOPs draws only the first
    if drawn:
        drawn[-1].legend(fontsize="small", loc="best")
    fig.suptitle(f"{task}: test quality vs compute saved (mean and Student-t 95 % interval over seeds)")
    fig.tight_layout()
    return fig


def generation_curves(generation: pd.DataFrame, metric: str = "gen_em") -> plt.Figure:
    """Quality of text generated with a KV cache against the token x branch fraction skipped (prefill and decoding),
    per scope (batch quantile per step, or per-branch thresholds calibrated on validation): exact match of running-sum
    chains (``gen_em``), or bits per byte of held-out text decoded token by token (``bpb``, lower is better)."""
    scopes = list(dict.fromkeys(generation.scope))
    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4), sharey=True, squeeze=False)
    for ax, scope in zip(axes[0], scopes, strict=True):
        sub = generation[generation.scope == scope]
        for arm, group in sub[sub.arm != "dense"].groupby("arm", sort=False):
            stats = _curve(group, "skipped_fraction", metric)
            ax.plot(
                stats.x,
                stats["mean"],
                "--" if "random rank" in arm else "-",
                marker="o",
                ms=3,
                color=plots.color(arm),
                label=arm,
            )
            ax.fill_between(stats.x, stats.low, stats.high, color=plots.color(arm), alpha=0.15, linewidth=0)
        dense = sub[sub.arm == "dense"][metric].mean()
        ax.axhline(dense, color=plots.color("dense"), lw=0.8, ls=":", label="dense")
        bpb = metric == "bpb"
        ax.axhline(dense / 0.9 if bpb else 0.9 * dense, color="grey", lw=0.8, ls="-.",
                   label="dense / 0.9" if bpb else "90 % of dense")
        ax.set_xlabel("compute saved: token x branch fraction (prefill + decoding)")
        ax.set_title(f"{scope} scope")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("bits per byte of decoded text" if metric == "bpb" else "exact match of the generated chain")
    axes[0][-1].legend(fontsize="small")
    what = "held-out text decoded token by token" if metric == "bpb" else "running sums generated"
    fig.suptitle(f"{what} with a KV cache under the budget (test)")
    fig.tight_layout()
    return fig


def claims_forest(claims: pd.DataFrame) -> plt.Figure:
    """Every judged claim: GateSkip's extra compute saved over a baseline, paired by seed, each with a tick at its
    tolerance; the premises (squares) in their own units (see :func:`labkit.views.claims.claims_forest`)."""
    return forest(
        claims,
        None,
        "GateSkip minus baseline: compute saved, percentage points (paired by seed); premises (squares): gate shift, "
        "quality over the trivial predictor",
    )


def gate_heatmap(gates: pd.DataFrame, task: str, tokens: list[str] | None = None) -> plt.Figure:
    """Mean gate importance by branch (rows) and position (columns), averaged over seeds and examples."""
    sub = gates[gates.task == task]
    table = sub.groupby(["layer", "branch", "position"]).importance.mean().unstack("position")
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * table.shape[1] + 2), 0.45 * table.shape[0] + 1.5))
    im = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(table)), [f"L{layer} {branch}" for layer, branch in table.index])
    labels = tokens if tokens is not None and len(tokens) == table.shape[1] else list(table.columns)
    ax.set_xticks(range(table.shape[1]), labels, fontsize=7)
    ax.set_xlabel("position (example tokens of seed 0 shown)" if tokens is not None else "position")
    fig.colorbar(im, ax=ax, label="mean gate value (importance)")
    ax.set_title(f"{task}: gate importance by branch and position (r = 0)")
    fig.tight_layout()
    return fig


def skip_heatmap(skips: pd.DataFrame, task: str, ratio: float) -> plt.Figure:
    """Per-branch skip fraction by position at budget ``ratio`` (the per-module view of where compute is saved)."""
    sub = skips[skips.task == task]
    table = sub.groupby(["module", "position"]).skip_fraction.mean().unstack("position")
    table = table.loc[sorted(table.index, key=lambda n: (int(n.split(".")[0]), n.split(".")[1]))]
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(12, 0.45 * len(table) + 1.8), width_ratios=[4, 1])
    im = ax.imshow(table.to_numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_yticks(range(len(table)), table.index)
    ax.set_xticks(range(table.shape[1]), table.columns, fontsize=7)
    ax.set_xlabel("position")
    fig.colorbar(im, ax=ax, label="fraction of examples skipping")
    ax.set_title(f"{task}: which positions each branch skips at r = {ratio:.0%}")
    per_module = table.mean(axis=1)
    bar.barh(range(len(per_module)), per_module.to_numpy(), color="tab:blue")
    bar.set_yticks(range(len(per_module)), per_module.index)
    bar.invert_yaxis()
    bar.set_xlabel("skipped fraction")
    fig.tight_layout()
    return fig


def token_skips(
    importance: np.ndarray, keep: np.ndarray, names: list[str], tokens: list[str], ratio: float
) -> plt.Figure:
    """One example: gate importance per branch (rows) and token (columns); skipped cells are crossed out."""
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(tokens) + 2), 0.4 * len(names) + 1.6))
    im = ax.imshow(importance, aspect="auto", cmap="viridis")
    rows, cols = np.nonzero(~keep)
    ax.scatter(cols, rows, marker="x", color="red", s=40, label="skipped")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(tokens)), tokens)
    fig.colorbar(im, ax=ax, label="gate importance")
    ax.set_title(f"tokens skipped at r = {ratio:.0%} ({int((~keep).sum())} of {keep.size} branch computations)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def token_skip_map(
    model: nn.Module, batch: torch.Tensor, ratio: float, example: int, scope: str = "batch"
) -> dict[str, Any]:
    """Gate importance and skip decisions of every branch for one example of ``batch`` at budget ``ratio``.

    The quantile is taken over the whole batch (scope "batch"), as at evaluation; returns arrays (branches x tokens).
    """
    device = next(model.parameters()).device
    with skip.budget(model, ratio, scope=scope, measure_flops=False, record=True) as stats:
        model(batch.to(device))
    names = list(stats.records)
    importance = np.stack([stats.records[n]["importance"][example].numpy() for n in names])
    keep = np.stack([stats.records[n]["keep"][example].numpy() for n in names])
    tokens = (
        sequences.decode(batch[example])
        if model.config.vocab_size == sequences.VOCAB_SIZE
        else [repr(chr(int(t)))[1:-1] for t in batch[example]]
    )
    return {"importance": importance, "keep": keep, "names": names, "tokens": tokens, "ratio": ratio}


def draw_tokens(
    model: nn.Module, examples: torch.Tensor, ratio: float, example: int, scope: str = "batch"
) -> plt.Figure:
    """:func:`token_skips` for example ``example`` of the batch ``examples`` at budget ``ratio`` (quantile over the
    whole batch with ``scope="batch"``, as at evaluation); the widget's redraw function."""
    m = token_skip_map(model, examples, ratio, example, scope=scope)
    return token_skips(m["importance"], m["keep"], m["names"], m["tokens"], ratio)


def training_curves(history: pd.DataFrame, task: str) -> plt.Figure:
    """Task loss during pretraining and each test fine-tune (mean over the test seeds)."""
    sub = history[(history.task == task) & history.split.isin(["pretrain", "test"])]
    phases = list(dict.fromkeys(sub.phase))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    pre = sub[sub.phase == "pretrain"].groupby("step").loss.mean()
    axes[0].plot(pre.index, pre.to_numpy())
    axes[0].set_yscale("log")
    axes[0].set_title("pretraining loss")
    for phase in phases:
        if phase == "pretrain":
            continue
        curve = sub[sub.phase == phase].groupby("step").loss.mean().rolling(10, min_periods=1).mean()
        axes[1].plot(curve.index, curve.to_numpy(), label=phase)
    axes[1].set_yscale("log")
    axes[1].set_title("fine-tuning task loss (10-step mean)")
    axes[1].legend(fontsize="small")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def premise_curves(curves: pd.DataFrame, stage1: pd.DataFrame, history: pd.DataFrame) -> plt.Figure:
    """Stage 1 on the choosing half of the text validation windows: bits per byte against the skipped fraction for each
    configuration's final stop, ranked by its gates (solid) and at random (dashed), the pretrained LM as a line; and
    the gates' training loss (task loss plus gate penalty, 10-step mean)."""
    sel = curves[(curves.half == "select") & (curves.task == "text")]
    last = stage1.groupby("config", sort=False).steps.max()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (config, steps) in enumerate(last.items()):
        ours = sel[(sel.config == config) & (sel.steps == steps)]
        for arm, style in (("gateskip", "-"), (CONTROL, "--")):
            points = pd.concat([ours[(ours.arm == "gateskip") & (ours.budget == 0)], ours[ours.arm == arm]])
            mean = points.groupby("budget").bpb.mean()
            label = f"{config}: {'gates' if arm == 'gateskip' else 'random'}"
            axes[0].plot(100 * mean.index, mean.to_numpy(), style, color=f"C{i}", marker="o", label=label)
    axes[0].axhline(sel[sel.arm == "dense"].bpb.mean(), color="k", lw=0.8, label="pretrained LM")
    axes[0].set(xlabel="branch-tokens skipped (%)", ylabel="bits per byte (validation, choosing half)",
                title="learned vs random ranking, same model")
    axes[0].legend(fontsize="x-small")
    for i, (config, group) in enumerate(history.groupby("config", sort=False)):
        axes[1].plot(group.step, _penalised_loss(group), color=f"C{i}", label=config)
    axes[1].set(xlabel="step", title=_GATE_LOSS)
    axes[1].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


_GATE_LOSS = "gate training: task loss + gate penalty (10-step mean)"


def _penalised_loss(group: pd.DataFrame) -> pd.Series:
    """What gate training minimises, per step: the task loss plus the gate penalty, as a 10-step running mean."""
    return (group.loss + group.extra).rolling(10, min_periods=1).mean()


def gate_training(history: pd.DataFrame, ramp_to: float) -> plt.Figure:
    """Stage 2 on a pretrained LLM: the chosen gates retrained on every test seed, beside the convergence check's run
    on validation with a longer schedule (``run_budget`` times the steps), task loss plus gate penalty per step. The
    skip budget ramps from 0 to ``ramp_to`` over each run, so the task loss rises with it."""
    sub = history[history.split.isin(["test", "val"])]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (split, seed, factor), group in sub.groupby(["split", "seed", "run_budget"], sort=True):
        check = split == "val"
        label = f"convergence check (validation, {factor:g}x steps)" if check else f"test seed {seed:g}"
        ax.plot(group.step, _penalised_loss(group), color="k" if check else None, lw=1.5 if check else 0.9, label=label)
    ax.set(xlabel="step", title=f"{_GATE_LOSS}\nthe skip budget ramps 0 -> {ramp_to:.0%} over each run")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def token_controls(ratio: float, n_examples: int) -> dict:
    """Widgets for :func:`token_skips`: the budget and the example index."""
    import ipywidgets as widgets

    return {
        "ratio": widgets.FloatSlider(
            value=ratio, min=0.0, max=0.9, step=0.05, description="budget r", continuous_update=False
        ),
        "example": widgets.IntSlider(
            value=0, min=0, max=n_examples - 1, description="example", continuous_update=False
        ),
    }
