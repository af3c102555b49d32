"""The protocol: Student-t intervals, the verdict rule, sanity checks and validation-only selection."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from labkit import protocol, selection
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


def _budget(short: list[float], long: list[float]) -> pd.DataFrame:
    rows = [{"arm": a, "seed": 0, "budget": 1, "mse": v} for a, v in zip("ab", short, strict=True)]
    return pd.DataFrame(rows + [{"arm": a, "seed": 0, "budget": 2, "mse": v} for a, v in zip("ab", long, strict=True)])


def test_budget_check_fires_on_a_curve_still_falling_and_not_on_a_plateau():
    # a: twice the budget still lowers the validation loss by 0.3 (> tolerance 0.05); b: within noise of 1x
    out = protocol.budget_check(_budget([1.0, 2.0], [0.7, 1.98]), "mse", tolerance=0.05).set_index("arm")
    assert not out.loc["a", "converged"] and "a not converged (seed 0" in out.loc["a", "flags"]
    assert out.loc["b", "converged"] and out.loc["b", "flags"] == ""
    assert out.loc["a", "mse_1x"] == 1.0 and out.loc["a", "mse_long"] == 0.7
    rel = protocol.budget_check(_budget([1.0, 2.0], [0.995, 1.9]), "mse", tolerance=1.0, relative=True)
    assert list(rel["converged"]) == [True, False]  # 0.5 % vs 5 % gain at 2x
    with pytest.raises(ValueError, match="not at budget 1"):
        protocol.budget_check(_budget([1.0, 2.0], [0.7, 1.9]).query("budget == 2"), "mse", tolerance=0.0)


def test_a_gain_equal_to_the_tolerance_up_to_float_rounding_is_within_it_and_zero_over_zero_is_no_change():
    # 1.1 - 0.9 is 0.20000000000000007 in floats: exactly the 0.2 tolerance, not over it
    tie = protocol.budget_check(_budget([0.9, 50.0], [1.1, 50.0]), "mse", tolerance=0.2, lower_is_better=False)
    assert list(tie["converged"]) == [True, True] and list(tie["flags"]) == ["", ""]
    zero = protocol.budget_check(_budget([0.0, 0.0], [0.0, 0.5]), "mse", tolerance=1.0, relative=True)
    assert list(zero["improvement"]) == [0.0, -math.inf] and list(zero["converged"]) == [True, True]
    worse = protocol.health(_table({"a": [0.5]}), "mse", 0.0, tolerance=5.0, relative=True)
    assert not worse["healthy"].all() and "worse by inf" in worse.loc[0, "flags"]
    over = protocol.budget_check(_budget([97.04, 1.0], [97.25, 1.0]), "mse", tolerance=0.2, lower_is_better=False)
    assert list(over["converged"]) == [False, True]


def test_sanity_says_when_a_run_left_the_trivial_arm_out_instead_of_failing():
    out = protocol.sanity(_table({"a": [1.0, 1.1, 0.9], "b": [2.0, 2.1, 1.9]}), "mse", "mean").set_index("arm")
    assert list(out["beats_trivial"]) == ["no mean run", "no mean run"] and list(out["flags"]) == ["", ""]


def test_health_flags_a_collapsed_seed_against_its_reference():
    t = _table({"gated": [0.90, 0.46, 0.89]})
    dense = pd.Series([0.91, 0.90, 0.90])  # per seed
    out = protocol.health(t, "mse", dense, tolerance=0.05, lower_is_better=False, what="dense")
    assert list(out["healthy"]) == [True, False, True]
    assert "gated unhealthy (seed 1: mse 0.46 vs dense 0.9" in out.loc[1, "flags"]
    assert protocol.health(t, "mse", 0.95, tolerance=0.5, lower_is_better=False)["healthy"].all()


def test_sanity_flags_from_budget_health_and_trivial_make_a_verdict_inconclusive():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "mean": [1.5] * 5})
    budget = protocol.budget_check(_budget([1.0, 2.0], [0.7, 1.98]), "mse", tolerance=0.05)
    checks = protocol.sanity(t, "mse", trivial="mean", budget=budget)
    row = checks.set_index("arm")
    assert not row.loc["a", "converged"] and "a not converged" in row.loc["a", "flags"]
    assert row.loc["b", "converged"] and "does not beat mean" in row.loc["b", "flags"]
    assert math.isnan(row.loc["mean", "converged"])  # not rerun: not checked, not flagged
    assert row.loc["a", "beats_trivial"] is True and row.loc["b", "beats_trivial"] is False
    assert row.loc["mean", "beats_trivial"] == protocol.IS_TRIVIAL  # the trivial arm is not said to beat itself
    v = protocol.judge(CLAIM, t, checks)
    assert v.verdict == "inconclusive" and len(v.flags) == 2
    table = protocol.claims_table([v])
    assert list(table["verdict"]) == ["inconclusive"] and "Student-t" in table["rule"][0]
    clean = protocol.sanity(t, "mse", trivial="mean", budget=protocol.budget_check(
        _budget([1.0, 2.0], [0.99, 1.99]), "mse", tolerance=0.05))
    assert clean.set_index("arm").loc["a", "flags"] == ""


def test_a_flag_on_a_rests_on_arm_makes_the_claim_inconclusive():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "dense": [0.5] * 5,
                "mean": [3.0] * 5})
    healthy = protocol.health(t[t.arm == "a"], "mse", 0.5, tolerance=0.1, what="dense")  # a is 0.5 worse
    checks = protocol.sanity(t, "mse", trivial="mean", healthy=healthy)
    resting = Claim("r", "a beats b, normalised by dense", "mse", "a", "b", rests_on=("dense",))
    assert protocol.judge(resting, t, checks).verdict == "inconclusive"
    flag_on_dense = checks.assign(flags=[f if arm == "dense" else "" for arm, f in
                                         zip(checks.arm, ["", "", "dense broke", ""], strict=True)])
    assert protocol.judge(CLAIM, t, flag_on_dense).verdict == "held"  # CLAIM does not rest on dense
    assert protocol.judge(resting, t, flag_on_dense).verdict == "inconclusive"
    assert resting.arms == ("a", "b", "dense")


def test_sanity_reports_not_enough_units_instead_of_a_t_interval_below_three():
    t = _table({"dsir": [1.0, 1.1], "random": [1.2, 1.15]})  # lower in both cells: n = 2 has no honest interval
    row = protocol.sanity(t, "mse", trivial="random").set_index("arm")
    assert row.loc["dsir", "beats_trivial"] == "not enough units" and row.loc["dsir", "flags"] == ""
    three = protocol.sanity(_table({"dsir": [1.3, 1.1, 1.0], "random": [1.2, 1.15, 1.1]}), "mse", trivial="random")
    assert "dsir does not beat random" in three.set_index("arm").loc["dsir", "flags"]


PREMISE = Claim("soup_beats_ingredients", "the soup beats its ingredients", "mse", "a", "b", kind="premise")


def test_a_premise_not_held_makes_its_claims_premise_not_met_an_inconclusive_one_unconfirmed_and_is_shown_first():
    good = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "c": [1.5] * 5})
    main = Claim("c_beats_b", "c beats b", "mse", "c", "b", paper="+1 pp (Table 2)")
    verdicts = [protocol.judge(main, good), protocol.judge(PREMISE, good)]
    table = protocol.claims_table(verdicts)
    assert list(table["role"]) == ["premise", "main"] and list(table["verdict"]) == ["held", "held"]
    bad = good.assign(mse=[{"a": 3.0}.get(a, m) for a, m in zip(good.arm, good.mse, strict=True)])
    table = protocol.claims_table([protocol.judge(main, bad), protocol.judge(PREMISE, bad)])
    assert list(table["verdict"]) == ["not held", "premise not met"]
    assert list(table["raw verdict"]) == ["not held", "held"]  # the interval verdict stays visible
    # a premise of one group governs only that group
    grouped = [protocol.judge(dataclasses.replace(PREMISE, group="x"), bad),
               protocol.judge(dataclasses.replace(main, name="x: c", group="x"), bad),
               protocol.judge(dataclasses.replace(main, name="y: c", group="y"), bad)]
    assert list(protocol.claims_table(grouped)["verdict"]) == ["not held", "premise not met", "held"]
    # an inconclusive premise is not refuted, only not shown: its claims read "premise unconfirmed"; a premise not
    # held governing the same claim wins
    tie = good.assign(mse=[{"a": 2.02}.get(a, m) for a, m in zip(good.arm, good.mse, strict=True)])
    table = protocol.claims_table([protocol.judge(main, good), protocol.judge(PREMISE, tie)])
    assert list(table["verdict"]) == ["inconclusive", "premise unconfirmed"] and table["raw verdict"].iloc[1] == "held"
    x_premise = dataclasses.replace(PREMISE, name="x_premise", group="x")
    both = [protocol.judge(PREMISE, tie), protocol.judge(x_premise, bad),
            protocol.judge(dataclasses.replace(main, name="x: c", group="x"), good)]
    assert list(protocol.claims_table(both)["verdict"]) == ["inconclusive", "not held", "premise not met"]
    with pytest.raises(ValueError, match="kind must be one of"):
        Claim("x", "x", "mse", "a", "b", kind="assumption")


def test_holm_adjusts_main_claims_only_and_keeps_the_raw_verdict():
    assert protocol.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    rng = np.random.default_rng(0)
    b = rng.normal(0, 1, 5)
    t = _table({"b": list(b), "a": list(b - 0.6 + rng.normal(0, 0.35, 5))})  # a raw "held" with p ~ 0.02
    mains = [Claim(f"m{i}", "a beats b", "mse", "a", "b", paper="ref") for i in range(5)]
    verdicts = [protocol.judge(c, t) for c in mains]
    assert verdicts[0].verdict == "held" and 0.001 < verdicts[0].p < 0.05
    table = protocol.claims_table(verdicts)
    assert set(table["raw verdict"]) == {"held"} and set(table["verdict"]) == {"inconclusive"}
    assert (table["p (Holm)"] >= table["p"]).all()
    assert list(table["p (Holm)"]) == [v.p_holm for v in protocol.conclude(verdicts)]  # carried, not recomputed
    secondary = protocol.claims_table([protocol.judge(dataclasses.replace(c, paper=""), t) for c in mains])
    assert set(secondary["verdict"]) == {"held"} and set(secondary["role"]) == {"secondary"}


def test_p_value_agrees_with_the_interval_verdict():
    for shift in (0.0, 0.5, 1.0, 2.0):
        t = _table({"a": [1.0 - shift, 1.2 - shift, 0.7 - shift, 1.1 - shift], "b": [1.0] * 4})
        v = protocol.judge(CLAIM, t)
        assert (v.verdict != "inconclusive") == (v.p < 0.05)


def test_select_best_takes_validation_rows_only():
    val = pd.DataFrame({"split": "val", "lr": [1e-3, 1e-3, 1e-2, 1e-2], "mse": [1.0, 1.2, 0.5, 0.7]})
    assert selection.select_best(val, "lr", "mse") == {"lr": 1e-2}
    assert selection.select_best(val, "lr", "mse", lower_is_better=False) == {"lr": 1e-3}
    with pytest.raises(ValueError, match="validation rows only"):
        selection.select_best(val.assign(split=["val", "val", "test", "test"]), "lr", "mse")
    with pytest.raises(KeyError, match="split"):
        selection.select_best(val.drop(columns="split"), "lr", "mse")


def test_t_summary_per_group():
    out = protocol.t_summary(_table({"a": [1.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0]}), "arm", "mse")
    assert list(out["n"]) == [3, 3] and out.loc[1, "low"] == out.loc[1, "high"] == 1.0


def test_verdict_lines_rule_claims_sanity_and_notes():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "mean": [2.5] * 5})
    checks = protocol.sanity(t, "mse", trivial="mean")
    table = protocol.claims_table([protocol.judge(CLAIM, t, checks)])
    lines = protocol.verdict_lines(table, checks, "all fine", " pp", ["chosen on validation: x"])
    assert lines[0].startswith("rule: ") and "Student-t" in lines[0]
    assert lines[1] == ("multiplicity: Holm–Bonferroni at 0.05 over a family of 0 main claims; premises and secondary "
                        "claims are not adjusted")
    assert lines[2].startswith(f"{CLAIM.name}: held (") and " pp, n=5" in lines[2] and "paper" not in lines[2]
    assert lines[2].endswith(", secondary)")
    assert lines[3:] == ["sanity: all fine", "chosen on validation: x"]
    flagged = checks.assign(flags=["", "b does not beat mean", ""])
    assert "sanity: b does not beat mean" in protocol.verdict_text(table, flagged, "all fine")
    assert protocol.verdict_lines(table, pd.DataFrame(), "no checks ran")[-1] == "sanity: no checks ran"
    with pytest.raises(KeyError, match="flags"):
        protocol.verdict_lines(table, checks.drop(columns="flags"), "all fine")


def test_the_interval_verdict_ignores_the_flags_that_make_the_verdict_inconclusive():
    t = _table({"a": [1.0, 1.1, 0.9, 1.0, 1.05], "b": [2.0, 2.1, 1.9, 2.05, 2.0], "mean": [2.5] * 5})
    flagged = protocol.sanity(t, "mse", trivial="mean").assign(flags=["", "a not converged", ""])
    v = protocol.judge(CLAIM, t, flagged)
    assert (v.verdict, v.interval) == ("inconclusive", "held")
    row = protocol.claims_table([v]).iloc[0]
    assert (row["interval verdict"], row["raw verdict"], row["verdict"]) == ("held", "inconclusive", "inconclusive")
    assert protocol.interval_verdict(float("nan"), float("nan"), 1.0) == "inconclusive"
    assert protocol.interval_verdict(-3, -2, 0) == "not held"


def test_the_multiplicity_line_counts_the_main_claims_with_a_p_value():
    table = pd.DataFrame({"role": ["premise", "main", "main", "main", "secondary"],
                          "p": [0.01, 0.02, float("nan"), 0.3, 0.04]})
    assert "over a family of 2 main claims;" in protocol.multiplicity(table)
    assert "over a family of 1 main claim;" in protocol.multiplicity(table.iloc[:2])


def test_the_claims_table_names_the_group_whose_premise_governs_each_claim():
    t = _table({"a": [1.0, 1.1, 0.9], "b": [2.0, 2.1, 1.9]})
    claims = [Claim("p", "premise", "mse", "a", "b", kind="premise", group="text"),
              Claim("c", "claim", "mse", "a", "b", group="text"), Claim("d", "free", "mse", "b", "a")]
    table = protocol.claims_table([protocol.judge(c, t) for c in claims]).set_index("claim")
    assert list(table["group"]) == ["text", "text", ""]


def test_a_claim_judged_without_checks_says_so_in_its_sanity_and_rule():
    t = _table({"a": [1.0, 1.1, 0.9], "b": [1.2, 1.3, 1.1], "mean": [1.5, 1.5, 1.5]})
    unchecked, checked = (protocol.claims_table([protocol.judge(CLAIM, t, checks)]).iloc[0]
                          for checks in (None, protocol.sanity(t, "mse", trivial="mean")))
    assert unchecked["sanity"] == "not checked" and "without sanity checks" in unchecked["rule"]
    assert checked["sanity"] == "ok" and "inconclusive if a sanity check fails" in checked["rule"]
