"""Run results: one ``record`` call per notebook, atomic result files, run metadata and bootstrap intervals.

``results.json`` holds ``params`` (the config), ``metrics`` (named numbers, deterministic for a seed),
``tables`` (named tidy tables), ``claim`` / ``held`` (the paper's claim and a one-line verdict computed from the
run) and ``meta`` (versions, device, threads, git SHA and everything that varies run to run: timings, memory).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
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
) -> dict[str, Any]:
    """Record a run's results: the one call each notebook makes at its end.

    ``metrics`` are named numbers that a rerun with the same seed reproduces; anything that varies run to run
    (seconds, bytes of RSS) goes in ``timings`` and is stored under ``meta``. Under ``labkit run`` this writes
    ``results.json`` and ``tables/<name>.csv`` atomically into the report folder; interactively it only returns.
    """
    tables = dict(tables or {})
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
    out = report_dir()
    if out is not None:
        for name, table in tables.items():
            atomic_write_text(out / "tables" / f"{name}.csv", table.to_csv(index=False))
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap interval of the mean: ``(mean, low, high)``.

    With one value the interval collapses to it; non-finite values are an error, not silently dropped.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci got non-finite values: {x[~np.isfinite(x)][:5].tolist()}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return mean, float(low), float(high)


def summarize(df: pd.DataFrame, by: str | Sequence[str], value: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, bootstrap 95 % interval and count of ``value`` per group (typically over seeds)."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in table; it has {list(df.columns)}")
    rows = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = bootstrap_ci(group[value].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key, strict=True)), "mean": mean, "low": low, "high": high, "n": len(group)})
    return pd.DataFrame(rows)


def paired_diff(
    df: pd.DataFrame,
    arm_col: str,
    ref_arm: Any,
    value_col: str,
    pair_cols: Sequence[str] = ("seed",),
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-arm mean difference to ``ref_arm`` paired on ``pair_cols`` (e.g. the seed), with a bootstrap interval.

    Pairing removes the seed-to-seed spread that both arms share, which is what small-scale gaps drown in.
    """
    if ref_arm not in set(df[arm_col]):
        raise ValueError(f"reference arm {ref_arm!r} not in column {arm_col!r}; arms: {sorted(set(df[arm_col]))}")
    pair_cols = list(pair_cols)
    ref = df[df[arm_col] == ref_arm].set_index(pair_cols)[value_col]
    rows = []
    for arm, group in df[df[arm_col] != ref_arm].groupby(arm_col, sort=False):
        diffs = group.set_index(pair_cols)[value_col] - ref
        diffs = diffs.dropna()
        if diffs.empty:
            raise ValueError(f"arm {arm!r} shares no {pair_cols} values with reference arm {ref_arm!r}")
        mean, low, high = bootstrap_ci(diffs.to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({arm_col: arm, "mean_diff": mean, "low": low, "high": high, "n": len(diffs)})
    return pd.DataFrame(rows)


def interval_sign(low: float, high: float) -> int:
    """+1 when an interval lies above 0, -1 when below, 0 when it spans 0 (a tie at this many seeds).

    The one rule every notebook's verdict uses to turn a paired-difference interval into better / worse / tied.
    """
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"expected an interval with low <= high, got [{low}, {high}]")
    return 1 if low > 0 else (-1 if high < 0 else 0)
