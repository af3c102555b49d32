"""Sweeps: one notebook executed once per grid point, in parallel, joined into one tidy table.

Each point runs through ``labkit.runner.run_notebook`` into its own folder under
``reports/<notebook>/sweeps/<sweep-id>/``. Engines are existing ones, never a scheduler of our own: a local
``concurrent.futures`` process pool, or Ray (``ray.remote`` tasks on a cluster or a local instance). A point
whose previous run left a complete report with the same inputs hash is reused; a failing point is recorded with
its error. A point whose worker process dies (killed, out of memory) is rerun, a bounded number of times, while one
that fails in its own code fails once. Pool workers die with the sweep process (even on SIGKILL), and their notebook
kernels with them, so a killed sweep leaves nothing computing and a rerun recomputes exactly the unfinished points.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from labkit import runner
from labkit.report import RESULTS_FILE, atomic_write_bytes, atomic_write_text, to_jsonable

ENGINES = ("local", "ray")
TABLE_CSV, TABLE_PARQUET, MANIFEST = "table.csv", "table.parquet", "sweep.json"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
LOCAL_RAY_RETRIES = 1  # a local Ray node can miss its start-up deadline (~15 s for its agents) on a loaded machine
RESERVED_COLUMNS = ("point", "status", "reused", "error", "out_dir")  # table columns that are not params/metrics
POINT_LOCK_WAIT_SECONDS = 10.0  # a point still locked by a dying worker of a killed sweep: wait, do not fail
POINT_RETRIES = 2  # reruns of a point whose worker process died (killed, out of memory); its own errors: none
PARENT_POLL_SECONDS = 0.5  # how often a pool worker checks that its sweep process is alive
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class SweepError(ValueError):
    """A sweep that cannot start: unknown or empty grid, bad engine, an unreachable Ray address, or workers that die
    as they start."""


@dataclass
class Point:
    """One grid point: its name (also its folder), full parameters and the inputs hash a finished run carries."""

    name: str
    params: dict[str, Any]  # grid values and fixed ``-p`` values together
    out_dir: Path
    digest: str


@dataclass
class SweepResult:
    """What a sweep did: the joined table, where it lies, and the points that failed."""

    table: pd.DataFrame
    sweep_dir: Path
    csv_path: Path
    parquet_path: Path
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # one per point: name, ok, reused, error, ...

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if not o["ok"]]


def _split_values(text: str) -> list[str]:
    """Split ``0.5,1,2`` on top-level commas, keeping ``[16,32]`` or ``{"a": 1, "b": 2}`` whole."""
    items, depth, current = [], 0, []
    for char in text:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_grid(module: Any, specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["seed=0,1,2", "sigma=0.5,1"]`` -> ``{"seed": [0, 1, 2], "sigma": [0.5, 1.0]}``, typed by the Config.

    Unknown names, repeated names, ``preset`` and names without values raise ``SweepError`` before anything runs.
    """
    if not specs:
        raise SweepError("empty grid: give at least one --grid NAME=V1,V2,...")
    types_ = runner.parameter_types(module)
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SweepError(f"grid entry {spec!r} must look like NAME=V1,V2,...")
        if name == "preset":
            raise SweepError("sweep one preset at a time: set it with --preset, not --grid preset=...")
        if name not in types_:
            raise SweepError(f"unknown grid parameter {name!r} for {module.__name__}; accepted: {sorted(types_)}")
        if name in grid:
            raise SweepError(f"grid parameter {name!r} given twice; put all its values in one --grid {name}=...")
        values = _split_values(text)
        if not values:
            raise SweepError(f"empty grid: grid parameter {name!r} has no values (expected {name}=V1,V2,...)")
        try:
            grid[name] = [runner.coerce(name, value, types_[name]) for value in values]
        except runner.ParameterError as err:
            raise SweepError(str(err)) from None
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the grid, in the order given (the last name varies fastest)."""
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise SweepError(f"empty grid: every grid parameter needs at least one value, got {dict(grid)}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def point_name(values: Mapping[str, Any]) -> str:
    """A folder name from a point's grid values, e.g. ``seed=0,sigma=0.5`` (odd characters replaced)."""
    text = ",".join(f"{k}={json.dumps(to_jsonable(v), separators=(',', ':'))}" for k, v in values.items())
    text = re.sub(r"[^A-Za-z0-9=,._+-]", "_", text.replace('"', ""))
    if len(text) > 120:
        text = text[:100] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return text


