"""The C-Mixup experiment end to end on a tiny config: selection on validation only, early stopping, the longer
reruns of the convergence check, the self-pair rate, verdicts, and judging the computed tables again after a CSV
round trip or from a stored report."""

import numpy as np
import pandas as pd
import pytest

from labkit import report
from labkit.experiments import Results, cmixup
from labkit.experiments.cmixup import summary

# the judged tables the notebook records
JUDGED = ("claims", "sanity", "budget", "chosen", "pairing", "scores", "summary")


@pytest.fixture(scope="module")
def tiny() -> tuple[cmixup.Config, Results]:
    cfg = cmixup.configure("smoke", {"datasets": ["single_index"], "epochs": 4, "patience": 1, "single_index_n": 60})
    return cfg, cmixup.EXPERIMENT.run(cfg, progress=False)


@pytest.fixture(scope="module")
def tiny_with_images() -> tuple[cmixup.Config, Results]:
    """A tabular and an image (RCF, with test domains) dataset: NaN worst-domain cells and σ/α-less arms."""
    cfg = cmixup.configure("smoke", {"epochs": 4, "patience": 1, "single_index_n": 60, "image_train": 150,
                                     "image_eval": 100})
    return cfg, cmixup.EXPERIMENT.run(cfg, progress=False)


def _assert_same_judgement(a: Results, b: Results) -> None:
    """Same claims (effects, intervals, p-values, verdicts), sanity flags, budget table and choices, exactly."""
    for name in ("claims", "sanity", "budget", "chosen", "pairing"):
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_exact=True)
    assert summary.verdict_text(a) == summary.verdict_text(b)
    assert summary.headline_metrics(a) == summary.headline_metrics(b)


def test_the_csv_round_trip_of_the_computed_tables_changes_no_verdict(tiny_with_images):
    cfg, res = tiny_with_images
    assert set(res.computed.tables) == {"runs", "reruns", "curves", "trivial"}
    assert not set(JUDGED) & set(res.computed.tables)
    assert res.scores["worst_rmse"].notna().any() and res.scores["worst_rmse"].isna().any()
    _assert_same_judgement(res, summary.judge(cfg, res.computed.roundtrip()))


def test_a_recorded_report_loads_with_the_same_claims(tiny_with_images, tmp_path, monkeypatch):
    cfg, res = tiny_with_images
    monkeypatch.setenv(report.REPORT_DIR_ENV, str(tmp_path))
    report.record(cfg, metrics=summary.headline_metrics(res), tables={n: res.tables[n] for n in JUDGED},
                  computed=res.computed)
    loaded = cmixup.EXPERIMENT.load(tmp_path)
    assert loaded.config == cfg
    _assert_same_judgement(res, loaded)
    assert loaded.timings["train_seconds_total"] == pytest.approx(res.timings["train_seconds_total"])


def test_run_trains_every_grid_value_and_stops_early(tiny):
    cfg, res = tiny
    # erm 1; every mixup arm α over 2 values; the kernel arms (cmixup, feature_mixup, cmixup_input) also σ over 2
    assert cmixup.sizes(cfg) == {"single_index": cfg.seeds * (1 + 2 + 4 + 4 + 2 + 4)}
    assert len(res.runs) == cmixup.sizes(cfg)["single_index"] and "seconds" not in res.runs  # seconds: timings
    assert len(res.timings["run_seconds"]) == len(res.runs) and res.timings["train_seconds_total"] > 0
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
    with pytest.raises(ValueError, match=r"budget_factor.*>= 2.*1.5"):
        cmixup.configure("smoke", {"budget_factor": 1.5})


def test_the_mean_predictor_is_the_trivial_baseline():
    data = cmixup.load("single_index", 0, cmixup.configure("smoke"))
    row = cmixup.mean_predictor(data)
    expected = np.sqrt(((data.test_y - data.train_y.mean()) ** 2).mean())
    assert row["test_rmse"] == pytest.approx(expected) and "worst_rmse" not in row


