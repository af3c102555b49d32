"""Data selection by importance resampling (DSIR; Xie, Santurkar, Ma, Liang, NeurIPS 2023, arXiv 2302.03169).

Two bag-of-hashed-n-gram multinomials (target, raw) give each raw document the log importance weight
``z · (log p_target − log p_raw)``; k documents are drawn without replacement ∝ weight by Gumbel top-k. In the
default ``hash="sha256"`` mode the weights equal ``data-selection`` 1.0.3's (p-lambda/dsir) to ~1e-12, while the
raw pool is featurized once with a per-n-gram hash cache (``cache_dir=``: once per input, into memory-mapped
on-disk shards; see :mod:`labkit.select.cache`); ``hash="fast"`` trades identical buckets for a vectorized
featurizer (:mod:`labkit.select.fast`). Also here: the paper's KL-reduction metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.config import number_in_range
from labkit.select.cache import ShardedFeatures, cached_features
from labkit.select.features import HashedFeatures, NgramHasher, check_count, check_document_indices, featurize

FEATURE_TYPES = (HashedFeatures, ShardedFeatures)  # precomputed features accepted wherever documents are

if TYPE_CHECKING:
    from typing import TypeAlias

    from labkit.select.features import Documents

    # Documents (see labkit.select.features.iter_documents) or their precomputed features.
    DocumentsOrFeatures: TypeAlias = Documents | HashedFeatures | ShardedFeatures


def check_smoothing(epsilon: float, target_pseudocount: float) -> None:
    """DSIR's smoothing: ``epsilon`` > 0 (added inside the log), ``target_pseudocount`` >= 0 (added to targets)."""
    number_in_range("epsilon", epsilon, 0.0, interval="()")
    number_in_range("target_pseudocount", target_pseudocount, 0.0)


def _check_k(k: int, available: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r} ({type(k).__name__})")
    if not 0 < k <= available:
        raise ValueError(f"k must be in 1..{available} ({what}), got {k}")
    return int(k)


def _exclude_mask(exclude: np.ndarray | None, n: int) -> np.ndarray:
    """Boolean mask over ``n`` raw documents of the ``exclude`` indices (checked: integers in range)."""
    mask = np.zeros(n, dtype=bool)
    if exclude is not None and len(exclude):
        mask[check_document_indices(exclude, n, "exclude")] = True
    return mask