def sweep_id(notebook: Path, preset: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]) -> str:
    """A stable id from the sweep's definition, so the same command resumes into the same folder."""
    spec = json.dumps(
        {
            "notebook": notebook.stem,
            "preset": preset,
            "grid": to_jsonable(dict(grid)),
            "fixed": to_jsonable(dict(fixed)),
        },
        sort_keys=True,
    )
    return f"{preset}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def plan(
    notebook: str | Path,
    preset: str,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    out_root: str | Path | None = None,
    name: str | None = None,
) -> tuple[Path, list[Point]]:
    """Validate a sweep and lay out its points; raises ``SweepError`` / ``ParameterError`` before anything runs."""
    path = runner.resolve_notebook(notebook)
    module = runner.experiment_module(path)
    fixed = dict(fixed or {})
    if preset not in module.PRESETS:
        raise SweepError(f"unknown preset {preset!r} for {path.stem}; expected one of {sorted(module.PRESETS)}")
    types_ = runner.parameter_types(module)
    unknown = sorted(set(grid) - set(types_)) + sorted(set(fixed) - set(types_))
    if unknown:
        raise SweepError(f"unknown parameter(s) {unknown} for {module.__name__}; accepted: {sorted(types_)}")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"parameter(s) {both} given both as --grid and as -p; keep one")
    root = Path(out_root) if out_root is not None else runner.REPORTS_DIR / path.stem / "sweeps"
    sweep_dir = root / (name or sweep_id(path, preset, grid, fixed))
    points = []
    for values in expand_grid(grid):
        params = {**fixed, **values}
        runner.check_params(path, preset, params)  # every point, before anything runs
        label = point_name(values)
        points.append(Point(label, params, sweep_dir / label, runner.inputs_hash(path, preset, params)))
    return sweep_dir, points


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """Threads each job may use so that ``jobs`` parallel jobs do not oversubscribe ``cpus`` cores."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, jobs))


def _watch_parent(parent_pid: int) -> None:
    """Exit this process as soon as its parent is no longer ``parent_pid`` (it died and we were re-parented)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker when the sweep process ``parent_pid`` ends, even by SIGKILL, so no
    orphan keeps computing into a point that a rerun owns.

    On Linux the kernel sends SIGKILL at once (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread also polls
    the parent pid. The notebook kernel a worker starts exits by itself when the worker goes: ipykernel polls its
    parent too (``JPY_PARENT_PID``, set by jupyter_client), within about a second.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl (an unusual libc): the watchdog thread still works
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="labkit-watch-parent", daemon=True).start()


