"""Explorations: declared sweeps beyond the presets, run by ``labkit explore`` into ``reports/<paper>/explorations/``.

An exploration is data, not a script: one TOML file per paper in ``labkit/experiments/explorations/<paper>.toml``
names the notebook and preset, then one table per exploration::

    notebook = "cmixup"        # the notebook (and its experiment module) every exploration here runs
    preset = "cpu"             # the preset they start from (an exploration may set its own)

    [cigar_ood]
    answers = "Does C-Mixup beat ERM out of distribution on the Cigar state split?"
    fixed = { datasets = ["cigar"], arms = ["erm", "cmixup"] }
    grid = { seeds = [5] }     # a product grid; or grids = [{...}, {...}], several grids in one table

Each runs through ``labkit.sweep`` into ``reports/<paper>/explorations/<name>/`` (one folder per grid point and the
tidy ``table.csv``). ``explorations.md`` beside it is prose with tables rendered from those CSVs between
``<!-- table: <file> -->`` and ``<!-- /table -->``, checked by the tests and re-rendered by ``labkit explore --render``.
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from labkit import runner, sweep

DECLARATIONS_DIR = Path(__file__).resolve().parent / "experiments" / "explorations"
FILE_KEYS = {"notebook", "preset"}  # top-level keys of a declaration file; every table is an exploration
FIELDS = {"answers": str, "preset": str, "fixed": dict, "grid": dict, "grids": list, "note": str}
TABLE_MARKER = re.compile(r"<!-- table: (?P<file>[^ ]+)(?: digits=(?P<digits>\d+))? -->\n.*?<!-- /table -->", re.DOTALL)


class ExplorationError(ValueError):
    """A declaration file, exploration or field that is missing or malformed."""


@dataclass
class Exploration:
    """One declared sweep: what it answers, the notebook and preset it runs, fixed parameters and its grids."""

    paper: str
    name: str
    notebook: str
    preset: str
    answers: str
    fixed: dict[str, Any] = field(default_factory=dict)
    grids: list[dict[str, list[Any]]] = field(default_factory=list)
    note: str = ""  # what the declaration cannot express (e.g. a timing probe), or how the old runs differ

    @property
    def out_dir(self) -> Path:
        """``reports/<paper>/explorations/<name>/``."""
        return runner.REPORTS_DIR / self.paper / "explorations" / self.name


def _error(path: Path, name: str | None, message: str) -> ExplorationError:
    where = f"{path.name}" + (f" [{name}]" if name else "")
    return ExplorationError(f"{where}: {message}")


def _grid(path: Path, name: str, grid: Any, label: str) -> dict[str, list[Any]]:
    """A grid table: every value a non-empty list."""
    if not isinstance(grid, Mapping) or not grid:
        raise _error(path, name, f"{label} must be a non-empty table of NAME = [values], got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _error(path, name, f"{label}.{key} must be a non-empty list of values, got {values!r}")
    return {k: list(v) for k, v in grid.items()}


def _exploration(path: Path, paper: str, notebook: str, preset: str, name: str, table: Any) -> Exploration:
    """One exploration from its TOML table, with the field types and the grid/grids choice checked."""
    if not isinstance(table, Mapping):
        raise _error(path, name, f"expected a table of {sorted(FIELDS)}, got {table!r}")
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise _error(path, name, f"unknown field(s) {unknown}; expected some of {sorted(FIELDS)}")
    for key, tp in FIELDS.items():
        if key in table and not isinstance(table[key], tp):
            raise _error(path, name, f"field {key!r} must be a {tp.__name__}, got {table[key]!r}")
    if not table.get("answers", "").strip():
        raise _error(path, name, "field 'answers' (the one-line question it answers) is required")
    if ("grid" in table) == ("grids" in table):
        raise _error(path, name, "give exactly one of 'grid' (a table) or 'grids' (a list of tables)")
    grids = [table["grid"]] if "grid" in table else table["grids"]
    checked = [_grid(path, name, g, "grid" if "grid" in table else f"grids[{i}]") for i, g in enumerate(grids)]
    if not checked:
        raise _error(path, name, "'grids' must hold at least one grid")
    return Exploration(paper, name, notebook, table.get("preset", preset), table["answers"].strip(),
                       dict(table.get("fixed", {})), checked, table.get("note", "").strip())


def load_file(path: Path) -> dict[str, Exploration]:
    """The explorations declared in one ``<paper>.toml``, validated (errors name the file, exploration and field).

    Parameter names and values are checked later by the experiment's ``configure`` (``check``), so a declaration
    cannot drift from the Config it sweeps.
    """
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise _error(path, None, f"not valid TOML: {err}") from None
    paper = path.stem
    notebook = data.get("notebook", paper)
    preset = data.get("preset", "cpu")
    if not isinstance(notebook, str) or not isinstance(preset, str):
        raise _error(path, None, f"'notebook' and 'preset' must be strings, got {notebook!r} and {preset!r}")
    stray = sorted(k for k, v in data.items() if k not in FILE_KEYS and not isinstance(v, Mapping))
    if stray:
        raise _error(path, None, f"unknown top-level key(s) {stray}; expected {sorted(FILE_KEYS)} and one table per "
                                 "exploration")
    return {name: _exploration(path, paper, notebook, preset, name, table)
            for name, table in data.items() if name not in FILE_KEYS}


def load(directory: Path | None = None) -> dict[str, dict[str, Exploration]]:
    """Every paper's explorations: ``{paper: {name: Exploration}}`` (default: ``DECLARATIONS_DIR``)."""
    directory = directory or DECLARATIONS_DIR
    return {path.stem: load_file(path) for path in sorted(directory.glob("*.toml"))}


