"""labkit.explorations: declared sweeps load, validate and run through labkit.sweep; explorations.md tables match
their CSVs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from labkit import cli, explorations, runner, sweep

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny_sweep.ipynb"
VALID = f"""
notebook = "{TINY}"
preset = "smoke"

[spread]
answers = "Does the sample mean move with sigma?"
fixed = {{ n = 20 }}
grid = {{ sigma = [0.5, 2.0] }}

[arms]
answers = "Two grids in one table."
grids = [{{ arm = ["plain"] }}, {{ arm = ["shifted"], seed = [1] }}]
"""


def _write(tmp_path: Path, text: str, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_valid_file_loads(tmp_path):
    declared = explorations.load_file(_write(tmp_path, VALID))
    assert sorted(declared) == ["arms", "spread"]
    spread = declared["spread"]
    assert (spread.paper, spread.preset, spread.fixed, spread.grids) == ("tiny", "smoke", {"n": 20},
                                                                          [{"sigma": [0.5, 2.0]}])
    assert declared["arms"].grids == [{"arm": ["plain"]}, {"arm": ["shifted"], "seed": [1]}]
    assert spread.out_dir == runner.REPORTS_DIR / "tiny" / "explorations" / "spread"


@pytest.mark.parametrize(
    "table, match",
    [
        ('answers = "q"\ngrid = { sigma = [1.0] }\ngird = 1', r"tiny.toml \[bad\]: unknown field\(s\) \['gird'\]"),
        ('grid = { sigma = [1.0] }', r"tiny.toml \[bad\]: field 'answers'"),
        ('answers = "q"', r"tiny.toml \[bad\]: give exactly one of 'grid'"),
        ('answers = "q"\ngrid = { sigma = [] }', r"tiny.toml \[bad\]: grid.sigma must be a non-empty list"),
        ('answers = "q"\ngrid = { sigma = 1.0 }', r"grid.sigma must be a non-empty list"),
        ('answers = "q"\ngrids = []', r"'grids' must hold at least one grid"),
        ('answers = "q"\nfixed = 3\ngrid = { sigma = [1.0] }', r"field 'fixed' must be a dict"),
    ],
)
def test_bad_field_names_file_exploration_and_field(tmp_path, table, match):
    with pytest.raises(explorations.ExplorationError, match=match):
        explorations.load_file(_write(tmp_path, f'notebook = "x"\n[bad]\n{table}\n'))


def test_bad_file_and_unknown_exploration(tmp_path):
    with pytest.raises(explorations.ExplorationError, match="tiny.toml: not valid TOML"):
        explorations.load_file(_write(tmp_path, "[a\n"))
    with pytest.raises(explorations.ExplorationError, match=r"unknown top-level key\(s\) \['presett'\]"):
        explorations.load_file(_write(tmp_path, 'presett = "cpu"\n'))
    _write(tmp_path, VALID)
    with pytest.raises(explorations.ExplorationError, match=r"no exploration 'nope' in tiny.toml; known: \['arms', "):
        explorations.find("tiny/nope", tmp_path)
    with pytest.raises(explorations.ExplorationError, match=r"no explorations for paper 'other'.*known: \['tiny'\]"):
        explorations.find("other/x", tmp_path)
    with pytest.raises(explorations.ExplorationError, match="must look like PAPER/NAME"):
        explorations.find("tiny", tmp_path)


@pytest.fixture()
def tiny_importable(monkeypatch):
    """The fixture notebook's experiment module importable here, in pool workers and in kernels."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURES), os.environ.get("PYTHONPATH")])))
    yield
    sys.modules.pop("tiny_sweep", None)


def test_unknown_parameter_is_caught_by_the_experiments_configure(tmp_path, tiny_importable):
    _write(tmp_path, VALID.replace("n = 20", "bogus = 20"))
    with pytest.raises(explorations.ExplorationError, match=r"tiny/spread point \{'sigma': 0.5\}: .*bogus"):
        explorations.check(explorations.find("tiny/spread", tmp_path))


def test_every_declared_exploration_configures():
    declared = explorations.load()
    assert {"cmixup", "dsir", "gateskip", "met2net", "sparse_soups"} <= set(declared)
    for papers in declared.values():
        for exploration in papers.values():
            explorations.check(exploration)


def test_declared_exploration_runs_end_to_end_through_the_sweep(tmp_path, tiny_importable, monkeypatch, capsys):
    _write(tmp_path, VALID.replace("[0.5, 2.0]", "[0.5]"))
    monkeypatch.setattr(explorations, "DECLARATIONS_DIR", tmp_path)
    out = tmp_path / "out"
    assert cli.main(["explore", "tiny/spread", "--out", str(out)]) == 0
    assert "1 points" in capsys.readouterr().out
    table = pd.read_csv(out / "table.csv")
    assert list(table["status"]) == ["ok"] and list(table["sigma"]) == [0.5] and list(table["n"]) == [20]
    assert (out / "sigma=0.5" / "results.json").is_file()


