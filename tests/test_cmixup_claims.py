"""C-Mixup's claims, per-seed scores, sanity checks and verdicts on hand-made tables (no training)."""

import numpy as np
import pandas as pd

from labkit.experiments.cmixup import claims as cmixup_claims

# test RMSE per arm and dataset; validation RMSE is the same plus 0.05 (so best_prior is chosen by it)
RMSE = {
    "toy": {"mean": 2.0, "erm": 1.0, "mixup": 1.2, "feature_mixup": 0.805, "cmixup": 0.8},
    "flat": {"mean": 2.0, "erm": 1.0, "mixup": 1.0, "feature_mixup": 1.0, "cmixup": 1.0},
    "shift": {"mean": 0.3, "erm": 0.2, "mixup": 0.1, "feature_mixup": 0.1, "cmixup": 0.1},
}
SELF_PAIRS = {"mixup": 0.01, "feature_mixup": 0.05, "cmixup": 0.03}  # a mixup arm's share of pairs (i, i)


def _tables(seeds: int = 6) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Selected runs, mean-predictor rows, the validation table, and budget runs on a plateau (seed 0 of each trained
    arm at 1x and 2x, the longer run no better)."""
    rng = np.random.default_rng(0)
    selected, trivial = [], []
    for name, arms in RMSE.items():
        for seed in range(seeds):
            shift = rng.normal(0, 0.05)  # a seed effect shared by all arms: pairing removes it
            for arm, rmse in arms.items():
                value = rmse + shift + rng.normal(0, 0.001)
                row = {
                    "dataset": name,
                    "arm": arm,
                    "seed": seed,
                    "test_rmse": value,
                    "val_rmse": value + 0.05,
                    "worst_rmse": 1.5 * value if name == "shift" else np.nan,
                    "sigma": np.nan,
                    "alpha": np.nan,
                    "self_pair_rate": SELF_PAIRS.get(arm, np.nan),
                    "epochs_run": 50,
                }
                (trivial if arm == "mean" else selected).append(row)
    selected = pd.DataFrame(selected)
    validation = selected[["dataset", "arm", "seed", "val_rmse"]].assign(split="val")
    first = selected[selected["seed"] == 0]
    budget_runs = pd.concat([first.assign(budget=1.0), first.assign(budget=2.0, epochs_run=90)], ignore_index=True)
    return selected, pd.DataFrame(trivial), validation, budget_runs


def _verdicts(selected, trivial, validation, budget_runs):
    scores = cmixup_claims.per_seed_scores(selected, trivial, validation)
    claims, sanity, budget = cmixup_claims.verdicts(scores, budget_runs)
    return scores, dict(zip(claims["claim"], claims["verdict"], strict=True)), claims, sanity, budget


def _improve_at_2x(budget_runs: pd.DataFrame, name: str, arm: str, pct: float) -> None:
    """The 2x run of ``arm`` on ``name`` reaches a validation RMSE ``pct`` % below its 1x run (still improving)."""
    at = (budget_runs["dataset"] == name) & (budget_runs["arm"] == arm) & (budget_runs["budget"] == 2.0)
    budget_runs.loc[at, "val_rmse"] *= 1 - pct / 100


def test_scores_add_best_prior_chosen_on_validation_and_the_pooled_reading():
    scores, *_ = _verdicts(*_tables())
    prior = scores[scores["arm"] == "best_prior"].groupby("dataset")["prior_arm"].first()
    assert prior["toy"] == "feature_mixup" and prior["flat"] in {"erm", "mixup", "feature_mixup"}
    overall = scores[scores["dataset"] == cmixup_claims.OVERALL_ID]
    assert set(overall["arm"]) >= {"cmixup", "erm", "best_prior"} and len(overall[overall.arm == "erm"]) == 6
    assert np.isclose(overall[overall.arm == "erm"]["rmse_vs_erm"].mean(), 1.0)


def test_verdicts_per_dataset_with_paired_student_t_and_the_tolerance():
    _, verdict, claims, sanity, budget = _verdicts(*_tables())
    assert verdict["toy: beats_erm"] == "held" and verdict["toy: beats_mixup"] == "held"  # 0.8 vs 1.0 / 1.2
    assert verdict["toy: beats_feature_mixup"] == "not held"  # 0.8 vs 0.805: below the 1 % tolerance
    assert verdict["flat: beats_erm"] == "not held"  # equal
    assert verdict["shift: beats_erm"] == "held" and verdict["shift: beats_best_prior_worst"] == "not held"
    assert "toy: beats_best_prior_worst" not in verdict  # worst-domain claims only where test domains exist
    assert verdict["overall (ID): beats_erm"] == "held"  # toy better, flat equal: the mean is ~10 % better
    assert (claims["n"] == 6).all() and claims["rule"].str.contains("Student-t").all()
    assert (sanity["flags"] == "").all() and set(sanity["dataset"]) == set(RMSE)
    # the paper's statements (with a reference) are the Holm-adjusted main claims; no premise is declared
    roles = dict(zip(claims["claim"], claims["role"], strict=True))
    assert roles["toy: beats_mixup"] == "main" and roles["toy: beats_erm"] == "secondary"
    assert claims.loc[claims["role"] == "main", "p (Holm)"].notna().all()
    assert (claims["raw verdict"] == claims["verdict"]).all()
    # every trained arm (and best_prior, which stands for one) checked at 2x; the mean predictor is not trained
    trained = sanity[sanity["arm"] != "mean"]
    assert trained["converged"].astype(bool).all() and sanity.loc[sanity["arm"] == "mean", "converged"].isna().all()
    assert set(budget["arm"]) == {"erm", "mixup", "feature_mixup", "cmixup", "best_prior"}
    assert (budget["budget"] == 2.0).all() and (budget["epochs_long"] > budget["epochs_1x"]).all()


def test_the_budget_check_fires_on_a_run_still_improving_at_2x_and_not_on_a_plateau():
    selected, trivial, validation, budget_runs = _tables()
    _improve_at_2x(budget_runs, "flat", "erm", 5.0)  # 5 % lower validation RMSE at 2x: not converged
    _improve_at_2x(budget_runs, "flat", "mixup", 0.5)  # 0.5 %: within the 1 % tolerance, converged
    _, verdict, _, sanity, budget = _verdicts(selected, trivial, validation, budget_runs)
    flat = sanity[sanity["dataset"] == "flat"].set_index("arm")
    assert not flat.loc["erm", "converged"] and flat.loc["mixup", "converged"] and flat.loc["cmixup", "converged"]
    assert "flat: erm not converged (seed 0" in flat.loc["erm", "flags"] and flat.loc["mixup", "flags"] == ""
    row = budget[(budget["dataset"] == "flat") & (budget["arm"] == "erm")].iloc[0]
    assert np.isclose(row["improvement"], 5.0) and row["val_rmse_long"] < row["val_rmse_1x"]
    assert verdict["flat: beats_erm"] == "inconclusive" and verdict["flat: beats_mixup"] == "not held"
    assert verdict["flat: beats_best_prior"] == "inconclusive"  # erm was a candidate for best prior
    assert verdict["overall (ID): beats_erm"] == "inconclusive"  # pooled over flat, normalised by erm
    assert verdict["toy: beats_erm"] == "held"  # another dataset's erm is fine


def test_an_arm_near_chance_makes_its_claims_inconclusive_and_small_n_is_not_judged():
    selected, trivial, validation, budget_runs = _tables()
    trivial.loc[trivial["dataset"] == "toy", "val_rmse"] = 0.5  # every arm worse than the mean predictor on toy
    _, verdict, _, sanity, _ = _verdicts(selected, trivial, validation, budget_runs)
    assert verdict["toy: beats_erm"] == "inconclusive" and verdict["overall (ID): beats_erm"] == "inconclusive"
    assert "toy: cmixup does not beat mean" in set(sanity["flags"])
    _, _, _, sanity, _ = _verdicts(*_tables(seeds=2))  # two seeds: no t interval, no flag
    assert (sanity.loc[sanity["arm"] != "mean", "beats_trivial"] == "not enough units").all()
    assert (sanity["flags"] == "").all()


def test_a_mixup_arm_that_mostly_pairs_a_sample_with_itself_makes_the_claims_resting_on_it_inconclusive():
    """Feature mixup whose kernel picks the sample itself 99.9 % of the time is ERM: the claims comparing C-Mixup
    with it (directly, or through best_prior that chose among it) are inconclusive; the others stand."""
    selected, trivial, validation, budget_runs = _tables()
    selected.loc[(selected["dataset"] == "toy") & (selected["arm"] == "feature_mixup"), "self_pair_rate"] = 0.999
    _, verdict, _, sanity, _ = _verdicts(selected, trivial, validation, budget_runs)
    toy = sanity[sanity["dataset"] == "toy"].set_index("arm")
    assert toy.loc["feature_mixup", "self_pair_rate"] == 0.999 and np.isnan(toy.loc["erm", "self_pair_rate"])
    assert "toy: feature_mixup barely mixes (self-pair rate 99.9 % > 50 %: mostly ERM)" in toy.loc["feature_mixup",
                                                                                                    "flags"]
    assert "barely mixes" in toy.loc["best_prior", "flags"]  # best_prior stands for feature mixup on toy
    assert verdict["toy: beats_feature_mixup"] == "inconclusive" and verdict["toy: beats_best_prior"] == "inconclusive"
    assert verdict["overall (ID): beats_best_prior"] == "inconclusive"
    assert verdict["toy: beats_erm"] == "held" and verdict["toy: beats_mixup"] == "held"
    assert verdict["overall (ID): beats_erm"] == "held"
    selected.loc[selected["arm"] == "feature_mixup", "self_pair_rate"] = cmixup_claims.SELF_PAIR_MAX  # at: not above
    _, verdict, _, _, _ = _verdicts(selected, trivial, validation, budget_runs)
    assert verdict["toy: beats_feature_mixup"] == "not held"


def test_the_pooled_reading_ignores_flags_of_datasets_it_does_not_pool():
    """An out-of-distribution dataset near chance must not make the in-distribution pooled claims inconclusive."""
    selected, trivial, validation, budget_runs = _tables()
    trivial.loc[trivial["dataset"] == "shift", "val_rmse"] = 0.01  # every arm worse than the mean on shift (OOD)
    _, verdict, _, _, _ = _verdicts(selected, trivial, validation, budget_runs)
    assert verdict["shift: beats_erm"] == "inconclusive"
    assert verdict["overall (ID): beats_erm"] == "held"


def test_every_claim_declares_the_arms_its_score_rests_on():
    for claim in cmixup_claims.CLAIMS + cmixup_claims.OOD_CLAIMS + cmixup_claims.OVERALL_CLAIMS:
        if claim.baseline == "best_prior":
            assert set(cmixup_claims.PRIOR_ARMS) <= set(claim.arms)
        if claim.metric == "rmse_vs_erm":
            assert "erm" in claim.arms
