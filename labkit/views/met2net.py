"""Figures and widget views for the Met²Net notebook (tables come from :mod:`labkit.experiments.met2net`)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from labkit import plots


def sample_fields(
    truth: np.ndarray, variables: Sequence[str], units: Sequence[str], sample: int = 0, lead: int = 0
) -> plt.Figure:
    """One test window's true fields, one panel per variable (physical units)."""
    fig, axes = plt.subplots(1, len(variables), figsize=(3.2 * len(variables), 2.4))
    for v, ax in enumerate(np.atleast_1d(axes)):
        im = ax.imshow(truth[sample, lead, v], cmap="RdBu_r" if variables[v] in ("u", "v") else "viridis")
        ax.set_title(f"{variables[v]} [{units[v]}]")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"test sample {sample}, lead {lead + 1}")
    fig.tight_layout()
    return fig


def squared_unit(unit: str) -> str:
    """The unit of an MSE: ``K`` -> ``K²``, ``m/s`` -> ``(m/s)²`` (not m/s²), dimensionless ``1`` stays ``1``."""
    if unit in ("", "1"):
        return "1"
    return f"({unit})²" if any(c in unit for c in "/ *") else f"{unit}²"


def per_variable_mse(metrics: pd.DataFrame, arms: Sequence[str]) -> plt.Figure:
    """Per variable by arm: skill vs persistence (1 − MSE / persistence MSE), normalised MSE, and physical MSE.

    Bars: seed mean with a bootstrap 95 % interval; dots: seeds. The verdicts use Student-t intervals.
    """
    variables = list(dict.fromkeys(metrics["variable"]))
    fig = plt.figure(figsize=(3 * len(variables), 9))
    grid = fig.add_gridspec(3, len(variables))
    norm = metrics[metrics["units"] == "normalised"]
    for row, (value, label) in enumerate((("skill", "skill vs persistence (1 − MSE/MSE_pers)"),
                                          ("mse", "test MSE (z-units)"))):
        if value not in norm.columns:
            continue
        ax = fig.add_subplot(grid[row, :])
        plots.bars_ci(norm, "variable", value, hue="arm", ax=ax, order=variables,
                      hue_order=[a for a in arms if value != "skill" or a != "persistence"])
        ax.set_ylabel(label)
        if value == "skill":
            ax.axhline(0, color="grey", linewidth=0.8)
    phys = metrics[metrics["units"] == "physical"]
    for i, var in enumerate(variables):
        sub = phys[phys["variable"] == var]
        a = fig.add_subplot(grid[2, i])
        plots.bars_ci(sub, "arm", "mse", ax=a, order=[arm for arm in arms if arm in set(sub["arm"])])
        a.set_title(var)
        a.set_ylabel(f"MSE [{squared_unit(sub['unit'].iloc[0])}]")
        a.tick_params(axis="x", labelsize=7, rotation=60)
    fig.tight_layout()
    return fig


def lead_curves(lead: pd.DataFrame, arms: Sequence[str], value: str = "mse_z") -> plt.Figure:
    """MSE against lead time per variable, mean over seeds with bootstrap bands."""
    variables = list(dict.fromkeys(lead["variable"]))
    fig, axes = plt.subplots(1, len(variables), figsize=(3.2 * len(variables), 3), sharey=value == "mse_z")
    for ax, var in zip(np.atleast_1d(axes), variables, strict=True):
        plots.mean_ci(lead[lead["variable"] == var], "lead", value, hue="arm", ax=ax, order=arms)
        ax.set_title(var)
        if ax is not np.atleast_1d(axes)[-1]:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig


