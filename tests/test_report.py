import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from labkit import report


@dataclass
class Tiny:
    seeds: int = 3
    lr: float = 0.1


def test_record_writes_results_and_tables_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(report.REPORT_DIR_ENV, str(tmp_path))
    table = pd.DataFrame({"seed": [0, 1], "loss": [0.5, np.float32(0.25)]})
    results = report.record(Tiny(), metrics={"loss": np.float64(0.375), "n": 2}, tables={"runs": table},
                            claim="c", held="h", timings={"seconds": 1.5})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results, sort_keys=True))
    assert on_disk["params"] == {"seeds": 3, "lr": 0.1}
    assert on_disk["tables"]["runs"][1] == {"seed": 1, "loss": 0.25}
    assert on_disk["meta"]["timings"] == {"seconds": 1.5} and "seconds" not in on_disk["metrics"]
    assert (tmp_path / "tables" / "runs.csv").read_text().startswith("seed,loss")
    assert not list(tmp_path.glob(".*tmp"))


def test_record_without_runner_only_returns(monkeypatch, tmp_path):
    monkeypatch.delenv(report.REPORT_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert report.record(Tiny(), metrics={"a": 1.0})["metrics"] == {"a": 1.0}
    assert not list(tmp_path.iterdir())


def test_record_rejects_non_numbers_and_non_tables():
    with pytest.raises(TypeError, match="metric 'a' must be a number"):
        report.record(Tiny(), metrics={"a": "high"})
    with pytest.raises(TypeError, match="table 't' must be a pandas DataFrame"):
        report.record(Tiny(), metrics={}, tables={"t": [1, 2]})


def test_non_finite_metrics_become_null():
    assert report.to_jsonable({"x": float("nan"), "y": [np.inf, 1.0]}) == {"x": None, "y": [None, 1.0]}
