"""DSIR's data: the labelled offline pool and everything computed once from it, each target's fit / held-out /
validation split, the premise arm's held-in text and the classification tasks.

The pool's hashed features live in labkit.select's feature cache (``<labkit cache>/select``, the folder
``DSIR(cache_dir=...)`` uses), featurized once and memory-mapped after; the chunked corpus in the corpora cache. The
last pool built is also kept in this process, so a notebook's explorer reuses the pool its run built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit.data import corpora
from labkit.data.cache import cache_dir
from labkit.experiments.dsir.config import TARGETS, Config
from labkit.models.ngram_lm import EncodedCorpus, build_vocabulary, encode
from labkit.select import DSIR
from labkit.select.cache import ShardedFeatures, cached_features
from labkit.select.features import HashedFeatures


@dataclass
class Prepared:
    """The pool and everything computed once from it: hashed features, count matrix, LM vocabulary and ids."""

    corpus: pd.DataFrame  # text, source, label
    features: HashedFeatures | ShardedFeatures  # hashed n-grams of every chunk (mmap'd shards of the feature cache)
    matrix: Any  # scipy CSR counts (N × num_buckets), for the classifier baselines
    encoded: EncodedCorpus  # bigram-LM token ids of every chunk
    vocab_size: int  # bigram-LM vocabulary size including <unk>
    skipped_targets: dict[str, str]  # target -> why it was not run
    _dsir: dict[float, DSIR] = field(default_factory=dict)
    _words: Any = None

    def dsir(self, cfg: Config, target_pseudocount: float | None = None) -> DSIR:
        """One DSIR over the whole corpus per target pseudocount (default ``cfg.target_pseudocount``), reused across
        targets (its raw features and totals are computed once)."""
        pc = cfg.target_pseudocount if target_pseudocount is None else target_pseudocount
        if pc not in self._dsir:
            self._dsir[pc] = DSIR(num_buckets=cfg.num_buckets, cache_dir=feature_cache(), target_pseudocount=pc)
        return self._dsir[pc]

    def words(self) -> Any:
        """Word-unigram counts (N × vocabulary, CSR) from the bigram-LM token ids, ``<unk>`` left out: the word
        features of the heuristic-classification baseline (fastText in the paper uses words, not hashed buckets)."""
        if self._words is None:
            from scipy import sparse

            if self.encoded is None:
                raise ValueError("word features need the encoded corpus (Prepared.encoded is None)")
            ids, offsets = self.encoded.ids, self.encoded.offsets
            counts = sparse.csr_matrix(
                (np.ones(len(ids)), ids, offsets), shape=(len(offsets) - 1, self.vocab_size)
            )
            counts.sum_duplicates()
            self._words = counts[:, 1:].tocsr()
        return self._words


def feature_cache() -> Path:
    """The folder of labkit.select's feature cache for the pool (``DSIR(cache_dir=...)``), under the labkit cache."""
    return cache_dir() / "select"


_LAST_POOL: dict[tuple, Prepared] = {}  # the last pool prepare() built, by the config fields it reads


def prepare(cfg: Config, progress: bool = False) -> Prepared:
    """Build (or load from the labkit cache) the pool and its features; targets with too few chunks are skipped.

    The last pool built in this process is returned again for a config that reads the same fields (the run and the
    notebook's explorer share one pool, as they did when the notebook built it)."""
    key = (tuple(cfg.sources), cfg.chunk_words, tuple(sorted(cfg.max_chunks.items())), cfg.num_buckets,
           cfg.vocab_size, tuple(cfg.targets), cfg.n_fit, cfg.n_eval, cfg.n_val)
    if key in _LAST_POOL:
        return _LAST_POOL[key]
    sources = [s for s in cfg.sources if s in corpora.available_sources()]
    corpus = corpora.build_corpus(sources, chunk_words=cfg.chunk_words, max_chunks=cfg.max_chunks, progress=progress)
    texts = corpus.text.tolist()
    features = cached_features(texts, feature_cache(), cfg.num_buckets, progress=progress, name="pool")
    vocab = build_vocabulary(texts, cfg.vocab_size)
    encoded, vocab_size = encode(texts, vocab), len(vocab)
    skipped = {}
    labels = corpus.label.to_numpy()
    for target in cfg.targets:
        have = int(np.isin(labels, TARGETS[target]).sum())
        if have < cfg.n_fit + cfg.n_eval + cfg.n_val + 1:
            skipped[target] = (
                f"{have} chunks with labels {TARGETS[target]} in sources {sources}; "
                f"needs > n_fit + n_eval + n_val = {cfg.n_fit + cfg.n_eval + cfg.n_val}"
            )
    _LAST_POOL.clear()
    _LAST_POOL[key] = Prepared(corpus, features, features.to_csr(), encoded, vocab_size, skipped)
    return _LAST_POOL[key]