def find(spec: str, directory: Path | None = None) -> Exploration:
    """The exploration ``<paper>/<name>``; unknown papers or names list the declared ones."""
    directory = directory or DECLARATIONS_DIR
    paper, sep, name = spec.partition("/")
    if not sep or not paper or not name:
        raise ExplorationError(f"exploration {spec!r} must look like PAPER/NAME, e.g. cmixup/cigar_ood")
    path = directory / f"{paper}.toml"
    if not path.is_file():
        raise ExplorationError(f"no explorations for paper {paper!r} ({path}); known: "
                               f"{sorted(p.stem for p in directory.glob('*.toml'))}")
    declared = load_file(path)
    if name not in declared:
        raise ExplorationError(f"no exploration {name!r} in {path.name}; known: {sorted(declared)}")
    return declared[name]


def check(exploration: Exploration) -> None:
    """Configure every grid point with the experiment (unknown names and bad values raise, naming the exploration)
    without running anything."""
    notebook = runner.resolve_notebook(exploration.notebook)
    for grid in exploration.grids:
        for point in sweep.expand_grid(grid):
            try:
                runner.check_params(notebook, exploration.preset, {**exploration.fixed, **point})
            except runner.ParameterError as err:
                raise ExplorationError(f"{exploration.paper}/{exploration.name} point {point}: {err}") from err


def grid_dir(exploration: Exploration, index: int, out: Path | None = None) -> Path:
    """Where grid ``index`` of ``exploration`` is written under ``out`` (default its ``out_dir``): ``out`` itself
    with one grid, ``out/grid-<index>`` with several."""
    out = Path(out) if out is not None else exploration.out_dir
    return out / f"grid-{index}" if len(exploration.grids) > 1 else out


def run(exploration: Exploration, *, engine: str = "local", jobs: int | None = None, address: str | None = None,
        out_dir: Path | None = None, progress: bool = True) -> tuple[Path, list[sweep.SweepResult]]:
    """Run an exploration through ``labkit.sweep`` into ``out_dir`` (default its ``out_dir``) and write one tidy
    ``table.csv`` there: all grids' rows, with a ``grid`` column when there are several."""
    check(exploration)
    out = Path(out_dir) if out_dir is not None else exploration.out_dir
    results = []
    for index, grid in enumerate(exploration.grids):
        folder = grid_dir(exploration, index, out)
        results.append(sweep.run_sweep(exploration.notebook, exploration.preset, grid, exploration.fixed,
                                       engine=engine, jobs=jobs, address=address, out_root=folder.parent,
                                       name=folder.name, progress=progress))
    if len(results) > 1:
        table = pd.concat([r.table.assign(grid=i) for i, r in enumerate(results)], ignore_index=True)
        sweep.write_table(out, table.to_dict("records"))
    return out, results


CLAIM_COLUMNS = ["claim", "role", "interval verdict", "verdict", "sanity"]  # what premise_readings reads


def point_dirs(exploration: Exploration) -> list[Path]:
    """The folder of every declared grid point, where :func:`run` writes it (:func:`grid_dir`)."""
    return [grid_dir(exploration, i) / sweep.point_name(values)
            for i, grid in enumerate(exploration.grids) for values in sweep.expand_grid(grid)]