def gumbel_top_k(
    log_weights: np.ndarray, k: int, seed: int = 0, temperature: float = 1.0, top_k: bool = False
) -> np.ndarray:
    """Indices of k items drawn without replacement with probability ∝ exp(log_weights / temperature).

    The Gumbel top-k trick (as in DSIR's reference): add Gumbel(0, 1) noise and keep the k largest, highest
    first. ``top_k=True`` drops the noise (deterministic top-k); a large temperature approaches uniform sampling.
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 1:
        raise ValueError(f"log_weights must be 1-D (one per candidate), got shape {log_weights.shape}")
    if np.isnan(log_weights).any():
        where = np.nonzero(np.isnan(log_weights))[0][:5].tolist()
        raise ValueError(f"log_weights must not be NaN; found NaN at indices {where}")
    n = len(log_weights)
    k = _check_k(k, n, "the number of candidates")
    number_in_range("temperature", temperature, 0.0, interval="()")
    keys = log_weights / temperature
    if not top_k:
        keys = keys + np.random.default_rng(seed).gumbel(size=n)
    chosen = np.argpartition(-keys, k - 1)[:k] if k < n else np.arange(n)
    return chosen[np.argsort(-keys[chosen], kind="stable")]


@dataclass
class LengthFilter:
    """What the minimum-length filter did: reported, never silent (the reference drops short documents quietly)."""

    min_length: int  # tokens; documents shorter than this are not eligible
    dropped: int  # documents removed by the filter
    eligible: int  # documents left to select from


def _check_settings(
    features: HashedFeatures | ShardedFeatures, expected: tuple[int, int, str], name: str
) -> HashedFeatures | ShardedFeatures:
    """Precomputed features made with the expected (num_buckets, ngrams, hash); never mixed across settings."""
    made = (features.num_buckets, features.ngrams, features.hash)
    if made != expected:
        raise ValueError(f"{name}: features were made with (num_buckets, ngrams, hash)={made}, expected {expected}")
    return features


def _features(data: DocumentsOrFeatures, dsir: DSIR, name: str) -> HashedFeatures | ShardedFeatures:
    if isinstance(data, FEATURE_TYPES):
        return _check_settings(data, (dsir.num_buckets, dsir.ngrams, dsir.hash), name)
    if dsir.cache_dir is not None and name == "raw":
        return cached_features(
            data,
            dsir.cache_dir,
            dsir.num_buckets,
            dsir.ngrams,
            dsir.hash,
            text_field=dsir.text_field,
            shard_docs=dsir.batch_size,
            workers=dsir.workers,
            progress=dsir.progress,
            name=name,
        )
    return featurize(
        data,
        dsir.num_buckets,
        dsir.ngrams,
        dsir.hash,
        text_field=dsir.text_field,
        batch_size=dsir.batch_size,
        workers=dsir.workers,
        progress=dsir.progress,
        name=name,
        hasher=None if dsir.workers > 1 else dsir._hasher,
    )


def log_importance_ratio(
    raw_counts: np.ndarray, target_counts: np.ndarray, target_pseudocount: float = 0.0, epsilon: float = 1e-8
) -> np.ndarray:
    """``log(p_target + ε) − log(p_raw + ε)`` per bucket, from bucket counts: DSIR's per-n-gram log weight.

    ``target_counts`` is (num_buckets,) or (num_buckets, n_targets); each target column gets ``target_pseudocount``
    added before normalizing. A document's log importance weight is its count vector dotted with this. As
    data-selection 1.0.3 (``epsilon`` = 1e-8 inside both logs).
    """
    raw_counts = np.asarray(raw_counts, dtype=np.float64)
    if raw_counts.sum() <= 0:
        raise ValueError("raw: has no n-grams (every document is empty or whitespace); expected some tokens")
    target_counts = np.asarray(target_counts, dtype=np.float64)
    single = target_counts.ndim == 1
    target_counts = target_counts[:, None] if single else target_counts
    if (target_counts.sum(axis=0) <= 0).any():
        raise ValueError("target: has no n-grams (every document is empty or whitespace); expected some tokens")
    raw_probs = raw_counts / raw_counts.sum()
    columns = [np.ascontiguousarray(target_counts[:, j]) + target_pseudocount for j in range(target_counts.shape[1])]
    target_probs = np.stack([c / c.sum() for c in columns], axis=1)  # 1-D sums per column, as data-selection
    log_diff = np.log(target_probs + epsilon) - np.log(raw_probs[:, None] + epsilon)
    return log_diff[:, 0] if single else log_diff


class DSIR:
    """Hashed n-gram DSIR: ``fit(raw, target)``, then ``log_weights()`` and ``resample(k, seed)``.

    ``raw`` and each target may be an iterable of strings, a pandas Series, a jsonl path (``text_field``) or
    precomputed :class:`HashedFeatures` / :class:`ShardedFeatures`. ``target`` may be a dict of named targets.
    Without ``cache_dir`` the raw pool is featurized once per DSIR object and held in memory (``raw_features``).
    With ``cache_dir`` it is featurized once into on-disk shards of ``batch_size`` documents (resumable, keyed by
    the input and the hasher settings; see :mod:`labkit.select.cache`) and later fits memory-map them, so the
    features never need to fit in memory; p_raw and the weights then stream shard by shard (the weights and
    lengths, one number per document, stay in memory). ``hash="fast"`` featurizes ~8x faster with other buckets
    (:mod:`labkit.select.fast`). For pools of files larger than memory, or on Ray, see
    :func:`labkit.select.select_files` and :func:`labkit.select.select_files_ray`.
    """

    def __init__(
        self,
        num_buckets: int = 10000,
        ngrams: int = 2,
        *,
        hash: str = "sha256",
        min_length: int = 0,
        target_pseudocount: float = 0.0,
        epsilon: float = 1e-8,
        max_raw_tokens: int | None = None,
        text_field: str = "text",
        batch_size: int = 10000,
        workers: int = 1,
        progress: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        check_smoothing(epsilon, target_pseudocount)
        check_count("min_length", min_length, 0)
        check_count("batch_size", batch_size)
        check_count("workers", workers)
        if max_raw_tokens is not None:
            check_count("max_raw_tokens", max_raw_tokens)
        self.num_buckets = num_buckets  # 10,000 as in the paper and data-selection
        self.ngrams = ngrams  # 2: unigrams + bigrams
        self.hash = hash  # "sha256": identical to data-selection; "fast": vectorized, other buckets; "crc32"
        self.min_length = min_length  # tokens; data-selection defaults to 100 and drops silently, we report it
        self.target_pseudocount = target_pseudocount  # additive smoothing of target counts (unreleased upstream)
        self.epsilon = epsilon  # added to both probabilities inside the log, 1e-8 as in data-selection
        self.max_raw_tokens = max_raw_tokens  # None: fit p_raw on all raw n-grams (data-selection 'auto' = 1e9)
        self.text_field = text_field  # jsonl field holding the text
        self.batch_size = batch_size  # documents per streamed batch
        self.workers = workers  # featurization processes; 1 = this process
        self.progress = progress  # tqdm bars while featurizing (and over cached shards)
        self.cache_dir = cache_dir  # None: raw features in memory; a folder: featurize once into mmap'd shards
        self._hasher = NgramHasher(num_buckets, ngrams, hash)
        self.raw_features: HashedFeatures | ShardedFeatures | None = None
        self.target_names: list[str] | None = None
        self.target_proportions: np.ndarray | None = None
        self.log_diff: np.ndarray | None = None  # (num_buckets,) or (num_buckets, n_targets)
        self._log_weights: np.ndarray | None = None
        self._multi = False
        self._raw_source = None
        self._raw_total = None
        self._excluded = None

    def fit(
        self,
        raw: DocumentsOrFeatures | None,
        target: DocumentsOrFeatures | Mapping[str, DocumentsOrFeatures],
        proportions: Mapping[str, float] | None = None,
        *,
        exclude: np.ndarray | None = None,
    ) -> DSIR:
        """Featurize ``raw`` (once) and the target(s), and fit p_raw, p_target and the log-ratio per bucket.

        With a dict of targets, ``proportions`` splits k at resample time (default: by each target's n-gram
        count, as data-selection's ``separate_targets``). ``exclude``: raw indices left out of p_raw and never
        resampled (e.g. the target's own held-out documents inside the pool); refitting reuses the raw features.
        """
        if raw is not None and (self.raw_features is None or raw is not self._raw_source):
            self.raw_features = _features(raw, self, "raw")
            self._raw_source = raw
        if self.raw_features is None:
            raise ValueError("raw: expected documents to select from, got None")
        feats = self.raw_features
        self._excluded = _exclude_mask(exclude, len(feats))
        if self.max_raw_tokens is None:
            if self._raw_total is None or self._raw_total[0] is not feats:
                self._raw_total = (feats, feats.total_counts())
            raw_counts = self._raw_total[1]
            if self._excluded.any():
                raw_counts = raw_counts - feats.total_counts(np.nonzero(self._excluded)[0])
        else:  # like data-selection: stop after the document whose n-grams cross the cap
            per_doc = feats.ngram_counts()
            stop = int(np.searchsorted(np.cumsum(per_doc), self.max_raw_tokens, side="right")) + 1
            raw_counts = feats.total_counts(np.arange(min(stop, len(feats))))
        if raw_counts.sum() <= 0:
            raise ValueError("raw: has no n-grams (every document is empty or whitespace); expected some tokens")
        if target is None:
            raise TypeError("target: expected documents, features or a dict of named targets, got None")
        self._multi = isinstance(target, Mapping)
        targets = dict(target) if self._multi else {"target": target}
        if not targets:
            raise ValueError("target: expected at least one named target, got an empty dict")
        self.target_names = list(targets)
        columns = []
        for name, docs in targets.items():
            counts = _features(docs, self, f"target {name!r}").total_counts()
            if counts.sum() <= 0:
                raise ValueError(f"target {name!r}: has no n-grams (every document is empty or whitespace); "
                                 "expected some tokens")
            columns.append(counts)
        target_counts = np.stack(columns, axis=1)
        sizes = [(c + self.target_pseudocount).sum() for c in columns]
        self.log_diff = log_importance_ratio(raw_counts, target_counts, self.target_pseudocount, self.epsilon)
        if proportions is not None:
            unknown = sorted(set(proportions) - set(self.target_names))
            if unknown or not self._multi:
                raise ValueError(
                    f"proportions name targets {unknown or sorted(proportions)}; "
                    f"expected names among {self.target_names} of a dict target"
                )
            weights = np.array([float(proportions.get(n, 0.0)) for n in self.target_names])
        else:
            weights = np.array(sizes, dtype=np.float64)
        if not np.isfinite(weights).all() or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"proportions must be finite, >= 0 and have a positive sum, got {weights.tolist()}")
        self.target_proportions = weights / weights.sum()
        self._log_weights = None
        return self

    def _check_fitted(self) -> None:
        if self.log_diff is None or self.raw_features is None:
            raise RuntimeError("DSIR is not fitted; call .fit(raw, target) first")

    def log_weights(self, target: str | None = None) -> np.ndarray:
        """Log importance weights of the raw documents, float64: shape (N,), or (N, n_targets) for a dict target.

        ``target`` picks one named target's column.
        """
        self._check_fitted()
        if self._log_weights is None:
            self._log_weights = self.raw_features.dot(self.log_diff)
        weights = self._log_weights
        if target is not None:
            if target not in self.target_names:
                raise KeyError(f"unknown target {target!r}; expected one of {self.target_names}")
            return weights[:, self.target_names.index(target)].copy()
        return weights.copy() if self._multi else weights[:, 0].copy()

    def length_filter(self) -> LengthFilter:
        """How many raw documents the ``min_length`` filter removed and how many remain."""
        self._check_fitted()
        long_enough = self.raw_features.lengths >= self.min_length
        eligible = int((long_enough & ~self._excluded).sum())
        return LengthFilter(self.min_length, int((~long_enough).sum()), eligible)

    def resample(self, k: int, seed: int = 0, *, top_k: bool = False, temperature: float = 1.0) -> np.ndarray:
        """Indices into ``raw`` of k documents drawn without replacement ∝ importance weight (Gumbel top-k).

        With several targets k is split by ``target_proportions`` and targets draw in turn without repeats, as
        data-selection does. Raises ValueError when k exceeds the documents that pass ``min_length``.
        """
        self._check_fitted()
        report = self.length_filter()
        k = _check_k(
            k,
            report.eligible,
            f"documents with >= {self.min_length} tokens; {report.dropped} of {len(self.raw_features)} were shorter, "
            f"{int(self._excluded.sum())} excluded",
        )
        number_in_range("temperature", temperature, 0.0, interval="()")
        weights = self.log_weights()
        weights = weights[:, None] if weights.ndim == 1 else weights
        shares = [int(k * p) for p in self.target_proportions]
        shares[-1] += k - sum(shares)
        available = (self.raw_features.lengths >= self.min_length) & ~self._excluded
        chosen: list[np.ndarray] = []
        rng = np.random.default_rng(seed)
        for column, share in enumerate(shares):
            if share == 0:
                continue
            candidates = np.nonzero(available)[0]
            picked = candidates[
                gumbel_top_k(
                    weights[candidates, column],
                    share,
                    seed=int(rng.integers(2**63)),
                    temperature=temperature,
                    top_k=top_k,
                )
            ]
            available[picked] = False
            chosen.append(picked)
        return np.concatenate(chosen)


def _counts(data: DocumentsOrFeatures | np.ndarray, num_buckets: int, ngrams: int, hash: str, name: str) -> np.ndarray:
    if isinstance(data, FEATURE_TYPES):
        return _check_settings(data, (num_buckets, ngrams, hash), name).total_counts()
    if isinstance(data, np.ndarray) and data.ndim == 1 and data.dtype.kind in "fiu":
        if len(data) != num_buckets:
            raise ValueError(f"{name}: expected bucket counts of length {num_buckets}, got {len(data)}")
        if not np.isfinite(data).all() or (data < 0).any():
            raise ValueError(f"{name}: bucket counts must be finite and >= 0")
        return data.astype(np.float64)
    return featurize(data, num_buckets, ngrams, hash, name=name).total_counts()


def kl_reduction(
    selected: DocumentsOrFeatures | np.ndarray,
    target: DocumentsOrFeatures | np.ndarray | Mapping[str, DocumentsOrFeatures | np.ndarray],
    raw: DocumentsOrFeatures | np.ndarray,
    *,
    pseudocount: float = 1.0,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
) -> float:
    """KL reduction (DSIR paper §4): mean over targets of KL(p̂‖q_raw) − KL(p̂‖p_selected), in nats.

    All three are hashed n-gram distributions (documents, :class:`HashedFeatures` or count vectors). Smoothing:
    ``pseudocount`` is added to every bucket of the selected and raw counts; the target is not smoothed (its
    entropy cancels in the difference). Keep ``pseudocount * num_buckets`` small next to the selection's n-gram
    count. ``target`` may be a dict of targets (the paper's set 𝒯).
    """
    number_in_range("pseudocount", pseudocount, 0.0, interval="()")  # > 0: empty buckets would give infinite KL
    if isinstance(target, Mapping) and not target:
        raise ValueError("target: expected at least one named target, got an empty dict")
    args = (num_buckets, ngrams, hash)
    sel = _counts(selected, *args, "selected") + pseudocount
    ref = _counts(raw, *args, "raw") + pseudocount
    log_sel, log_raw = np.log(sel / sel.sum()), np.log(ref / ref.sum())
    targets = target.values() if isinstance(target, Mapping) else [target]
    values = []
    for t in targets:
        p = _counts(t, *args, "target")
        if p.sum() <= 0:
            raise ValueError("target: has no n-grams; expected at least one token")
        p = p / p.sum()
        values.append(float(np.dot(p, log_sel - log_raw)))
    return float(np.mean(values))


