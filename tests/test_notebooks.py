"""Every notebook under notebooks/ runs with its smoke preset through the runner users call (once per session)."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

import nbformat
import pytest

from labkit import runner

NOTEBOOKS = runner.notebooks()
IDS = [p.stem for p in NOTEBOOKS]
PINS = tomllib.loads((Path(__file__).parent / "smoke_pins.toml").read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run a notebook with the smoke preset once and hand the result to every test that asks for it."""
    done: dict = {}

    def get(path):
        if path not in done:
            out = tmp_path_factory.mktemp(path.stem) / "smoke"
            done[path] = runner.run_notebook(path, "smoke", out_dir=out, progress=False)
        return done[path]

    return get


def _results(result) -> dict:
    return json.loads((result.out_dir / "results.json").read_text())


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_smoke_preset(path, smoke_run):
    result = smoke_run(path)
    assert result.ok, result.error
    results = _results(result)
    assert results["metrics"], "the notebook recorded no metrics"
    assert results["claim"] and results["held"], "the notebook must state its claim and what held"
    assert results["meta"]["preset"] == "smoke" and results["meta"]["status"] == "ok"
    assert {"labkit_git_sha", "torch", "transformers", "device", "threads", "wall_seconds",
            "kernel_cpu_seconds"} <= set(results["meta"])
    assert (result.out_dir / f"{path.stem}.html").stat().st_size > 0
    figures = sorted((result.out_dir / "figures").glob("*.png"))
    assert figures, "every notebook draws at least one static figure"
    executed = nbformat.read(result.out_dir / path.name, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(figures), "figures must show statically"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_deterministic(path, smoke_run, tmp_path):
    """Same preset and seed, same params, metrics and tables (timings live in meta and are excluded)."""
    first = smoke_run(path)
    assert first.ok, first.error
    second = runner.run_notebook(path, "smoke", out_dir=tmp_path / "again", progress=False)
    assert second.ok, second.error
    a, b = _results(first), _results(second)
    for key in ("params", "metrics", "tables", "held"):
        assert a[key] == b[key], f"{path.name}: {key} differ between two identical runs"


@pytest.mark.notebook
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in PINS], ids=[i for i in IDS if i in PINS])
def test_smoke_headline_metrics_are_pinned(path, smoke_run):
    """The smoke preset's headline metrics match tests/smoke_pins.toml, so a change that flips a result fails CI
    (regenerate deliberately with scripts/pin_smoke.py)."""
    result = smoke_run(path)
    assert result.ok, result.error
    metrics, pins = _results(result)["metrics"], PINS[path.stem]
    moved = {k: (v, metrics.get(k)) for k, v in pins["metrics"].items()
             if metrics.get(k) is None or metrics[k] != pytest.approx(v, rel=pins["rel"], abs=1e-9)}
    assert not moved, f"{path.name}: smoke metrics moved from their pins (pinned, now): {moved}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path):
    """No outputs in git, a `parameters` cell of literals only, and the summary/verdict structure."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [c for c in code if c.get("outputs") or c.get("execution_count")], "strip outputs (nbstripout)"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    names = set()
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(node.value)  # raises if a value is not a literal
        names |= {t.id for t in node.targets}
    assert {"preset", "overrides", "widgets"} <= names
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
