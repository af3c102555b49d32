"""Data selection by importance resampling (DSIR; Xie, Santurkar, Ma, Liang, NeurIPS 2023, arXiv 2302.03169).

- :mod:`~labkit.select.features`: hashed unigram+bigram features, bit-identical to ``data-selection`` 1.0.3;
- :mod:`~labkit.select.cache`: the on-disk feature cache (``DSIR(cache_dir=...)``: atomic, checksummed, resumable);
- :mod:`~labkit.select.dsir`: :class:`DSIR` (fit, log weights, Gumbel top-k resampling) and KL reduction;
- :mod:`~labkit.select.baselines`: random, heuristic classification, target likelihood, TF-IDF retrieval;
- :mod:`~labkit.select.fast`: ``hash="fast"``, a vectorized featurizer (other buckets, ~8x the exact mode's MB/s);
- :mod:`~labkit.select.files`: reading jsonl / parquet / text shards, writing the selected documents;
- :mod:`~labkit.select.stream`: :func:`select_files`, DSIR over files larger than memory (bounded RSS, resumable);
- :mod:`~labkit.select.distributed`: :func:`select_files_ray`, the same selection as Ray tasks over files.
"""

from labkit.select.baselines import heuristic_select, random_select, target_likelihood_select, tfidf_select
from labkit.select.cache import FeatureCacheError, FeatureCacheWarning, ShardedFeatures, cached_features
from labkit.select.distributed import select_files_ray
from labkit.select.dsir import DSIR, LengthFilter, gumbel_top_k, kl_reduction, log_importance_ratio
from labkit.select.features import HashedFeatures, featurize
from labkit.select.files import write_selected
from labkit.select.stream import FileSelection, select_files

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
    "FeatureCacheWarning",
    "cached_features",
    "featurize",
    "log_importance_ratio",
    "select_files",
    "select_files_ray",
    "FileSelection",
]
