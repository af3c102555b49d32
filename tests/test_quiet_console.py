"""A quiet console: ``labkit report``, ``sweep`` and ``run`` print progress and results, not the kernel process's own
output (ipykernel's log, torch profiler's "USDT ... profiler_start" lines), and ``labkit report`` one status line per
report. The notebook here makes that noise for real: it runs torch's profiler, writes a C-level line to its stderr
and logs through the kernel app's logger exactly as ipykernel does when jupyter_client interrupts it on shutdown.
Tests marked ``notebook`` start real notebook kernels (a few seconds each).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import cli, runner
from labkit import index as reports_index

C_LEVEL_LINE = "C-level stderr line of the kernel"
NOISE = ("USDT", "profiler_start", "KeyboardInterrupt caught in kernel", "IPKernelApp", C_LEVEL_LINE)
EXPERIMENT = '''"""Noise on the kernel process's stderr, then a results.json as labkit.report.record writes it."""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    seed: int = 0
    fail: bool = False  # raise after making the noise


PRESETS = {"smoke": {}}


def configure(preset, overrides=None):
    return dataclasses.replace(Config(), **{**PRESETS[preset], **(overrides or {})})


def record(cfg):
    results = {"params": dataclasses.asdict(cfg), "metrics": {"seed": cfg.seed}, "meta": {}}
    (Path(os.environ["LABKIT_REPORT_DIR"]) / "results.json").write_text(json.dumps(results))
'''
NOISY_CELL = f'''import os

import torch
from ipykernel.kernelapp import IPKernelApp

import noisy

cfg = noisy.configure(preset, overrides)
with torch.profiler.profile():  # torch's "USDT ... profiler_start" / "profiler_stop" lines
    torch.ones(4).sum()
os.write(2, b"{C_LEVEL_LINE}\\n")  # as a C extension writes: ipykernel echoes it to its process stderr
IPKernelApp.instance().log.error("KeyboardInterrupt caught in kernel")  # as on shutdown's interrupt
print("a result the notebook prints")'''
LAST_CELL = '''if cfg.fail:
    raise RuntimeError("failing on purpose")
noisy.record(cfg)'''


@pytest.fixture
def notebook(tmp_path, monkeypatch) -> Path:
    """``noisy.ipynb`` and its experiment ``noisy``, importable here, in pool workers and in kernels."""
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "noisy.py").write_text(EXPERIMENT)
    nb = nbformat.v4.new_notebook()
    nb.metadata["labkit"] = {"experiment": "noisy"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('preset = "cpu"\noverrides = {}\nwidgets = False', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(NOISY_CELL),
        nbformat.v4.new_code_cell(LAST_CELL),
    ]
    path = folder / "noisy.ipynb"
    nbformat.write(nb, path)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(runner, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(reports_index, "write_index", lambda: tmp_path / "reports" / "README.md")
    yield path
    sys.modules.pop("noisy", None)


def _assert_quiet(console: str) -> None:
    noise = [line for line in console.splitlines() if any(n in line for n in NOISE)]
    assert not noise, f"kernel noise reached the console: {noise}"


@pytest.mark.notebook
def test_report_prints_one_status_line_per_report_and_no_kernel_noise(notebook, capfd):
    assert cli.main(["report", "--preset", "smoke", str(notebook)]) == 0
    out, err = capfd.readouterr()
    _assert_quiet(out + err)
    lines = [line for line in out.splitlines() if line.startswith("noisy:")]
    assert len(lines) == 1 and lines[0].startswith(f"noisy: stale (no readable {runner.RESULTS_FILE}), rerun: ok (")
    report = runner.REPORTS_DIR / "noisy" / "smoke"
    assert runner.KERNEL_LOG not in {p.name for p in report.iterdir()}, "a published report carries no kernel log"

    assert cli.main(["report", "--preset", "smoke", str(notebook)]) == 0
    out, err = capfd.readouterr()
    _assert_quiet(out + err)
    assert [line for line in out.splitlines() if line.startswith("noisy:")] == ["noisy: up to date, kept"]


@pytest.mark.notebook
def test_sweep_prints_progress_and_results_only(notebook, tmp_path, capfd):
    assert cli.main(["sweep", str(notebook), "--preset", "smoke", "--grid", "seed=0,1", "--jobs", "1", "--out",
                     str(tmp_path / "sweeps")]) == 0
    out, err = capfd.readouterr()
    _assert_quiet(out + err)
    assert "labkit sweep: 2 points (0 reused, 0 failed)" in out


@pytest.mark.notebook
def test_a_failed_run_keeps_the_kernel_log_beside_its_partial_notebook(notebook, tmp_path, capfd):
    out = tmp_path / "report"
    assert cli.main(["run", str(notebook), "--preset", "smoke", "-p", "fail", "true", "--out", str(out)]) == 1
    console_out, console_err = capfd.readouterr()
    assert "failing on purpose" in console_err
    _assert_quiet(console_out + console_err)
    log = tmp_path / "report.failed" / runner.KERNEL_LOG
    assert f"the kernel process's own output: {log}" in console_err
    text = log.read_text()
    assert C_LEVEL_LINE in text and "KeyboardInterrupt caught in kernel" in text
