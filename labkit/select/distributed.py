"""DSIR beyond one machine: the streaming selection of :mod:`labkit.select.stream` as Ray tasks over raw files.

Two rounds of one task per file. Round 1 featurizes the file into the shared feature cache (resumable) and returns
its bucket counts and document count; the driver sums the counts into p_raw and fits the log ratio. Round 2 scores
the file shard by shard and returns its top k Gumbel keys, keyed by (seed, global index); the driver merges them into
the global top k. Same functions as the single-process path, so the selection is equal for the same seed.
``cache_dir`` must be a folder every worker can read and write (local disk on one node, a shared file system on a
cluster).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.select.dsir import check_smoothing
from labkit.select.features import check_count
from labkit.select.stream import (
    FileSelection,
    check_files,
    file_counts,
    file_top_keys,
    finish_selection,
    fit_counts,
    settings_for,
)

if TYPE_CHECKING:
    from ray import ObjectRef

    from labkit.select.dsir import DocumentsOrFeatures

LOCAL_START_TRIES = 3  # a local Ray node misses its fixed start-up deadline on a machine loaded past its cores


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at ``address``, or start a private local instance (loopback, no dashboard).

    A local start that times out is retried (``LOCAL_START_TRIES`` in all); the last error is raised.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        return
    for attempt in range(LOCAL_START_TRIES):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     _node_ip_address="127.0.0.1")
            return
        except Exception as err:  # Ray raises a bare Exception when its node misses its start-up deadline
            ray.shutdown()
            if "timed out during startup" not in str(err) or attempt == LOCAL_START_TRIES - 1:
                raise


def select_files_ray(
    raw_files: Sequence[str | Path],
    target: DocumentsOrFeatures,
    k: int,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    out_path: str | Path | None = None,
    target_pseudocount: float = 0.0,
    epsilon: float = 1e-8,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = False,
    **options,
) -> FileSelection:
    """:func:`~labkit.select.stream.select_files` with one Ray task per file and round; the same selection.

    Uses the running Ray instance, else connects to ``address``, else starts a local one with ``num_cpus`` (shut
    down again at the end). ``options``: the fields of :class:`~labkit.select.stream.FileSettings`.
    """
    check_smoothing(epsilon, target_pseudocount)
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is in the lock
        raise ImportError("select_files_ray needs Ray: pip install ray") from err
    from tqdm.auto import tqdm

    files = check_files(raw_files)
    settings = settings_for(cache_dir, **options)
    k = check_count("k", k)
    started = not ray.is_initialized()
    if started:
        start_ray(address, num_cpus)
    try:
        count_task = ray.remote(num_cpus=settings.workers, max_retries=2)(file_counts)
        top_task = ray.remote(num_cpus=1, max_retries=2)(file_top_keys)

        def gather(refs: list[ObjectRef], desc: str) -> list[tuple[Any, ...]]:
            return [ray.get(r) for r in tqdm(refs, desc=desc, unit="file", disable=not progress)]

        counted = gather([count_task.remote(str(f), settings) for f in files], "featurize + count (ray)")
        documents, log_diff, starts = fit_counts(counted, target, settings, target_pseudocount, epsilon)
        log_diff_ref = ray.put(log_diff)
        refs = [
            top_task.remote(str(f), settings, log_diff_ref, int(start), k, seed)
            for f, start in zip(files, starts, strict=True)
        ]
        parts = gather(refs, "score + top k (ray)")
    finally:
        if started:
            ray.shutdown()
    return finish_selection(files, documents, log_diff, parts, k, settings, out_path)
