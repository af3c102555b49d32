"""GateSkip under the one-experiment contract: judging the stored (CSV) computed tables gives the same verdicts, and a
recorded report loads back into the same Results, token widget included (a small smoke run, ~10 s)."""

import numpy as np
import pandas as pd
import pytest

from labkit import report
from labkit.experiments import ARTEFACT_LIMIT_BYTES
from labkit.experiments import gateskip as experiment
from labkit.views import gateskip as views

JUDGED = ("chosen", "validation", "scores", "budget", "health", "claims", "sanity")


@pytest.fixture(scope="module")
def smoke():
    """The smoke preset on running sums only: every arm, the choices, the test seeds and the convergence reruns."""
    cfg = experiment.configure("smoke", {"tasks": ("cumsum",), "eval_size": 32})
    return cfg, experiment.arms.compute(cfg, progress=False)


def assert_same_verdicts(a, b) -> None:
    """The same claims (effects, intervals, p-values, verdicts), sanity flags, choices and headline metrics."""
    for name in JUDGED:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_dtype=False)
    assert experiment.headline_metrics(a) == experiment.headline_metrics(b)
    assert experiment.verdict_text(a) == experiment.verdict_text(b)


def test_csv_round_trip_keeps_every_verdict(smoke):
    cfg, computed = smoke
    assert not set(computed.tables) & set(JUDGED)  # a table is computed or judged, never both
    direct = experiment.summary.judge(cfg, computed)
    assert len(direct.claims) > 2 and direct.sanity.converged.isna().any()  # booleans with gaps survive the CSV too
    assert_same_verdicts(direct, experiment.summary.judge(cfg, computed.roundtrip()))


def test_load_rebuilds_the_results_and_the_token_widget(smoke, tmp_path, monkeypatch):
    cfg, computed = smoke
    results = experiment.summary.judge(cfg, computed)
    monkeypatch.setenv("LABKIT_REPORT_DIR", str(tmp_path))
    report.record(cfg, metrics=experiment.headline_metrics(results),
                  tables={"claims": results.claims, "sanity": results.sanity}, computed=results.computed)
    assert (tmp_path / "artefacts.safetensors").stat().st_size < ARTEFACT_LIMIT_BYTES
    loaded = experiment.EXPERIMENT.load(tmp_path)
    assert loaded.config == cfg
    assert_same_verdicts(results, loaded)
    before = views.token_skip_map(results.model, results.examples, 0.2, example=1)
    after = views.token_skip_map(loaded.model, loaded.examples, 0.2, example=1)  # rebuilt from the stored state dict
    np.testing.assert_array_equal(before["importance"], after["importance"])
    np.testing.assert_array_equal(before["keep"], after["keep"])
    assert before["tokens"] == after["tokens"]
