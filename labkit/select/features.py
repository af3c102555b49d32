"""Hashed n-gram features for DSIR (Xie et al., NeurIPS 2023), bit-compatible with ``data-selection`` 1.0.3.

A document is lower-cased, split into word-punct tokens (``\\w+|[^\\w\\s]+``, NLTK's ``WordPunctTokenizer``), and
every unigram and bigram (tokens joined by one space) is hashed into ``num_buckets`` buckets with
``int(sha256(s).hexdigest(), 16) % num_buckets``. Unlike the reference, each distinct token and bigram is hashed
once (a per-n-gram cache) and raw text is featurized once; bigrams are looked up as integer pairs in numpy.
``hash="crc32"`` is a stable, *non-identical* alternative; ``hash="fast"`` (:mod:`labkit.select.fast`) tokenizes and
hashes whole batches in numpy, several times faster again, with other buckets.
"""

from __future__ import annotations

import hashlib
import operator
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice, repeat
from operator import methodcaller
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.select.fast import fast_ngram_buckets
from labkit.select.files import iter_file

if TYPE_CHECKING:
    from typing import TypeAlias

    import pandas as pd
    from scipy import sparse

    # What every DSIR entry point accepts as documents: strings, a pandas Series, or a path to one file.
    Documents: TypeAlias = Iterable[str] | pd.Series | str | Path

try:  # NLTK >= 3.10 compiles WordPunctTokenizer's pattern with the third-party `regex` engine, whose \w also
    # matches combining marks ("i̇" stays one token; stdlib `re` splits it). Use the same engine when present.
    import regex as _engine

    TOKEN_ENGINE = "regex"
except ImportError:  # pragma: no cover - regex ships with nltk; stdlib re equals NLTK < 3.10
    _engine = re
    TOKEN_ENGINE = "re"
TOKEN_PATTERN = _engine.compile(r"\w+|[^\w\s]+", _engine.UNICODE | _engine.MULTILINE | _engine.DOTALL)
# str.split() treats these as whitespace but the regex engine's \s does not: documents holding them are tokenized
# whole instead of word by word.
_SPLIT_UNSAFE = ("\x1c", "\x1d", "\x1e", "\x1f")
HASHES = ("sha256", "crc32", "fast")  # sha256: identical to data-selection; fast: see labkit.select.fast


def tokenize(text: str) -> list[str]:
    """Lower-case word-punct tokens, exactly as ``data-selection``'s default ``wordpunct`` tokenizer."""
    return TOKEN_PATTERN.findall(text.lower())


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (numpy ints accepted, bools and floats not); raises naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_document_indices(indices: np.ndarray, n: int, name: str = "indices") -> np.ndarray:
    """``indices`` as int64 positions into ``n`` documents; a bool mask, floats or out-of-range values raise."""
    indices = np.asarray(indices)
    if indices.dtype == bool:
        raise TypeError(f"{name}: expected integer document indices, got a bool array; pass np.nonzero(mask)[0]")
    if indices.size and indices.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer document indices, got dtype {indices.dtype}")
    indices = indices.astype(np.int64, copy=False)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"{name}: document indices must be in 0..{n - 1}, got {indices.min()}..{indices.max()}")
    return indices


def _bucket_function(hash_name: str, num_buckets: int) -> Callable[[str], int] | None:
    if hash_name == "sha256":
        sha256 = hashlib.sha256
        return lambda s: int.from_bytes(sha256(s.encode("utf-8")).digest(), "big") % num_buckets
    if hash_name == "crc32":
        crc32 = zlib.crc32
        return lambda s: crc32(s.encode("utf-8")) % num_buckets
    if hash_name == "fast":
        return None  # the whole batch is hashed in numpy (labkit.select.fast)
    raise ValueError(f"unknown hash {hash_name!r}; expected one of {HASHES}")