def recorded_claims(paper: str, directory: Path | None = None) -> pd.DataFrame:
    """Every claims table that ``paper``'s declared explorations recorded, one per declared grid point, stacked: the
    columns ``exploration`` and ``point`` (the point's folder under the exploration's), then the table as that point's
    report wrote it. Points without a ``tables/claims.csv`` (not run, unfinished, or run by an older driver) are left
    out; with none, an empty frame with the columns :func:`premise_readings` reads."""
    frames = []
    for name, exploration in sorted(load(directory).get(paper, {}).items()):
        for folder in point_dirs(exploration):
            if (folder / "tables" / "claims.csv").is_file():
                frames.append(pd.read_csv(folder / "tables" / "claims.csv").assign(
                    exploration=name, point=folder.relative_to(exploration.out_dir).as_posix()))
    if not frames:
        return pd.DataFrame(columns=["exploration", "point", *CLAIM_COLUMNS])
    table = pd.concat(frames, ignore_index=True)
    return table[["exploration", "point", *[c for c in table.columns if c not in ("exploration", "point")]]]


def premise_readings(claims: pd.DataFrame) -> pd.DataFrame:
    """Per recorded run (``exploration``, ``point``) of :func:`recorded_claims`: how many premises held, were
    inconclusive or not held, how many held by their interval alone and how many a sanity check flagged, whether the
    premise was met (the run has premises and every one held), and the final verdicts of its main claims (what
    :func:`labkit.protocol.conclude` made of those premises), so the regimes searched read side by side."""
    if missing := sorted({"exploration", "point", *CLAIM_COLUMNS} - set(claims.columns)):
        raise ExplorationError(f"premise_readings needs a recorded_claims table; missing column(s) {missing}")
    rows = []
    for (name, point), run in claims.groupby(["exploration", "point"], sort=False):
        premises = run[run["role"] == "premise"]
        held = int((premises["verdict"] == "held").sum())
        main = run[run["role"] == "main"]["verdict"].value_counts()
        rows.append({"exploration": name, "point": point, "premises": len(premises), "held": held,
                     **{v: int((premises["verdict"] == v).sum()) for v in ("inconclusive", "not held")},
                     "held by interval": int((premises["interval verdict"] == "held").sum()),
                     "flagged": int((premises["sanity"] != "ok").sum()),
                     "premise met": bool(len(premises)) and held == len(premises),
                     "main claims read": ", ".join(f"{v} x{n}" for v, n in main.items())})
    return pd.DataFrame(rows, columns=["exploration", "point", "premises", "held", "inconclusive", "not held",
                                       "held by interval", "flagged", "premise met", "main claims read"])


def _cell(text: str, digits: int | None) -> str:
    """A CSV cell for markdown: as written, or a non-integer number to ``digits`` decimals."""
    if digits is not None and not re.fullmatch(r"-?\d+", text):
        try:
            text = f"{float(text):.{digits}f}"
        except ValueError:
            pass
    return text.replace("|", "\\|")


def render_csv(path: Path, digits: int | None = None) -> str:
    """A CSV file as a markdown table: cell text exactly as in the file, or non-integer numbers rounded to ``digits``
    decimals (``<!-- table: FILE digits=3 -->``)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ExplorationError(f"{path} is empty: a table needs at least a header row")
    cells = [[c.replace("|", "\\|") for c in rows[0]]] + [[_cell(c, digits) for c in row] for row in rows[1:]]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def render_tables(markdown: Path) -> str:
    """``markdown`` with every ``<!-- table: FILE -->`` ... ``<!-- /table -->`` block re-rendered from FILE (a path
    relative to the markdown file; ``digits=N`` rounds its non-integer numbers); the prose around them is kept."""
    text = markdown.read_text()

    def block(match: re.Match) -> str:
        csv_path = markdown.parent / match["file"]
        if not csv_path.is_file():
            raise ExplorationError(f"{markdown}: table marker names {match['file']!r}, which does not exist")
        digits = int(match["digits"]) if match["digits"] else None
        suffix = f" digits={digits}" if digits is not None else ""
        return f"<!-- table: {match['file']}{suffix} -->\n{render_csv(csv_path, digits)}\n<!-- /table -->"

    return TABLE_MARKER.sub(block, text)


def stale_tables(markdown: Path) -> list[str]:
    """The CSV files whose embedded table in ``markdown`` differs from their rendering (empty: all up to date)."""
    current = {m["file"]: m[0] for m in TABLE_MARKER.finditer(markdown.read_text())}
    rendered = {m["file"]: m[0] for m in TABLE_MARKER.finditer(render_tables(markdown))}
    return sorted(f for f in current if current[f] != rendered[f])
