"""C-Mixup's claims, per-seed scores and verdicts on hand-made tables (no training)."""

import numpy as np
import pandas as pd

from labkit.experiments import cmixup_claims

# test RMSE per arm and dataset; validation RMSE is the same plus 0.05 (so best_prior is chosen by it)
RMSE = {
    "toy": {"mean": 2.0, "erm": 1.0, "mixup": 1.2, "feature_mixup": 0.805, "cmixup": 0.8},
    "flat": {"mean": 2.0, "erm": 1.0, "mixup": 1.0, "feature_mixup": 1.0, "cmixup": 1.0},
    "shift": {"mean": 0.3, "erm": 0.2, "mixup": 0.1, "feature_mixup": 0.1, "cmixup": 0.1},
}
PLATEAU = [1.0, 0.5, 0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47]


def _tables(seeds: int = 6) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
                }
                (trivial if arm == "mean" else selected).append(row)
    selected = pd.DataFrame(selected)
    validation = selected[["dataset", "arm", "seed", "val_rmse"]].assign(split="val")
    curves = pd.DataFrame(
        [
            {**r, "epoch": e, "val_mse": v}
            for r in selected[["dataset", "arm", "seed", "sigma", "alpha"]].to_dict("records")
            for e, v in enumerate(PLATEAU)
        ]
    )
    return selected, pd.DataFrame(trivial), validation, curves


def _verdicts(selected, trivial, validation, curves):
    scores = cmixup_claims.per_seed_scores(selected, trivial, validation)
    claims, sanity = cmixup_claims.verdicts(scores, cmixup_claims.validation_curves(curves, selected), 0.01)
    return scores, dict(zip(claims["claim"], claims["verdict"], strict=True)), claims, sanity


def test_scores_add_best_prior_chosen_on_validation_and_the_pooled_reading():
    scores, *_ = _verdicts(*_tables())
    prior = scores[scores["arm"] == "best_prior"].groupby("dataset")["prior_arm"].first()
    assert prior["toy"] == "feature_mixup" and prior["flat"] in {"erm", "mixup", "feature_mixup"}
    overall = scores[scores["dataset"] == cmixup_claims.OVERALL_ID]
    assert set(overall["arm"]) >= {"cmixup", "erm", "best_prior"} and len(overall[overall.arm == "erm"]) == 6
    assert np.isclose(overall[overall.arm == "erm"]["rmse_vs_erm"].mean(), 1.0)


def test_verdicts_per_dataset_with_paired_student_t_and_the_tolerance():
    _, verdict, claims, sanity = _verdicts(*_tables())
    assert verdict["toy: beats_erm"] == "held" and verdict["toy: beats_mixup"] == "held"  # 0.8 vs 1.0 / 1.2
    assert verdict["toy: beats_feature_mixup"] == "not held"  # 0.8 vs 0.805: below the 1 % tolerance
    assert verdict["flat: beats_erm"] == "not held"  # equal
    assert verdict["shift: beats_erm"] == "held" and verdict["shift: beats_best_prior_worst"] == "not held"
    assert "toy: beats_best_prior_worst" not in verdict  # worst-domain claims only where test domains exist
    assert verdict["overall (ID): beats_erm"] == "held"  # toy better, flat equal: the mean is ~10 % better
    assert (claims["n"] == 6).all() and claims["rule"].str.contains("Student-t").all()
    assert (sanity["flags"] == "").all() and set(sanity["dataset"]) == set(RMSE)


def test_an_arm_near_chance_or_unconverged_makes_its_claims_inconclusive():
    selected, trivial, validation, curves = _tables()
    trivial.loc[trivial["dataset"] == "toy", "val_rmse"] = 0.5  # every arm worse than the mean predictor on toy
    still = (curves["dataset"] == "flat") & (curves["arm"] == "erm")
    curves.loc[still, "val_mse"] = 1.0 / (1 + curves.loc[still, "epoch"])
    _, verdict, _, sanity = _verdicts(selected, trivial, validation, curves)
    assert verdict["toy: beats_erm"] == "inconclusive"
    assert verdict["flat: beats_erm"] == "inconclusive" and verdict["flat: beats_mixup"] == "not held"
    assert verdict["overall (ID): beats_erm"] == "inconclusive"  # rests on toy's flagged arms
    flags = set(sanity["flags"])
    assert "toy: cmixup does not beat mean" in flags and "flat: erm not converged in 6/6 seeds" in flags


def test_the_pooled_reading_ignores_flags_of_datasets_it_does_not_pool():
    """An out-of-distribution dataset near chance must not make the in-distribution pooled claims inconclusive."""
    selected, trivial, validation, curves = _tables()
    trivial.loc[trivial["dataset"] == "shift", "val_rmse"] = 0.01  # every arm worse than the mean on shift (OOD)
    _, verdict, _, _ = _verdicts(selected, trivial, validation, curves)
    assert verdict["shift: beats_erm"] == "inconclusive"
    assert verdict["overall (ID): beats_erm"] == "held"
