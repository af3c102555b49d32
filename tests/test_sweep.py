"""labkit sweep and compare: a tiny notebook swept over a 2x3 grid on a process pool and on local Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labkit import cli, compare, runner, sweep

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOK = FIXTURES / "tiny_sweep.ipynb"
GRID = {"seed": [0, 1], "sigma": [0.5, 2.0, -1.0]}  # sigma < 0 makes numpy raise: two failing points
DETERMINISTIC = ["point", "status", "seed", "sigma", "arm", "n", "mean", "std"]


@pytest.fixture(scope="module")
def fixture_path():
    """Make the fixture's experiment module importable here, in pool workers, Ray workers and kernels."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FIXTURES))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURES), os.environ.get("PYTHONPATH")])))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield
    sys.modules.pop("tiny_sweep", None)


@pytest.fixture(scope="module")
def module(fixture_path):
    return runner.experiment_module(NOTEBOOK)


@pytest.fixture(scope="module")
def local_sweep(fixture_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return sweep.run_sweep(NOTEBOOK, "smoke", GRID, engine="local", jobs=2, out_root=root, progress=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_grid_types_values_from_the_config(module):
    grid = sweep.parse_grid(module, ["seed=0,1,2", "sigma=0.5,2", "arm=plain,shifted"])
    assert grid == {"seed": [0, 1, 2], "sigma": [0.5, 2.0], "arm": ["plain", "shifted"]}
    assert all(isinstance(v, float) for v in grid["sigma"])
    assert sweep._split_values("[16,32],[64, 128]") == ["[16,32]", "[64, 128]"]


def test_expand_grid_is_the_product_in_order():
    points = sweep.expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[1] == {"a": 1, "b": "y"}
    assert sweep.point_name(points[0]) == "a=1,b=x"


@pytest.mark.parametrize(
    "specs, match",
    [
        (["bogus=1,2"],
         r"unknown grid parameter 'bogus'.*accepted: \['arm', 'n', 'reuse', 'seed', 'sigma', 'widgets'\]"),
        ([], "empty grid"),
        (["sigma="], "empty grid: grid parameter 'sigma' has no values"),
        (["seed=0", "seed=1"], "given twice"),
        (["preset=smoke,cpu"], "--preset"),
        (["seed=zero"], "parameter 'seed' expects int, got 'zero'"),
        (["sigma"], "must look like NAME=V1,V2"),
    ],
)
def test_bad_grid_fails_before_any_run(module, specs, match):
    with pytest.raises(sweep.SweepError, match=match):
        sweep.parse_grid(module, specs)


def test_bad_input_to_run_sweep_starts_nothing(fixture_path, tmp_path):
    with pytest.raises(sweep.SweepError, match="unknown parameter"):
        sweep.run_sweep(NOTEBOOK, "smoke", {"bogus": [1]}, out_root=tmp_path, progress=False)
    with pytest.raises(sweep.SweepError, match="empty grid"):
        sweep.run_sweep(NOTEBOOK, "smoke", {"seed": []}, out_root=tmp_path, progress=False)
    with pytest.raises(sweep.SweepError, match="unknown engine 'dask'"):
        sweep.run_sweep(NOTEBOOK, "smoke", {"seed": [0]}, engine="dask", out_root=tmp_path, progress=False)
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(sweep.SweepError, match=f"Ray address '{address}' is unreachable|needs Ray"):
        sweep.run_sweep(NOTEBOOK, "smoke", {"seed": [0]}, engine="ray", address=address, out_root=tmp_path)
    assert not list(tmp_path.iterdir()), "nothing may be written before the sweep is known to be valid"


def test_cli_sweep_reports_bad_grid(fixture_path, tmp_path, capsys):
    code = cli.main(["sweep", str(NOTEBOOK), "--preset", "smoke", "--grid", "bogus=1", "--out", str(tmp_path)])
    assert code == 2 and "unknown grid parameter 'bogus'" in capsys.readouterr().err
    code = cli.main(["sweep", str(NOTEBOOK), "--preset", "smoke", "--out", str(tmp_path)])
    assert code == 2 and "empty grid" in capsys.readouterr().err


def test_local_sweep_records_failures_and_completes_the_rest(local_sweep):
    table = local_sweep.table
    assert len(table) == 6 and set(table["status"]) == {"ok", "failed"}
    failed = table[table["status"] == "failed"]
    assert sorted(failed["point"]) == ["seed=0,sigma=-1.0", "seed=1,sigma=-1.0"]
    assert failed["error"].str.contains("scale < 0").all()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 4 and ok["mean"].notna().all() and not ok["reused"].any()
    assert {"meta.wall_seconds", "meta.torch", "meta.host", "meta.inputs_hash"} <= set(table.columns)
    for column in ("seed", "sigma", "n"):  # params from results.json, typed
        assert pd.api.types.is_numeric_dtype(table[column])
    # both files are there and agree; the parquet keeps the same rows
    assert pd.read_parquet(local_sweep.parquet_path)[DETERMINISTIC].equals(table[DETERMINISTIC])
    assert len(pd.read_csv(local_sweep.csv_path)) == 6
    manifest = json.loads((local_sweep.sweep_dir / sweep.MANIFEST).read_text())
    assert manifest["threads_per_job"] == sweep.threads_per_job(2) and len(manifest["points"]) == 6
    # the numbers are the experiment's own
    row = ok.set_index("point").loc["seed=1,sigma=2.0"]
    x = np.random.default_rng(1).normal(0.0, 2.0, 50)
    assert row["mean"] == pytest.approx(x.mean(), abs=1e-12) and row["n"] == 50


def test_rerun_skips_finished_points(local_sweep):
    results = {p: (local_sweep.sweep_dir / p / "results.json") for p in local_sweep.table["point"]}
    stamps = {p: r.stat().st_mtime_ns for p, r in results.items() if r.is_file()}
    again = sweep.run_sweep(
        NOTEBOOK, "smoke", GRID, engine="local", jobs=2, out_root=local_sweep.sweep_dir.parent, progress=False
    )
    assert again.sweep_dir == local_sweep.sweep_dir
    reused = {o["point"] for o in again.outcomes if o["reused"]}
    assert reused == set(stamps) and len(reused) == 4
    assert {o["point"] for o in again.failed} == {"seed=0,sigma=-1.0", "seed=1,sigma=-1.0"}  # failures are retried
    assert all(results[p].stat().st_mtime_ns == t for p, t in stamps.items())
    assert again.table[DETERMINISTIC].equals(local_sweep.table[DETERMINISTIC])


def test_ray_sweep_gives_the_same_table(local_sweep, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'labkit[sweep]')")
    try:
        result = sweep.run_sweep(NOTEBOOK, "smoke", GRID, engine="ray", jobs=2, out_root=tmp_path, progress=False)
    except sweep.SweepError as err:
        if "Ray did not start" not in str(err):
            raise
        # Ray's raylet gives its agents a fixed ~15 s to come up; a machine loaded far past its cores misses that
        pytest.skip(f"the local Ray node did not start in time on this loaded machine (twice): {err}")
    pd.testing.assert_frame_equal(result.table[DETERMINISTIC], local_sweep.table[DETERMINISTIC])
    assert len(result.failed) == 2


NO_MAIN_GUARD = """import sys
from labkit import sweep
try:
    sweep.run_sweep(sys.argv[1], "smoke", {"seed": [0]}, jobs=1, out_root=sys.argv[2], progress=False)
except sweep.SweepError as err:
    print(err)
    sys.exit(3)
"""


def test_a_script_without_main_guard_fails_with_the_fix(fixture_path, tmp_path):
    """Spawned workers import the calling script; without `if __name__ == '__main__':` each dies as it starts."""
    script = tmp_path / "no_guard.py"
    script.write_text(NO_MAIN_GUARD)
    result = subprocess.run([sys.executable, str(script), str(NOTEBOOK), str(tmp_path / "sweeps")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "worker processes die as they start" in result.stdout and "if __name__ == '__main__':" in result.stdout


def _two_arm_table() -> pd.DataFrame:
    rows = []
    for seed in range(4):
        for sigma in (0.5, 1.0, 2.0):
            base = sigma + 0.1 * seed
            rows += [
                {"seed": seed, "sigma": sigma, "arm": "plain", "loss": base, "status": "ok"},
                {"seed": seed, "sigma": sigma, "arm": "shifted", "loss": base + 0.5, "status": "ok"},
            ]
    rows.append({"seed": 9, "sigma": 1.0, "arm": "plain", "loss": np.nan, "status": "failed"})
    return pd.DataFrame(rows)


def test_compare_pairs_arms_on_seed(tmp_path):
    table = _two_arm_table()
    diffs = compare.paired_differences(table[table.status == "ok"], "sigma", "loss", "arm", "plain", ["seed"])
    assert len(diffs) == 3
    np.testing.assert_allclose(diffs["mean_diff"], 0.5, atol=1e-12)
    np.testing.assert_allclose(diffs["high"] - diffs["low"], 0.0, atol=1e-12)  # the seed spread cancels exactly
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    png, summary = compare.compare(path, x="sigma", y="loss", by="arm")
    assert png.is_file() and png.stat().st_size > 0 and png.parent == tmp_path
    assert set(summary["n"]) == {4}  # the failed row is left out
    with pytest.raises(KeyError, match=r"--y 'acc' is not a column.*'loss'"):
        compare.compare(path, x="sigma", y="acc")
    with pytest.raises(ValueError, match="reference arm 'nope'"):
        compare.compare_figure(compare.load_table(path), "sigma", "loss", by="arm", ref="nope")


def test_cli_compare_on_a_sweep_table(local_sweep, tmp_path, capsys):
    out = tmp_path / "fig.png"
    code = cli.main(["compare", str(local_sweep.parquet_path), "--x", "sigma", "--y", "mean", "--out", str(out)])
    assert code == 0 and out.is_file()
    assert "figure ->" in capsys.readouterr().out


def test_sweep_checks_every_point_with_the_experiments_configure(tmp_path):
    """A value configure rejects fails the whole sweep before anything runs, naming the parameter."""
    with pytest.raises(runner.ParameterError, match=r"seq_lens"):
        sweep.plan("profiling", "smoke", {"seq_lens": [[64], [-1]]}, out_root=tmp_path)
    assert not list(tmp_path.iterdir())
