"""Data selection by importance resampling (DSIR; Xie, Santurkar, Ma, Liang, NeurIPS 2023, arXiv 2302.03169).

- :mod:`~labkit.select.features`: hashed unigram+bigram features, bit-identical to ``data-selection`` 1.0.3;
- :mod:`~labkit.select.cache`: the on-disk feature cache (``DSIR(cache_dir=...)``: atomic, resumable shards);
- :mod:`~labkit.select.dsir`: :class:`DSIR` (fit, log weights, Gumbel top-k resampling) and KL reduction;
- :mod:`~labkit.select.baselines`: random, heuristic classification, target likelihood, TF-IDF retrieval;
- :mod:`~labkit.select.files`: writing the selected lines of a jsonl pool.
"""

from labkit.select.baselines import heuristic_select, random_select, target_likelihood_select, tfidf_select
from labkit.select.cache import FeatureCacheError, ShardedFeatures, cached_features
from labkit.select.dsir import DSIR, LengthFilter, gumbel_top_k, kl_reduction
from labkit.select.features import HashedFeatures, featurize
from labkit.select.files import write_selected

__all__ = [
    "DSIR",
    "LengthFilter",
    "gumbel_top_k",
    "kl_reduction",
    "random_select",
    "heuristic_select",
    "target_likelihood_select",
    "write_selected",
    "tfidf_select",
    "HashedFeatures",
    "ShardedFeatures",
    "FeatureCacheError",
    "cached_features",
    "featurize",
]
