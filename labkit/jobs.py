"""Run a paper's training jobs (one per arm, seed and configuration) in order, in parallel, and resumably.

Every experiment maps a picklable job function over a list of jobs. ``run_jobs`` is the one place that does it: in
this process when ``workers == 1``, else in a process pool (``spawn`` by default; ``fork`` lets workers inherit
large module-level data instead of pickling it). When a run sets a job cache folder (``labkit run`` does, beside the
report folder), each finished job's result is stored there under a key hashed from the job function and its inputs,
so a report killed after 60 of its 90 minutes restarts at minute 60: the finished jobs load instead of rerunning.
A folder per compute digest keeps a code change from reusing results of the old code (see ``labkit.runner``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
CACHE_ENV = "LABKIT_JOB_CACHE"  # set by the runner for a report's kernel: where finished jobs are kept


def cache_dir() -> Path | None:
    """The job cache folder of this run (``labkit run`` sets it), or None: interactive runs cache nothing."""
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def job_key(fn: Callable[[Any], Any], job: Any) -> str:
    """A stable key of ``fn(job)``: the function's qualified name and the pickled inputs (configs are dataclasses
    of plain values, so equal inputs pickle to equal bytes)."""
    digest = hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}".encode())
    digest.update(pickle.dumps(job, protocol=4))
    return digest.hexdigest()[:32]


class _Cached:
    """``fn`` whose results are stored in ``folder`` by :func:`job_key` (picklable, so it runs in workers too)."""

    def __init__(self, fn: Callable[[Any], T], folder: Path) -> None:
        self.fn, self.folder = fn, folder

    def __call__(self, job: Any) -> T:
        from labkit.report import atomic_write_bytes

        path = self.folder / f"{job_key(self.fn, job)}.pkl"
        if path.is_file():
            with path.open("rb") as f:
                return pickle.load(f)
        result = self.fn(job)
        atomic_write_bytes(path, pickle.dumps(result, protocol=4))
        return result


def run_jobs(
    fn: Callable[[Any], T],
    jobs: Sequence[Any],
    *,
    workers: int = 1,
    desc: str = "jobs",
    progress: bool = True,
    start: Literal["spawn", "fork"] = "spawn",
    chunksize: int = 1,
) -> list[T]:
    """``[fn(job) for job in jobs]`` in job order, in ``workers`` processes when more than one, with a progress bar;
    finished jobs are cached when the run has a job cache folder (:func:`cache_dir`). Put the longest jobs first."""
    from tqdm.auto import tqdm

    folder = cache_dir()
    call = _Cached(fn, folder) if folder is not None else fn
    jobs = list(jobs)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(start)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            return list(tqdm(pool.map(call, jobs, chunksize=chunksize), total=len(jobs), desc=desc,
                             disable=not progress))
    return [call(job) for job in tqdm(jobs, desc=desc, disable=not progress)]
