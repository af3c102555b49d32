"""labkit.stats: bootstrap intervals, summaries, paired differences and the verdict rule."""

import pandas as pd
import pytest

from labkit import stats


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, low, high = stats.bootstrap_ci(values)
    assert low <= mean == 2.5 <= high
    assert stats.bootstrap_ci(values, seed=1) == stats.bootstrap_ci(values, seed=1)
    assert stats.bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.bootstrap_ci([1.0, float("nan")])


def test_paired_diff_pairs_by_seed():
    df = pd.DataFrame({"arm": ["erm"] * 3 + ["mix"] * 3, "seed": [0, 1, 2] * 2,
                       "rmse": [1.0, 2.0, 3.0, 0.9, 1.9, 2.9]})
    diff = stats.paired_diff(df, "arm", "erm", "rmse")
    row = diff.iloc[0]
    assert row["arm"] == "mix" and row["n"] == 3
    assert row["mean_diff"] == pytest.approx(-0.1) and row["low"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="reference arm 'none'"):
        stats.paired_diff(df, "arm", "none", "rmse")


def test_summarize_names_missing_columns():
    with pytest.raises(KeyError, match="not in table"):
        stats.summarize(pd.DataFrame({"a": [1]}), "b", "a")


def test_interval_sign_reads_above_below_and_spanning():
    assert stats.interval_sign(0.1, 0.3) == 1
    assert stats.interval_sign(-0.3, -0.1) == -1
    assert stats.interval_sign(-0.1, 0.2) == 0
    assert stats.interval_sign(0.0, 0.2) == 0  # touching 0 is not a win
    with pytest.raises(ValueError, match="low <= high"):
        stats.interval_sign(0.3, 0.1)