def test_the_mean_predictor_is_scored_in_compute(tiny):
    cfg, res = tiny
    trivial = res.computed.tables["trivial"]
    assert list(trivial["seed"]) == list(range(cfg.seeds)) and set(trivial["arm"]) == {"mean"}
    data = cmixup.load("single_index", 1, cfg)
    assert trivial["test_rmse"].iloc[1] == cmixup.mean_predictor(data)["test_rmse"]


def test_every_mixup_arm_tunes_alpha_on_grids_of_equal_size():
    cfg = cmixup.configure("smoke")
    for arm in ("mixup", "mixup_input"):
        assert cmixup.configurations(arm, cfg, False) == [(None, a) for a in cfg.alphas]
    label, feature = (cmixup.configurations(a, cfg, False) for a in ("cmixup", "feature_mixup"))
    assert len(label) == len(feature) == len(cfg.sigmas) * len(cfg.alphas)
    assert {a for _, a in label} == {a for _, a in feature} == set(cfg.alphas)
    assert cmixup.configurations("erm", cfg, True) == [(None, None)]
    with pytest.raises(ValueError, match="image_sigmas and image_feature_sigmas must have the same size"):
        cmixup.configure("smoke", {"image_feature_sigmas": [0.5, 1.0]})


def _runs(rates: dict[float, float], val: dict[float, float]) -> pd.DataFrame:
    """Hand-made runs of feature_mixup at σ in ``rates`` (α = 2), two seeds, with a given self-pair rate and val
    RMSE."""
    return pd.DataFrame([{"dataset": "single_index", "arm": "feature_mixup", "seed": seed, "sigma": s, "alpha": 2.0,
                          "val_rmse": val[s], "self_pair_rate": rates[s]} for s in rates for seed in (0, 1)])


def test_selection_skips_settings_that_mostly_pair_a_sample_with_itself():
    cfg = cmixup.configure("smoke", {"datasets": ["single_index"], "alphas": [2.0], "sigmas": [0.1, 1.0],
                                     "feature_sigmas": [0.1, 1.0]})
    runs = _runs({0.1: 0.999, 1.0: 0.05}, {0.1: 0.10, 1.0: 0.20})  # the narrow kernel wins validation but is ERM
    _, chosen, selected = cmixup.arms.select(runs, cfg)
    assert chosen.iloc[0]["sigma"] == 1.0 and chosen.iloc[0]["eligible"] == 1 and (selected["sigma"] == 1.0).all()
    table = cmixup.arms.pairing(runs).set_index("sigma")
    assert list(table["eligible"]) == [False, True] and table.loc[0.1, "self_pair_rate"] == pytest.approx(0.999)
    # no eligible setting: the best on validation is kept and the sanity check flags the arm
    _, chosen, _ = cmixup.arms.select(_runs({0.1: 0.9, 1.0: 0.8}, {0.1: 0.10, 1.0: 0.20}), cfg)
    assert chosen.iloc[0]["sigma"] == 0.1 and chosen.iloc[0]["eligible"] == 0


def test_rcf_runs_score_the_in_distribution_copy_and_judge_the_premise_first(tiny_with_images):
    cfg, res = tiny_with_images
    rcf = res.scores[res.scores["dataset"] == "rcf_digits"]
    assert rcf.loc[rcf["arm"].isin(cfg.arms), "iid_test_rmse"].notna().all()
    claims = res.claims.set_index("claim")
    premise = claims.loc["rcf_digits: erm_leans_on_colour"]
    assert premise["role"] == "premise" and res.claims.iloc[0]["claim"] == "rcf_digits: erm_leans_on_colour"
    governed = claims.loc[[c for c in claims.index if c.startswith("rcf_digits: ") and c != premise.name]]
    assert (governed["group"] == "rcf_digits").all()
    if premise["verdict"] != "held":
        unsettled = {"not held": "premise not met", "inconclusive": "premise unconfirmed"}[premise["verdict"]]
        assert (governed["verdict"] == unsettled).all()
    assert (claims.loc[[c for c in claims.index if c.startswith("single_index")], "group"] == "").all()
