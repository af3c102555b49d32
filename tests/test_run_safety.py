"""Runs that cannot corrupt each other: one writer per report folder, atomic replacement, and real ``kill -9``s.

The notebook runs ``tests/fixtures/held_run.py``, which waits while the test holds it, so a run can be killed or
raced at a known point. Tests marked ``notebook`` start real notebook kernels (several seconds each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from labkit import cli, runner, sweep
from labkit import index as reports_index

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
HOLD_DIR_ENV = "LABKIT_TEST_HOLD_DIR"



@pytest.fixture
def hold(tmp_path, monkeypatch):
    """The hold folder, seen by this process, its subprocesses, pool workers and kernels; the fixture module on
    every path."""
    folder = tmp_path / "hold"
    folder.mkdir()
    monkeypatch.setenv(HOLD_DIR_ENV, str(folder))
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURES), str(ROOT),
                                                                   os.environ.get("PYTHONPATH")])))
    yield folder
    sys.modules.pop("held_run", None)


@pytest.fixture
def notebook(tmp_path) -> Path:
    """A two-cell notebook for ``held_run``: parameters, then run and record (no labkit import in the kernel)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["labkit"] = {"experiment": "held_run"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('preset = "cpu"\noverrides = {}\nwidgets = False', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import held_run\n\ncfg = held_run.configure(preset, overrides)\n"
                                  "held_run.record(cfg, held_run.run(cfg))"),
    ]
    path = tmp_path / "held.ipynb"
    nbformat.write(nb, path)
    return path


def _complete_report(out: Path, notebook: Path, params: dict) -> str:
    """Lay out a finished report by hand (what ``run_notebook`` publishes) and return its inputs hash."""
    digest = runner.inputs_hash(notebook, "smoke", params)
    out.mkdir(parents=True)
    (out / notebook.name).write_bytes(notebook.read_bytes())
    (out / f"{notebook.stem}.html").write_text("<html></html>")
    meta = {"inputs_hash": digest, "status": "ok", "notebook": notebook.name, "preset": "smoke"}
    (out / "results.json").write_text(json.dumps({"params": params, "metrics": {}, "meta": meta}))
    return digest


