"""Run results: one ``record`` call per notebook, atomic result files and run metadata.

``results.json`` holds ``params`` (the config), ``metrics`` (named numbers, deterministic for a seed),
``tables`` (named tidy tables), ``claim`` / ``held`` (the paper's claim and a one-line verdict computed from the
run) and ``meta`` (versions, device, threads, git SHA and everything that varies run to run: timings, memory).
The intervals the verdicts are computed from live in :mod:`labkit.stats`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit.profile import device_info

REPORT_DIR_ENV = "LABKIT_REPORT_DIR"  # set by the runner for the notebook's kernel
RESULTS_FILE = "results.json"


def report_dir() -> Path | None:
    """The folder this run writes into (set by ``labkit run``), or ``None`` in an interactive session."""
    value = os.environ.get(REPORT_DIR_ENV)
    return Path(value) if value else None


def output_path(name: str) -> Path:
    """Where a run should put an extra artifact (a trace, a checkpoint): the report folder, else a temp folder."""
    folder = report_dir() or Path(tempfile.gettempdir()) / "labkit"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make reports unreadable to others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def to_jsonable(value: Any) -> Any:
    """Numbers, arrays, tensors, dataclasses, paths and frames as plain JSON values (non-finite floats -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in results.json: {value!r}")


def git_sha(path: str | Path | None = None) -> str | None:
    """The labkit checkout's commit (with ``-dirty`` when the tree has changes), or ``None`` outside git."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def settings_table(settings: Any) -> pd.DataFrame:
    """A Config (dataclass) or a mapping (``profile.device_info()``) as a small two-column table, one row per
    setting, so a report shows its parameters and device formatted instead of as a repr."""
    values = to_jsonable(settings)
    if not isinstance(values, dict):
        raise TypeError(f"settings_table takes a dataclass or a mapping, got {type(settings).__name__}")
    rows = [{"setting": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in values.items()]
    return pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting")


def run_meta() -> dict[str, Any]:
    """What a result depends on besides its parameters: code version, library versions, device, threads, and the
    machine's load when it ran (timings on a shared 2-core machine are only comparable within one run)."""
    import torch
    import transformers

    info = device_info()
    return {
        "labkit_git_sha": git_sha(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": info["device"],
        "device_name": info["device_name"],
        "threads": info["threads"],
        "cpu_count": info["cpu_count"],
        "python": info["python"],
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def record(
    config: Any,
    *,
    metrics: Mapping[str, float],
    tables: Mapping[str, pd.DataFrame] | None = None,
    claim: str = "",
    held: str = "",
    timings: Mapping[str, Any] | None = None,
    computed: Any = None,
) -> dict[str, Any]:
    """Record a run's results: the one call each notebook makes at its end.

    ``metrics`` are named numbers that a rerun with the same seed reproduces; anything that varies run to run
    (seconds, bytes of RSS) goes in ``timings`` and is stored under ``meta``. Under ``labkit run`` this writes
    ``results.json`` and ``tables/<name>.csv`` atomically into the report folder; interactively it only returns.
    ``computed`` (a :class:`labkit.experiments.Computed`, ``results.computed``) stores what training produced: its
    tables beside the others, its tensors as ``artefacts.safetensors``, their names under ``computed`` and its
    timings under ``meta.timings``, so ``Experiment.load`` can judge the report again without training.
    """
    tables = dict(tables or {})
    if computed is not None:
        clash = sorted(set(tables) & set(computed.tables))
        if clash:
            raise ValueError(f"table name(s) {clash} are both computed and judged; give the judged table another name")
        timings = {**computed.timings, **dict(timings or {})}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
    for name, table in tables.items():
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"table {name!r} must be a pandas DataFrame, got {type(table).__name__}")
    results = {
        "params": to_jsonable(config),
        "metrics": to_jsonable(dict(metrics)),
        "tables": {name: to_jsonable(t) for name, t in tables.items()},
        "claim": claim,
        "held": held,
        "meta": {**run_meta(), "timings": to_jsonable(dict(timings or {}))},
    }
    if computed is not None:
        results["computed"] = sorted(computed.tables)
    out = report_dir()
    if out is not None:
        if computed is not None:
            computed.save(out)
        for name, table in tables.items():
            atomic_write_text(out / "tables" / f"{name}.csv", table.to_csv(index=False))
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results
