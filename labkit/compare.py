"""Compare the runs of a sweep: mean with a bootstrap 95 % interval over seeds, and paired differences to a reference.

Built on the intervals the paper notebooks use (``labkit.stats.summarize`` / ``paired_diff``) and their plot
helpers (``labkit.plots.mean_ci`` / ``bars_ci``), so a sweep's figure reads like a notebook's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from labkit import plots
from labkit.stats import paired_diff, summarize

PAIR_COLUMN = "seed"  # runs are paired (and intervals taken) over this column when the table has it


def load_table(path: str | Path) -> pd.DataFrame:
    """A sweep table (``table.parquet`` / ``table.csv``, or a sweep folder holding them); only successful runs."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "table.parquet", path / "table.csv"]
        path = next((c for c in candidates if c.is_file()), candidates[-1])
    if not path.is_file():
        raise FileNotFoundError(f"no sweep table at {path}; expected table.parquet or table.csv from `labkit sweep`")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    if table.empty:
        raise ValueError(f"{path} holds no successful runs to compare")
    return table.reset_index(drop=True)


def _check_columns(table: pd.DataFrame, **columns: str | None) -> None:
    for role, name in columns.items():
        if name is not None and name not in table.columns:
            shown = [c for c in table.columns if not str(c).startswith("meta.")]
            raise KeyError(f"--{role} {name!r} is not a column of the table; columns: {shown}")


def compare_figure(
    table: pd.DataFrame,
    x: str,
    y: str,
    by: str | None = None,
    ref: str | None = None,
    pair: str = PAIR_COLUMN,
    n_boot: int = 2000,
) -> plt.Figure:
    """Mean of ``y`` against ``x`` with bootstrap 95 % intervals over seeds, one line (or bar) per ``by`` arm.

    With ``by``, a second panel shows each arm minus the reference arm ``ref`` (default: the first arm), paired on
    the ``pair`` column (default ``seed``) where the table has one, so the seed-to-seed spread both arms share
    cancels.
    """
    _check_columns(table, x=x, y=y, by=by)
    data = table.dropna(subset=[y]).copy()
    data[y] = pd.to_numeric(data[y], errors="raise")
    numeric_x = pd.api.types.is_numeric_dtype(data[x]) and data[x].nunique() > 1
    panels = 2 if by is not None and data[by].nunique() > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    if numeric_x:
        plots.mean_ci(data, x, y, hue=by, ax=ax)
    else:
        plots.bars_ci(data, x, y, hue=by, ax=ax)
    if pair in data:
        ax.set_title(f"{y}: mean and bootstrap 95 % CI over {data[pair].nunique()} {pair} value(s)")
    else:
        ax.set_title(f"{y}: mean and bootstrap 95 % CI over repeated runs")
    if panels == 2:
        arms = list(dict.fromkeys(data[by]))
        ref = arms[0] if ref is None else ref
        if ref not in arms:
            raise ValueError(f"reference arm {ref!r} not in column {by!r}; arms: {arms}")
        pair_cols = [pair] if pair in data and pair not in (x, by) else []
        diffs = paired_differences(data, x, y, by, ref, pair_cols, n_boot)
        ax2 = axes[0, 1]
        for arm, group in diffs.groupby(by, sort=False):
            positions = group[x] if numeric_x else np.arange(len(group))
            (line,) = ax2.plot(positions, group["mean_diff"], marker="o", label=str(arm))
            ax2.fill_between(positions, group["low"], group["high"], color=line.get_color(), alpha=0.2, linewidth=0)
        if not numeric_x:
            ax2.set_xticks(np.arange(diffs[x].nunique()), [str(v) for v in dict.fromkeys(diffs[x])])
        ax2.axhline(0, color="grey", linewidth=1)
        ax2.set_xlabel(x)
        ax2.set_ylabel(f"{y} − {ref}")
        ax2.set_title(f"paired on {pair}" if pair_cols else f"unpaired (no {pair!r} column)")
        ax2.legend(title=by, fontsize="small")
    fig.tight_layout()
    return fig


def paired_differences(
    table: pd.DataFrame, x: str, y: str, by: str, ref: str, pair: list[str], n_boot: int = 2000
) -> pd.DataFrame:
    """Per ``x`` value, each arm's mean difference to ``ref`` with a bootstrap interval (``stats.paired_diff``)."""
    frames = []
    for value, group in table.groupby(x, sort=True):
        if pair:
            diff = paired_diff(group, by, ref, y, pair_cols=pair, n_boot=n_boot)
        else:  # no pairing column: compare the arms' means, intervals from the arms' own spread
            stats = summarize(group, by, y, n_boot=n_boot).set_index(by)
            base = stats.loc[ref, "mean"]
            diff = pd.DataFrame(
                [
                    {
                        by: arm,
                        "mean_diff": row["mean"] - base,
                        "low": row["low"] - base,
                        "high": row["high"] - base,
                        "n": row["n"],
                    }
                    for arm, row in stats.iterrows()
                    if arm != ref
                ]
            )
        frames.append(diff.assign(**{x: value}))
    return pd.concat(frames, ignore_index=True)


def compare(
    table_path: str | Path,
    x: str,
    y: str,
    by: str | None = None,
    ref: str | None = None,
    out: str | Path | None = None,
    pair: str = PAIR_COLUMN,
) -> tuple[Path, pd.DataFrame]:
    """Draw :func:`compare_figure` for a sweep table and save it as PNG (default beside the table).

    Returns the PNG path and the summary (mean, interval, count per ``x`` and arm). In a notebook the figure
    is displayed too.
    """
    table = load_table(table_path)
    fig = compare_figure(table, x, y, by, ref, pair=pair)
    folder = Path(table_path) if Path(table_path).is_dir() else Path(table_path).parent
    png = Path(out) if out is not None else folder / f"compare_{y}_by_{x}{'_' + by if by else ''}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    summary = summarize(table.dropna(subset=[y]), [x] + ([by] if by else []), y)
    plots.show(fig, png.stem)  # displays in a notebook (and saves into a run's report folder when there is one)
    return png, summary
