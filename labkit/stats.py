"""The statistics behind every verdict: bootstrap intervals of a mean, per-group summaries, paired differences.

Small-scale runs have a few seeds each, so every comparison is a paired difference over seeds with a percentile
bootstrap interval, and :func:`interval_sign` turns an interval into better / worse / tied the same way everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap interval of the mean: ``(mean, low, high)``.

    With one value the interval collapses to it; non-finite values are an error, not silently dropped.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci got non-finite values: {x[~np.isfinite(x)][:5].tolist()}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return mean, float(low), float(high)


def summarize(df: pd.DataFrame, by: str | Sequence[str], value: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, bootstrap 95 % interval and count of ``value`` per group (typically over seeds)."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in table; it has {list(df.columns)}")
    rows = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = bootstrap_ci(group[value].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key, strict=True)), "mean": mean, "low": low, "high": high, "n": len(group)})
    return pd.DataFrame(rows)


def paired_diff(
    df: pd.DataFrame,
    arm_col: str,
    ref_arm: Any,
    value_col: str,
    pair_cols: Sequence[str] = ("seed",),
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-arm mean difference to ``ref_arm`` paired on ``pair_cols`` (e.g. the seed), with a bootstrap interval.

    Pairing removes the seed-to-seed spread that both arms share, which is what small-scale gaps drown in.
    """
    if ref_arm not in set(df[arm_col]):
        raise ValueError(f"reference arm {ref_arm!r} not in column {arm_col!r}; arms: {sorted(set(df[arm_col]))}")
    pair_cols = list(pair_cols)
    ref = df[df[arm_col] == ref_arm].set_index(pair_cols)[value_col]
    rows = []
    for arm, group in df[df[arm_col] != ref_arm].groupby(arm_col, sort=False):
        diffs = group.set_index(pair_cols)[value_col] - ref
        diffs = diffs.dropna()
        if diffs.empty:
            raise ValueError(f"arm {arm!r} shares no {pair_cols} values with reference arm {ref_arm!r}")
        mean, low, high = bootstrap_ci(diffs.to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({arm_col: arm, "mean_diff": mean, "low": low, "high": high, "n": len(diffs)})
    return pd.DataFrame(rows)


def interval_sign(low: float, high: float) -> int:
    """+1 when an interval lies above 0, -1 when below, 0 when it spans 0 (a tie at this many seeds).

    The one rule every notebook's verdict uses to turn a paired-difference interval into better / worse / tied.
    """
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"expected an interval with low <= high, got [{low}, {high}]")
    return 1 if low > 0 else (-1 if high < 0 else 0)
