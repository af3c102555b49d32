"""Figures and the widget view of the profiling tour."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter

from labkit.experiments import Results


def flops_figure(results: Results) -> plt.Figure:
    """Counted vs closed-form FLOPs (and torch's plain counter) by sequence length; attention's share."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    flops = results.flops
    left.plot(flops.seq_len, flops.analytic / 1e9, "k--", label="closed form")
    left.plot(flops.seq_len, flops.counted / 1e9, "o", label="labkit.profile.count_flops")
    left.plot(flops.seq_len, flops.plain_flop_counter / 1e9, "x", label="plain FlopCounterMode")
    left.set(xlabel="sequence length", ylabel="GFLOPs per forward (2 per multiply-add)", xscale="log", yscale="log")
    left.set_xticks(list(flops.seq_len), [str(s) for s in flops.seq_len])
    left.minorticks_off()
    left.legend(fontsize="small")
    attention = results.breakdown[results.breakdown.component == "attention"]
    right.plot(attention.seq_len, 100 * attention.share, "o-")
    right.set(xlabel="sequence length", ylabel="attention share of FLOPs (%)", xscale="log")
    right.set_xticks(list(attention.seq_len), [str(s) for s in attention.seq_len])
    right.minorticks_off()
    fig.suptitle("FLOPs of one Llama decoder block")
    fig.tight_layout()
    return fig


def timing_figure(results: Results) -> plt.Figure:
    """Throughput by sequence length with the inter-quartile range, labelled with device and threads."""
    t = results.throughput
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(t.seq_len, t.tokens_per_second / 1e3,
                yerr=(t.tokens_per_second * t.iqr_seconds / t.median_seconds / 2) / 1e3, fmt="o-", capsize=3)
    ax.set(xlabel="sequence length", ylabel="thousand tokens / s (median, ±IQR/2)", xscale="log",
           title=f"{t.device.iloc[0]}, {t.threads.iloc[0]} thread(s)")
    ax.set_xticks(list(t.seq_len), [str(s) for s in t.seq_len])
    ax.minorticks_off()
    fig.tight_layout()
    return fig


def breakdown_figure(results: Results, seq_len: int) -> plt.Figure:
    """FLOPs per component at one sequence length (the widget's redraw)."""
    rows = results.breakdown[results.breakdown.seq_len == seq_len]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.barh(rows.component, rows.flops)
    for y, (flops, share) in enumerate(zip(rows.flops, rows.share, strict=True)):
        ax.text(flops, y, f" {100 * share:.0f} %", va="center")
    ax.xaxis.set_major_formatter(EngFormatter(unit="FLOP"))
    ax.set(xlabel="FLOPs per forward", title=f"sequence length {seq_len}")
    fig.tight_layout()
    return fig
