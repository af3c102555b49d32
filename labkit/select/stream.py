"""DSIR over a pool of files larger than memory: featurize, estimate, weight and resample shard by shard.

Each raw file is featurized once into the feature cache (:mod:`labkit.select.cache`: atomic shards, so a killed run
resumes from its finished shards). p_raw is the sum of per-shard bucket counts; the weights of one shard are scored
and reduced to that shard's top k Gumbel keys at once, merged into a running top k. Memory is bounded by one shard's
n-grams plus k, not by the pool. The Gumbel noise of a document depends only on (seed, its global index), so any
split into files, shards or machines (:mod:`labkit.select.distributed`, Ray) selects the same documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.config import number_in_range
from labkit.select.cache import ShardedFeatures, cached_features
from labkit.select.dsir import (
    FEATURE_TYPES,
    LengthFilter,
    _check_k,
    _check_settings,
    check_smoothing,
    log_importance_ratio,
)
from labkit.select.fast import splitmix64
from labkit.select.features import HashedFeatures, NgramHasher, _batches, check_count, iter_documents
from labkit.select.files import write_selected

if TYPE_CHECKING:
    from labkit.select.dsir import DocumentsOrFeatures

_SEED_MIX = np.uint64(0xD1B54A32D192ED03)  # odd constant that spreads the seed over the 64-bit noise counter


def indexed_gumbel(seed: int, indices: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) noise for documents at global ``indices``: a function of (seed, index) only, not of the layout.

    A counter-based generator: splitmix64 of the index offset by the mixed seed, its top 53 bits as a uniform in
    (0, 1), then ``-log(-log u)``. Any shard or machine computes the same noise for the same document.
    """
    counter = np.asarray(indices, dtype=np.uint64) + splitmix64(np.array([seed], dtype=np.uint64) * _SEED_MIX)
    bits = splitmix64(counter) >> np.uint64(11)
    uniform = (bits.astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(uniform))


def top_keys(keys: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest ``keys`` (ties: lower index first) and their ``indices``, sorted best first; -inf never kept."""
    finite = keys > -np.inf
    keys, indices = keys[finite], indices[finite]
    if len(keys) > k:
        cut = np.argpartition(-keys, k - 1)[:k]
        threshold = keys[cut].min()
        keep = np.flatnonzero(keys >= threshold)  # every tie at the threshold, so the tie-break below is exact
        keys, indices = keys[keep], indices[keep]
    order = np.lexsort((indices, -keys))[:k]
    return keys[order], indices[order]


def merge_top_keys(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top k of per-shard (keys, indices) top k's: equal to the top k over all documents at once."""
    if not parts:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return top_keys(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), k)


