"""Met²Net's experiment contract: compute once (a two-epoch smoke run), then judging the computed tables as a report
stores them (CSV) or loads them back gives the same claims, sanity flags and forecast viewer."""

import json

import numpy as np
import pandas as pd
import pytest

from labkit import report
from labkit.experiments import met2net
from labkit.experiments.met2net.arms import FORECAST_PREFIX

CLAIM_COLUMNS = ["claim", "role", "mean", "low", "high", "n", "verdict", "raw verdict"]


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A smoke run with two epochs (every arm, both momentums, the 2x budget reruns, a data draw per seed): a few
    seconds on a CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("LABKIT_JOB_CACHE", raising=False)
        cfg = met2net.configure("smoke", {"epochs": 2, "device": "cpu"})
        return cfg, met2net.EXPERIMENT.compute(cfg, False)


def _same_verdicts(a, b) -> None:
    pd.testing.assert_frame_equal(a.claims[CLAIM_COLUMNS], b.claims[CLAIM_COLUMNS], check_exact=True)
    pd.testing.assert_frame_equal(a.sanity, b.sanity, check_exact=True)
    pd.testing.assert_frame_equal(a.sweep, b.sweep, check_exact=True)
    assert met2net.headline_metrics(a) == met2net.headline_metrics(b)
    assert met2net.verdict_text(a) == met2net.verdict_text(b)


def test_computed_tables_are_raw_and_judging_them_after_a_csv_round_trip_changes_no_verdict(computed):
    cfg, raw = computed
    assert set(raw.tables) == {"runs", "run_metrics", "run_lead", "run_history", "run_attention"}
    runs = raw.tables["runs"]
    assert len(runs[(runs.arm == "met2net") & (runs.budget == 1)]) == cfg.seeds * len(cfg.momentums)
    assert sum(v.numel() * v.element_size() for v in raw.tensors.values()) <= 5 * 2**20
    long = runs[runs.budget > 1]
    assert sorted(long.loc[long.arm == "met2net", "seed"]) == sorted(long.loc[long.arm == "pervar_e2e", "seed"]) == [
        0, 1]  # long_seeds of the two arms of implicit vs end-to-end; seed 0 of every other trained arm
    assert list(long.loc[long.arm == "stacked", "seed"]) == [0]
    results = met2net.judge(cfg, raw)
    dependent = ("T", "RH", "sst")  # of the smoke's u, v, T, RH, flux, sst: forced by u, v / T / flux
    declared = [*met2net.claims.CLAIMS, *met2net.claims.attention_claims(dependent), *met2net.claims.LONG_CLAIMS]
    assert list(results.claims["claim"]) == [c.name for c in declared]
    assert set(results.skill["lead"]) == set(range(1, cfg.t_out + 1)) and len(results.skill) == (
        len(cfg.arms) * len(cfg.variables) * cfg.t_out)
    assert "no_skill_at_lead_1" in results.sanity
    momentum = met2net.headline_metrics(results)["met2net_momentum"]
    assert set(results.metrics.loc[results.metrics.arm == "met2net", "seed"]) == {0, 1}
    assert len(results.metrics) == len(raw.tables["run_metrics"]) - cfg.seeds * 2 * len(cfg.variables)
    assert results.sweep.loc[results.sweep.selected, "momentum"].eq(momentum).all()
    _same_verdicts(results, met2net.judge(cfg, raw.roundtrip()))


def test_a_recorded_report_loads_back_with_the_same_claims_and_forecasts(computed, tmp_path, monkeypatch):
    cfg, raw = computed
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(report.REPORT_DIR_ENV, str(tmp_path / "report"))
    results = met2net.judge(cfg, raw)
    report.record(cfg, metrics=met2net.headline_metrics(results),
                  tables={"claims": results.claims, "sanity": results.sanity, "scores": results.scores},
                  computed=results.computed)
    assert json.loads((tmp_path / "report" / "results.json").read_text())["params"]["seeds"] == cfg.seeds
    loaded = met2net.EXPERIMENT.load(tmp_path / "report")
    assert loaded.config == cfg
    _same_verdicts(results, loaded)
    data = met2net.load_data(cfg)
    shown, stored = met2net.sample_forecasts(loaded, data), met2net.sample_forecasts(results, data)
    assert list(shown) == ["truth", *cfg.arms] and shown["truth"].shape == (4, cfg.t_out, len(cfg.variables), 8, 16)
    for name in shown:
        np.testing.assert_array_equal(shown[name], stored[name])
    assert f"{FORECAST_PREFIX}windows" in loaded.computed.tensors
