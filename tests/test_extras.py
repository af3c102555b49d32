"""Installs with any extras: a notebook whose experiment needs a missing extra is listed with the extra to install,
and running it fails at once with the same sentence. A missing package is simulated by hiding it
(``sys.modules[name] = None`` makes its import raise ``ModuleNotFoundError``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from labkit import cli, runner
from labkit import index as reports_index

ROOT = Path(__file__).resolve().parents[1]
NEEDS_DATA = 'notebook needs_scipy.ipynb needs the \'data\' extra (scipy is not installed): pip install -e ".[data]"'
EXPERIMENT = '''from dataclasses import dataclass
{imports}

@dataclass
class Config:
    seed: int = 0


PRESETS = {{"smoke": {{}}}}


def configure(preset, overrides=None):
    return Config(**(overrides or {{}}))
'''
HIDE_SCIPY_AND_RUN_CLI = ("import sys; sys.modules['scipy'] = None; from labkit import cli; "
                          "sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    """``notebooks/`` holding ``plain`` (numpy only) and ``needs_scipy`` (imports scipy), with scipy hidden."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, imports in (("plain", "import numpy"), ("needs_scipy", "from scipy import stats")):
        (tmp_path / f"{name}.py").write_text(EXPERIMENT.format(imports=imports))
        nb = nbformat.v4.new_notebook()
        nb.metadata["labkit"] = {"experiment": name}
        nbformat.write(nb, folder / f"{name}.ipynb")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", folder)
    monkeypatch.setitem(sys.modules, "scipy", None)
    yield folder
    for name in ("plain", "needs_scipy"):
        sys.modules.pop(name, None)


def test_each_extra_package_maps_to_its_extra():
    assert runner.extra_providing("scipy") == "data"
    assert runner.extra_providing("sklearn") == "data"  # scikit-learn, imported as sklearn
    assert runner.extra_providing("mnist1d") == "data"
    assert runner.extra_providing("papermill") == "notebooks"
    assert runner.extra_providing("ray") == "sweep"  # the first extra that has it (dev has it too)
    assert runner.extra_providing("data_selection") == "dev"
    assert runner.extra_providing("numpy") is None  # a core dependency
    assert runner.extra_providing("no_such_module") is None


def test_the_all_extra_combines_the_others_and_nothing_else():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["all"] == ["labkit[notebooks,data,sweep]"]
    assert {"notebooks", "data", "sweep", "dev"} <= set(extras)


def test_list_names_the_missing_extra_and_lists_every_notebook(notebooks, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"needs_scipy  (notebooks/needs_scipy.ipynb)\n  {NEEDS_DATA}\n" in out
    assert "plain  (notebooks/plain.ipynb)  presets: smoke\n  seed: int = 0" in out


def test_run_fails_at_once_with_the_same_sentence(notebooks, tmp_path, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    out = tmp_path / "reports"
    assert cli.main(["run", "needs_scipy", "--preset", "smoke", "--out", str(out / "smoke")]) == 2
    assert capsys.readouterr().err == f"labkit run: {NEEDS_DATA}\n"
    assert not out.exists()
    assert cli.main(["sweep", "needs_scipy", "--preset", "smoke", "--grid", "seed=0,1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"labkit sweep: {NEEDS_DATA}\n"
    assert not out.exists()


def test_report_reports_the_others_and_fails_naming_the_extra(notebooks, tmp_path, capsys, monkeypatch):
    made = []

    def fake_run(path, preset, params=None, out_dir=None, force=True, progress=True, wait=0.0, digests=None):
        made.append(path.stem)
        return runner.RunResult(path, out_dir, ok=True, wall_seconds=1.0)

    monkeypatch.setattr(runner, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(runner, "run_notebook", fake_run)
    monkeypatch.setattr(runner, "input_digests", lambda *args: {})
    monkeypatch.setattr(reports_index, "write_index", lambda: tmp_path / "README.md")
    assert cli.main(["report", "--preset", "smoke"]) == 1
    assert made == ["plain"]
    assert f"needs_scipy: FAILED: {NEEDS_DATA}\n" in capsys.readouterr().out


def test_a_command_missing_the_notebooks_extra_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", None)
    assert cli.main(["run", "profiling", "--preset", "smoke", "--out", str(tmp_path / "smoke")]) == 2
    err = capsys.readouterr().err
    assert err == ('labkit run: this command needs the \'notebooks\' extra (papermill is not installed): '
                   'pip install -e ".[notebooks]"\n')
    assert not list(tmp_path.iterdir()), "no report, staging folder or lock may be left"


def test_the_real_notebooks_without_scipy(tmp_path):
    """The issue's case: an install without the data extra lists all six notebooks and refuses to run cmixup."""
    listed = subprocess.run([sys.executable, "-c", HIDE_SCIPY_AND_RUN_CLI, "list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for path in runner.notebooks():
        assert f"\n{path.stem}  (notebooks/{path.name})" in f"\n{listed.stdout}"
    assert ('cmixup  (notebooks/cmixup.ipynb)\n  notebook cmixup.ipynb needs the \'data\' extra (scipy is not '
            'installed): pip install -e ".[data]"\n') in listed.stdout
    assert "profiling  (notebooks/profiling.ipynb)  presets: smoke, cpu, gpu" in listed.stdout
    run = subprocess.run([sys.executable, "-c", HIDE_SCIPY_AND_RUN_CLI, "run", "cmixup", "--preset", "smoke", "--out",
                          str(tmp_path / "smoke")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == ('labkit run: notebook cmixup.ipynb needs the \'data\' extra (scipy is not installed): '
                          'pip install -e ".[data]"\n')
    assert not list(tmp_path.iterdir())
