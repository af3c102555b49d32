"""The C-Mixup experiment end to end on a tiny config: selection on validation only, early stopping, verdicts."""

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
    assert len(res.curves) == res.runs["epochs_run"].sum()
    assert set(res.validation["split"]) == {"val"}


def test_choices_follow_mean_validation_rmse_only(tiny):
    _, res = tiny
    for r in res.chosen.itertuples():
        rows = res.runs[(res.runs["dataset"] == r.dataset) & (res.runs["arm"] == r.arm)]
        assert r.value == rows.groupby(r.parameter)["val_rmse"].mean().idxmin()
    scores = res.scores
    assert {"mean", "best_prior", "erm", "cmixup"} <= set(scores["arm"])
    prior = scores[scores["arm"] == "best_prior"]["prior_arm"].iloc[0]
    val = scores[scores["arm"].isin(["erm", "mixup", "feature_mixup"])].groupby("arm")["val_rmse"].mean()
    assert prior == val.idxmin()


def test_claims_and_verdict_text_carry_n_and_the_rule(tiny):
    cfg, res = tiny
    assert (res.claims["n"] == cfg.seeds).all() and res.claims["rule"].str.contains("Student-t").all()
    assert {"single_index: beats_erm", "overall (ID): beats_best_prior"} <= set(res.claims["claim"])
    text = cmixup.verdict_text(res)
    assert f"n={cfg.seeds}" in text and "sanity:" in text and "chosen on validation" in text
    assert "task generalization" not in text
    metrics = cmixup.headline_metrics(res)
    assert "claim/single_index/beats_erm_pct" in metrics and np.isfinite(metrics["single_index/cmixup/test_rmse"])


def test_the_mean_predictor_is_the_trivial_baseline():
    data = cmixup.load("single_index", 0, cmixup.configure("smoke"))
    row = cmixup.mean_predictor(data)
    expected = np.sqrt(((data.test_y - data.train_y.mean()) ** 2).mean())
    assert row["test_rmse"] == pytest.approx(expected) and "worst_rmse" not in row
