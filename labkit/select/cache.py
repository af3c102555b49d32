"""An on-disk cache of a featurized raw pool for DSIR: hashed n-gram shards written once, memory-mapped afterwards.

DSIR's reference (p-lambda/dsir) keeps per-shard ``.npy`` caches re-opened with ``mmap_mode="r"``; this is the same
idea for labkit's features, so a pool larger than memory is featurized once and every later fit streams the shards.

One cache entry is a folder ``<cache_dir>/features-<key>/``:

- ``meta.json``: the hasher settings, the shard size and a description of the input (written first);
- ``shard-NNNNN.buckets.npy`` (flat bucket ids), ``shard-NNNNN.lengths.npy`` (tokens per document) and
  ``shard-NNNNN.offsets.npy`` (int64, n_docs + 1), written in that order, each as a temporary file fsync'ed and
  renamed into place (``os.replace``). A shard exists once its offsets file exists, so a killed run leaves only
  finished shards (and ignorable ``*.tmp`` files); the next fit featurizes only the missing shards;
- ``done.json``: documents and n-grams per shard, written last. Its presence means the entry is complete.

The key is a sha256 of the hasher settings (num_buckets, ngrams, hash, tokenizer engine, format version), the text
field and the input: for a file path its resolved path, size and mtime (editing the file gives a new entry; a file
rewritten with the same size and mtime is not noticed); for an in-memory collection (list, tuple, pandas Series,
numpy array) a sha256 of its content, computed in one extra pass that hashes text but does not tokenize. A one-shot
iterator (generator) cannot be keyed before it is consumed and is refused. A corrupt or mismatched entry is **not**
rebuilt silently: opening it raises :class:`FeatureCacheError` naming the file and the folder to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.select.features import (
    TOKEN_ENGINE,
    HashedFeatures,
    NgramHasher,
    _batches,
    _worker_featurize,
    _worker_init,
    iter_documents,
)

if TYPE_CHECKING:
    from scipy import sparse

    from labkit.select.features import Documents

FORMAT_VERSION = 1  # bump when the shard layout or the featurizer's output changes
MAX_CACHED_NGRAMS = 20_000_000  # distinct n-grams the hasher may remember before it starts afresh (memory bound)


class FeatureCacheError(ValueError):
    """A feature-cache entry is corrupt or does not match the requested settings."""


class ShardedFeatures:
    """Hashed n-gram features of N documents held as consecutive shards (memory-mapped :class:`HashedFeatures`).

    Offers what DSIR needs (``total_counts``, ``dot``, ``lengths``, ``subset``) shard by shard, so only per-document
    scalars (lengths, weights) and one shard's n-grams are in memory at a time.
    """

    def __init__(self, shards: list[HashedFeatures], folder: Path | None = None, progress: bool = False) -> None:
        if not shards:
            raise ValueError("expected at least one shard, got none")
        first = shards[0]
        self.num_buckets, self.ngrams, self.hash = first.num_buckets, first.ngrams, first.hash
        self.shards, self.folder, self.progress = shards, folder, progress
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in shards])]).astype(np.int64)
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _iter(self, desc: str) -> Iterable[HashedFeatures]:
        from tqdm.auto import tqdm

        return tqdm(self.shards, desc=desc, unit="shard", disable=not self.progress, leave=False)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document (int64, in memory: one number per document)."""
        if self._lengths is None:
            self._lengths = np.concatenate([np.asarray(s.lengths, dtype=np.int64) for s in self.shards])
        return self._lengths

    def ngram_counts(self) -> np.ndarray:
        """Hashed n-grams per document (int64)."""
        return np.concatenate([s.ngram_counts() for s in self.shards])

    def _by_shard(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(shard number, positions in ``indices``, local indices) for every shard that ``indices`` touches."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"document indices must be in 0..{len(self) - 1}, got {indices.min()}..{indices.max()}")
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        for j in np.unique(shard_of):
            where = np.nonzero(shard_of == j)[0]
            yield int(j), where, indices[where] - self.starts[j]

    def total_counts(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Bucket counts summed over all documents, or over ``indices`` (float64, length ``num_buckets``)."""
        total = np.zeros(self.num_buckets, dtype=np.float64)
        if indices is None:
            for shard in self._iter("count shards"):
                total += shard.total_counts()
        else:
            for j, _, local in self._by_shard(indices):
                total += self.shards[j].total_counts(local)
        return total

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """Per-document ``counts @ vector`` for a vector (B,) or matrix (B, T) over buckets; float64."""
        return np.concatenate([shard.dot(vector) for shard in self._iter("score shards")])

    def subset(self, indices: np.ndarray) -> HashedFeatures:
        """In-memory features of the documents at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        parts, order = [], []
        for j, where, local in self._by_shard(indices):
            parts.append(self.shards[j].subset(local))
            order.append(where)
        if not parts:
            return self.shards[0].subset(np.zeros(0, dtype=np.int64))
        joined = HashedFeatures.concatenate(parts)
        inverse = np.empty(len(indices), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(indices))
        return joined.subset(inverse)

    def to_csr(self) -> sparse.csr_matrix:
        """A scipy CSR matrix of bucket counts, shape (N, num_buckets) (in memory)."""
        from scipy import sparse

        return sparse.vstack([s.to_csr() for s in self.shards], format="csr")


def describe_input(data: Documents, text_field: str, name: str) -> dict:
    """What identifies ``data`` in a cache key: a file's path, size and mtime, or a sha256 of in-memory content."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"{name}: expected a path to a .jsonl file, got {str(data)[:60]!r} which is not a file")
        stat = path.stat()
        return {"kind": "file", "path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if iter(data) is data:
        raise TypeError(
            f"{name}: a one-shot iterator ({type(data).__name__}) cannot be cached (its content must be hashed "
            "before featurizing); pass a list, tuple, pandas Series or a jsonl path, or use cache_dir=None"
        )
    digest, count = hashlib.sha256(), 0
    for doc in iter_documents(data, text_field=text_field, name=name):
        encoded = doc.encode("utf-8", errors="surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        count += 1
    return {"kind": "content", "sha256": digest.hexdigest(), "documents": count}


def _write_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` into a temporary file in the same folder, fsync, then rename into place (atomic)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _shard_paths(folder: Path, i: int) -> tuple[Path, Path, Path]:
    stem = folder / f"shard-{i:05d}"
    return Path(f"{stem}.buckets.npy"), Path(f"{stem}.lengths.npy"), Path(f"{stem}.offsets.npy")


def _write_shard(folder: Path, i: int, features: HashedFeatures) -> None:
    buckets, lengths, offsets = _shard_paths(folder, i)
    _write_array(buckets, features.buckets)
    _write_array(lengths, features.lengths)
    _write_array(offsets, features.offsets)  # last: its presence marks the shard as finished


def _open_shard(folder: Path, i: int, meta: dict, expected: tuple[int, int] | None) -> HashedFeatures:
    paths = _shard_paths(folder, i)
    fix = f"delete {folder} to rebuild it"
    arrays = []
    for path in paths:
        try:
            arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError, EOFError) as err:
            raise FeatureCacheError(f"{path}: corrupt or missing DSIR feature shard ({err}); {fix}") from None
    buckets, lengths, offsets = arrays
    n = len(lengths)
    problems = []
    if offsets.ndim != 1 or len(offsets) != n + 1 or int(offsets[0]) != 0:
        problems.append(f"offsets of shape {offsets.shape} for {n} documents")
    elif int(offsets[-1]) != len(buckets):
        problems.append(f"offsets end at {int(offsets[-1])} but the shard holds {len(buckets)} bucket ids")
    if expected is not None and (n, len(buckets)) != expected:
        problems.append(f"(documents, n-grams) = {(n, len(buckets))}, done.json says {expected}")
    if buckets.dtype.kind not in "iu":
        problems.append(f"bucket ids of dtype {buckets.dtype}")
    if problems:
        raise FeatureCacheError(f"{paths[2]}: corrupt DSIR feature shard: {'; '.join(problems)}; {fix}")
    return HashedFeatures(buckets, offsets, lengths, meta["num_buckets"], meta["ngrams"], meta["hash"])


def open_cache(folder: str | Path, progress: bool = False) -> ShardedFeatures:
    """Memory-map a complete cache entry; raises :class:`FeatureCacheError` if it is incomplete or corrupt."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        done = json.loads((folder / "done.json").read_text())
        sizes = [tuple(s) for s in done["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeatureCacheError(f"{folder}: not a complete DSIR feature cache ({err}); delete it to rebuild") from None
    shards = [_open_shard(folder, i, meta, size) for i, size in enumerate(sizes)]
    return ShardedFeatures(shards, folder, progress)


def cached_features(
    data: Documents,
    cache_dir: str | Path,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
    *,
    text_field: str = "text",
    shard_docs: int = 10000,
    workers: int = 1,
    progress: bool = False,
    name: str = "raw",
) -> ShardedFeatures:
    """Hashed n-gram features of ``data``, featurized once into ``cache_dir`` and memory-mapped on later calls.

    An interrupted run resumes: finished shards are kept and only the missing ones are featurized. ``shard_docs``
    documents per shard (fixed by the first run that creates the entry). See the module docstring for the key.
    """
    from tqdm.auto import tqdm

    if shard_docs < 1:
        raise ValueError(f"shard_docs must be >= 1, got {shard_docs}")
    settings = {
        "num_buckets": num_buckets,
        "ngrams": ngrams,
        "hash": hash,
        "tokenizer": TOKEN_ENGINE,
        "text_field": text_field,
        "format": FORMAT_VERSION,
    }
    NgramHasher(num_buckets, ngrams, hash)  # validates the settings before any pass over the data
    source = describe_input(data, text_field, name)
    key = hashlib.sha256(json.dumps({**settings, "input": source}, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / f"features-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise FeatureCacheError(f"{meta_path}: unreadable ({err}); delete {folder} to rebuild it") from None
        found = {k: meta.get(k) for k in (*settings, "input")}
        if found != {**settings, "input": source}:
            raise FeatureCacheError(
                f"{meta_path}: made for {found}, expected { ({**settings, 'input': source}) }; delete {folder}"
            )
        if (folder / "done.json").exists():
            return open_cache(folder, progress)
        shard_docs = int(meta["shard_docs"])
    else:
        meta = {**settings, "input": source, "shard_docs": shard_docs}
        _write_json(meta_path, meta)
    total = source.get("documents") or (len(data) if hasattr(data, "__len__") and not isinstance(data, str) else None)
    bar = tqdm(desc=f"featurize {name} → cache", unit="doc", total=total, disable=not progress)
    batches = enumerate(_batches(iter_documents(data, text_field=text_field, name=name), shard_docs))
    sizes: dict[int, int] = {}

    def todo() -> Iterator[tuple[int, list[str]]]:
        for i, batch in batches:
            sizes[i] = len(batch)
            if _shard_paths(folder, i)[2].exists():
                bar.update(len(batch))  # finished by an earlier run: not featurized again
                continue
            yield i, batch

    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, _worker_init, (num_buckets, ngrams, hash)) as pool:
            order: list[int] = []  # shard number of each batch handed to the pool, in order

            def feed() -> Iterator[list[str]]:
                for i, batch in todo():
                    order.append(i)
                    yield batch

            for j, part in enumerate(pool.imap(_worker_featurize, feed())):
                _write_shard(folder, order[j], part)
                bar.update(len(part))
    else:
        hasher = NgramHasher(num_buckets, ngrams, hash)
        for i, batch in todo():
            _write_shard(folder, i, hasher.featurize(batch))
            bar.update(len(batch))
            if len(hasher._pair_keys) + len(hasher._vocab) > MAX_CACHED_NGRAMS:
                hasher = NgramHasher(num_buckets, ngrams, hash)
    bar.close()
    if not sizes:
        raise ValueError(f"{name}: expected at least one document, got an empty collection")
    shards = []
    for i in range(len(sizes)):
        offsets = np.load(_shard_paths(folder, i)[2], mmap_mode="r")
        if len(offsets) != sizes[i] + 1:
            raise FeatureCacheError(
                f"{_shard_paths(folder, i)[2]}: holds {len(offsets) - 1} documents, the input has {sizes[i]} "
                f"there; delete {folder} to rebuild it"
            )
        shards.append([sizes[i], int(offsets[-1])])
    _write_json(folder / "done.json", {"documents": sum(sizes.values()), "shards": shards})
    return open_cache(folder, progress)


__all__ = ["FeatureCacheError", "ShardedFeatures", "cached_features", "describe_input", "open_cache"]