def run_point(notebook: str, preset: str, params: dict[str, Any], out_dir: str, threads: int) -> dict[str, Any]:
    """Execute one grid point (in a pool worker or a Ray task); never raises, returns the outcome as a dict.

    A point whose folder another live run holds (a worker of a killed sweep that is still dying) is waited for up
    to ``POINT_LOCK_WAIT_SECONDS``, then reused if that run finished it.
    """
    for key in THREAD_ENV:
        os.environ[key] = str(threads)  # the papermill kernel inherits these; torch reads OMP_NUM_THREADS
    start = time.perf_counter()
    try:
        result = runner.run_notebook(notebook, preset, params, out_dir=out_dir, force=False, progress=False,
                                     wait=POINT_LOCK_WAIT_SECONDS)
        ok, reused, error = result.ok, result.skipped, result.error
    except Exception as err:  # a crash outside the notebook (import, disk) is this point's failure, not the sweep's
        ok, reused, error = False, False, f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
    return {
        "ok": ok,
        "reused": reused,
        "error": error,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _flat(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars of a mapping under ``prefix``; nested values as JSON text (Parquet wants one type per column)."""
    row = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            if prefix == "meta." and key == "timings":
                row.update(_flat("meta.timings.", value))
            continue
        if isinstance(value, list):
            value = json.dumps(value)
        row[f"{prefix}{key}"] = value
    return row


def table_row(point: Point, outcome: Mapping[str, Any] | None) -> dict[str, Any]:
    """One tidy row: the point's status, its params and metrics from ``results.json``, run metadata as ``meta.*``."""
    row: dict[str, Any] = {
        "point": point.name,
        "status": "pending",
        "reused": False,
        "error": "",
        "out_dir": str(point.out_dir),
    }
    params = {k: json.dumps(v) if isinstance(v, list) else v for k, v in to_jsonable(point.params).items()}
    results_path = point.out_dir / RESULTS_FILE
    if outcome is not None and outcome["ok"] and results_path.is_file():
        results = json.loads(results_path.read_text())
        row.update({"status": "ok", "reused": bool(outcome["reused"])})
        params.update({k: json.dumps(v) if isinstance(v, list) else v for k, v in results["params"].items()})
        metrics = {
            (f"metric.{k}" if k in params or k in RESERVED_COLUMNS else k): v for k, v in results["metrics"].items()
        }
        meta = _flat("meta.", {**results["meta"], "host": outcome.get("host"), "point_seconds": outcome.get("seconds")})
        return {**row, **params, **metrics, **meta}
    if outcome is not None:
        row.update({"status": "failed", "error": outcome["error"] or "unknown error"})
    return {**row, **params}


def write_table(sweep_dir: Path, rows: Iterable[dict[str, Any]]) -> tuple[pd.DataFrame, Path, Path]:
    """Write the joined table as CSV and Parquet, each atomically (readers never see half a table)."""
    table = pd.DataFrame(list(rows))
    csv_path = atomic_write_text(sweep_dir / TABLE_CSV, table.to_csv(index=False))
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    parquet_path = atomic_write_bytes(sweep_dir / TABLE_PARQUET, buffer.getvalue())
    return table, csv_path, parquet_path


def _check_ray_address(address: str) -> None:
    """Fail fast when a ``host:port`` (or ``ray://host:port``) cluster address does not answer."""
    if address == "auto" or address.startswith(("local", "anyscale")):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"Ray address {address!r} must be 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as err:
        raise SweepError(
            f"Ray address {address!r} is unreachable ({err}); start a cluster there "
            "(`ray start --head`), pass --address auto for one on this machine, or leave --address "
            "out to start a local Ray instance"
        ) from None


def start_ray(address: str | None, num_cpus: int) -> bool:
    """Connect to a Ray cluster (``address``) or start a local instance; True when this call started Ray."""
    try:
        import ray
    except ImportError as err:
        raise SweepError("--engine ray needs Ray: pip install 'labkit[sweep]' (or pip install ray)") from err
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    if address:
        _check_ray_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if address:
        kwargs["address"] = address
    else:  # a private instance on loopback: works offline
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    for attempt in range(1 if address else 1 + LOCAL_RAY_RETRIES):
        try:
            ray.init(**kwargs)
            return True
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            raise SweepError(f"could not connect to Ray at {address or 'a new local instance'}: {err}") from None
        except Exception as err:  # Ray raises a bare Exception when its node misses its own start-up deadline
            ray.shutdown()
            if "timed out during startup" not in str(err) or attempt == LOCAL_RAY_RETRIES or address:
                raise SweepError(f"Ray did not start ({address or 'a new local instance'}): {err}") from None
    return True


def _run_pool(
    points: deque[Point],
    submit_args: Callable[[Point], tuple],
    jobs: int,
    done: Callable[[Point, dict[str, Any]], None],
) -> list[tuple[Point, BrokenProcessPool]]:
    """Run ``points`` (taken from the left) on one fresh pool of ``jobs`` workers, one point per free worker, until
    they are done or a worker dies; return the points lost with the pool (those it was running)."""
    lost: list[tuple[Point, BrokenProcessPool]] = []
    jobs = min(jobs, len(points))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        # The pool starts a worker per submit, and its manager thread watches only the workers it knew when it began
        # waiting: a worker started meanwhile could die unnoticed. Start all of them before the first point.
        try:
            for future in [pool.submit(os.getpid) for _ in range(jobs)]:
                future.result()
        except BrokenProcessPool as err:
            raise SweepError(f"the sweep's worker processes die as they start ({err}); a script that calls run_sweep "
                             "needs `if __name__ == '__main__':` (workers are spawned: they import it)") from err
        running: dict[Future, Point] = {}
        while running or (points and not lost):
            while points and len(running) < jobs and not lost:  # one per free worker: a break loses only those
                point = points.popleft()
                try:
                    running[pool.submit(run_point, *submit_args(point))] = point
                except BrokenProcessPool as err:  # a worker died since the last wait, maybe an idle one
                    lost.append((point, err))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                point = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as err:  # a worker died (killed, out of memory): every running point is lost
                    lost.append((point, err))
                    continue
                except Exception as err:  # run_point returns its point's errors; this is the pool's (pickling)
                    outcome = {"ok": False, "reused": False, "error": f"{type(err).__name__}: {err}"}
                done(point, outcome)
    return lost


def _run_local(
    todo: list[Point],
    submit_args: Callable[[Point], tuple],
    jobs: int,
    done: Callable[[Point, dict[str, Any]], None],
    note: Callable[[str], None],
) -> None:
    """A process pool (spawned workers: no forked kernel or ZMQ state) running ``run_point`` per grid point; the
    workers die with this process (``die_with_parent``).

    A worker that dies breaks the whole pool (``concurrent.futures`` fails every point it was running), so those points
    run again on a fresh pool, each at most ``POINT_RETRIES`` times; the next run of a point cleans what the killed one
    left (``runner.run_notebook``). A point that fails in its own code returns its error and is not rerun.
    """
    points, crashes = deque(todo), Counter()
    while points:
        for point, err in _run_pool(points, submit_args, jobs, done):
            crashes[point.name] += 1
            if crashes[point.name] <= POINT_RETRIES:
                note(f"{point.name}: its worker died ({err}); running it again ({crashes[point.name]}/{POINT_RETRIES})")
                points.appendleft(point)
                continue
            done(point, {"ok": False, "reused": False,
                         "error": f"worker died {crashes[point.name]} times: {type(err).__name__}: {err}"})


def _run_ray(
    todo: list[Point],
    submit_args: Callable[[Point], tuple],
    threads: int,
    done: Callable[[Point, dict[str, Any]], None],
) -> None:
    """Ray tasks, one per grid point, each reserving ``threads`` CPUs; Ray schedules them. A task whose worker dies is
    retried by Ray up to ``POINT_RETRIES`` times (``max_retries`` counts system failures only: a point's own error is
    returned by ``run_point``, never raised), its next run cleaning what the killed one left."""
    import ray

    task = ray.remote(num_cpus=threads, max_retries=POINT_RETRIES)(run_point)
    refs = {task.remote(*submit_args(p)): p for p in todo}
    pending = list(refs)
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        for ref in finished:
            try:
                outcome = ray.get(ref)
            except Exception as err:  # its worker died, and again on each retry
                outcome = {"ok": False, "reused": False, "error": f"Ray task failed: {type(err).__name__}: {err}"}
            done(refs[ref], outcome)


def _write_manifest(
    sweep_dir: Path, path: Path, preset: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None,
    engine: str, jobs: int, threads: int, address: str | None, points: list[Point],
) -> None:
    """Record what the sweep runs (``manifest.json``), so a folder of points says where it came from."""
    manifest = {
        "notebook": str(path),
        "preset": preset,
        "grid": to_jsonable(dict(grid)),
        "fixed": to_jsonable(dict(fixed or {})),
        "engine": engine,
        "jobs": jobs,
        "threads_per_job": threads,
        "address": address,
        "points": [p.name for p in points],
    }
    atomic_write_text(sweep_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _reuse_finished(points: list[Point]) -> tuple[dict[str, dict[str, Any]], list[Point]]:
    """Outcomes of the points whose complete report has the same inputs hash, and the points still to run."""
    outcomes: dict[str, dict[str, Any]] = {}
    todo = []
    for point in points:
        if runner.is_up_to_date(point.out_dir, point.digest):
            outcomes[point.name] = {"ok": True, "reused": True, "error": "", "seconds": 0.0}
        else:
            todo.append(point)
    return outcomes, todo


def run_sweep(
    notebook: str | Path,
    preset: str,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    *,
    engine: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    out_root: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run ``notebook`` once per point of ``grid`` (plus ``fixed`` parameters) and join the results in one table.

    Validates everything first (unknown or empty grid, engine, Ray address). Points whose folder holds a complete
    report with the same inputs hash (``runner.is_up_to_date``) are reused, failures are recorded with their error
    while the rest continue, and ``table.csv`` / ``table.parquet`` are rewritten atomically as points finish. A
    killed sweep takes its workers and kernels with it; rerun the same command to compute only the unfinished
    points (what a killed point left is cleaned up by its next run).
    """
    if engine not in ENGINES:
        raise SweepError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
    if jobs is not None and jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {jobs}")
    path = runner.resolve_notebook(notebook)
    sweep_dir, points = plan(path, preset, grid, fixed, out_root, name)
    jobs = min(jobs or os.cpu_count() or 1, len(points))
    threads = threads_per_job(jobs)
    started_ray = start_ray(address, num_cpus=jobs * threads) if engine == "ray" else False

    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(sweep_dir, path, preset, grid, fixed, engine, jobs, threads, address, points)
    outcomes, todo = _reuse_finished(points)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(points),
        initial=len(points) - len(todo),
        desc=f"sweep {path.stem} [{engine}]",
        unit="run",
        disable=not progress,
    )
    last_write = [0.0]

    def flush(force: bool = False) -> tuple[pd.DataFrame, Path, Path] | None:
        if force or time.monotonic() - last_write[0] > 5:
            last_write[0] = time.monotonic()
            return write_table(sweep_dir, (table_row(p, outcomes.get(p.name)) for p in points))
        return None

    def done(point: Point, outcome: dict[str, Any]) -> None:
        outcomes[point.name] = outcome
        bar.update(1)
        if not outcome["ok"]:
            bar.write(f"{point.name}: FAILED\n{outcome['error'].strip()[-800:]}")
        flush()

    def submit_args(point: Point) -> tuple:
        return str(path), preset, point.params, str(point.out_dir), threads

    try:
        flush(force=True)
        if todo and engine == "local":
            _run_local(todo, submit_args, jobs, done, bar.write)
        elif todo:
            _run_ray(todo, submit_args, threads, done)
    finally:
        bar.close()
        written = flush(force=True)
        if started_ray:
            import ray

            ray.shutdown()
    table, csv_path, parquet_path = written
    result_outcomes = [
        {"point": p.name, **outcomes.get(p.name, {"ok": False, "reused": False, "error": "not run"})} for p in points
    ]
    return SweepResult(table, sweep_dir, csv_path, parquet_path, result_outcomes)
