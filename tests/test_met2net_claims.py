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
    """Seed 0 of every trained arm at 1x (val MSE 0.4) and at 2x, lower by ``gain_pct`` % (default 0: a plateau)."""
    gain_pct = gain_pct or {}
    rows = []
    for arm in TRAINED:
        rows += [{"arm": arm, "seed": 0, "budget": 1.0, "val_mse_z": 0.4},
                 {"arm": arm, "seed": 0, "budget": 2.0, "val_mse_z": 0.4 * (1 - gain_pct.get(arm, 0.0) / 100)}]
    return pd.DataFrame(rows)


def _verdicts(arm_mse: dict[str, float] = ARM_MSE, gain_pct: dict[str, float] | None = None):
    scores = met2net_claims.per_seed_scores(*_tables(arm_mse))
    claims, sanity, budget = met2net_claims.verdicts(scores, _budget_runs(gain_pct))
    return claims.set_index("claim"), sanity, budget


def test_per_seed_scores_have_skill_and_physical_columns():
    scores = met2net_claims.per_seed_scores(*_tables())
    assert {"mse_z", "mse_T", "mse_RH", "skill_vs_persistence", "val_mse_z"} <= set(scores.columns)
    row = scores[(scores.arm == "persistence")]
    assert np.allclose(row["skill_vs_persistence"], 0)
    assert len(scores) == 5 * len(ARM_MSE)


def test_verdicts_judge_the_premise_first_then_every_claim_paired_with_student_t():
    claims, sanity, budget = _verdicts()
    assert list(claims.index) == [c.name for c in met2net_claims.CLAIMS]
    assert claims.index[0] == "variable_attention" and claims["role"].iloc[0] == "premise"
    assert set(claims["role"].iloc[1:]) == {"main"} and (claims["tolerance"] == "1 %").all()
    verdict = claims["verdict"]
    assert verdict["variable_attention"] == "held"  # 0.35 vs 0.45
    assert verdict["architecture"] == "held"  # 0.3 vs 0.5
    assert verdict["implicit_vs_end_to_end"] == "not held"  # 0.35 vs 0.3
    assert verdict["temperature"] == "held" and verdict["humidity"] == "held"  # 0.35 vs 0.4
    assert (claims["verdict"] == claims["raw verdict"]).all()  # clear effects survive Holm–Bonferroni
    assert (claims["n"] == 5).all() and claims["rule"].str.contains("Student-t").all()
    flags = dict(zip(sanity["arm"], sanity["flags"], strict=True))
    assert flags["climatology"] == "climatology does not beat persistence" and flags["met2net"] == ""
    assert budget["converged"].all() and set(budget["arm"]) == set(TRAINED)


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


def test_a_premise_not_held_makes_the_main_claims_premise_not_met():
    claims, _, _ = _verdicts({**ARM_MSE, "met2net_noattn": ARM_MSE["met2net"]})  # attention does not help
    assert claims.loc["variable_attention", "verdict"] == "not held"  # equal: below the 1 % tolerance
    main = claims[claims["role"] == "main"]
    assert (main["verdict"] == "premise not met").all()
    assert main.loc["architecture", "raw verdict"] == "held"  # the interval verdict stays beside it


def test_an_unconverged_attention_arm_leaves_the_premise_and_so_every_claim_unsettled():
    claims, _, _ = _verdicts(gain_pct={"met2net_noattn": 10.0})
    assert claims.loc["variable_attention", "verdict"] == "inconclusive"
    assert (claims.loc[claims["role"] == "main", "verdict"] == "premise not met").all()


def test_relative_change_is_paired_per_variable_with_the_paper_reference():
    scores = met2net_claims.per_seed_scores(*_tables())
    rel = relative_change(scores).set_index("variable")
    assert rel.loc["T", "paper_pct"] == -28.82 and rel.loc["T", "n"] == 5
    assert rel.loc["T", "low"] < rel.loc["T", "relative_change_pct"] < rel.loc["T", "high"] < 0
    with pytest.raises(ValueError, match="need arms 'met2net' and 'unet'"):
        relative_change(scores, baseline="unet")


def test_squared_units_are_labelled_like_physics():
    assert squared_unit("m/s") == "(m/s)²" and squared_unit("K") == "K²" and squared_unit("1") == "1"
