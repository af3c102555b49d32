"""An on-disk cache of a featurized raw pool for DSIR: hashed n-gram shards written once, memory-mapped afterwards.

DSIR's reference (p-lambda/dsir) keeps per-shard ``.npy`` caches re-opened with ``mmap_mode="r"``; this is the same
idea for labkit's features, so a pool larger than memory is featurized once and every later fit streams the shards.

One cache entry is a folder ``<cache_dir>/features-<key>/``:

- ``meta.json``: the hasher settings, the shard size and a description of the input (written first);
- ``shard-NNNNN.buckets.npy`` (flat bucket ids), ``shard-NNNNN.lengths.npy`` (tokens per document),
  ``shard-NNNNN.offsets.npy`` (int64, n_docs + 1), then ``shard-NNNNN.json``, the shard's record: its documents,
  n-grams and each file's size and sha256 (hashed from the bytes before they are written). Each file is written as
  a temporary file, fsync'ed and renamed into place (``os.replace``), in that order. A shard exists once its record
  exists, so a killed run leaves only finished shards (and ignorable ``*.tmp`` files); the next fit featurizes
  only the missing shards;
- ``done.json``: documents and shards, written last. Its presence means the entry is complete.

The key is a sha256 of the hasher settings (num_buckets, ngrams, hash, tokenizer engine, format version), the text
field and the input: for a file path its resolved path, size and mtime (editing the file gives a new entry; a file
rewritten with the same size and mtime is not noticed); for an in-memory collection (list, tuple, pandas Series,
numpy array) a sha256 of its content, computed in one extra pass that hashes text but does not tokenize. A one-shot
iterator (generator) cannot be keyed before it is consumed and is refused.

Every shard is checked against its record each time :func:`cached_features` opens the entry: one sequential read of
the files, which the fit that follows reads anyway (then from the page cache). On the 40 MB, 107k-document DSIR pool
this costs 33 ms, against 3 ms for the bare memory-map and 77 ms for one counting + scoring pass (one CPU thread).
Checking lazily on a shard's first use would find a corrupt shard mid-fit, with no input there to rebuild it from.

A corrupt shard (changed bytes, bucket ids rewritten within range, truncated, zeroed, unreadable) is **re-featurized
with a** :class:`FeatureCacheWarning` **naming the file and what was wrong, never used**; only that shard is
featurized again (an unreadable ``meta.json`` rebuilds the entry). An entry whose readable ``meta.json`` was made
for other settings raises :class:`FeatureCacheError` (it is not this module's to delete), as does
:func:`open_cache`, which has no input to rebuild from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
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

FORMAT_VERSION = 2  # bump when the shard layout or the featurizer's output changes (2: per-shard checksums)
MAX_CACHED_NGRAMS = 20_000_000  # distinct n-grams the hasher may remember before it starts afresh (memory bound)
SHARD_PARTS = ("buckets", "lengths", "offsets")  # a shard's .npy files, in the order they are written


class FeatureCacheError(ValueError):
    """A feature-cache entry does not match the requested settings, or is corrupt where nothing can rebuild it."""


class FeatureCacheWarning(UserWarning):
    """A corrupt part of a feature-cache entry was found and is being rebuilt (``"error"`` it to refuse instead)."""


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


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write into a temporary file in the same folder, fsync, then rename into place (atomic)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_array(path: Path, array: np.ndarray) -> dict:
    """``np.save`` ``array`` to ``path`` atomically; returns the file's size and sha256 (hashed before writing)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getbuffer()
    _write_bytes(path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_json(path: Path, value: dict) -> None:
    _write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def _shard_paths(folder: Path, i: int) -> dict[str, Path]:
    """The array files of shard ``i`` by part, in the order they are written."""
    return {part: folder / f"shard-{i:05d}.{part}.npy" for part in SHARD_PARTS}


def _record_path(folder: Path, i: int) -> Path:
    return folder / f"shard-{i:05d}.json"


def _write_shard(folder: Path, i: int, features: HashedFeatures) -> None:
    files = {part: _write_array(path, getattr(features, part)) for part, path in _shard_paths(folder, i).items()}
    record = {"documents": len(features), "ngrams": len(features.buckets), "files": files}
    _write_json(_record_path(folder, i), record)  # last: its presence marks the shard as finished


def _map_shard(folder: Path, i: int, meta: dict) -> HashedFeatures:
    """Shard ``i`` memory-mapped, unchecked (see :func:`_open_shard`)."""
    arrays = {part: np.load(path, mmap_mode="r", allow_pickle=False) for part, path in _shard_paths(folder, i).items()}
    return HashedFeatures(**arrays, num_buckets=meta["num_buckets"], ngrams=meta["ngrams"], hash=meta["hash"])


def _open_shard(folder: Path, i: int, meta: dict) -> HashedFeatures:
    """Shard ``i`` memory-mapped once each of its files matches the size and sha256 in the shard's record.

    Costs one read of the shard's files (they are then in the page cache for the pass that follows). Raises
    :class:`FeatureCacheError` naming the file and what is wrong: missing, unreadable, truncated or changed.
    """
    record_path = _record_path(folder, i)
    try:
        files = json.loads(record_path.read_text())["files"]
        expected = {part: (int(files[part]["bytes"]), str(files[part]["sha256"])) for part in SHARD_PARTS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeatureCacheError(f"{record_path}: missing or unreadable shard record ({err!r})") from None
    for part, path in _shard_paths(folder, i).items():
        size, digest = expected[part]
        try:
            found_size = path.stat().st_size
            if found_size != size:
                raise FeatureCacheError(f"{path}: {found_size} bytes, {size} when written (truncated or replaced)")
            with open(path, "rb") as f:
                found = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as err:
            raise FeatureCacheError(f"{path}: missing or unreadable ({err.strerror or err})") from None
        if found != digest:
            raise FeatureCacheError(f"{path}: sha256 {found[:16]}… differs from {digest[:16]}… recorded when written")
    return _map_shard(folder, i, meta)


def open_cache(folder: str | Path, progress: bool = False) -> ShardedFeatures:
    """Memory-map a complete cache entry after checking every shard against its checksums (one read of the files).

    Without the input nothing can be re-featurized, so an incomplete or corrupt entry raises
    :class:`FeatureCacheError`; :func:`cached_features` repairs it instead.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        count = int(json.loads((folder / "done.json").read_text())["shards"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeatureCacheError(f"{folder}: not a complete DSIR feature cache ({err}); delete it to rebuild") from None
    try:
        shards = [_open_shard(folder, i, meta) for i in range(count)]
    except FeatureCacheError as err:
        raise FeatureCacheError(
            f"corrupt DSIR feature shard, {err}; delete {folder}, or call cached_features with the input to rebuild it"
        ) from None
    return ShardedFeatures(shards, folder, progress)


def _discard(folder: Path, i: int, problem: str) -> None:
    """Warn that shard ``i`` is corrupt and remove its record: it is re-featurized and never used, even if this run
    is killed before it is."""
    warnings.warn(f"{problem}; re-featurizing shard {i} of {folder}", FeatureCacheWarning, stacklevel=3)
    _record_path(folder, i).unlink(missing_ok=True)


def _checked_shard(folder: Path, i: int, meta: dict) -> HashedFeatures | None:
    """Shard ``i`` checked against its record (:func:`_open_shard`), or None once it is discarded as corrupt."""
    try:
        return _open_shard(folder, i, meta)
    except FeatureCacheError as err:
        _discard(folder, i, str(err))
        return None


def _entry_meta(folder: Path, settings: dict, shard_docs: int) -> dict:
    """The entry's meta.json, written if absent (or unreadable: the entry is then rebuilt with a warning).

    A readable meta.json made for other settings raises :class:`FeatureCacheError`: the folder is keyed by the
    settings, so it holds something this module did not write, and it is left for the user to delete.
    """
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            warnings.warn(f"{meta_path}: unreadable ({err}); rebuilding {folder}", FeatureCacheWarning, stacklevel=2)
            for stale in [folder / "done.json", *folder.glob("shard-*.json")]:
                stale.unlink(missing_ok=True)
        else:
            found = {k: meta.get(k) for k in settings}
            if found != settings:
                raise FeatureCacheError(f"{meta_path}: made for {found}, expected {settings}; delete {folder}")
            return meta
    meta = {**settings, "shard_docs": shard_docs}
    _write_json(meta_path, meta)
    return meta


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

    An interrupted run resumes: finished shards are kept and only the missing ones are featurized. A corrupt shard
    is re-featurized with a :class:`FeatureCacheWarning`, never used. ``shard_docs`` documents per shard (fixed by the
    first run that creates the entry). See the module docstring for the key and the cost of the checksums.
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
    settings["input"] = describe_input(data, text_field, name)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / f"features-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = _entry_meta(folder, settings, shard_docs)
    shard_docs = int(meta["shard_docs"])
    shards: dict[int, HashedFeatures] = {}  # usable shards: checked against their records, or written in this call
    done_path = folder / "done.json"
    if done_path.exists():
        try:
            count = int(json.loads(done_path.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{done_path}: unreadable ({err!r}); checking every shard", FeatureCacheWarning, stacklevel=2)
            count = 0
        for i in range(count):
            if (shard := _checked_shard(folder, i, meta)) is not None:
                shards[i] = shard
        if count and len(shards) == count:
            return ShardedFeatures([shards[i] for i in range(count)], folder, progress)
        done_path.unlink()
    source = settings["input"]
    total = source.get("documents") or (len(data) if hasattr(data, "__len__") and not isinstance(data, str) else None)
    bar = tqdm(desc=f"featurize {name} → cache", unit="doc", total=total, disable=not progress)
    batches = enumerate(_batches(iter_documents(data, text_field=text_field, name=name), shard_docs))
    sizes: dict[int, int] = {}

    def todo() -> Iterator[tuple[int, list[str]]]:
        for i, batch in batches:
            sizes[i] = len(batch)
            if i not in shards and _record_path(folder, i).exists():  # finished by an earlier run
                if (shard := _checked_shard(folder, i, meta)) is not None:
                    shards[i] = shard
            if i in shards and len(shards[i]) != len(batch):
                problem = f"{_record_path(folder, i)}: holds {len(shards.pop(i))} documents, the input has {len(batch)}"
                _discard(folder, i, problem)
            if i in shards:
                bar.update(len(batch))  # not featurized again
                continue
            yield i, batch

    def finish(i: int, part: HashedFeatures) -> None:
        _write_shard(folder, i, part)
        shards[i] = _map_shard(folder, i, meta)  # just written from the hashed bytes: not read back
        bar.update(len(part))

    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, _worker_init, (num_buckets, ngrams, hash)) as pool:
            order: list[int] = []  # shard number of each batch handed to the pool, in order

            def feed() -> Iterator[list[str]]:
                for i, batch in todo():
                    order.append(i)
                    yield batch

            for j, part in enumerate(pool.imap(_worker_featurize, feed())):
                finish(order[j], part)
    else:
        hasher = NgramHasher(num_buckets, ngrams, hash)
        for i, batch in todo():
            finish(i, hasher.featurize(batch))
            if len(hasher._pair_keys) + len(hasher._vocab) > MAX_CACHED_NGRAMS:
                hasher = NgramHasher(num_buckets, ngrams, hash)
    bar.close()
    if not sizes:
        raise ValueError(f"{name}: expected at least one document, got an empty collection")
    _write_json(done_path, {"documents": sum(sizes.values()), "shards": len(sizes)})
    return ShardedFeatures([shards[i] for i in range(len(sizes))], folder, progress)


__all__ = [
    "FeatureCacheError",
    "FeatureCacheWarning",
    "ShardedFeatures",
    "cached_features",
    "describe_input",
    "open_cache",
]
