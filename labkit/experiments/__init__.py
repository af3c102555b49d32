"""One contract for every paper: ``labkit.experiments.<paper>`` is a package with the same rooms, and one
:class:`Experiment` object that the runner, the views and the notebook use.

Rooms (a paper omits what it does not need, never renames one):

- ``config.py``   ``Config`` (fields declare type, range and meaning once, see :mod:`labkit.config`) and ``PRESETS``
- ``data.py``     the paper's data: splits, tasks, corpora
- ``arms.py``     the arms and their training: ``compute(cfg, progress) -> Computed``, the only code that trains
- ``claims.py``   the paper's claims as :class:`labkit.protocol.Claim` data and the judgement of computed tables
- ``summary.py``  ``judge(cfg, computed) -> Results``: claims, sanity and the readings the notebook shows
- ``__init__.py`` ``EXPERIMENT = Experiment(...)`` and the names a notebook uses

A run is ``judge(cfg, compute(cfg))``: *computed* tables (what training produced: one row per run, curves, the
convergence reruns) and small tensors a widget needs are everything the verdicts are a function of. A report stores
them (``tables/`` and ``artefacts.safetensors``), so ``Experiment.load(report_dir)`` rebuilds the full
:class:`Results` in seconds by judging them again with today's code: a notebook opened with ``reuse=True`` shows the
committed report without training, and the runner re-judges a report whose judgement code changed without
retraining (its compute closure, ``arms`` and below, is unchanged).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd

from labkit import config as config_checks

C = TypeVar("C")
ARTEFACTS_FILE = "artefacts.safetensors"  # the small tensors of a report a widget needs (gates, a toy model)
ARTEFACT_LIMIT_BYTES = 5 * 2**20  # a report never commits a checkpoint: real models come from the catalogue
REUSE_ENV = "LABKIT_REUSE_DIR"  # set by the runner when it re-judges: the committed report to read computed tables from


@dataclass
class Computed:
    """What training produced: named tidy tables, small tensors (``name -> tensor``), and run-to-run timings."""

    tables: dict[str, pd.DataFrame]
    tensors: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write the tables as ``tables/<name>.csv`` and the tensors as ``artefacts.safetensors`` (atomically)."""
        from labkit.report import atomic_write_bytes, atomic_write_text

        for name, table in self.tables.items():
            atomic_write_text(folder / "tables" / f"{name}.csv", table.to_csv(index=False))
        if self.tensors:
            from safetensors.torch import save

            data = save({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()})
            if len(data) > ARTEFACT_LIMIT_BYTES:
                raise ValueError(f"artefacts of {folder} take {len(data) / 2**20:.1f} MiB, over the "
                                 f"{ARTEFACT_LIMIT_BYTES / 2**20:.0f} MiB a report may commit; save gates or "
                                 "precomputed maps, not a checkpoint")
            atomic_write_bytes(folder / ARTEFACTS_FILE, data)

    @classmethod
    def read(cls, folder: Path, names: list[str], timings: Mapping[str, Any] | None = None) -> Computed:
        """The computed tables ``names`` and the artefacts of the report in ``folder``."""
        missing = [n for n in names if not (folder / "tables" / f"{n}.csv").is_file()]
        if missing:
            raise FileNotFoundError(f"report {folder} lacks computed table(s) {missing}; rerun it without reuse")
        tables = {n: _read_csv(folder / "tables" / f"{n}.csv") for n in names}
        tensors: dict[str, Any] = {}
        if (folder / ARTEFACTS_FILE).is_file():
            from safetensors.torch import load_file

            tensors = load_file(folder / ARTEFACTS_FILE)
        return cls(tables, tensors, dict(timings or {}))

    def roundtrip(self) -> Computed:
        """These tables as a report stores and reads them (CSV), to test that judging them gives the same verdicts."""
        import io

        tables = {}
        for name, table in self.tables.items():
            buffer = io.StringIO(table.to_csv(index=False))
            tables[name] = _read_csv(buffer)
        return Computed(tables, dict(self.tensors), dict(self.timings))


def _read_csv(source: Any) -> pd.DataFrame:
    """A stored table: empty cells stay NaN, text stays text (``keep_default_na`` off would turn NaN into '')."""
    try:
        return pd.read_csv(source)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


@dataclass
class Results:
    """A run's answer: every table (computed and judged), the config it ran, the computed part it came from and
    in-memory artefacts for widgets (a rebuilt model). ``results.claims`` reads ``results.tables["claims"]``."""

    config: Any
    tables: dict[str, pd.DataFrame]
    computed: Computed
    artefacts: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        artefacts = self.__dict__.get("artefacts", {})
        if name in artefacts:
            return artefacts[name]
        raise AttributeError(f"Results has no table or artefact {name!r}; tables: {sorted(tables)}, "
                             f"artefacts: {sorted(artefacts)}")

    @property
    def timings(self) -> dict[str, Any]:
        return self.computed.timings


@dataclass(frozen=True)
class Experiment(Generic[C]):
    """A paper: its Config and presets, ``compute`` (trains; the compute closure) and ``judge`` (claims, sanity and
    readings from computed tables; the judgement closure)."""

    name: str
    config: type[C]
    presets: Mapping[str, Mapping[str, Any]]
    compute: Callable[[C, bool], Computed]
    judge: Callable[[C, Computed], Results]

    def configure(self, preset: str = "cpu", overrides: Mapping[str, Any] | None = None) -> C:
        """The config for ``preset`` with explicit ``overrides`` applied (unknown names and bad values raise)."""
        return config_checks.configure(self.config, self.presets, preset, overrides)

    def run(self, cfg: C, *, progress: bool = True) -> Results:
        """Train every arm and judge: ``judge(cfg, compute(cfg))``."""
        return self.judge(cfg, self.compute(cfg, progress))

    def load(self, folder: str | Path) -> Results:
        """The Results of the report in ``folder``, judged again from its computed tables and artefacts (seconds)."""
        folder = Path(folder)
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"no report in {folder} (no results.json); run it first: labkit run {self.name}")
        stored = json.loads(path.read_text())
        if "computed" not in stored:
            raise ValueError(f"report {folder} predates computed tables; regenerate it: labkit run {self.name}")
        cfg = self.config(**{k: config_checks.conform(k, v, config_checks.hints(self.config)[k])
                             for k, v in stored["params"].items()})
        computed = Computed.read(folder, stored["computed"], stored["meta"].get("timings"))
        return self.judge(cfg, computed)

    def results(self, cfg: C, *, reuse: bool = False, preset: str = "cpu", progress: bool = True) -> Results:
        """The notebook's one call: train and judge, or with ``reuse`` judge the committed ``preset`` report (the
        runner's re-judge folder when it sets one) in seconds."""
        if not reuse:
            return self.run(cfg, progress=progress)
        return self.load(reuse_dir(self.name, preset))


def reuse_dir(name: str, preset: str) -> Path:
    """The report a ``reuse=True`` notebook reads: the runner's re-judge folder, else ``reports/<name>/<preset>``."""
    if os.environ.get(REUSE_ENV):
        return Path(os.environ[REUSE_ENV])
    from labkit.data.sources import ROOT

    return ROOT / "reports" / name / preset