def attention_matrix(attention: pd.DataFrame, variables: Sequence[str], arm: str = "met2net") -> plt.Figure:
    """The V x V variable-attention weights (rows: query variable), test-set mean over blocks, heads and seeds."""
    sub = attention[attention["arm"] == arm]
    mat = sub.groupby(["query", "key"])["weight"].mean().unstack().reindex(index=variables, columns=variables)
    fig, ax = plt.subplots(figsize=(4, 3.5))
    im = ax.imshow(mat.to_numpy(), cmap="magma", vmin=0)
    ax.set_xticks(range(len(variables)), variables)
    ax.set_yticks(range(len(variables)), variables)
    ax.set_xlabel("key (attended variable)")
    ax.set_ylabel("query variable")
    for (i, j), w in np.ndenumerate(mat.to_numpy()):
        ax.text(
            j,
            i,
            f"{w:.2f}",
            ha="center",
            va="center",
            color="white" if w < mat.to_numpy().max() / 2 else "k",
            fontsize=8,
        )
    fig.colorbar(im, ax=ax)
    ax.set_title(f"{arm}: attention across variables")
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, arms: Sequence[str]) -> plt.Figure:
    """Left: Met²Net's two stage losses over steps. Right: validation MSE per arm (checkpoint selection)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    m2n = history[history["arm"] == "met2net"]
    if not m2n.empty:
        for col, label in (
            ("rec", "stage I: forecast MSE through frozen translator"),
            ("latent", "stage II: latent MSE through frozen encoders"),
        ):
            curve = m2n.groupby("step")[col].mean()
            ax1.plot(curve.index, curve.to_numpy(), label=label)
        ax1.set_yscale("log")
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss (seed mean)")
        ax1.legend(fontsize="small")
        ax1.set_title("met2net stage losses")
    val = history.dropna(subset=["val_mse_z"])
    val = val[~val["arm"].isin(["persistence", "climatology"])]
    plots.mean_ci(val, "epoch", "val_mse_z", hue="arm", ax=ax2, order=arms)
    ax2.set_yscale("log")
    ax2.set_title("validation MSE (z-units)")
    fig.tight_layout()
    return fig


def relative_change(table: pd.DataFrame) -> plt.Figure:
    """% MSE change of Met²Net vs the FLOPs-matched stacked model per variable (seed mean, Student-t 95 % interval);
    the paper's T and RH numbers as labelled references."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(table))
    mean = table["relative_change_pct"].to_numpy()
    err = np.stack([mean - table["low"].to_numpy(), table["high"].to_numpy() - mean])
    ax.bar(x, mean, 0.6, yerr=np.nan_to_num(err), capsize=3,
           label=f"measured vs {table['baseline'].iloc[0]} (n={int(table['n'].iloc[0])})")
    paper = table["paper_pct"].to_numpy()
    has = ~np.isnan(paper)
    ax.scatter(x[has], paper[has], marker="_", s=600, color="k", zorder=3, label="paper (reference, WeatherBench)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, table["variable"])
    ax.set_ylabel(f"MSE change of {table['arm'].iloc[0]} (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def momentum_sweep(sweep: pd.DataFrame) -> plt.Figure:
    """Met²Net's validation and test MSE against the EMA momentum of the translator copy (the choice is on val)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    plots.mean_ci(sweep, "momentum", "mse_z", hue="split", ax=ax)
    chosen = sweep.loc[sweep["selected"], "momentum"]
    if not chosen.empty:
        ax.axvline(float(chosen.iloc[0]), color="grey", linestyle=":", label="chosen on validation")
    ax.set_ylabel("mean MSE (z-units)")
    ax.set_title("met2net momentum sweep")
    fig.tight_layout()
    return fig


def forecast_panel(
    samples: dict[str, np.ndarray],
    variables: Sequence[str],
    units: Sequence[str],
    variable: str,
    sample: int,
    lead: int,
    arm: str,
) -> plt.Figure:
    """Truth, one arm's forecast and their difference for one variable, test sample and lead time (1 = next frame)."""
    v = list(variables).index(variable)
    truth, pred = samples["truth"][sample, lead - 1, v], samples[arm][sample, lead - 1, v]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    for ax, img, title in ((axes[0], truth, "truth"), (axes[1], pred, arm)):
        im = ax.imshow(img, vmin=lo, vmax=hi, cmap="viridis")
        ax.set_title(f"{title}: {variable} [{units[v]}]")
        fig.colorbar(im, ax=ax, shrink=0.8)
    err = pred - truth
    lim = float(np.abs(err).max()) or 1.0
    im = axes[2].imshow(err, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2].set_title(f"error, RMSE {np.sqrt((err**2).mean()):.3g}")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"sample {sample}, lead {lead}")
    fig.tight_layout()
    return fig


def forecast_controls(samples: dict[str, np.ndarray], variables: Sequence[str], arm: str = "met2net") -> dict:
    """Widgets for :func:`forecast_panel`: variable and arm dropdowns, sample and lead sliders (explicit values)."""
    import ipywidgets as widgets

    arms = [a for a in samples if a != "truth"]
    n_samples, t_out = samples["truth"].shape[:2]
    return {
        "variable": widgets.Dropdown(options=list(variables), value=list(variables)[3], description="variable"),
        "sample": widgets.IntSlider(value=0, min=0, max=n_samples - 1, description="sample", continuous_update=False),
        "lead": widgets.IntSlider(
            value=t_out, min=1, max=t_out, description="lead", continuous_update=False
        ),
        "arm": widgets.Dropdown(options=arms, value=arm if arm in arms else arms[0], description="arm"),
    }