def test_several_grids_join_in_one_table_with_a_grid_column(tmp_path, tiny_importable, monkeypatch):
    calls = []

    def fake_sweep(notebook, preset, grid, fixed, *, out_root, name, **_):
        calls.append((Path(out_root) / name, grid))
        table = pd.DataFrame([{"point": name, "status": "ok", **{k: v[0] for k, v in grid.items()}}])
        return sweep.SweepResult(table, Path(out_root) / name, Path(), Path(), [])

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    exploration = explorations.load_file(_write(tmp_path, VALID))["arms"]
    out, results = explorations.run(exploration, out_dir=tmp_path / "arms")
    assert [c[0].name for c in calls] == ["grid-0", "grid-1"] and len(results) == 2
    table = pd.read_csv(out / "table.csv")
    assert list(table["grid"]) == [0, 1] and list(table["arm"]) == ["plain", "shifted"]


def test_markdown_tables_render_from_csv(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1.50,x|y\n")
    md = tmp_path / "e.md"
    md.write_text("prose\n<!-- table: t.csv -->\nold\n<!-- /table -->\nmore prose\n")
    assert explorations.stale_tables(md) == ["t.csv"]
    md.write_text(explorations.render_tables(md))
    assert md.read_text() == "prose\n<!-- table: t.csv -->\n| a | b |\n|---|---|\n| 1.50 | x\\|y |\n<!-- /table -->\n" \
                             "more prose\n"
    assert explorations.stale_tables(md) == []
    (tmp_path / "n.csv").write_text("k,x,s\n1000,0.123456,a\n20,,nan\n")
    md.write_text("<!-- table: n.csv digits=2 -->\n<!-- /table -->\n")
    assert explorations.render_tables(md) == ("<!-- table: n.csv digits=2 -->\n| k | x | s |\n|---|---|---|\n"
                                              "| 1000 | 0.12 | a |\n| 20 |  | nan |\n<!-- /table -->\n")


def _claims(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["claim", "role", "interval verdict", "verdict", "sanity"])


def test_recorded_premises_read_side_by_side_per_run(tmp_path, monkeypatch):
    _write(tmp_path, VALID)
    monkeypatch.setattr(runner, "REPORTS_DIR", tmp_path / "reports")
    runs = {
        "spread/sigma=0.5": [("p1", "premise", "held", "held", "ok"), ("p2", "premise", "held", "inconclusive", "x"),
                             ("c", "main", "inconclusive", "premise unconfirmed", "ok")],
        "spread/sigma=2.0": [("p1", "premise", "not held", "not held", "ok"),
                             ("c", "main", "held", "premise not met", "ok")],
        "arms/grid-0/arm=plain": [("p1", "premise", "held", "held", "ok"), ("c", "main", "held", "held", "ok")],
        "arms/grid-1/arm=shifted,seed=1": [("c", "main", "held", "held", "ok")],  # no premise: not met
        "spread/sigma=9.0": [("p1", "premise", "held", "held", "ok")],  # not a declared point: left out
    }
    for folder, rows in runs.items():
        tables = tmp_path / "reports" / "tiny" / "explorations" / folder / "tables"
        tables.mkdir(parents=True)
        _claims(rows).to_csv(tables / "claims.csv", index=False)
    (tmp_path / "reports" / "tiny" / "explorations" / "spread" / "old-driver").mkdir()  # no claims table: left out
    claims = explorations.recorded_claims("tiny", tmp_path)
    assert list(claims.columns[:2]) == ["exploration", "point"] and len(claims) == 8
    readings = explorations.premise_readings(claims).set_index("point")
    assert readings.loc["sigma=0.5", ["held", "inconclusive", "held by interval", "flagged"]].tolist() == [1, 1, 2, 1]
    assert readings.loc["sigma=0.5", "main claims read"] == "premise unconfirmed x1"
    assert readings.loc["sigma=2.0", ["not held", "main claims read"]].tolist() == [1, "premise not met x1"]
    assert readings.loc["grid-0/arm=plain", "exploration"] == "arms"
    assert readings["premise met"].tolist() == [True, False, False, False]  # arms: plain, shifted; spread: 0.5, 2.0
    nothing = explorations.recorded_claims("other", tmp_path)
    assert nothing.empty and explorations.premise_readings(nothing).empty
    with pytest.raises(explorations.ExplorationError, match="missing column"):
        explorations.premise_readings(claims.drop(columns="sanity"))


@pytest.mark.parametrize("markdown", sorted(runner.REPORTS_DIR.glob("*/explorations.md")), ids=lambda p: p.parent.name)
def test_committed_explorations_md_tables_match_their_csv(markdown):
    stale = explorations.stale_tables(markdown)
    assert not stale, f"{markdown}: tables differ from {stale}; run `labkit explore --render {markdown.parent.name}`"


def test_reports_hold_only_outputs():
    scripts = sorted(str(p.relative_to(runner.ROOT)) for p in runner.REPORTS_DIR.rglob("*.py"))
    assert not scripts, f"driver scripts in reports/ (declare them in labkit/experiments/explorations/): {scripts}"
