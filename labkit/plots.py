"""Static figures first: mean with bootstrap intervals over seeds, labelled paper references, and saving.

Every notebook figure goes through ``show`` so that headless runs keep a PNG in the executed notebook (and
its HTML) and a file under ``figures/`` in the report folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from labkit.report import report_dir
from labkit.stats import summarize


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def show(fig: plt.Figure, name: str, dpi: int = 110) -> None:
    """Save ``fig`` as ``figures/<name>.png`` in the run's report folder (if any), display it, and close it."""
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"figure name must be a plain file stem without spaces or slashes, got {name!r}")
    out = report_dir()
    if out is not None:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "figures" / f"{name}.png", dpi=dpi, bbox_inches="tight")
    if _in_notebook():
        from IPython.display import display

        display(fig)
    plt.close(fig)


_COLORS: dict[str, str] = {}  # label -> colour, fixed the first time a label is drawn in this process


def color(label: object) -> str:
    """The colour of an arm (or any hue value): the same in every figure of a run, so an arm never changes colour.

    Labels get tab10 colours in the order they are first drawn, then tab20's lighter shades.
    """
    key = str(label)
    if key not in _COLORS:
        palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
        _COLORS[key] = matplotlib.colors.to_hex(palette[len(_COLORS) % len(palette)])
    return _COLORS[key]


def _axes(ax: plt.Axes | None) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=(6, 4))[1]


def mean_ci(df: pd.DataFrame, x: str, y: str, hue: str | None = None, ax: plt.Axes | None = None,
            marker: str = "o", order: Sequence | None = None) -> plt.Axes:
    """Lines of the mean of ``y`` over seeds against ``x``, one per ``hue`` value, with a shaded bootstrap 95 % CI."""
    ax = _axes(ax)
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=False))
    if order is not None and hue is not None:
        lookup = dict(groups)
        groups = [(h, lookup[h]) for h in order if h in lookup]
    for label, group in groups:
        stats = summarize(group, x, y).sort_values(x)
        style = {} if label is None else {"label": str(label), "color": color(label)}
        line, = ax.plot(stats[x], stats["mean"], marker=marker, **style)
        ax.fill_between(stats[x], stats["low"], stats["high"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if hue is not None:
        ax.legend(title=hue, fontsize="small")
    return ax


def bars_ci(df: pd.DataFrame, x: str, y: str, hue: str | None = None, ax: plt.Axes | None = None,
            order: Sequence | None = None, hue_order: Sequence | None = None) -> plt.Axes:
    """Grouped bars of the mean of ``y`` with bootstrap 95 % error bars and the individual seeds as dots."""
    ax = _axes(ax)
    xs = list(order) if order is not None else list(dict.fromkeys(df[x]))
    hues = [None] if hue is None else (list(hue_order) if hue_order is not None else list(dict.fromkeys(df[hue])))
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sub = df if h is None else df[df[hue] == h]
        stats = summarize(sub, x, y).set_index(x).reindex(xs)
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        err = np.vstack([stats["mean"] - stats["low"], stats["high"] - stats["mean"]])
        style = {} if h is None else {"label": str(h), "color": color(h)}
        ax.bar(pos, stats["mean"], width, yerr=err, capsize=3, **style)
        for i, key in enumerate(xs):
            points = sub.loc[sub[x] == key, y].to_numpy()
            ax.scatter(np.full(points.shape, pos[i]), points, s=8, color="black", zorder=3,
                       alpha=0.6, edgecolors="none")
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs], rotation=30 if len(xs) > 4 else 0, ha="right"
                  if len(xs) > 4 else "center")
    ax.set_ylabel(y)
    if hue is not None:
        ax.legend(title=hue, fontsize="small")
    return ax


def reference_line(ax: plt.Axes, value: float, label: str, axis: str = "y", **style) -> None:
    """A dashed line marking a number reported in the paper, labelled as such (never a measured result)."""
    kwargs = {"color": "grey", "linestyle": "--", "linewidth": 1, **style}
    line = ax.axhline(value, **kwargs) if axis == "y" else ax.axvline(value, **kwargs)
    line.set_label(f"paper (reference): {label}")
    ax.legend(fontsize="small")
