"""A word-level bigram language model with interpolated absolute discounting (Ney, Essen & Kneser, 1994).

Cheap, deterministic downstream model for data-selection experiments: train on a selection, report held-out
cross-entropy in nats per token. Documents are lower-cased word-punct tokens (the tokenizer DSIR hashes), mapped
to a fixed vocabulary (id 0 = out-of-vocabulary); each document starts from a begin-of-document context.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from labkit.select.features import concat_ranges, tokenize

UNK = "<unk>"


@dataclass
class EncodedCorpus:
    """Token ids of N documents in CSR layout: document i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int64 token ids, 0 = out of vocabulary
    offsets: np.ndarray  # int64, length N + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, indices: np.ndarray) -> EncodedCorpus:
        """The documents at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return EncodedCorpus(self.ids[concat_ranges(starts, ends)], offsets)


def build_vocabulary(texts: Iterable[str], size: int = 30000) -> dict[str, int]:
    """The ``size`` most frequent tokens (ties by first appearance) → ids 1..size; id 0 is ``<unk>``."""
    if size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text))
    vocab = {UNK: 0}
    for token, _ in counts.most_common(size):
        vocab[token] = len(vocab)
    return vocab


def encode(texts: Iterable[str], vocab: dict[str, int]) -> EncodedCorpus:
    """Token ids of each text under ``vocab`` (unknown tokens → 0)."""
    get = vocab.get
    ids, offsets = [], [0]
    for text in texts:
        tokens = tokenize(text)
        ids.extend(get(t, 0) for t in tokens)
        offsets.append(len(ids))
    return EncodedCorpus(np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64))


def _bigrams(corpus: EncodedCorpus, bos: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous, current) for every token; the first token of a document follows ``bos``."""
    prev = np.empty_like(corpus.ids)
    if len(prev):
        prev[1:] = corpus.ids[:-1]
        starts = corpus.offsets[:-1][np.diff(corpus.offsets) > 0]
        prev[starts] = bos
    return prev, corpus.ids


class BigramLM:
    """Interpolated absolute-discounting bigram model over ``vocab_size`` ids (plus a begin-of-document context).

    p(w|v) = max(c(v,w) − D, 0)/c(v) + D·N1+(v·)/c(v) · p_uni(w), with an add-one unigram p_uni, so every
    token has non-zero probability; an unseen context backs off to p_uni.
    """

    def __init__(self, vocab_size: int, discount: float = 0.75) -> None:
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.vocab_size = vocab_size  # ids 0..vocab_size-1 (0 = <unk>)
        self.discount = discount  # 0.75: the usual absolute-discounting constant
        self.bos = vocab_size  # the begin-of-document context id

    def fit(self, corpus: EncodedCorpus) -> BigramLM:
        """Count unigrams and bigrams of ``corpus``."""
        if corpus.ids.size == 0:
            raise ValueError("cannot fit a language model on an empty corpus (no tokens)")
        if corpus.ids.max() >= self.vocab_size or corpus.ids.min() < 0:
            raise ValueError(
                f"token ids must be in 0..{self.vocab_size - 1}, got {corpus.ids.min()}..{corpus.ids.max()}"
            )
        v = self.vocab_size + 1
        prev, cur = _bigrams(corpus, self.bos)
        self._keys, self._pair_counts = np.unique(prev * v + cur, return_counts=True)
        context = self._keys // v
        self._context_counts = np.bincount(context, weights=self._pair_counts, minlength=v)
        self._context_types = np.bincount(context, minlength=v).astype(np.float64)
        unigram = np.bincount(cur, minlength=self.vocab_size).astype(np.float64)
        self._unigram = (unigram + 1.0) / (unigram.sum() + self.vocab_size)
        return self

    def log_prob(self, corpus: EncodedCorpus) -> np.ndarray:
        """Natural-log probability of every token of ``corpus`` given its predecessor."""
        v = self.vocab_size + 1
        prev, cur = _bigrams(corpus, self.bos)
        keys = prev * v + cur
        where = np.searchsorted(self._keys, keys)
        where_clipped = np.minimum(where, len(self._keys) - 1)
        pair = np.where(self._keys[where_clipped] == keys, self._pair_counts[where_clipped], 0).astype(np.float64)
        ctx = self._context_counts[prev]
        backoff = self._unigram[cur]
        seen = ctx > 0
        safe = np.where(seen, ctx, 1.0)
        mixed = (
            np.maximum(pair - self.discount, 0.0) / safe + self.discount * self._context_types[prev] / safe * backoff
        )
        return np.log(np.where(seen, mixed, backoff))

    def cross_entropy(self, corpus: EncodedCorpus) -> float:
        """Mean negative log-likelihood per token in nats."""
        if corpus.ids.size == 0:
            raise ValueError("cannot evaluate on an empty corpus (no tokens)")
        return float(-self.log_prob(corpus).mean())
