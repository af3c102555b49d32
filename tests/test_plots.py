"""Shared figure helpers: intervals over seeds, stable arm colours, labelled references and saving."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from labkit import plots


def _runs() -> pd.DataFrame:
    rows = [
        {"arm": arm, "budget": b, "seed": s, "acc": base - b + 0.01 * s}
        for arm, base in {"dense": 1.0, "gated": 0.9}.items()
        for b in (0.0, 0.5)
        for s in range(3)
    ]
    return pd.DataFrame(rows)


def test_an_arm_keeps_its_colour_across_figures_and_helpers():
    df = _runs()
    ax1 = plots.mean_ci(df, "budget", "acc", hue="arm")
    ax2 = plots.mean_ci(df, "budget", "acc", hue="arm", order=["gated", "dense"])  # drawn in the other order
    ax3 = plots.bars_ci(df, "budget", "acc", hue="arm", hue_order=["gated", "dense"])
    first = {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax1.get_lines()}
    second = {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax2.get_lines()}
    containers = [c for c in ax3.containers if isinstance(c, BarContainer)]
    bars = {c.get_label(): mcolors.to_hex(c.patches[0].get_facecolor()) for c in containers}
    assert first == second == bars
    assert first["dense"] != first["gated"]
    plt.close("all")


def test_mean_ci_draws_the_seed_mean():
    ax = plots.mean_ci(_runs(), "budget", "acc", hue="arm")
    line = next(x for x in ax.get_lines() if x.get_label() == "dense")
    assert list(line.get_ydata()) == pytest.approx([1.01, 0.51])
    plt.close("all")


def test_reference_line_is_labelled_as_the_papers():
    fig, ax = plt.subplots()
    plots.reference_line(ax, 0.15, "15 % saved")
    assert ax.get_lines()[0].get_label() == "paper (reference): 15 % saved"
    plt.close(fig)


def test_show_saves_into_the_report_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "report_dir", lambda: tmp_path)
    fig, _ = plt.subplots()
    plots.show(fig, "curve")
    assert (tmp_path / "figures" / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="plain file stem"):
        plots.show(plt.subplots()[0], "a/b")
    plt.close("all")