def shard_top_keys(
    features: HashedFeatures,
    log_diff: np.ndarray,
    start: int,
    k: int,
    seed: int,
    *,
    min_length: int = 0,
    temperature: float = 1.0,
    top_k: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, global indices, eligible count) of one shard's best k documents; ``start`` is its first global index.

    Key = log weight / temperature + Gumbel noise of (seed, global index); documents shorter than ``min_length``
    tokens get no key. ``top_k=True`` drops the noise (deterministic top-k).
    """
    keys = features.dot(log_diff) / temperature
    indices = start + np.arange(len(features), dtype=np.int64)
    if not top_k:
        keys = keys + indexed_gumbel(seed, indices)
    eligible = np.asarray(features.lengths) >= min_length
    keys = np.where(eligible, keys, -np.inf)
    best_keys, best = top_keys(keys, indices, k)
    return best_keys, best, int(eligible.sum())


@dataclass
class FileSelection:
    """What :func:`select_files` selected from a pool of files, and how."""

    indices: np.ndarray  # global document positions (files in order, then lines), best key first
    keys: np.ndarray  # their keys: log weight / temperature + Gumbel noise
    files: list[Path]  # the raw files, in the order that numbers the documents
    documents: np.ndarray  # documents per file
    log_diff: np.ndarray  # log p_target − log p_raw per bucket
    length_filter: LengthFilter  # documents dropped by min_length and left eligible
    written: int | None = None  # documents written to out_path, if one was given

    def file_and_line(self) -> list[tuple[Path, int]]:
        """(file, document number inside that file) of every selected document, in ``indices`` order."""
        starts = np.concatenate([[0], np.cumsum(self.documents)])
        which = np.searchsorted(starts, self.indices, side="right") - 1
        return [(self.files[f], int(i - starts[f])) for f, i in zip(which, self.indices, strict=True)]


@dataclass(frozen=True)
class FileSettings:
    """How raw files are featurized and scored; the same in one process and on every Ray worker."""

    cache_dir: str  # feature-cache folder (shared by all workers)
    num_buckets: int = 10000  # hashed n-gram buckets
    ngrams: int = 2  # unigrams + bigrams
    hash: str = "sha256"  # "sha256" (exact, identical to data-selection) or "fast"
    text_field: str = "text"  # jsonl field / parquet column of the text
    shard_docs: int = 10000  # documents per cached shard: the unit of memory and of resumption
    workers: int = 1  # featurization processes per file
    min_length: int = 0  # tokens; shorter documents are never selected
    temperature: float = 1.0  # Gumbel temperature (1 = importance resampling)
    top_k: bool = False  # True: deterministic top-k of the log weights


def file_features(path: str | Path, settings: FileSettings, progress: bool = False) -> ShardedFeatures:
    """The cached, memory-mapped features of one raw file (featurized now if missing; resumes unfinished shards)."""
    return cached_features(
        str(path),
        settings.cache_dir,
        settings.num_buckets,
        settings.ngrams,
        settings.hash,
        text_field=settings.text_field,
        shard_docs=settings.shard_docs,
        workers=settings.workers,
        progress=progress,
        name=str(path),
    )


def file_counts(path: str | Path, settings: FileSettings, progress: bool = False) -> tuple[np.ndarray, int]:
    """(bucket counts summed over the file, documents in the file), one shard in memory at a time."""
    features = file_features(path, settings, progress)
    return features.total_counts(), len(features)


def file_top_keys(
    path: str | Path, settings: FileSettings, log_diff: np.ndarray, start: int, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, global indices, eligible count) of the best k documents of one file whose first document is ``start``."""
    features = file_features(path, settings)
    best, eligible = (np.zeros(0), np.zeros(0, dtype=np.int64)), 0
    for shard, shard_start in zip(features.shards, features.starts, strict=False):
        keys, indices, n = shard_top_keys(
            shard,
            log_diff,
            start + int(shard_start),
            k,
            seed,
            min_length=settings.min_length,
            temperature=settings.temperature,
            top_k=settings.top_k,
        )
        best = merge_top_keys([best, (keys, indices)], k)  # running top k: never more than 2k keys held
        eligible += n
    return *best, eligible


def target_counts(target: DocumentsOrFeatures, settings: FileSettings) -> np.ndarray:
    """Bucket counts of the target (documents, one file, or features made with the same settings), streamed."""
    if isinstance(target, FEATURE_TYPES):
        expected = (settings.num_buckets, settings.ngrams, settings.hash)
        return _check_settings(target, expected, "target").total_counts()
    hasher = NgramHasher(settings.num_buckets, settings.ngrams, settings.hash)
    total = np.zeros(settings.num_buckets)
    for batch in _batches(iter_documents(target, settings.text_field, name="target"), settings.shard_docs):
        total += hasher.featurize(batch).total_counts()  # streamed: a large target file is never held whole
    return total


