"""Fast hashed n-gram features for DSIR (``hash="fast"``): a whole batch of documents tokenized and hashed in numpy.

The exact mode (:class:`~labkit.select.features.NgramHasher` with sha256) spends its time in Python per distinct
word and per n-gram. Here the batch is lower-cased, UTF-8 encoded and joined once; every byte gets a class (space,
word ``[0-9a-z_]`` or any byte >= 0x80, punctuation), tokens are the maximal runs of one non-space class (the
word-punct rule ``\\w+|[^\\w\\s]+`` on ASCII), and each token gets a 64-bit polynomial hash of its bytes from one
prefix sum (arithmetic mod 2**64, wrapping in uint64), finished by splitmix64 (Steele, Lea, Flood 2014). An n-gram's
hash chains its tokens' hashes through splitmix64; its bucket comes from the hash's high 32 bits (multiply-shift).
No Python work per token, so the cost is a few numpy passes over the bytes.

Not bit-identical to the exact mode: other buckets (a different hash), and non-ASCII punctuation or spaces (an em
dash, a no-break space) count as word bytes. Measure the difference on your corpus before swapping modes
(``benchmarks/dsir_speed.py`` reports rank correlation and top-k overlap).
"""

from __future__ import annotations

from operator import methodcaller

import numpy as np

_WORD, _PUNCT = 1, 2
BYTE_CLASS = np.full(256, _PUNCT, dtype=np.uint8)  # 0 = space, 1 = word byte, 2 = punctuation byte
BYTE_CLASS[[ord(c) for c in " \t\n\r\x0b\x0c"]] = 0
BYTE_CLASS[[ord(c) for c in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"]] = _WORD
BYTE_CLASS[0x80:] = _WORD  # UTF-8 lead and continuation bytes: letters of other scripts stay inside words
_BASE = np.uint64(0x100000001B3)  # odd multiplier of the polynomial byte hash (the 64-bit FNV prime)
_CHAIN = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant that orders the tokens of an n-gram
SUB_BATCH_BYTES = 1 << 21  # bytes hashed at once: bounds the uint64 temporaries to ~40 MB per sub-batch


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic): a fast, well-mixed 64-bit hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _Powers:
    """BASE**i and BASE**-i mod 2**64 for i < n, grown on demand (BASE is odd, hence invertible mod 2**64)."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up))
            inverse = np.uint64(pow(int(_BASE), -1, 2**64))
            self.up = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _BASE, dtype=np.uint64))])
            self.down = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, inverse, dtype=np.uint64))])
        return self.up[:n], self.down[:n]


_POWERS = _Powers()


def token_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(start byte, 64-bit hash) of every word-punct token of lower-cased UTF-8 ``data``, in order."""
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    cls = BYTE_CLASS[buf]
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(cls[1:], cls[:-1], out=change[1:])
    bounds = np.append(np.flatnonzero(change), n)
    is_token = cls[bounds[:-1]] != 0
    starts, ends = bounds[:-1][is_token], bounds[1:][is_token]
    up, down = _POWERS.get(n + 1)
    prefix = np.empty(n + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(buf.astype(np.uint64) * up[:n], out=prefix[1:])  # sum of byte_j * BASE**j, wrapping mod 2**64
    raw = (prefix[ends] - prefix[starts]) * down[starts]  # shifted to start at BASE**0: equal tokens, equal values
    return starts, splitmix64(raw ^ (ends - starts).astype(np.uint64))


def fast_ngram_buckets(texts: list[str], num_buckets: int, ngrams: int = 2) -> tuple[np.ndarray, ...]:
    """(buckets, offsets, lengths) of hashed unigram..n-gram features in the CSR layout of ``HashedFeatures``.

    Within a document the n-grams are interleaved by start token (u0, b0, u1, b1, ...); counts do not depend on
    the order. ``lengths`` counts tokens per document.
    """
    encoded = list(map(methodcaller("encode", "utf-8", "surrogatepass"), map(str.lower, texts)))
    sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1  # + the joining space
    doc_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    starts_parts, hash_parts = [], []
    first = 0
    while first < len(encoded):  # sub-batches of whole documents, about SUB_BATCH_BYTES each
        last = max(int(np.searchsorted(doc_starts, doc_starts[first] + SUB_BATCH_BYTES, side="right")), first + 1)
        starts, hashes = token_hashes(b" ".join(encoded[first:last]))
        starts_parts.append(starts + doc_starts[first])
        hash_parts.append(hashes)
        first = last
    starts = np.concatenate(starts_parts) if starts_parts else np.zeros(0, dtype=np.int64)
    hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, dtype=np.uint64)
    tok_start = np.searchsorted(starts, np.append(doc_starts, np.iinfo(np.int64).max))
    lengths = np.diff(tok_start).astype(np.int64)
    doc_of_token = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    n_tokens = len(hashes)
    columns = np.zeros((n_tokens, ngrams), dtype=np.uint64)  # column o-1: the o-gram starting at each token
    inside = np.zeros((n_tokens, ngrams), dtype=bool)
    columns[:, 0], inside[:, 0] = hashes, True
    chained = hashes
    for order in range(2, ngrams + 1):
        chained = splitmix64(chained[:-1] * _CHAIN + hashes[order - 1 :])
        columns[: len(chained), order - 1] = chained
        inside[: len(chained), order - 1] = doc_of_token[order - 1 :] == doc_of_token[: len(chained)]
    kept = columns.ravel()[inside.ravel()]
    # bucket = floor(high 32 bits * num_buckets / 2**32): Lemire's multiply-shift range reduction, no division
    buckets = (((kept >> np.uint64(32)) * np.uint64(num_buckets)) >> np.uint64(32)).astype(
        np.uint16 if num_buckets <= 65536 else np.int32
    )
    per_doc = np.sum([np.maximum(lengths - (order - 1), 0) for order in range(1, ngrams + 1)], axis=0)
    offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    return buckets, offsets, lengths
