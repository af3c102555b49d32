"""Sparse Model Soups' claims, per-seed scores, validation-only selection and verdicts on hand-made tables, plus one
tiny run (smoke preset, 2 seeds)."""

import numpy as np
import pandas as pd
import pytest

from labkit import protocol
from labkit.experiments import sparse_soups, sparse_soups_claims
from labkit.experiments.sparse_soups_claims import BEST_INGREDIENT, CHANCE, NAIVE, REPRUNED

# test accuracy (%) per arm: SMS beats IMP clearly, loses to IMP 4x, ties its best ingredient
ARM_ACC = {"IMP": 96.0, "IMP 4x": 96.8, "SWA": 96.3, "SMS uniform": 96.5, "SMS greedy": 96.5, BEST_INGREDIENT: 96.5,
           NAIVE: 97.0, REPRUNED: 95.0}
TRAINED = ("IMP", "IMP 4x", "SWA", "SMS uniform", "SMS greedy", BEST_INGREDIENT)


def _final(seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        shift = rng.normal(0, 0.3)  # a seed effect shared by all arms: pairing removes it
        for arm, acc in ARM_ACC.items():
            noise = rng.normal(0, 0.3) if arm == BEST_INGREDIENT else rng.normal(0, 0.01)
            rows.append({"seed": seed, "arm": arm, "sparsity": 0.981 if arm == NAIVE else 0.99,
                         "test_acc": acc + shift + noise, "ood_acc": acc - 40 + shift + noise, "ece": 0.01})
    return pd.DataFrame(rows)


def _curves(seeds: int = 5, still_improving: str | None = None) -> pd.DataFrame:
    plateau = [90.0, 95.0, 96.0, 96.2, 96.3, 96.3, 96.31, 96.3, 96.32, 96.3]
    rising = [90.0 + k for k in range(10)]
    return pd.DataFrame([{"seed": s, "arm": arm, "member": -1, "point": k + 1, "val_acc": v}
                         for s in range(seeds) for arm in TRAINED
                         for k, v in enumerate(rising if arm == still_improving else plateau)])


def test_every_claim_is_judged_paired_over_five_seeds_with_student_t():
    scores = sparse_soups_claims.per_seed_scores(_final(), chance_acc=11.35)
    claims, sanity = sparse_soups_claims.verdicts(scores, _curves(), m=4, plateau_tol=0.002)
    verdict = dict(zip(claims["claim"], claims["verdict"], strict=True))
    assert set(verdict) == {c.name for c in sparse_soups_claims.claims(4)}
    assert verdict["sms_beats_imp"] == "held" and verdict["sms_beats_imp_ood"] == "held"  # +0.5 pp
    assert verdict["sms_beats_imp_mx"] == "not held" and verdict["sms_beats_imp_mx_ood"] == "not held"  # -0.3 pp
    assert verdict["soup_beats_best_ingredient"] == "inconclusive"  # equal means, noisy ingredient
    assert verdict["sms_beats_swa"] == "held"
    assert verdict["naive_average_loses_sparsity"] == "held"  # 99 % vs 98.1 %
    assert verdict["repruned_average_loses_accuracy"] == "held"
    assert (claims["n"] == 5).all() and claims["rule"].str.contains("Student-t").all()
    assert set(sanity["flags"]) == {""} and sanity.set_index("arm").loc[CHANCE, "beats_trivial"]


def test_an_unconverged_arm_makes_its_claims_inconclusive():
    scores = sparse_soups_claims.per_seed_scores(_final(), chance_acc=11.35)
    claims, sanity = sparse_soups_claims.verdicts(scores, _curves(still_improving="IMP"), plateau_tol=0.002)
    verdict = dict(zip(claims["claim"], claims["verdict"], strict=True))
    assert verdict["sms_beats_imp"] == "inconclusive" and verdict["sms_beats_imp_mx"] == "not held"
    assert "IMP not converged in 5/5 seeds" in set(sanity["flags"])


def test_claims_skip_arms_that_did_not_run_and_name_the_equal_compute_arm():
    final = _final().replace({"arm": {"IMP 4x": "IMP 3x"}})
    final = final[final.arm != "SMS greedy"]
    claims, _ = sparse_soups_claims.verdicts(sparse_soups_claims.per_seed_scores(final, 10.0), _curves(), m=3)
    assert "greedy_beats_imp" not in set(claims["claim"]) and "sms_beats_imp_mx" in set(claims["claim"])
    assert all("IMP 3x" in c.baseline for c in sparse_soups_claims.claims(3) if c.name.startswith("sms_beats_imp_mx"))


def test_per_seed_scores_add_chance_and_sparsity_in_percent():
    scores = sparse_soups_claims.per_seed_scores(_final(3), chance_acc=11.35)
    assert (scores[scores.arm == CHANCE].test_acc == 11.35).all() and len(scores[scores.arm == CHANCE]) == 3
    assert np.allclose(scores[scores.arm == "IMP"].sparsity_pct, 99.0)
    with pytest.raises(KeyError, match="ood_acc"):
        sparse_soups_claims.per_seed_scores(_final().drop(columns="ood_acc"), 10.0)


def test_verdict_text_has_rule_n_and_sanity():
    scores = sparse_soups_claims.per_seed_scores(_final(), chance_acc=11.35)
    claims, sanity = sparse_soups_claims.verdicts(scores, _curves(), plateau_tol=0.002)
    text = protocol.verdict_text(claims, sanity, "every trained arm converged and beat chance", " pp")
    assert text.startswith("rule: ") and "Student-t" in text and "sms_beats_imp_mx: not held" in text
    assert "n=5" in text and "sanity: every trained arm converged" in text and " pp, n=5" in text


def test_best_ingredient_is_chosen_on_validation_not_test():
    cfg = sparse_soups.configure("smoke", {"greedy_chain": True})
    rows = [{"chain": "SMS uniform", "phase": cfg.phases, "arm": "ingredient", "member": j, "seed": 0,
             "sparsity": 0.8, "test_acc": test, "ood_acc": 50.0, "ece": 0.0, "val_acc": val}
            for j, (test, val) in enumerate([(99.0, 90.0), (91.0, 95.0)])]
    out, selection, best = sparse_soups._ingredient_rows(cfg, 0, rows)
    chosen = next(r for r in out if r["arm"] == BEST_INGREDIENT)
    assert best == 1 and chosen["test_acc"] == 91.0  # the test-best ingredient 0 is not chosen
    assert {s["member"] for s in selection if s["selected"]} == {1}


def test_smoke_run_judges_the_claims_and_records_validation_curves():
    cfg = sparse_soups.configure("smoke", {"seeds": (0, 1), "curve_points": 2, "naive_runs": 2})
    results = sparse_soups.run(cfg, progress=False)
    assert set(results.claims["claim"]) == {c.name for c in sparse_soups_claims.claims(cfg.m)}
    assert (results.claims["n"] == 2).all()
    lengths = results.val_curves.groupby(["arm", "seed", "member"]).size()
    assert (lengths == cfg.val_points).all()
    assert {"IMP", "SWA", "SMS uniform", "SMS greedy", f"IMP {cfg.m}x"} <= set(results.val_curves.arm)
    assert set(results.selection.split) == {"val", "test"} and results.selection.selected.sum() == 2 * 2
    assert results.final.groupby("seed").size().nunique() == 1
    assert "rule: " in sparse_soups.verdict_text(results)
