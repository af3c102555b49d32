"""The protocol: Student-t intervals, the verdict rule, sanity checks and validation-only selection."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from labkit import protocol
from labkit.protocol import Claim


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "seed": s, "mse": v} for a, vs in values.items() for s, v in enumerate(vs)])


def test_student_t_matches_scipy_and_is_wider_than_min_max_for_three_seeds():
    x = [0.1, 0.4, 0.3]
    mean, low, high = protocol.student_t_ci(x)
    ref = scipy_stats.t.interval(0.95, 2, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert (low, high) == pytest.approx(ref)
    assert mean == pytest.approx(np.mean(x)) and low < min(x) and high > max(x)


def test_student_t_one_value_has_no_interval_and_rejects_bad_input():
    assert math.isnan(protocol.student_t_ci([1.0])[1])
    with pytest.raises(ValueError, match="non-finite"):
        protocol.student_t_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        protocol.student_t_ci([])


CLAIM = Claim("a_beats_b", "a is better than b", "mse", arm="a", baseline="b", tolerance=0.0)


def test_judge_held_not_held_and_inconclusive():
    held = protocol.judge(CLAIM, _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0]}))
    assert held.verdict == "held" and held.paired and held.n == 5 and held.low > 0
    worse = protocol.judge(CLAIM, _table({"a": [3.0, 3.1, 2.9, 3.0, 3.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0]}))
    assert worse.verdict == "not held" and worse.high < 0
    tie = protocol.judge(CLAIM, _table({"a": [1.0, 2.0, 1.0, 2.0, 1.5], "b": [1.5, 1.5, 1.5, 1.5, 1.5]}))
    assert tie.verdict == "inconclusive"
    assert "HELD" in held.summary() and "n=5" in held.summary()


def test_judge_tolerance_turns_a_tiny_gain_into_not_held_and_relative_is_percent():
    tiny = Claim("c", "a is better by 10 %", "mse", "a", "b", relative=True, tolerance=10.0)
    v = protocol.judge(tiny, _table({"a": [0.99, 0.98, 0.99, 0.985, 0.99], "b": [1.0, 1.0, 1.0, 1.0, 1.0]}))
    assert v.verdict == "not held" and 0 < v.mean < 3


def test_judge_pairs_by_seed_where_seeds_match():
    # a large seed-to-seed spread shared by both arms: paired shows the consistent gain, unpaired would not
    shared = [1.0, 5.0, 9.0, 3.0, 7.0]
    t = _table({"a": [s - 0.1 for s in shared], "b": shared})
    assert protocol.judge(CLAIM, t).verdict == "held"
    unpaired = t[~((t.arm == "b") & (t.seed == 4))]
    v = protocol.judge(CLAIM, unpaired)
    assert not v.paired and v.verdict == "inconclusive"


def test_judge_errors_name_missing_arms_and_columns():
    with pytest.raises(ValueError, match="needs arm 'b'"):
        protocol.judge(CLAIM, _table({"a": [1.0, 2.0]}))
    with pytest.raises(KeyError, match="mse"):
        protocol.judge(CLAIM, pd.DataFrame({"arm": ["a"], "seed": [0]}))
    with pytest.raises(ValueError, match="with itself"):
        Claim("x", "x", "mse", "a", "a")


def test_converged_means_best_not_in_the_last_tenth():
    assert protocol.converged([5, 4, 3, 2, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0])
    assert not protocol.converged([5, 4, 3, 2, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0])
    assert protocol.converged([0.1, 0.5, 0.9, 0.8], lower_is_better=False)
    creeping = [5, 3, 2.0, 1.999, 1.998, 1.997, 1.996, 1.995, 1.994, 1.993]
    assert not protocol.converged(creeping) and protocol.converged(creeping, rel_tol=0.005)
    with pytest.raises(ValueError, match=">= 2 points"):
        protocol.converged([1.0])


def test_sanity_flags_make_a_verdict_inconclusive():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "mean": [1.5] * 5})
    curves = {("a", s): [3, 2, 1] for s in range(5)} | {("b", s): [3, 2, 2.5, 2.6] for s in range(5)}
    checks = protocol.sanity(t, "mse", trivial="mean", curves=curves)
    row = checks.set_index("arm")
    assert row.loc["a", "converged"] == 0 and "a not converged in 5/5 seeds" in row.loc["a", "flags"]
    assert row.loc["b", "converged"] == 1 and "does not beat mean" in row.loc["b", "flags"]
    assert bool(row.loc["a", "beats_trivial"]) and not bool(row.loc["b", "beats_trivial"])
    v = protocol.judge(CLAIM, t, checks)
    assert v.verdict == "inconclusive" and len(v.flags) == 2
    table = protocol.claims_table([v])
    assert list(table["verdict"]) == ["inconclusive"] and "Student-t" in table["rule"][0]


def test_select_best_takes_validation_rows_only():
    val = pd.DataFrame({"split": "val", "lr": [1e-3, 1e-3, 1e-2, 1e-2], "mse": [1.0, 1.2, 0.5, 0.7]})
    assert protocol.select_best(val, "lr", "mse") == {"lr": 1e-2}
    assert protocol.select_best(val, "lr", "mse", lower_is_better=False) == {"lr": 1e-3}
    with pytest.raises(ValueError, match="validation rows only"):
        protocol.select_best(val.assign(split=["val", "val", "test", "test"]), "lr", "mse")
    with pytest.raises(KeyError, match="split"):
        protocol.select_best(val.drop(columns="split"), "lr", "mse")


def test_t_summary_per_group():
    out = protocol.t_summary(_table({"a": [1.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0]}), "arm", "mse")
    assert list(out["n"]) == [3, 3] and out.loc[1, "low"] == out.loc[1, "high"] == 1.0


def test_verdict_lines_rule_claims_sanity_and_notes():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "mean": [2.5] * 5})
    checks = protocol.sanity(t, "mse", trivial="mean")
    table = protocol.claims_table([protocol.judge(CLAIM, t, checks)])
    lines = protocol.verdict_lines(table, checks, "all fine", " pp", ["chosen on validation: x"])
    assert lines[0].startswith("rule: ") and "Student-t" in lines[0]
    assert lines[1].startswith(f"{CLAIM.name}: held (") and " pp, n=5" in lines[1] and "paper" not in lines[1]
    assert lines[2:] == ["sanity: all fine", "chosen on validation: x"]
    flagged = checks.assign(flags=["", "b does not beat mean", ""])
    assert "sanity: b does not beat mean" in protocol.verdict_text(table, flagged, "all fine")
    assert protocol.verdict_lines(table, pd.DataFrame(), "no checks ran")[-1] == "sanity: no checks ran"
    with pytest.raises(KeyError, match="flags"):
        protocol.verdict_lines(table, checks.drop(columns="flags"), "all fine")
