"""Selection baselines of the DSIR paper on the same hashed n-gram features: random, heuristic classification
(GPT-3, The Pile), target likelihood (DSIR without the raw denominator) and TF-IDF retrieval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from labkit.config import number_in_range
from labkit.select.dsir import FEATURE_TYPES, _check_k, _exclude_mask, gumbel_top_k
from labkit.select.features import check_count, featurize

if TYPE_CHECKING:
    from typing import TypeAlias

    from scipy import sparse

    from labkit.select.dsir import DocumentsOrFeatures

    # What a baseline accepts for raw and target: documents, features or a scipy sparse (N × num_buckets) count matrix.
    DocumentsOrCounts: TypeAlias = DocumentsOrFeatures | sparse.spmatrix | sparse.sparray


TfWeighting = Literal["raw", "log", "binary"]  # TF-IDF's term-frequency weighting (see tfidf_select)
TF_WEIGHTS = {  # each weighting of counts >= 1 (zeros stay zero: sparse)
    "raw": lambda counts: counts,
    "log": lambda counts: 1.0 + np.log(counts),
    "binary": np.ones_like,
}


def random_select(n: int, k: int, seed: int = 0) -> np.ndarray:
    """k distinct indices out of ``range(n)``, uniformly (the paper's random baseline)."""
    k = _check_k(k, check_count("n", n, 0), "the pool size")
    return np.random.default_rng(seed).choice(n, size=k, replace=False)


def _as_matrix(data: DocumentsOrCounts, num_buckets: int, ngrams: int, hash: str, name: str) -> sparse.csr_matrix:
    """Documents, :class:`HashedFeatures` or a scipy sparse (N × num_buckets) count matrix → CSR counts."""
    from scipy import sparse

    if sparse.issparse(data):
        if data.shape[1] != num_buckets:
            raise ValueError(f"{name}: expected a count matrix with {num_buckets} columns, got shape {data.shape}")
        return sparse.csr_matrix(data)
    if not isinstance(data, FEATURE_TYPES):
        data = featurize(data, num_buckets, ngrams, hash, name=name)
    return data.to_csr()


def _allowed(n: int, k: int, exclude: np.ndarray | None) -> np.ndarray:
    """Mask of the raw documents a baseline may pick; checks 0 < k <= their number."""
    allowed = ~_exclude_mask(exclude, n)
    _check_k(k, int(allowed.sum()), f"the pool size less {n - int(allowed.sum())} excluded")
    return allowed


def _target_counts(target: DocumentsOrCounts, num_buckets: int, ngrams: int, hash: str) -> np.ndarray:
    """Summed bucket counts of the target; a target without any n-gram raises (it would rank nothing)."""
    counts = np.asarray(_as_matrix(target, num_buckets, ngrams, hash, "target").sum(axis=0)).ravel()
    if counts.sum() <= 0:
        raise ValueError("target: has no n-grams (every document is empty or whitespace); expected some tokens")
    return counts


def heuristic_select(
    raw: DocumentsOrCounts,
    target: DocumentsOrCounts,
    k: int,
    seed: int = 0,
    *,
    negatives_per_target: float = 5.0,
    pareto_alpha: float = 9.0,
    c: float = 1.0,
    exclude: np.ndarray | None = None,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
) -> np.ndarray:
    """Heuristic classification (GPT-3, The Pile): a target-vs-raw classifier plus Pareto acceptance.

    Logistic regression on log1p hashed counts (fastText in the paper; ``c`` its inverse L2 strength) separates the
    target from a random raw sample ``negatives_per_target`` times its size; document i is kept when
    ``score_i + pareto(alpha) > 1``.
    For a fixed budget the threshold 1 is moved so that exactly k pass: the top k of ``score + pareto noise``.
    """
    number_in_range("negatives_per_target", negatives_per_target, 0.0, interval="()")
    number_in_range("pareto_alpha", pareto_alpha, 0.0, interval="()")
    number_in_range("c", c, 0.0, interval="()")
    from sklearn.linear_model import LogisticRegression

    x_raw = _as_matrix(raw, num_buckets, ngrams, hash, "raw").log1p()
    x_target = _as_matrix(target, num_buckets, ngrams, hash, "target").log1p()
    allowed = _allowed(x_raw.shape[0], k, exclude)
    rng = np.random.default_rng(seed)
    candidates = np.nonzero(allowed)[0]
    n_neg = min(len(candidates), max(1, int(round(negatives_per_target * x_target.shape[0]))))
    negatives = rng.choice(candidates, size=n_neg, replace=False)
    from scipy import sparse

    x = sparse.vstack([x_target, x_raw[negatives]])
    y = np.concatenate([np.ones(x_target.shape[0]), np.zeros(n_neg)])
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
    scores = clf.predict_proba(x_raw)[:, 1]
    # keep iff score + pareto > 1; for a budget of exactly k, move the threshold: top-k of score + pareto noise
    keys = np.where(allowed, scores + rng.pareto(pareto_alpha, size=len(scores)), -np.inf)
    return gumbel_top_k(keys, k, top_k=True)


def target_likelihood_select(
    raw: DocumentsOrCounts,
    target: DocumentsOrCounts,
    k: int,
    *,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
    epsilon: float = 1e-8,
    target_pseudocount: float = 0.0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k raw documents by length-normalized log p̂_target(z) alone (DSIR without the raw denominator);
    ``target_pseudocount`` is added to every target bucket count first (additive smoothing, as DSIR's)."""
    number_in_range("epsilon", epsilon, 0.0, interval="()")
    number_in_range("target_pseudocount", target_pseudocount, 0.0)
    x = _as_matrix(raw, num_buckets, ngrams, hash, "raw")
    counts = _target_counts(target, num_buckets, ngrams, hash) + target_pseudocount
    lengths = np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)
    scores = (x @ np.log(counts / counts.sum() + epsilon)) / lengths
    return gumbel_top_k(np.where(_allowed(x.shape[0], k, exclude), scores, -np.inf), k, top_k=True)


def tfidf_select(
    raw: DocumentsOrCounts,
    target: DocumentsOrCounts,
    k: int,
    *,
    num_buckets: int = 10000,
    ngrams: int = 2,
    hash: str = "sha256",
    tf: TfWeighting = "raw",
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k raw documents by cosine similarity of TF-IDF vectors (on hashed counts) to the target centroid.

    ``tf`` weights a term's count in a document and in the target: ``"raw"`` the count, ``"log"`` 1 + log(count)
    (sublinear, as scikit-learn's ``sublinear_tf``), ``"binary"`` presence. Document frequencies count only the
    documents that may be picked: ``exclude`` (held-out text) never shapes the weights.
    """
    if tf not in TF_WEIGHTS:
        raise ValueError(f"tf must be one of {list(TF_WEIGHTS)}, got {tf!r}")
    x = _as_matrix(raw, num_buckets, ngrams, hash, "raw")
    target_counts = _target_counts(target, num_buckets, ngrams, hash)
    allowed = _allowed(x.shape[0], k, exclude)
    df = np.bincount(x[allowed].indices, minlength=num_buckets)
    idf = np.log((1 + int(allowed.sum())) / (1 + df)) + 1.0
    weighted = x.copy()
    weighted.data = TF_WEIGHTS[tf](weighted.data) * idf[weighted.indices]  # tf-idf of the hashed counts, O(nnz)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    squares = np.bincount(rows, weights=weighted.data**2, minlength=x.shape[0])
    norms = np.sqrt(squares) + 1e-12
    centroid = np.where(target_counts > 0, TF_WEIGHTS[tf](np.maximum(target_counts, 1.0)), 0.0) * idf
    centroid /= np.linalg.norm(centroid) + 1e-12
    x = weighted
    scores = np.asarray(x @ centroid).ravel() / norms
    return gumbel_top_k(np.where(allowed, scores, -np.inf), k, top_k=True)


