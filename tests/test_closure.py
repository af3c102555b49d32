"""labkit.closure and the runner's inputs hash: only code a notebook can run makes its report stale."""

from __future__ import annotations

import json
from pathlib import Path

from labkit import closure, runner


def _package(root: Path) -> Path:
    """A fake ``labkit`` package: ``a`` imports ``b`` at top level and ``c`` inside a function; ``d`` is unrelated."""
    pkg = root / "labkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from labkit import b\nfrom . import e\n\ndef f():\n    import labkit.c\n")
    (pkg / "b.py").write_text("import numpy\nfrom labkit.sub.e import thing\n")
    (pkg / "c.py").write_text("X = 1\n")
    (pkg / "d.py").write_text("Y = 1\n")
    (pkg / "sub" / "e.py").write_text("thing = 1\n")
    return pkg


def _names(files: list[Path], pkg: Path) -> list[str]:
    return [str(f.relative_to(pkg)) for f in files]


def test_closure_follows_top_level_relative_and_function_imports(tmp_path):
    pkg = _package(tmp_path)
    files = closure.import_closure({"labkit.sub.a"}, pkg)
    assert _names(files, pkg) == ["__init__.py", "b.py", "c.py", "sub/__init__.py", "sub/a.py", "sub/e.py"]


def test_hash_ignores_modules_outside_the_closure_and_sees_those_inside(tmp_path):
    pkg = _package(tmp_path)

    def digest() -> str:
        return closure.source_hash(closure.import_closure({"labkit.sub.a"}, pkg), pkg)

    before = digest()
    (pkg / "d.py").write_text("Y = 2\n")
    assert digest() == before, "a module outside the closure changed the hash"
    (pkg / "c.py").write_text("X = 2\n")
    assert digest() != before, "a module imported inside a function did not change the hash"


def test_notebook_imports_skip_magics(tmp_path):
    nb = tmp_path / "x.ipynb"
    cells = [{"cell_type": "code", "source": ["%matplotlib inline\n", "from labkit import plots\n"]},
             {"cell_type": "markdown", "source": ["import labkit.merge"]},
             {"cell_type": "code", "source": ["%%bash\n", "echo hi there\n"]}]
    nb.write_text(json.dumps({"cells": cells, "metadata": {}}))
    assert closure.notebook_imports(nb) == {"labkit", "labkit.plots"}


def test_real_closure_of_profiling_leaves_out_unrelated_primitives():
    nb = runner.resolve_notebook("profiling")
    names = _names(closure.closure_files(runner.experiment_name(nb), nb), closure.PACKAGE_DIR)
    assert "experiments/profiling/arms.py" in names and "report.py" in names
    assert not {"merge.py", "select.py", "sweep.py", "runner.py"} & set(names)


def test_stale_reason_names_what_changed(tmp_path):
    nb = runner.resolve_notebook("profiling")
    out = tmp_path / "report"
    out.mkdir()
    digests = runner.input_digests(nb, "smoke", {})
    (out / nb.name).write_text("{}")
    (out / f"{nb.stem}.html").write_text("<html></html>")
    meta = {"inputs_hash": runner.inputs_hash(nb, "smoke", {}), "inputs": digests, "status": "ok", "notebook": nb.name}
    (out / "results.json").write_text(json.dumps({"meta": meta}))
    assert runner.stale_reason(out, runner.input_digests(nb, "smoke", {})) == ""
    assert runner.stale_reason(out, runner.input_digests(nb, "smoke", {"seed": 1})) == "preset or parameters changed"
    meta["inputs"] = {**digests, "code": "0" * 64}
    meta["inputs_hash"] = "old"
    (out / "results.json").write_text(json.dumps({"meta": meta}))
    reason = runner.stale_reason(out, runner.input_digests(nb, "smoke", {}))
    assert reason == "labkit code in its import closure changed"
