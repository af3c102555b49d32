"""The C-Mixup experiment end to end on a tiny config: selection on validation only, early stopping, the longer
reruns of the convergence check, the self-pair rate, verdicts."""

import numpy as np
import pytest

from labkit.experiments import cmixup


@pytest.fixture(scope="module")
def tiny() -> tuple[cmixup.Config, cmixup.Results]:
    cfg = cmixup.configure("smoke", {"datasets": ["single_index"], "epochs": 4, "patience": 1, "single_index_n": 60})
    return cfg, cmixup.run(cfg, progress=False)


def test_run_trains_every_grid_value_and_stops_early(tiny):
    cfg, res = tiny
    assert cmixup.sizes(cfg) == {"single_index": cfg.seeds * (1 + 2 + 2 + 2)}
    assert len(res.runs) == cmixup.sizes(cfg)["single_index"]
    assert (res.runs["epochs_run"] <= cfg.epochs).all() and (res.runs["best_epoch"] < res.runs["epochs_run"]).all()
    assert len(res.curves) == res.runs["epochs_run"].sum() + res.reruns["epochs_run"].sum()
    assert set(res.validation["split"]) == {"val"}


def test_longer_scales_cap_and_patience_and_replays_the_run():
    cfg = cmixup.configure("smoke", {"epochs": 7, "patience": 3, "image_epochs": 5, "image_patience": 2,
                                     "budget_factor": 2.5})
    long = cmixup.longer(cfg)
    assert (long.epochs, long.patience, long.image_epochs, long.image_patience) == (18, 8, 13, 5)
    assert (long.lr, long.min_improvement, long.seeds) == (cfg.lr, cfg.min_improvement, cfg.seeds)
    data = cmixup.load("single_index", 0, cfg)
    short = cmixup.train_arm(data, "cmixup", 0, cfg, sigma=0.3)
    longer = cmixup.train_arm(data, "cmixup", 0, long, sigma=0.3)
    n = len(short["val_curve"])
    assert len(longer["val_curve"]) > n and longer["val_curve"][:n] == short["val_curve"]  # same seed: continued
    assert longer["val_rmse"] <= short["val_rmse"]


def test_the_budget_check_reruns_seed_0_of_every_chosen_arm_and_fires_on_a_budget_far_too_short(tiny):
    cfg, res = tiny
    assert set(res.reruns["arm"]) == set(cfg.arms) and (res.reruns["seed"] == 0).all()
    scores = res.scores[(res.scores["dataset"] == "single_index") & (res.scores["seed"] == 0)]
    key = ["arm", "sigma", "alpha"]
    chosen = scores[scores["arm"].isin(cfg.arms)][key].sort_values("arm").reset_index(drop=True)
    assert res.reruns[key].sort_values("arm").reset_index(drop=True).equals(chosen)  # the chosen configurations
    assert (res.reruns["epochs_run"] > 0).all() and (res.reruns["budget"] == cfg.budget_factor).all()
    budget = res.budget.set_index("arm")
    assert {"val_rmse_1x", "val_rmse_long", "improvement", "converged", "epochs_1x", "epochs_long"} <= set(budget)
    # 4 epochs of 2 steps from scratch is nowhere near a plateau: 8 epochs must lower ERM's validation RMSE by > 1 %
    assert not budget.loc["erm", "converged"] and budget.loc["erm", "epochs_long"] > budget.loc["erm", "epochs_1x"]
    sanity = res.sanity.set_index("arm")
    assert sanity.loc["erm", "converged"] == False  # noqa: E712 (a pandas object column)
    assert "single_index: erm not converged (seed 0" in sanity.loc["erm", "flags"]
    assert res.claims.set_index("claim").loc["single_index: beats_erm", "verdict"] == "inconclusive"


def test_claims_and_verdict_text_carry_n_and_the_rule(tiny):
    cfg, res = tiny
    assert (res.claims["n"] == cfg.seeds).all() and res.claims["rule"].str.contains("Student-t").all()
    assert {"single_index: beats_erm", "overall (ID): beats_best_prior"} <= set(res.claims["claim"])
    assert {"role", "tolerance", "raw verdict", "verdict", "sanity"} <= set(res.claims.columns)
    text = cmixup.verdict_text(res)
    assert f"n={cfg.seeds}" in text and "sanity:" in text and "chosen on validation" in text
    assert "task generalization" not in text
    metrics = cmixup.headline_metrics(res)
    assert "claim/single_index/beats_erm_pct" in metrics and np.isfinite(metrics["single_index/cmixup/test_rmse"])
    assert 0 <= metrics["single_index/cmixup/self_pair_rate"] <= 1 and "single_index/erm/self_pair_rate" not in metrics


def test_the_self_pair_rate_reads_a_kernel_too_narrow_to_mix():
    """Feature-similarity mixup with a bandwidth far below the typical input distance pairs each sample with itself."""
    cfg = cmixup.configure("smoke", {"epochs": 1, "single_index_n": 60})
    data = cmixup.load("single_index", 0, cfg)
    narrow = cmixup.train_arm(data, "feature_mixup", 0, cfg, sigma=0.01)["self_pair_rate"]
    wide = cmixup.train_arm(data, "feature_mixup", 0, cfg, sigma=2.0)["self_pair_rate"]
    assert narrow > 0.9 and wide < 0.2


def test_the_budget_factor_must_be_a_longer_budget():
    with pytest.raises(ValueError, match=r"budget_factor.*\[2, inf\).*1.5"):
        cmixup.configure("smoke", {"budget_factor": 1.5})


def test_the_mean_predictor_is_the_trivial_baseline():
    data = cmixup.load("single_index", 0, cmixup.configure("smoke"))
    row = cmixup.mean_predictor(data)
    expected = np.sqrt(((data.test_y - data.train_y.mean()) ** 2).mean())
    assert row["test_rmse"] == pytest.approx(expected) and "worst_rmse" not in row
