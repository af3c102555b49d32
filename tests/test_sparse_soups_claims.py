"""Sparse Model Soups' premise, claims, per-seed scores, budget and health checks and verdicts on hand-made tables
(:mod:`labkit.experiments.sparse_soups.claims`)."""

import math

import numpy as np
import pandas as pd
import pytest

from labkit import protocol
from labkit.experiments.sparse_soups import claims as sparse_soups_claims
from labkit.experiments.sparse_soups.claims import (
    BEST_INGREDIENT,
    BUDGET_TOLERANCE_PP,
    CHANCE,
    DENSE,
    HEALTH_TOLERANCE_PP,
    MEAN_INGREDIENT,
    NAIVE,
    REPRUNED,
    REPRUNED_RETRAINED,
)
from labkit.experiments.sparse_soups.summary import best_ingredient_controls, withheld

# test accuracy (%) per arm: SMS beats IMP clearly, loses to IMP 4x, ties its best ingredient
ARM_ACC = {"IMP": 96.0, "IMP 4x": 96.8, "SWA": 96.3, "SMS uniform": 96.5, "SMS greedy": 96.5, BEST_INGREDIENT: 96.5,
           MEAN_INGREDIENT: 96.2, NAIVE: 97.0, REPRUNED: 92.0, REPRUNED_RETRAINED: 96.1}
TRAINED = ("IMP", "IMP 4x", "SWA", "SMS uniform", "SMS greedy", BEST_INGREDIENT, MEAN_INGREDIENT, DENSE)
OOD = ("rotate:35", "noise:0.5", "contrast:0.3")
PHASES = 2


