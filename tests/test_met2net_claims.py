"""Met²Net's claims, per-seed scores, budget check and verdicts on hand-made tables."""

import numpy as np
import pandas as pd
import pytest

from labkit.experiments.met2net import claims as met2net_claims
from labkit.experiments.met2net.config import TRIVIAL
from labkit.experiments.met2net.summary import relative_change
from labkit.views.met2net import squared_unit

ARM_MSE = {"persistence": 1.0, "climatology": 1.2, "stacked": 0.5, "stacked_wide": 0.4, "pervar_e2e": 0.3,
           "pervar_explicit": 0.6, "met2net": 0.35, "met2net_noattn": 0.45}
TRAINED = [a for a in ARM_MSE if a not in TRIVIAL]
DEPENDENT = ("T", "RH")  # as if both were forced by variables of the table


def _tables(arm_mse: dict[str, float] = ARM_MSE, seeds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    metrics, history = [], []
    for seed in range(seeds):
        shift = rng.normal(0, 0.05)  # a seed effect shared by all arms: pairing removes it
        for arm, mse in arm_mse.items():
            for var, scale in (("T", 4.0), ("RH", 25.0)):
                value = mse + shift + rng.normal(0, 0.002)
                for units, factor, unit in (("normalised", 1.0, "z"), ("physical", scale, "K" if var == "T" else "%")):
                    metrics.append({"seed": seed, "arm": arm, "variable": var, "units": units, "unit": unit,
                                    "mse": value * factor})
            curve = [1.0, 0.5, 0.4, 0.41, 0.42, 0.43] if arm not in TRIVIAL else [mse]
            history += [{"seed": seed, "arm": arm, "epoch": e, "val_mse_z": v} for e, v in enumerate(curve)]
    return pd.DataFrame(metrics), pd.DataFrame(history)


def _budget_runs(gain_pct: dict[str, float] | None = None) -> pd.DataFrame:
    """Seed 0 of every trained arm (seeds 0-2 of met2net and pervar_e2e) at 1x (val MSE 0.4) and at 2x, lower by
    ``gain_pct`` % (default 0: a plateau); test MSE at 2x is the arm's MSE of ARM_MSE plus a seed effect."""
    gain_pct = gain_pct or {}
    rows = []
    for arm in TRAINED:
        for seed in range(3 if arm in ("met2net", "pervar_e2e") else 1):
            long = 0.4 * (1 - gain_pct.get(arm, 0.0) / 100)
            rows += [{"arm": arm, "seed": seed, "budget": 1.0, "val_mse_z": 0.4, "test_mse_z": ARM_MSE[arm]},
                     {"arm": arm, "seed": seed, "budget": 2.0, "val_mse_z": long,
                      "test_mse_z": ARM_MSE[arm] + 0.01 * seed}]
    return pd.DataFrame(rows)


def _lead(ratio: dict[tuple[str, str, int], float] | None = None, seeds: int = 5) -> pd.DataFrame:
    """A run_lead-like table: every arm's MSE is 0.5 x persistence's at every lead and variable, except the
    (arm, variable, lead) of ``ratio``, at that ratio."""
    ratio = ratio or {}
    rows = []
    for seed in range(seeds):
        for arm in ARM_MSE:
            for var in ("T", "RH"):
                for lead in (1, 2):
                    r = 1.0 if arm == "persistence" else ratio.get((arm, var, lead), 0.5)
                    rows.append({"seed": seed, "arm": arm, "variable": var, "lead": lead,
                                 "mse_z": r * (1 + 0.1 * seed + 0.01 * lead)})
    return pd.DataFrame(rows)


def _verdicts(arm_mse: dict[str, float] = ARM_MSE, gain_pct: dict[str, float] | None = None,
              ratio: dict[tuple[str, str, int], float] | None = None):
    scores = met2net_claims.per_seed_scores(*_tables(arm_mse), DEPENDENT)
    skill = met2net_claims.lead_skill(_lead(ratio))
    claims, sanity, budget = met2net_claims.verdicts(scores, _budget_runs(gain_pct), skill, DEPENDENT)
    return claims.set_index("claim"), sanity, budget


def test_per_seed_scores_have_skill_and_physical_columns():
    scores = met2net_claims.per_seed_scores(*_tables(), DEPENDENT)
    assert {"mse_z", "mse_z_dependent", "mse_T", "mse_RH", "skill_vs_persistence", "val_mse_z"} <= set(scores.columns)
    rh = met2net_claims.per_seed_scores(*_tables(), ("RH",)).set_index(["arm", "seed"])
    normalised = _tables()[0].query("units == 'normalised' and variable == 'RH'").set_index(["arm", "seed"])["mse"]
    np.testing.assert_allclose(rh["mse_z_dependent"], normalised.loc[rh.index])
    row = scores[(scores.arm == "persistence")]
    assert np.allclose(row["skill_vs_persistence"], 0)
    assert len(scores) == 5 * len(ARM_MSE)


def test_verdicts_judge_the_premise_first_then_every_claim_paired_with_student_t():
    claims, sanity, budget = _verdicts()
    declared = [*met2net_claims.CLAIMS, *met2net_claims.attention_claims(DEPENDENT), *met2net_claims.LONG_CLAIMS]
    assert list(claims.index) == [c.name for c in declared]
    assert claims.index[0] == "variable_attention" and claims["role"].iloc[0] == "premise"
    assert list(claims.loc[claims["role"] == "secondary"].index) == [
        "variable_attention_T", "variable_attention_RH", "implicit_vs_end_to_end_long"]
    assert (claims["tolerance"] == "1 %").all()
    verdict = claims["verdict"]
    assert verdict["variable_attention"] == "held"  # 0.35 vs 0.45
    assert verdict["architecture"] == "held"  # 0.3 vs 0.5
    assert verdict["implicit_vs_end_to_end"] == "not held"  # 0.35 vs 0.3
    assert verdict["temperature"] == "held" and verdict["humidity"] == "held"  # 0.35 vs 0.4
    assert (claims["verdict"] == claims["raw verdict"]).all()  # clear effects survive Holm–Bonferroni
    assert claims.loc["implicit_vs_end_to_end_long", "n"] == 3  # the seeds rerun at 2x, paired
    assert claims.loc["implicit_vs_end_to_end_long", "verdict"] == "not held"  # 0.35 vs 0.3 at 2x as well
    assert (claims.drop("implicit_vs_end_to_end_long")["n"] == 5).all() and claims["rule"].str.contains(
        "Student-t").all()
    flags = dict(zip(sanity["arm"], sanity["flags"], strict=True))
    assert flags["climatology"] == "climatology does not beat persistence" and flags["met2net"] == ""
    assert budget["converged"].all() and set(budget["arm"]) == set(TRAINED)
    assert (sanity["no_skill_at_lead_1"] == "").all()
    long = claims.loc["implicit_vs_end_to_end_long"]
    assert long["sanity"] == "ok" and "not checked" in long["compute"]  # both arms beat persistence on their seeds


def test_skill_vs_persistence_is_per_arm_variable_and_lead():
    skill = met2net_claims.lead_skill(_lead({("met2net", "T", 1): 1.2})).set_index(["arm", "variable", "lead"])
    assert len(skill) == len(ARM_MSE) * 2 * 2 and (skill["n"] == 5).all()
    assert skill.loc[("met2net", "T", 1), "mse_ratio"] == pytest.approx(1.2)
    assert not skill.loc[("met2net", "T", 1), "beats"] and skill.loc[("met2net", "T", 2), "beats"]
    assert skill.loc[("stacked", "RH", 2), "skill"] == pytest.approx(0.5)
    assert skill.loc[("persistence", "T", 1), "skill"] == 0 and skill["beats"].loc["persistence"].all()
    assert met2net_claims.lead_skill(_lead().query("arm != 'persistence'")).empty


def test_a_claim_about_a_variable_is_flagged_where_an_arm_does_not_beat_persistence_at_lead_1_on_it():
    # met2net loses to persistence at lead 1 on T only (and stacked on RH at lead 2, which is no lead-1 failure)
    claims, sanity, _ = _verdicts(ratio={("met2net", "T", 1): 1.2, ("stacked", "RH", 2): 1.5})
    assert claims.loc["temperature", "verdict"] == "inconclusive"  # met2net vs stacked_wide on T
    assert "met2net does not beat persistence at lead 1 on T (MSE ratio 1.2, skill -0.2 [-0.2, -0.2])" in claims.loc[
        "temperature", "sanity"]
    assert claims.loc["humidity", "verdict"] == "held" and claims.loc["humidity", "sanity"] == "ok"
    assert claims.loc["architecture", "verdict"] == "held"  # over every variable: not a claim about T
    lost = dict(zip(sanity["arm"], sanity["no_skill_at_lead_1"], strict=True))
    assert lost["met2net"] == "T" and lost["stacked"] == "" and sanity.set_index("arm").loc["met2net", "flags"] == ""


def test_an_arm_that_only_ties_persistence_at_lead_1_is_flagged_like_one_that_loses():
    claims, sanity, _ = _verdicts(ratio={("stacked_wide", "RH", 1): 1.0})  # the rule of protocol.sanity: beat it
    assert claims.loc["humidity", "verdict"] == "inconclusive" and claims.loc["temperature", "verdict"] == "held"
    assert sanity.set_index("arm").loc["stacked_wide", "no_skill_at_lead_1"] == "RH"
    summary = met2net_claims.lead_one_summary(sanity)
    assert summary == "trained arms that do not beat persistence at lead 1: stacked_wide: RH"


def test_scores_over_several_variables_are_about_no_variable():
    assert met2net_claims.variable_of("mse_T") == "T" and met2net_claims.variable_of("mse_z") is None
    assert met2net_claims.variable_of("mse_z_dependent") is None and met2net_claims.variable_of("val_mse_z") is None


def test_the_budget_check_fires_on_an_arm_still_improving_at_2x_and_not_on_a_plateau():
    # stacked gains 5 % validation MSE at twice the budget (> 1 %): not converged; pervar_e2e gains 0.5 %: a plateau
    claims, sanity, budget = _verdicts(gain_pct={"stacked": 5.0, "pervar_e2e": 0.5})
    converged = dict(zip(budget["arm"], budget["converged"], strict=True))
    assert not converged["stacked"] and converged["pervar_e2e"]
    assert budget.set_index("arm").loc["stacked", "improvement"] == pytest.approx(5.0)
    checks = sanity.set_index("arm")
    assert not checks.loc["stacked", "converged"] and "stacked not converged" in checks.loc["stacked", "flags"]
    assert np.isnan(checks.loc["persistence", "converged"])  # not trained: no budget check
    assert claims.loc["architecture", "verdict"] == "inconclusive"  # rests on stacked
    assert claims.loc["implicit_vs_end_to_end", "verdict"] == "not held"  # neither of its arms is flagged
    assert len(budget[budget["arm"] == "met2net"]) == 3  # every seed rerun at 2x is checked


def test_a_premise_not_held_makes_the_main_claims_premise_not_met():
    claims, _, _ = _verdicts({**ARM_MSE, "met2net_noattn": ARM_MSE["met2net"]})  # attention does not help
    assert claims.loc["variable_attention", "verdict"] == "not held"  # equal: below the 1 % tolerance
    main = claims[claims["role"] == "main"]
    governed = main[main["group"] == "variables"]
    assert set(governed.index) == {"architecture", "flops_matched", "temperature", "humidity"}
    assert (governed["verdict"] == "premise not met").all()
    assert main.loc["architecture", "raw verdict"] == "held"  # the verdict before the premise stays beside it
    # the training-scheme claims do not rest on inter-variable dependence: the premise does not govern them
    assert main.loc["implicit_vs_end_to_end", "verdict"] == "not held"
    assert main.loc["implicit_vs_explicit", "verdict"] == "held"


def test_an_unconverged_attention_arm_leaves_the_premise_and_so_the_claims_it_governs_unsettled():
    claims, _, _ = _verdicts(gain_pct={"met2net_noattn": 10.0})
    assert claims.loc["variable_attention", "verdict"] == "inconclusive"
    main = claims[claims["role"] == "main"]
    assert (main.loc[main["group"] == "variables", "verdict"] == "premise unconfirmed").all()  # not refuted
    assert main.loc["implicit_vs_end_to_end", "verdict"] == "not held"  # not governed (group training)


def test_relative_change_is_paired_per_variable_with_the_paper_reference():
    scores = met2net_claims.per_seed_scores(*_tables(), DEPENDENT)
    rel = relative_change(scores).set_index("variable")
    assert sorted(rel.index) == ["RH", "T"]  # physical per-variable columns only, not the z-unit means
    assert rel.loc["T", "paper_pct"] == -28.82 and rel.loc["T", "n"] == 5
    assert rel.loc["T", "low"] < rel.loc["T", "relative_change_pct"] < rel.loc["T", "high"] < 0
    with pytest.raises(ValueError, match="need arms 'met2net' and 'unet'"):
        relative_change(scores, baseline="unet")


def test_squared_units_are_labelled_like_physics():
    assert squared_unit("m/s") == "(m/s)²" and squared_unit("K") == "K²" and squared_unit("1") == "1"