def fit_counts(
    counted: list[tuple[np.ndarray, int]],
    target: DocumentsOrFeatures,
    settings: FileSettings,
    target_pseudocount: float,
    epsilon: float,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """From per-file (counts, documents), in file order: documents per file, the log importance ratio per bucket,
    and each file's first global document index. One fit for the single-process and the Ray path alike."""
    raw = np.zeros(settings.num_buckets)
    for counts, _ in counted:  # file by file: the same summation order wherever the counts were made
        raw += counts
    documents = [n for _, n in counted]
    log_diff = log_importance_ratio(raw, target_counts(target, settings), target_pseudocount, epsilon)
    starts = np.concatenate([[0], np.cumsum(documents)[:-1]]).astype(np.int64)
    return documents, log_diff, starts


def finish_selection(
    files: list[Path],
    documents: list[int],
    log_diff: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray, int]],
    k: int,
    settings: FileSettings,
    out_path: str | Path | None,
) -> FileSelection:
    """Merge per-file top k's into the selection, check k against the eligible documents, write ``out_path``."""
    total, eligible = int(sum(documents)), int(sum(p[2] for p in parts))
    _check_k(k, eligible, f"documents with >= {settings.min_length} tokens; {total - eligible} of {total} were shorter")
    keys, indices = merge_top_keys([(p[0], p[1]) for p in parts], k)
    selection = FileSelection(indices, keys, files, np.asarray(documents, dtype=np.int64), log_diff,
                              LengthFilter(settings.min_length, total - eligible, eligible))
    if out_path is not None:
        selection.written = write_selected(files, indices, out_path, text_field=settings.text_field)
    return selection


def check_files(raw_files: Sequence[str | Path]) -> list[Path]:
    """The raw files as paths; raises naming a missing one (before any work starts)."""
    if isinstance(raw_files, (str, Path)):
        raw_files = [raw_files]
    files = [Path(f) for f in raw_files]
    if not files:
        raise ValueError("raw_files: expected at least one jsonl / parquet / text file, got none")
    for f in files:
        if not f.is_file():
            raise ValueError(f"raw_files: {str(f)!r} is not a file; expected jsonl, parquet or text shards")
    return files


def settings_for(cache_dir: str | Path, **options) -> FileSettings:
    """Checked :class:`FileSettings` (errors name the offending option)."""
    settings = FileSettings(str(cache_dir), **options)
    check_count("shard_docs", settings.shard_docs)
    check_count("workers", settings.workers)
    check_count("min_length", settings.min_length, 0)
    number_in_range("temperature", settings.temperature, 0.0, interval="()")
    return settings


def select_files(
    raw_files: Sequence[str | Path],
    target: DocumentsOrFeatures,
    k: int,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    out_path: str | Path | None = None,
    target_pseudocount: float = 0.0,
    epsilon: float = 1e-8,
    progress: bool = False,
    **options,
) -> FileSelection:
    """DSIR from jsonl / parquet / text shards to a jsonl of k selected documents, with memory bounded by a shard.

    Featurizes each file once into ``cache_dir`` (resumable), fits p_raw from per-shard counts and p_target from
    ``target``, scores shard by shard and keeps a running Gumbel top k keyed by (seed, global index): the same
    selection as :func:`labkit.select.distributed.select_files_ray` and as ``top_keys`` over all weights at once.
    ``options``: the fields of :class:`FileSettings` (``hash``, ``num_buckets``, ``shard_docs``, ``min_length`` ...).
    Unlike :class:`~labkit.select.DSIR`: one target, p_raw from every raw n-gram (no ``max_raw_tokens`` cap).
    """
    from tqdm.auto import tqdm

    check_smoothing(epsilon, target_pseudocount)
    files = check_files(raw_files)
    settings = settings_for(cache_dir, **options)
    k = check_count("k", k)  # checked against the eligible documents once they are scored
    counted = [file_counts(path, settings, progress)
               for path in tqdm(files, desc="featurize + count raw files", unit="file", disable=not progress)]
    documents, log_diff, starts = fit_counts(counted, target, settings, target_pseudocount, epsilon)
    parts = [
        file_top_keys(path, settings, log_diff, int(start), k, seed)
        for path, start in tqdm(list(zip(files, starts, strict=True)), desc="score + top k", unit="file",
                                disable=not progress)
    ]
    return finish_selection(files, documents, log_diff, parts, k, settings, out_path)