def _final(seeds: int = 5, soup_val_gain: float = 1.0, phase1_gain: float | None = None) -> pd.DataFrame:
    """Per-seed final rows; validation accuracy equals test accuracy except the soup's, ``soup_val_gain`` higher (1:
    the premise holds; 0: the soup ties its ingredients on validation), after every phase (``phase1_gain``: after
    phase 1 instead). OOD accuracy is 40 pp below test on every corruption, the mean included."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        shift = rng.normal(0, 0.3)  # a seed effect shared by all arms: pairing removes it
        for arm, acc in ARM_ACC.items():
            noise = rng.normal(0, 0.3) if arm == BEST_INGREDIENT else rng.normal(0, 0.01)
            test = acc + shift + noise
            soup = arm == "SMS uniform"
            gains = {p: (soup_val_gain if p > 1 or phase1_gain is None else phase1_gain) if soup else 0.0
                     for p in range(1, PHASES + 1)}
            rows.append({"seed": seed, "arm": arm, "sparsity": 0.981 if arm == NAIVE else 0.99, "test_acc": test,
                         "ood_acc": test - 40, **{f"ood_acc[{spec}]": test - 40 for spec in OOD}, "ece": 0.01,
                         "val_acc": test + gains[PHASES],
                         **{sparse_soups_claims.phase_val(p): test + g for p, g in gains.items()}})
    return pd.DataFrame(rows)


def _dense(seeds: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "sparsity": 0.0, "test_acc": 98.0, "ood_acc": 60.0, "ece": 0.01,
                          "val_acc": 97.5} for s in range(seeds)])


def _scores(final: pd.DataFrame | None = None) -> pd.DataFrame:
    return sparse_soups_claims.per_seed_scores(_final() if final is None else final, _dense(), chance_acc=11.35)


def _longer(scores: pd.DataFrame, still_improving: str | None = None, gain: float = 1.0) -> pd.DataFrame:
    """Seed 0 of every trained arm rerun at 2x: it plateaued (+0.05 pp) except ``still_improving`` (+``gain`` pp)."""
    first = scores[(scores.seed == 0) & scores.arm.isin(TRAINED)]
    return pd.DataFrame([{"arm": r.arm, "seed": 0, "budget": 2.0,
                          "val_acc": r.val_acc + (gain if r.arm == still_improving else 0.05)}
                         for r in first.itertuples()])


def _verdicts(scores: pd.DataFrame | None = None, **longer) -> tuple[dict[str, str], pd.DataFrame, pd.DataFrame]:
    scores = _scores() if scores is None else scores
    claims, sanity, _, _ = sparse_soups_claims.verdicts(scores, _longer(scores, **longer), m=4, phases=PHASES,
                                                        ood=OOD)
    return dict(zip(claims["claim"], claims["verdict"], strict=True)), claims, sanity


def test_premises_come_first_and_every_claim_is_judged_paired_over_five_seeds():
    verdict, claims, sanity = _verdicts()
    assert set(verdict) == {c.name for c in sparse_soups_claims.claims(4, PHASES, OOD)}
    assert list(claims["role"][:2 * PHASES]) == ["premise"] * 2 * PHASES
    assert all(verdict[f"soup_beats_{w}_ingredient_val_phase{p}"] == "held" for w in ("mean", "best")
               for p in range(1, PHASES + 1))
    assert verdict["sms_beats_imp"] == "held" and verdict["sms_beats_imp_ood"] == "held"  # +0.5 pp
    assert verdict["sms_beats_imp_mx"] == "not held" and verdict["sms_beats_imp_mx_ood"] == "not held"  # -0.3 pp
    assert verdict["soup_beats_best_ingredient"] == "inconclusive"  # equal means on test, noisy ingredient
    assert verdict["sms_beats_swa"] == "held"
    assert verdict["naive_average_loses_sparsity"] == "held"  # 99 % vs 98.1 %
    assert verdict["repruned_average_loses_accuracy"] == "held"
    assert (claims["n"] == 5).all() and claims["rule"].str.contains("Student-t").all()
    assert (claims["tolerance"] == "0").all() and (claims["raw verdict"] == claims["verdict"]).all()
    roles = dict(zip(claims["claim"], claims["role"], strict=True))
    assert roles["sms_beats_swa"] == "secondary" and roles["repruned_average_loses_accuracy"] == "secondary"
    assert claims.loc[claims.role == "main", "p (Holm)"].notna().all()
    assert set(sanity["flags"]) == {""} and sanity.set_index("arm").loc[CHANCE, "beats_trivial"] == protocol.IS_TRIVIAL


def test_a_premise_not_held_makes_the_accuracy_claims_premise_not_met():
    verdict, claims, _ = _verdicts(_scores(_final(soup_val_gain=-1.0)))  # the soup trails its ingredients on val
    assert verdict["soup_beats_mean_ingredient_val_phase2"] == "not held"
    governed = claims[claims.role != "premise"].set_index("claim")
    assert (governed.drop(index="naive_average_loses_sparsity")["verdict"] == "premise not met").all()
    assert governed.loc["sms_beats_imp", "raw verdict"] == "held"  # the interval verdict stays beside it
    assert verdict["naive_average_loses_sparsity"] == "held"  # structural: not governed by the soup premise
    tied, _, _ = _verdicts(_scores(_final(soup_val_gain=0.0)))  # a tie is inconclusive: not refuted, not shown
    assert tied["soup_beats_best_ingredient_val_phase2"] == "inconclusive"
    assert tied["sms_beats_imp"] == "premise unconfirmed"


def test_a_premise_not_held_at_an_early_phase_alone_still_governs_the_claims():
    verdict, _, _ = _verdicts(_scores(_final(phase1_gain=-1.0)))  # the last phase holds, phase 1 does not
    assert verdict["soup_beats_mean_ingredient_val_phase2"] == "held"
    assert verdict["soup_beats_mean_ingredient_val_phase1"] == "not held"
    assert verdict["sms_beats_imp"] == "premise not met" and verdict["naive_average_loses_sparsity"] == "held"
    premise = {c.name: c for c in sparse_soups_claims.premises(3)}
    assert len(premise) == 6 and premise["soup_beats_best_ingredient_val_phase3"].metric == "val_acc_phase3"


def test_every_ood_comparison_has_the_best_ingredient_as_control_and_each_corruption_is_judged():
    claims = {c.name: c for c in sparse_soups_claims.claims(4, PHASES, OOD)}
    for baseline, name in (("IMP", "imp"), ("IMP 4x", "imp_mx")):
        sms, control = claims[f"sms_beats_{name}_ood"], claims[f"control_best_ingredient_vs_{name}_ood"]
        assert (sms.arm, control.arm) == ("SMS uniform", BEST_INGREDIENT)
        assert sms.baseline == control.baseline == baseline and sms.metric == control.metric == "ood_acc"
        assert control.role == "secondary"
    for spec in OOD:
        assert claims[f"sms_beats_imp_mx_ood[{spec}]"].metric == f"ood_acc[{spec}]"
        assert claims[f"control_best_ingredient_vs_imp_mx_ood[{spec}]"].arm == BEST_INGREDIENT
    _, table, _ = _verdicts()  # the control gains what SMS gains over IMP 4x (-0.3 pp): not the soup's doing
    effect = table.set_index("claim")["mean"]
    assert abs(effect["sms_beats_imp_mx_ood"] - effect["control_best_ingredient_vs_imp_mx_ood"]) < 0.5
    assert claims["repruned_average_loses_accuracy"].baseline == REPRUNED_RETRAINED  # re-pruned *and* retrained


def test_the_budget_check_fires_on_an_arm_still_improving_at_twice_the_budget():
    verdict, _, sanity = _verdicts(still_improving="IMP")
    row = sanity.set_index("arm").loc["IMP"]
    assert not row["converged"] and math.isclose(row["budget_long"] - row["budget_1x"], 1.0)
    assert any("IMP not converged (seed 0" in f for f in sanity["flags"])
    assert verdict["sms_beats_imp"] == "inconclusive" and verdict["sms_beats_imp_mx"] == "not held"
    assert verdict["naive_average_loses_sparsity"] == "inconclusive"  # rests on IMP: the naive average merges it
    plateau, _, sanity = _verdicts(still_improving="IMP", gain=BUDGET_TOLERANCE_PP / 2)  # a gain within tolerance
    assert sanity.set_index("arm").loc["IMP", "converged"] and plateau["sms_beats_imp"] == "held"
    assert sanity.set_index("arm").loc[DENSE, "converged"]  # the dense pretraining is rerun too


def test_health_flags_an_arm_far_below_its_dense_model_but_not_the_naive_baselines():
    final = _final()
    final.loc[(final.arm == "SWA") & (final.seed == 3), "val_acc"] -= 5.0
    verdict, _, sanity = _verdicts(_scores(final))
    assert any(f.startswith("SWA unhealthy (seed 3") for f in sanity["flags"])
    assert verdict["sms_beats_swa"] == "inconclusive" and verdict["sms_beats_imp"] == "held"
    checks = sanity.set_index("arm")
    assert not checks.loc["SWA", "healthy"] and checks.loc["IMP", "healthy"]
    assert math.isnan(checks.loc[REPRUNED, "healthy"])  # 6 pp below dense by design: its loss is the claim
    _, _, _, health = sparse_soups_claims.verdicts(_scores(), _longer(_scores()))
    assert set(health.arm) == set(TRAINED) - {DENSE} | {REPRUNED_RETRAINED} and health.healthy.all()
    assert (health[DENSE] - health.val_acc).max() < HEALTH_TOLERANCE_PP


def test_claims_skip_arms_that_did_not_run_and_name_the_equal_compute_arm():
    final = _final().replace({"arm": {"IMP 4x": "IMP 3x"}})
    final = final[final.arm != "SMS greedy"]
    scores = _scores(final)
    claims, _, _, _ = sparse_soups_claims.verdicts(scores, _longer(scores), m=3)
    assert "greedy_beats_imp" not in set(claims["claim"]) and "sms_beats_imp_mx" in set(claims["claim"])
    assert all("IMP 3x" in c.baseline for c in sparse_soups_claims.claims(3) if c.name.startswith("sms_beats_imp_mx"))


def test_per_seed_scores_add_dense_chance_and_sparsity_in_percent():
    scores = sparse_soups_claims.per_seed_scores(_final(3), _dense(3), chance_acc=11.35)
    assert (scores[scores.arm == CHANCE].test_acc == 11.35).all() and len(scores[scores.arm == CHANCE]) == 3
    assert np.allclose(scores[scores.arm == "IMP"].sparsity_pct, 99.0) and len(scores[scores.arm == DENSE]) == 3
    with pytest.raises(KeyError, match="ood_acc"):
        sparse_soups_claims.per_seed_scores(_final().drop(columns="ood_acc"), _dense(), 10.0)
    with pytest.raises(KeyError, match="val_acc.*dense"):
        sparse_soups_claims.per_seed_scores(_final(), _dense().drop(columns="val_acc"), 10.0)


def test_verdict_text_has_rule_roles_n_and_sanity():
    scores = _scores(_final(soup_val_gain=0.0))
    claims, sanity, _, _ = sparse_soups_claims.verdicts(scores, _longer(scores))
    text = protocol.verdict_text(claims, sanity, "every trained arm converged and beat chance", " pp")
    assert text.startswith("rule: ") and "Student-t" in text
    assert "soup_beats_best_ingredient_val_phase1: inconclusive" in text
    assert "sms_beats_imp_mx: premise unconfirmed" in text and "raw not held" in text and "premise" in text
    assert "n=5" in text and "sanity: every trained arm converged" in text and " pp, n=5" in text


def test_withheld_lists_claims_whose_decided_interval_the_final_verdict_overrides():
    table = pd.DataFrame({"claim": ["a", "b", "c", "d"], "effect": ["+1", "-1", "+0", "+2"],
                          "interval verdict": ["held", "not held", "inconclusive", "held"],
                          "raw verdict": ["held", "not held", "inconclusive", "held"],
                          "verdict": ["premise unconfirmed", "not held", "premise unconfirmed", "held"],
                          "sanity": ["ok"] * 4})
    assert withheld(table)["claim"].tolist() == ["a"]


def test_test_controls_keep_the_soup_against_its_best_ingredient_per_recorded_run():
    recorded = pd.DataFrame({
        "exploration": ["a", "a", "a", "b"], "point": ["p", "p", "p", "q"],
        "claim": ["soup_beats_best_ingredient", "soup_beats_best_ingredient_ood", "sms_beats_imp",
                  "soup_beats_best_ingredient"],
        "mean": [0.1, 0.3, 0.2, -0.1], "low": [0.0, 0.1, -0.1, -0.2], "high": [0.2, 0.5, 0.5, 0.0], "n": [5] * 4,
        "interval verdict": ["inconclusive", "held", "inconclusive", "inconclusive"], "sanity": ["ok"] * 4,
        "role": ["main"] * 4})
    table = best_ingredient_controls(recorded)
    assert list(table["claim"]) == ["soup_beats_best_ingredient", "soup_beats_best_ingredient_ood",
                                    "soup_beats_best_ingredient"]
    assert list(table.columns) == ["exploration", "point", "claim", "mean", "low", "high", "n", "interval verdict",
                                   "sanity"]