@dataclass
class HashedFeatures:
    """Hashed n-grams of N documents in CSR layout: document i owns ``buckets[offsets[i]:offsets[i+1]]``.

    ``lengths`` holds the number of word-punct tokens per document. ``num_buckets``, ``ngrams`` and ``hash`` say
    how the features were made, so features are never mixed across settings.
    """

    buckets: np.ndarray  # flat bucket ids (uint16 when num_buckets <= 65536, else int32)
    offsets: np.ndarray  # int64, length N + 1
    lengths: np.ndarray  # int64 tokens per document
    num_buckets: int  # hash space size
    ngrams: int  # 2 = unigrams + bigrams
    hash: str  # "sha256" (identical to data-selection), "crc32" or "fast" (vectorized, other buckets)

    def __len__(self) -> int:
        return len(self.lengths)

    def doc_index(self) -> np.ndarray:
        """The document id of every entry of ``buckets``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))

    def ngram_counts(self) -> np.ndarray:
        """Hashed n-grams per document (int64)."""
        return np.diff(np.asarray(self.offsets, dtype=np.int64))

    def total_counts(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Bucket counts summed over all documents, or over ``indices`` (float64, length ``num_buckets``)."""
        if indices is None:
            flat = self.buckets
        else:
            indices = check_document_indices(indices, len(self))
            starts, ends = self.offsets[indices], self.offsets[indices + 1]
            flat = self.buckets[concat_ranges(starts, ends)]
        return np.bincount(flat, minlength=self.num_buckets).astype(np.float64)

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """Per-document ``counts @ vector`` for a vector (B,) or matrix (B, T) over buckets; float64."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape[0] != self.num_buckets:
            raise ValueError(f"expected a vector over {self.num_buckets} buckets, got shape {vector.shape}")
        n = len(self)
        out = np.zeros((n,) + vector.shape[1:], dtype=np.float64)
        nonempty = np.diff(self.offsets) > 0
        if self.buckets.size:
            sums = np.add.reduceat(vector[self.buckets], self.offsets[:-1][nonempty], axis=0)
            out[nonempty] = sums
        return out

    def to_csr(self) -> sparse.csr_matrix:
        """A scipy CSR matrix of bucket counts, shape (N, num_buckets)."""
        from scipy import sparse

        data = np.ones(len(self.buckets), dtype=np.float64)
        matrix = sparse.csr_matrix(
            (data, self.buckets.astype(np.int32), self.offsets), shape=(len(self), self.num_buckets)
        )
        matrix.sum_duplicates()
        return matrix

    def subset(self, indices: np.ndarray) -> HashedFeatures:
        """Features of the documents at ``indices`` (in that order)."""
        indices = check_document_indices(indices, len(self))
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return HashedFeatures(
            self.buckets[concat_ranges(starts, ends)],
            offsets,
            self.lengths[indices],
            self.num_buckets,
            self.ngrams,
            self.hash,
        )

    def save(self, path: str | Path) -> None:
        """Write to one ``.npz`` file atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            buckets=self.buckets,
            offsets=self.offsets,
            lengths=self.lengths,
            meta=np.array([self.num_buckets, self.ngrams]),
            hash=np.array(self.hash),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> HashedFeatures:
        """Read features written by :meth:`save`."""
        with np.load(path) as f:
            num_buckets, ngrams = (int(v) for v in f["meta"])
            return cls(f["buckets"], f["offsets"], f["lengths"], num_buckets, ngrams, str(f["hash"]))

    @staticmethod
    def concatenate(parts: list[HashedFeatures]) -> HashedFeatures:
        """Join features of consecutive document batches."""
        if not parts:
            raise ValueError("expected at least one batch of features, got none")
        first = parts[0]
        for i, part in enumerate(parts):
            if (part.num_buckets, part.ngrams, part.hash) != (first.num_buckets, first.ngrams, first.hash):
                raise ValueError(
                    f"batch {i} was made with (num_buckets, ngrams, hash)={(part.num_buckets, part.ngrams, part.hash)}"
                    f", batch 0 with {(first.num_buckets, first.ngrams, first.hash)}; features cannot be mixed"
                )
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)])
        return HashedFeatures(
            np.concatenate([p.buckets for p in parts]),
            offsets.astype(np.int64),
            np.concatenate([p.lengths for p in parts]),
            first.num_buckets,
            first.ngrams,
            first.hash,
        )


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair, vectorized (int64).

    Gathers the rows of a CSR layout (documents' slices of a flat array) in one fancy-indexing step; used by the
    hashed features here and by the bigram LM's encoded corpus.
    """
    sizes = ends - starts
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    keep = sizes > 0
    starts, sizes = starts[keep], sizes[keep]
    steps = np.ones(total, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    steps[first] = starts - np.concatenate([[0], starts[:-1] + sizes[:-1] - 1])
    return np.cumsum(steps)


class NgramHasher:
    """Turns batches of documents into :class:`HashedFeatures`, caching the bucket of every distinct n-gram.

    Same buckets as ``data_selection.hashed_ngram_dsir.get_ngram_counts`` with ``hash="sha256"``; the cache
    is what makes it several times faster (each distinct token or bigram is hashed once per hasher).
    """

    def __init__(self, num_buckets: int = 10000, ngrams: int = 2, hash: str = "sha256") -> None:
        num_buckets, ngrams = check_count("num_buckets", num_buckets), check_count("ngrams", ngrams)
        self.num_buckets, self.ngrams, self.hash = num_buckets, ngrams, hash
        self._bucket = _bucket_function(hash, num_buckets)
        self._dtype = np.uint16 if num_buckets <= 65536 else np.int32
        self._vocab: dict[str, int] = {}
        self._tokens: list[str] = []
        self._token_buckets = np.zeros(0, dtype=np.int64)
        self._pair_keys = np.zeros(0, dtype=np.int64)  # sorted (id_a << 32) | id_b of known bigrams
        self._pair_buckets = np.zeros(0, dtype=np.int64)
        self._long_cache: dict[str, int] = {}  # n-grams with n >= 3 (slow path, strings)
        self._word_tokens: dict[str, tuple[int, ...]] = {}  # whitespace word -> its token ids

    def _hash_many(self, strings: list[str]) -> np.ndarray:
        """Buckets of many strings (C-level map chains: no Python frame per string)."""
        encoded = map(str.encode, strings)
        if self.hash == "sha256":
            digests = map(methodcaller("digest"), map(hashlib.sha256, encoded))
            values = map(int.from_bytes, digests, repeat("big"))
        else:
            values = map(zlib.crc32, encoded)
        return np.fromiter(map(operator.mod, values, repeat(self.num_buckets)), dtype=np.int64, count=len(strings))

    def featurize(self, texts: list[str]) -> HashedFeatures:
        """Hashed unigram..n-gram features of a list of strings."""
        if self.hash == "fast":
            buckets, offsets, lengths = fast_ngram_buckets(texts, self.num_buckets, self.ngrams)
            return HashedFeatures(buckets, offsets, lengths, self.num_buckets, self.ngrams, self.hash)
        # Tokens never span whitespace, so the tokens of a document are the tokens of its whitespace-separated
        # words in order: run the regex once per distinct word and expand words to token ids with C-level maps.
        word_lists = [t.lower().split() for t in texts]
        for i, text in enumerate(texts):
            if any(c in text for c in _SPLIT_UNSAFE):
                word_lists[i] = TOKEN_PATTERN.findall(text.lower())  # each token re-tokenizes to itself
        words = list(chain.from_iterable(word_lists))
        cache, vocab = self._word_tokens, self._vocab
        old = len(vocab)
        for word in set(words).difference(cache):
            ids = tuple(vocab.setdefault(tok, len(vocab)) for tok in TOKEN_PATTERN.findall(word))
            cache[word] = ids
        if len(vocab) > old:
            new_tokens = list(islice(vocab, old, None))
            self._tokens.extend(new_tokens)
            self._token_buckets = np.concatenate([self._token_buckets, self._hash_many(new_tokens)])
        word_ids = list(map(cache.__getitem__, words))
        tokens_per_word = np.fromiter(map(len, word_ids), dtype=np.int64, count=len(words))
        ids = np.fromiter(chain.from_iterable(word_ids), dtype=np.int64, count=int(tokens_per_word.sum()))
        words_per_doc = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
        word_start = np.concatenate([[0], np.cumsum(words_per_doc)[:-1]]).astype(np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        has_words = words_per_doc > 0
        if words:
            lengths[has_words] = np.add.reduceat(tokens_per_word, word_start[has_words])
        n_docs = len(texts)
        tok_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        pos_in_doc = np.arange(len(ids), dtype=np.int64) - tok_start[doc_of_token]
        per_order = [np.maximum(lengths - (i - 1), 0) for i in range(1, self.ngrams + 1)]
        per_doc = np.sum(per_order, axis=0) if per_order else np.zeros(n_docs, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
        buckets = np.empty(int(offsets[-1]), dtype=self._dtype)
        order_start = offsets[:-1].copy()  # where order i's block of each document begins
        buckets[order_start[doc_of_token] + pos_in_doc] = self._token_buckets[ids]
        for order in range(2, self.ngrams + 1):
            order_start = order_start + per_order[order - 2]
            valid = pos_in_doc <= (lengths[doc_of_token] - order)  # an n-gram starts here inside the document
            starts = np.nonzero(valid)[0]
            if order == 2:
                values = self._pair_lookup(ids[starts], ids[starts + 1])
            else:
                values = self._long_lookup(ids, starts, order)
            buckets[order_start[doc_of_token[starts]] + pos_in_doc[starts]] = values
        return HashedFeatures(buckets, offsets, lengths, self.num_buckets, self.ngrams, self.hash)

    def _pair_lookup(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        codes = (a << 32) | b
        unique, inverse = np.unique(codes, return_inverse=True)
        where = np.searchsorted(self._pair_keys, unique)
        found = np.zeros(len(unique), dtype=bool)
        inside = where < len(self._pair_keys)
        found[inside] = self._pair_keys[where[inside]] == unique[inside]
        result = np.empty(len(unique), dtype=np.int64)
        result[found] = self._pair_buckets[where[found]]
        missing = unique[~found]
        if len(missing):
            tokens = self._tokens
            new = self._hash_many([tokens[c >> 32] + " " + tokens[c & 0xFFFFFFFF] for c in missing.tolist()])
            result[~found] = new
            keys = np.concatenate([self._pair_keys, missing])
            order = np.argsort(keys, kind="stable")
            self._pair_keys = keys[order]
            self._pair_buckets = np.concatenate([self._pair_buckets, new])[order]
        return result[inverse]

    def _long_lookup(self, ids: np.ndarray, starts: np.ndarray, order: int) -> np.ndarray:
        tokens, cache, bucket = self._tokens, self._long_cache, self._bucket
        out = np.empty(len(starts), dtype=np.int64)
        ids_list = ids.tolist()
        for j, s in enumerate(starts.tolist()):
            gram = " ".join(tokens[t] for t in ids_list[s : s + order])
            value = cache.get(gram)
            if value is None:
                value = cache[gram] = bucket(gram)
            out[j] = value
        return out


def iter_documents(data: Documents, text_field: str = "text", name: str = "documents") -> Iterator[str]:
    """Yield the strings of ``data``: an iterable of str, a pandas Series, or a path to one file.

    A file is jsonl (optionally gzipped; ``text_field`` of each record), parquet (column ``text_field``) or text
    (``.txt`` / ``.txt.gz``: one document per non-blank line); see :func:`labkit.select.files.iter_file`. Raises
    TypeError naming the position of a non-string item and ValueError naming the file and line of a corrupt record.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise ValueError(
                f"{name}: expected an iterable of strings or a path to a .jsonl, .parquet or .txt file, got the string "
                f"{str(data)[:60]!r} which is not a file"
            )
        yield from iter_file(path, text_field)
        return
    if isinstance(data, bytes):
        raise TypeError(f"{name}: expected an iterable of str, got bytes")
    if data is None or not hasattr(data, "__iter__"):
        raise TypeError(f"{name}: expected documents (an iterable of str or a .jsonl path), got {data!r}")
    for i, doc in enumerate(data):
        if not isinstance(doc, str):
            raise TypeError(f"{name}: document {i} is {type(doc).__name__}, expected str")
        yield doc


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_WORKER_HASHER: NgramHasher | None = None


def _worker_init(num_buckets: int, ngrams: int, hash_name: str) -> None:
    global _WORKER_HASHER
    _WORKER_HASHER = NgramHasher(num_buckets, ngrams, hash_name)


def _worker_featurize(batch: list[str]) -> HashedFeatures:
    assert _WORKER_HASHER is not None
    return _WORKER_HASHER.featurize(batch)


def featurize(
    data: Documents,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
    *,
    text_field: str = "text",
    batch_size: int = 10000,
    workers: int = 1,
    progress: bool = False,
    name: str = "documents",
    hasher: NgramHasher | None = None,
) -> HashedFeatures:
    """Stream ``data`` (see :func:`iter_documents`) in batches and return its hashed n-gram features.

    ``workers > 1`` featurizes batches in that many processes (each with its own n-gram cache); the result is
    identical to one process. Raises ValueError on an empty input.
    """
    from tqdm.auto import tqdm

    batch_size, workers = check_count("batch_size", batch_size), check_count("workers", workers)
    docs = iter_documents(data, text_field=text_field, name=name)
    batches = _batches(docs, batch_size)
    parts: list[HashedFeatures] = []
    bar = tqdm(desc=f"featurize {name}", unit="doc", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, _worker_init, (num_buckets, ngrams, hash)) as pool:
            for part in pool.imap(_worker_featurize, batches):
                parts.append(part)
                bar.update(len(part))
    else:
        hasher = hasher or NgramHasher(num_buckets, ngrams, hash)
        for batch in batches:
            parts.append(hasher.featurize(batch))
            bar.update(len(batch))
    bar.close()
    if not parts:
        raise ValueError(f"{name}: expected at least one document, got an empty collection")
    return HashedFeatures.concatenate(parts)