def _leftovers(out: Path) -> list[str]:
    """Staging, set-aside and lock files of ``out`` still on disk."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


def _wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> str:
    """The text of ``path`` once it exists (the held run got there); fails early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before writing {path.name}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _labkit(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labkit.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _still_running(pids: list[int], timeout: float) -> list[int]:
    """The ``pids`` still alive (and not zombies) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_is_up_to_date_needs_a_complete_report(tmp_path, hold, notebook):
    out = tmp_path / "report"
    digest = _complete_report(out, notebook, {"seed": 0})
    assert runner.is_up_to_date(out, digest)
    assert not runner.is_up_to_date(out, "another hash")
    (out / "held.html").unlink()  # a report missing its HTML (or notebook) is not finished
    assert not runner.is_up_to_date(out, digest)
    (out / "held.html").write_text("<html></html>")
    (out / "held.ipynb").unlink()
    assert not runner.is_up_to_date(out, digest)
    (out / "results.json").write_text("{not json")
    assert not runner.is_up_to_date(out, digest)
    assert not runner.is_up_to_date(tmp_path / "missing", digest)


def test_a_locked_out_dir_fails_at_once_naming_the_holder(tmp_path, hold, notebook, capsys):
    out = tmp_path / "report"
    with runner.out_dir_lock(out) as lock:
        assert lock == tmp_path / "report.lock" and lock.read_text().strip() == str(os.getpid())
        with pytest.raises(runner.OutputLocked, match=rf"report folder {out} .*\(pid {os.getpid()}, lock"):
            runner.run_notebook(notebook, "smoke", out_dir=out)
        start = time.monotonic()
        with pytest.raises(runner.OutputLocked):
            runner.run_notebook(notebook, "smoke", out_dir=out, wait=0.5)
        assert time.monotonic() - start >= 0.5
        assert cli.main(["run", str(notebook), "--preset", "smoke", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"report folder {out} is being written by another run (pid {os.getpid()}" in err and "--wait" in err
    assert _leftovers(out) == [] and not out.exists()  # the lock file goes with its holder; nothing ran
    with runner.out_dir_lock(out):  # and the folder can be locked again
        pass


def test_recover_puts_back_a_report_moved_aside_and_cleans_stale_runs(tmp_path, hold, notebook):
    """The layout a run killed between its two renames leaves: no report, the old one aside, its staging."""
    out = tmp_path / "report"
    aside = tmp_path / "report.old-123-0123abcd"
    digest = _complete_report(aside, notebook, {"seed": 0})
    (tmp_path / "report.partial-123-89abcdef").mkdir()
    (tmp_path / "report.partial").mkdir()  # the fixed staging folder of earlier versions
    (tmp_path / "report.old-backup").mkdir()  # not a runner's folder: left alone
    assert not runner.is_up_to_date(out, digest)
    result = runner.run_notebook(notebook, "smoke", {"seed": 0}, out_dir=out, force=False)  # nothing to execute
    assert result.ok and result.skipped and runner.is_up_to_date(out, digest)
    assert _leftovers(out) == ["report.old-backup"]


def test_write_index_lists_only_committed_reports(tmp_path, notebook):
    reports = tmp_path / "reports"
    for folder in ("cpu", "cpu-cumsum", "smoke", "smoke-cumsum", "cpu.partial-1-0123abcd", "cpu.old-1-0123abcd",
                   "cpu.failed"):
        _complete_report(reports / "held" / folder, notebook, {})
    _complete_report(reports / "held" / "sweeps" / "cpu-0123456789", notebook, {})
    index = reports_index.write_index(reports).read_text()
    rows = [line for line in index.splitlines() if line.startswith("| [held]")]
    assert [row.split(" | ")[1] for row in rows] == ["cpu", "cpu-cumsum"]
    assert "Not yet under the protocol" in index and (reports / "index.html").is_file()


def test_index_lists_every_claim_of_reports_with_a_claims_table(tmp_path, notebook):
    reports = tmp_path / "reports"
    _complete_report(reports / "held" / "cpu", notebook, {})
    (reports / "held" / "cpu" / "tables").mkdir(exist_ok=True)
    pd.DataFrame({"claim": ["a_beats_b", "c_beats_d"], "text": ["x", "y"], "paper (reference)": ["-5 %", ""],
                  "effect": ["+3 % [+1, +5]", "-1 % [-4, +2]"], "n": [5, 5], "verdict": ["held", "inconclusive"],
                  "sanity": ["ok", "b not converged in 1/5 seeds"]}).to_csv(reports / "held" / "cpu" / "tables" /
                                                                           "claims.csv", index=False)
    index = reports_index.write_index(reports).read_text()  # a report made before protocol v2: no headline
    assert "| held | cpu | a_beats_b |  | -5 % | +3 % [+1, +5] | 5 |  |  | held | ok |" in index
    assert "c_beats_d" in (reports / "index.html").read_text() and "Not yet under the protocol" not in index
    pd.DataFrame({"claim": ["prem", "a_beats_b"], "role": ["premise", "main"], "text": ["soup beats ingredients", "x"],
                  "paper (reference)": ["", "-5 %"], "effect": ["-1 [-2, +0.5]", "+3 % [+1, +5]"], "mean": [-1, 3],
                  "low": [-2, 1], "high": [0.5, 5], "n": [5, 5], "tolerance": ["0", "0 %"],
                  "raw verdict": ["inconclusive", "held"], "verdict": ["inconclusive", "premise unconfirmed"],
                  "sanity": ["ok", "ok"]}).to_csv(reports / "held" / "cpu" / "tables" / "claims.csv", index=False)
    pd.DataFrame({"arm": ["soup", "ingredient"], "flags": ["soup not converged (seed 0: ...)", ""]}).to_csv(
        reports / "held" / "cpu" / "tables" / "sanity.csv", index=False)
    index = reports_index.write_index(reports).read_text()
    assert index.index("## Headlines") < index.index("## Every claim")
    assert "- Sanity — 1 failed check(s): soup not converged (seed 0: ...)." in index
    assert "- Premise — soup beats ingredients [prem]: unconfirmed (inconclusive): -1 [-2, +0.5] (n=5)." in index
    assert "- Claim — x [a_beats_b]: premise unconfirmed: +3 % [+1, +5] (n=5, raw held)." in index
    page = (reports / "index.html").read_text()
    assert page.index("labkit-headline") < page.index("Every claim and its verdict") and "data:image/png" in page
    pd.DataFrame({"claim": ["a"]}).to_csv(reports / "held" / "cpu" / "tables" / "claims.csv", index=False)
    with pytest.raises(ValueError, match="claims table lacks columns"):
        reports_index.write_index(reports)


@pytest.mark.notebook
def test_concurrent_runs_into_one_out_dir_fail_or_wait_and_publish_one_run(tmp_path, hold, notebook, capsys):
    """Run A (a real `labkit run`) holds the folder; B fails at once naming A's pid; C waits, then replaces A."""
    out = tmp_path / "report"
    (hold / "hold-1").touch()
    first = _labkit("run", str(notebook), "--preset", "smoke", "-p", "seed", "1", "--out", str(out))
    try:
        _wait_for(hold / "started-1", first)
        assert cli.main(["run", str(notebook), "--preset", "smoke", "-p", "seed", "2", "--out", str(out)]) == 1
        assert f"report folder {out} is being written by another run (pid {first.pid}" in capsys.readouterr().err
        threading.Timer(1.0, (hold / "hold-1").unlink).start()
        waited = runner.run_notebook(notebook, "smoke", {"seed": 3}, out_dir=out, progress=False, wait=120)
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        first.kill()
    assert waited.ok, waited.error
    results = json.loads((out / "results.json").read_text())
    assert results["params"] == {"seed": 3} and results["metrics"] == {"seed": 3.0, "value": 31.0}
    assert results["meta"]["inputs_hash"] == runner.inputs_hash(notebook, "smoke", {"seed": 3})
    assert runner.is_up_to_date(out, runner.inputs_hash(notebook, "smoke", {"seed": 3}))
    assert _leftovers(out) == []


@pytest.mark.notebook
def test_kill9_mid_run_keeps_the_old_report_and_the_next_run_cleans_up(tmp_path, hold, notebook):
    out = tmp_path / "report"
    old_digest = _complete_report(out, notebook, {"seed": 0})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (hold / "hold-1").touch()
    run = _labkit("run", str(notebook), "--preset", "smoke", "-p", "seed", "1", "--out", str(out))
    try:
        kernel = int(_wait_for(hold / "started-1", run))
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        run.kill()
    assert _still_running([kernel], timeout=10) == [], "the killed run's kernel is still running"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and runner.is_up_to_date(out, old_digest)
    assert [name.split("-")[0] for name in _leftovers(out)] == ["report.lock", "report.partial"]
    (hold / "hold-1").unlink()
    again = runner.run_notebook(notebook, "smoke", {"seed": 1}, out_dir=out, progress=False)
    assert again.ok, again.error
    assert json.loads((out / "results.json").read_text())["params"] == {"seed": 1}
    assert _leftovers(out) == []


KILL_BETWEEN_RENAMES = """
import json, os, shutil, signal, sys
from pathlib import Path
import papermill
from labkit import runner

def fake_execute(input_path, output_path, parameters, **kwargs):  # the notebook's output, without a kernel
    shutil.copy(input_path, output_path)
    results = {"params": parameters["overrides"], "metrics": {}, "meta": {}}
    Path(os.environ["LABKIT_REPORT_DIR"], "results.json").write_text(json.dumps(results))

rename = Path.rename
def rename_then_die_after_moving_the_old_report_aside(self, target):
    moved = rename(self, target)
    if ".old-" in Path(target).name:
        os.kill(os.getpid(), signal.SIGKILL)
    return moved

papermill.execute_notebook = fake_execute
Path.rename = rename_then_die_after_moving_the_old_report_aside
runner.run_notebook(sys.argv[1], "smoke", {"seed": 1}, out_dir=sys.argv[2], progress=False)
"""


def test_kill9_between_the_two_renames_leaves_the_old_report_recoverable(tmp_path, hold, notebook):
    """A real SIGKILL at the one point where no report folder exists: the next run puts the old one back."""
    out = tmp_path / "report"
    old_digest = _complete_report(out, notebook, {"seed": 0})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(notebook), str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and not runner.is_up_to_date(out, old_digest)
    kinds = [name.split("-")[0] for name in _leftovers(out)]
    assert kinds == ["report.lock", "report.old", "report.partial"]
    result = runner.run_notebook(notebook, "smoke", {"seed": 0}, out_dir=out, force=False)
    assert result.skipped and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(out) == []


@pytest.mark.notebook
def test_kill9_sweep_takes_its_workers_and_kernels_and_a_rerun_finishes_only_the_rest(tmp_path, hold, notebook):
    """Point seed=0 finishes, seed=1 is held; `labkit sweep` is killed: nothing of it keeps running, and the rerun
    reuses seed=0 and computes seed=1."""
    root = tmp_path / "sweeps"
    (hold / "hold-1").touch()
    args = ["sweep", str(notebook), "--preset", "smoke", "--grid", "seed=0,1", "--jobs", "1", "--out", str(root)]
    run = _labkit(*args)
    try:
        sweep_dir, points = sweep.plan(notebook, "smoke", {"seed": [0, 1]}, out_root=root)
        _wait_for(hold / "started-1", run)
        deadline = time.monotonic() + 90
        while not runner.is_up_to_date(points[0].out_dir, points[0].digest):
            assert time.monotonic() < deadline and run.poll() is None, "point seed=0 never finished"
            time.sleep(0.1)
        descendants = [p.pid for p in psutil.Process(run.pid).children(recursive=True)]
        assert len(descendants) >= 2  # the pool workers, and the held point's kernel
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        run.kill()
    assert _still_running(descendants, timeout=10) == [], "workers or kernels of the killed sweep still run"
    (hold / "hold-1").unlink()
    again = sweep.run_sweep(notebook, "smoke", {"seed": [0, 1]}, jobs=1, out_root=root, progress=False)
    assert again.sweep_dir == sweep_dir and again.failed == []
    assert {o["point"]: o["reused"] for o in again.outcomes} == {"seed=0": True, "seed=1": False}
    assert list(again.table["value"]) == [1.0, 11.0]
    assert _leftovers(points[1].out_dir) == []


FAILS_ON_SEED_2 = """import os
from pathlib import Path

import held_run

cfg = held_run.configure(preset, overrides)
if cfg.seed == 2:  # a point that fails in its own code: each run is counted
    with open(Path(os.environ["LABKIT_TEST_HOLD_DIR"]) / "runs-2", "a") as runs:
        runs.write("run\\n")
    raise ValueError("seed 2 fails in its own code")
held_run.record(cfg, held_run.run(cfg))"""


@pytest.fixture
def failing_notebook(tmp_path, notebook) -> Path:
    """``notebook`` whose point seed=2 raises in the notebook (a failure of the point itself, not of its worker)."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].source = FAILS_ON_SEED_2
    path = tmp_path / "fails_on_2.ipynb"
    nbformat.write(nb, path)
    return path


def _kill_a_worker_mid_sweep(hold: Path, notebook: Path, root: Path, engine: str) -> tuple[subprocess.Popen, list[int]]:
    """`labkit sweep` of seed=0,1,2 with two parallel runs: seed=0 and seed=1 are held, the worker process running
    seed=1 (its kernel's parent) is killed with SIGKILL, the points are let go once they run again; the finished
    sweep process and the pids of the killed worker and its kernel are returned."""
    for seed in (0, 1):
        (hold / f"hold-{seed}").touch()
    run = _labkit("sweep", str(notebook), "--preset", "smoke", "--grid", "seed=0,1,2", "--jobs", "2", "--engine",
                  engine, "--out", str(root))
    try:
        kernel = int(_wait_for(hold / "started-1", run, timeout=120))
        worker = psutil.Process(kernel).ppid()
        assert worker not in (run.pid, os.getpid()), "the kernel's parent must be the worker running the point"
        os.kill(worker, signal.SIGKILL)
        (hold / "started-1").unlink()
        assert int(_wait_for(hold / "started-1", run, timeout=120)) != kernel, "seed=1 never ran again"
        for seed in (0, 1):
            (hold / f"hold-{seed}").unlink()
        run.wait(timeout=120)
    finally:
        run.kill()
    return run, [worker, kernel]


def _check_the_sweep_survived(hold: Path, notebook: Path, root: Path, run: subprocess.Popen, killed: list[int]) -> str:
    """The sweep finished in one go: seed=0 and seed=1 computed, seed=2 failed once with its own error; its stdout."""
    out, err = run.stdout.read(), run.stderr.read()
    assert run.returncode == 1, err  # seed=2's own failure
    assert "labkit sweep: 3 points (0 reused, 1 failed)" in out, out + err
    assert "FAILED seed=2: ValueError: seed 2 fails in its own code" in err
    assert (hold / "runs-2").read_text() == "run\n", "a point failing in its own code must run once"
    assert _still_running(killed, timeout=10) == []
    sweep_dir, points = sweep.plan(notebook, "smoke", {"seed": [0, 1, 2]}, out_root=root)
    table = pd.read_csv(sweep_dir / sweep.TABLE_CSV)
    assert list(table["status"]) == ["ok", "ok", "failed"] and list(table["value"][:2]) == [1.0, 11.0]
    for point in points[:2]:
        assert runner.is_up_to_date(point.out_dir, point.digest) and _leftovers(point.out_dir) == []
    return out


@pytest.mark.notebook
def test_local_sweep_reruns_the_points_of_a_killed_pool_worker(tmp_path, hold, failing_notebook):
    root = tmp_path / "sweeps"
    run, killed = _kill_a_worker_mid_sweep(hold, failing_notebook, root, "local")
    out = _check_the_sweep_survived(hold, failing_notebook, root, run, killed)
    assert "seed=1: its worker died" in out and "running it again (1/2)" in out


@pytest.mark.notebook
def test_ray_sweep_retries_the_task_of_a_killed_worker(tmp_path, hold, failing_notebook):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'labkit[sweep]')")
    root = tmp_path / "sweeps"
    try:
        run, killed = _kill_a_worker_mid_sweep(hold, failing_notebook, root, "ray")
    except pytest.fail.Exception as err:  # the sweep exited before its first point started
        if "Ray did not start" not in str(err):
            raise
        # Ray's raylet gives its agents a fixed ~15 s to come up; a machine loaded far past its cores misses that
        pytest.skip(f"the local Ray node did not start in time on this loaded machine (twice): {err}")
    _check_the_sweep_survived(hold, failing_notebook, root, run, killed)


@pytest.mark.notebook
def test_a_pool_worker_that_keeps_dying_fails_its_point_after_the_retries(tmp_path, hold, notebook, monkeypatch):
    """Every run of seed=1 kills its own worker: the point fails after 1 + POINT_RETRIES runs, the others finish."""
    monkeypatch.setattr(sweep, "POINT_RETRIES", 1)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].source = ("import os, signal\n\nif overrides['seed'] == 1:\n"
                          "    os.kill(os.getppid(), signal.SIGKILL)  # the worker running this point\n"
                          "import held_run\n\ncfg = held_run.configure(preset, overrides)\n"
                          "held_run.record(cfg, held_run.run(cfg))")
    path = tmp_path / "kills_its_worker.ipynb"
    nbformat.write(nb, path)
    result = sweep.run_sweep(path, "smoke", {"seed": [0, 1, 2]}, jobs=1, out_root=tmp_path / "sweeps", progress=False)
    outcomes = {o["point"]: o for o in result.outcomes}
    assert [p for p, o in outcomes.items() if o["ok"]] == ["seed=0", "seed=2"]
    assert outcomes["seed=1"]["error"].startswith("worker died 2 times: BrokenProcessPool")


def test_html_report_hides_code_and_stderr(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("import secret_module\nprint('verdict: held')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="verdict: held\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="Loading weights: 100%|####|\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# Claim"), cell]
    nbformat.write(nb, tmp_path / "run.ipynb")
    runner.export_html(tmp_path / "run.ipynb", tmp_path / "run.html")
    page = (tmp_path / "run.html").read_text()
    assert "verdict: held" in page and "Claim" in page
    assert "secret_module" not in page and "Loading weights" not in page