@dataclass
class Split:
    """One seed's view of one target: fit, held-out (test) and validation chunk ids, and the pool to select from."""

    fit: np.ndarray
    eval: np.ndarray
    pool: np.ndarray
    reserved: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # kept out of everything
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # for choices only, never test

    def drawn(self) -> np.ndarray:
        """Every chunk id no method may select: fit, held-out, validation and reserved."""
        return np.concatenate([self.fit, self.eval, self.val, self.reserved])


def split_target(
    prepared: Prepared,
    target: str,
    n_fit: int,
    n_eval: int,
    seed: int,
    reserved: np.ndarray | None = None,
    n_val: int = 0,
) -> Split:
    """Draw the fit sample, the held-out set and ``n_val`` validation chunks from the target's labels; everything
    else is the pool (the fit and held-out draws do not depend on ``n_val``).

    ``reserved`` chunk ids (e.g. a downstream task's labelled examples) are neither drawn nor left in the pool.
    """
    labels = prepared.corpus.label.to_numpy()
    members = np.nonzero(np.isin(labels, TARGETS[target]))[0]
    reserved = np.zeros(0, dtype=np.int64) if reserved is None else np.asarray(reserved, dtype=np.int64)
    if len(reserved):
        members = np.setdiff1d(members, reserved)
    rng = np.random.default_rng([seed, sorted(TARGETS).index(target)])
    drawn = rng.permutation(members)[: n_fit + n_eval + n_val]
    fit, held, val = np.sort(drawn[:n_fit]), np.sort(drawn[n_fit : n_fit + n_eval]), np.sort(drawn[n_fit + n_eval :])
    pool = np.setdiff1d(np.arange(len(labels)), np.concatenate([drawn, reserved]))
    return Split(fit, held, pool, reserved, val)


def held_in_target(prepared: Prepared, split: Split, target: str) -> np.ndarray:
    """The target text a model may train on (the premise arm): every chunk with the target's labels except the
    split's held-out, validation and reserved chunks, i.e. its fit sample and the rest of its domain in the pool."""
    members = np.nonzero(np.isin(prepared.corpus.label.to_numpy(), TARGETS[target]))[0]
    return np.setdiff1d(members, np.concatenate([split.eval, split.val, split.reserved]))


def draw_task(
    labels: np.ndarray, tags: tuple[str, ...], per_tag_train: int, per_tag_eval: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """Labelled chunk ids of one classification task: ``per_tag_train`` + ``per_tag_eval`` chunks of every tag.

    The draw depends only on the tags (not on the seed), so every method and seed is probed on the same examples.
    Returns (train_ids, train_y, eval_ids, eval_y), or a string saying which tag has too few chunks.
    """
    rng = np.random.default_rng(list(hashlib.sha256("|".join(tags).encode()).digest()[:8]))
    train, train_y, held, held_y = [], [], [], []
    for j, tag in enumerate(tags):
        members = np.nonzero(labels == tag)[0]
        need = per_tag_train + per_tag_eval
        if len(members) < need:
            return f"tag {tag!r} has {len(members)} chunks; the task needs {need} (classify_train + classify_eval)"
        drawn = rng.permutation(members)[:need]
        train.append(drawn[:per_tag_train])
        held.append(drawn[per_tag_train:])
        train_y += [j] * per_tag_train
        held_y += [j] * per_tag_eval
    return np.concatenate(train), np.array(train_y), np.concatenate(held), np.array(held_y)
