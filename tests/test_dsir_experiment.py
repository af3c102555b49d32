"""DSIR as one experiment: the config's checks and presets (seeds are counts), judging computed tables after the
CSV round trip a report makes, and ``EXPERIMENT.load`` of a recorded report, on a tiny in-memory pool."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from labkit import report
from labkit.experiments import Computed, Results, dsir
from labkit.experiments.dsir.arms import compute_on
from tests.test_dsir_arms import tiny_config, tiny_prepared

JUDGED = ("claims", "sanity", "budget", "budget_effects", "tuning", "correlation_intervals", "correlation_loo",
          "paired_gaps")  # what the notebook records beside the computed


def test_config_validates_classify_fields():
    with pytest.raises(TypeError, match="classify_methods.*'nope'"):
        dsir.configure("smoke", {"classify_methods": ["dsir", "nope"]})
    with pytest.raises(TypeError, match="classify_targets.*'nope'"):
        dsir.configure("smoke", {"classify_targets": ["nope"]})
    assert all(dsir.configure(p).classify for p in ("smoke", "cpu", "gpu"))  # cpu: a reduced track (#14)


def test_config_validates_budget_fields():
    assert dsir.configure("cpu").budget_factor == 2.0
    with pytest.raises(ValueError, match=r"budget_factor.*>= 2.*1\.5"):
        dsir.configure("smoke", {"budget_factor": 1.5})
    with pytest.raises(ValueError, match="n_val.*budget check"):
        dsir.configure("smoke", {"n_val": 0})
    assert dsir.configure("smoke", {"n_val": 0, "downstream": "bigram"}).n_val == 0


def test_seeds_are_counts_and_presets_keep_their_seeds():
    # smoke [0], cpu [0..4], gpu [0..4] (gpu had 3 until its SmolLM2 track needed 5)
    assert [dsir.configure(p).seeds for p in ("smoke", "cpu", "gpu")] == [1, 5, 5]
    assert [dsir.configure(p).llm_seeds for p in ("cpu", "gpu")] == [3, 5]
    assert [dsir.configure(p).classify_seeds for p in ("smoke", "cpu", "gpu")] == [1, 5, 3]
    assert [dsir.configure(p).tiny_lm_seeds for p in ("smoke", "cpu", "gpu")] == [1, 5, 3]
    with pytest.raises(ValueError, match=r"seeds.*>= 1.*0"):
        dsir.configure("smoke", {"seeds": 0})


@pytest.fixture(scope="module")
def computed() -> tuple[dsir.Config, Computed]:
    """Every track (bigram, tiny transformer with its premise arm, classification) on a tiny pool: seconds."""
    cfg = tiny_config(methods=["random", "dsir", "dsir-smoothed", "heuristic"], n_val=6, seeds=2,
                      tiny_lm_targets=["python-topics"], tiny_lm_methods=["random", "dsir"], lm_steps=3,
                      classify_methods=["random", "dsir"], classify_seeds=2)
    return cfg, compute_on(cfg, tiny_prepared(encoded=True), progress=False)


def same_judgement(a: Results, b: Results) -> None:
    """Claims (effects, intervals, p, verdicts) and sanity flags agree exactly."""
    for name in ("claims", "sanity", "budget", "tuning"):
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_dtype=False, obj=name)
    assert dsir.headline_metrics(a).keys() == dsir.headline_metrics(b).keys()


def test_csv_round_trip_keeps_every_verdict(computed):
    cfg, tables = computed
    direct, stored = dsir.EXPERIMENT.judge(cfg, tables), dsir.EXPERIMENT.judge(cfg, tables.roundtrip())
    assert {"target_beats_random", "loss_vs_random"} <= set(direct.claims.claim)
    assert "classify_vs_random" in set(direct.claims.claim)  # classification: a secondary claim per cell
    assert len(direct.sanity) and direct.budget.track.nunique() == 2  # both trained tracks budget-checked
    same_judgement(direct, stored)
    assert not set(tables.tables) & set(JUDGED)  # a judged table never shares a computed table's name


def test_load_rejudges_a_recorded_report(computed, tmp_path, monkeypatch):
    cfg, tables = computed
    results = dsir.EXPERIMENT.judge(cfg, tables)
    monkeypatch.setenv("LABKIT_REPORT_DIR", str(tmp_path))
    report.record(cfg, metrics=dsir.headline_metrics(results), tables={n: results.tables[n] for n in JUDGED},
                  held=dsir.verdict_text(results.claims, results.sanity), computed=results.computed)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["params"]["seeds"] == 2 and set(stored["computed"]) == set(tables.tables)
    loaded = dsir.EXPERIMENT.load(tmp_path)
    assert loaded.config == cfg
    same_judgement(results, loaded)
    # what the notebook reads after its run cell works on loaded Results (no training, no pool)
    from labkit.views import dsir as views

    views.budget_curves(loaded.budget_runs, loaded.budget_curves)
    views.classify_bars(loaded.classify)
    views.lm_bars(loaded.tiny_lm)
    views.loss_bars(loaded.scores)
    views.kl_vs_loss(loaded.scores, loaded.correlation_intervals, "bigram_nats_per_token", "bigram LM")
    views.kl_vs_loss(loaded.tiny_lm, loaded.correlation_intervals, "bits_per_byte", dsir.TINY_TRACK,
                     paper_r=dsir.PAPER_R)
    views.picks_histogram(loaded.picks, "python-topics", seed=0)
    assert dsir.classify_held(loaded.classify).startswith("classification after continued pretraining")
    assert loaded.skipped_targets == {} and loaded.classify_skipped == {}
