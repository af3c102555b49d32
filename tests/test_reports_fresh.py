"""Every committed report is up to date for its notebook: its recorded inputs hash is what the runner computes now.

A failure names the report and the command that regenerates it; commit the regenerated report with the change.
"""

from __future__ import annotations

import json

import pytest

from labkit import runner
from labkit.report import RESULTS_FILE

COMMITTED = sorted(p.parent for p in runner.REPORTS_DIR.glob(f"*/*/{RESULTS_FILE}")
                   if runner.is_committed_report(p.parent))


@pytest.mark.parametrize("folder", COMMITTED, ids=[f"{p.parent.name}/{p.name}" for p in COMMITTED])
def test_committed_report_is_not_stale(folder):
    notebook = runner.resolve_notebook(folder.parent.name)
    preset = json.loads((folder / RESULTS_FILE).read_text())["meta"]["preset"]
    variants = dict(runner.report_variants(notebook, preset))
    assert folder.name in variants, f"{folder} is no report variant of {notebook.name} [{preset}]: {sorted(variants)}"
    reason = runner.stale_reason(folder, runner.input_digests(notebook, preset, variants[folder.name]))
    assert not reason, (f"committed report {folder.relative_to(runner.ROOT)} is stale ({reason}); regenerate it with "
                        f"`labkit report --preset {preset} {notebook.stem}` (or `make report`) and commit it")


@pytest.mark.notebook
@pytest.mark.parametrize("folder", COMMITTED, ids=[f"{p.parent.name}/{p.name}" for p in COMMITTED])
def test_committed_report_re_judges_to_its_own_metrics(folder, tmp_path):
    """What a workshop runs (``reuse=True``: the notebook on the committed report's computed tables, in seconds)
    executes every cell of it and recomputes the headline metrics it recorded: every verdict comes from its tables."""
    notebook = runner.resolve_notebook(folder.parent.name)
    recorded = json.loads((folder / RESULTS_FILE).read_text())
    result = runner.run_notebook(notebook, recorded["meta"]["preset"], {"reuse": True}, out_dir=tmp_path / "judged",
                                 force=True, progress=False)
    assert result.ok, result.error
    judged = json.loads((tmp_path / "judged" / RESULTS_FILE).read_text())["metrics"]
    assert judged == recorded["metrics"], f"{folder}: re-judged metrics differ from the committed ones"
