"""DSIR experiment setup shared by its two tracks: config, the labelled pool, target splits, selection arms, scorers.

The LM track (:mod:`labkit.experiments.dsir`) and the classification track (:mod:`labkit.experiments.dsir_classify`)
both build on this module; it imports neither of them. The pool's hashed features live in labkit.select's feature
cache (``<labkit cache>/select``, the folder ``DSIR(cache_dir=...)`` uses), featurized once and memory-mapped after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.data import corpora
from labkit.data.cache import cache_dir
from labkit.experiments import (
    check_types,
    require_choice,
    require_device,
    require_divisible,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_subset,
    require_unique,
    require_within,
)
from labkit.models import byte_lm as byte_lm_module
from labkit.models.ngram_lm import EncodedCorpus, build_vocabulary, encode
from labkit.select import (
    DSIR,
    gumbel_top_k,
    heuristic_select,
    kl_reduction,
    random_select,
    target_likelihood_select,
    tfidf_select,
)
from labkit.select.cache import ShardedFeatures, cached_features
from labkit.select.features import HashedFeatures

if TYPE_CHECKING:
    import torch
    from torch import nn

TARGETS = {
    "foldoc-networking": ("foldoc/networking",),
    "gcide-botany": ("gcide/Bot",),
    "gcide-chemistry": ("gcide/Chem",),
    "man2-syscalls": ("man/2",),
    "devils-dictionary": ("devil",),
    "fortunes-songs-poems": ("fortunes/songs-poems",),
    "python-api-docs": ("python/api",),
    "shakespeare-tragedies": ("shakespeare/hamlet", "shakespeare/lear", "shakespeare/othello"),
    "python-topics": ("python/topics",),
}
METHODS = ("random", "dsir", "dsir-topk", "heuristic", "heuristic-words", "target-likelihood", "tfidf", "expert",
           "anti-dsir")
VARIANTS = ("dsir-topk", "heuristic-words")  # variants of a listed method: counted once in method-level statistics
TINY_TRACK, CLASSIFY_TRACK = "tiny transformer", "continued pretraining"  # the trained tracks (budget-table names)
# Downstream classification task of each target: tell apart chunks of these labels (the target's own label among
# its domain's other fine tags), e.g. GCIDE domain tags, FOLDOC sub-tags, man sections, fortune categories.
CLASSIFY_TASKS = {
    "foldoc-networking": tuple(
        f"foldoc/{t}" for t in ("networking", "programming", "language", "operating-system", "hardware")
    ),
    "gcide-botany": ("gcide/Bot", "gcide/Zool", "gcide/Chem", "gcide/Med", "gcide/Anat"),
    "gcide-chemistry": ("gcide/Bot", "gcide/Zool", "gcide/Chem", "gcide/Med", "gcide/Anat"),
    "man2-syscalls": tuple(f"man/{s}" for s in (1, 2, 3, 5, 7, 8)),
    "devils-dictionary": ("devil", "jargon", "gcide/general", "foldoc/general"),
    "fortunes-songs-poems": tuple(
        f"fortunes/{c}" for c in ("songs-poems", "computers", "definitions", "people", "science", "politics")
    ),
    "python-api-docs": ("python/api", "python/topics", "man/2", "man/3"),
    "shakespeare-tragedies": tuple(
        f"shakespeare/{p}" for p in ("hamlet", "lear", "othello", "richard_iii", "coriolanus", "henry_v")
    ),
    "python-topics": ("python/api", "python/topics", "man/2", "man/3"),
}


@dataclass
class Config:
    sources: list[str] = field(default_factory=lambda: list(corpora.ALL_SOURCES))  # corpus sources (see corpora)
    chunk_words: int = 64  # words per chunk (the paper: 128; 64 gives more documents on CPU)
    max_chunks: dict[str, int] = field(default_factory=lambda: {"gcide": 35000, "man": 30000})  # per-source caps
    targets: list[str] = field(default_factory=lambda: [t for t in TARGETS if t != "python-topics"])  # see TARGETS
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # see METHODS
    n_fit: int = 150  # target chunks DSIR (and every method) may look at (FOLDOC networking has 413)
    n_eval: int = 150  # held-out (test) target chunks for KL reduction and LM loss
    n_val: int = 50  # validation target chunks: the only data the target-pseudocount choice sees
    budget_k: int = 3000  # chunks selected (≈ 192k words, ~2 % of the pool)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each seed redraws the target split and selection
    num_buckets: int = 10000  # hashed n-gram buckets (paper and data-selection default)
    pseudocount: float = 1.0  # added to every bucket of selected and pool counts in KL reduction
    temperature: float = 1.0  # DSIR Gumbel temperature (1 = the paper's importance resampling)
    target_pseudocount: float = 0.0  # DSIR's additive smoothing of target bucket counts (0 = data-selection 1.0.3)
    target_pseudocounts: list[float] = field(default_factory=lambda: [0.0, 0.1, 1.0])  # sweep; "dsir" = best on val
    workers: int = 1  # processes running (seed, target) cells in parallel (2 on a 2-core machine)
    heuristic_alpha: float = 9.0  # Pareto shape of heuristic classification (GPT-3 / The Pile)
    vocab_size: int = 30000  # bigram-LM vocabulary: most frequent tokens of the pool
    discount: float = 0.75  # absolute discount of the bigram LM
    downstream: str = "both"  # "bigram" | "tiny_lm" | "both"
    tiny_lm_targets: list[str] = field(default_factory=lambda: ["foldoc-networking", "gcide-botany"])  # subset
    tiny_lm_methods: list[str] = field(default_factory=lambda: ["random", "dsir", "heuristic"])  # subset
    tiny_lm_seeds: list[int] = field(default_factory=lambda: [0])  # seeds of the transformer track
    lm_steps: int = 200  # AdamW steps of the byte-level transformer
    lm_context: int = 128  # bytes per training window
    lm_batch: int = 32  # windows per step
    lm_hidden: int = 128  # transformer width
    lm_layers: int = 2  # transformer depth
    lm_heads: int = 4  # attention heads
    lm_lr: float = 3e-3  # peak learning rate (warm-up 10 %, cosine decay)
    device: str = "cpu"  # "cpu" | "cuda" | "auto" for the transformer
    threads: int = 1  # torch threads (1 was faster than 2 on the shared 2-core machine)
    # Downstream classification (the paper's continued pretraining + target-task fine-tuning, at byte-LM scale):
    classify: bool = False  # pretrain a base byte LM, continue it on each selection, probe the target's domain tags
    classify_targets: list[str] = field(default_factory=lambda: ["foldoc-networking", "gcide-botany"])  # with a task
    classify_methods: list[str] = field(default_factory=lambda: ["random", "dsir", "heuristic"])  # subset of methods
    classify_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # selection + continued-pretraining seeds
    classify_train: int = 40  # labelled chunks per tag to train the probe (5 tags: 200 examples)
    classify_eval: int = 40  # labelled chunks per tag to evaluate it (disjoint from training and from the pool)
    base_chunks: int = 5000  # random pool chunks (task chunks excluded) the base LM is pretrained on
    base_steps: int = 300  # AdamW steps of base pretraining (lr = lm_lr); one base model per run
    continue_steps: int = 150  # AdamW steps of continued pretraining on each selection
    continue_lr: float = 1e-3  # peak learning rate of continued pretraining (warm-up 10 %, cosine decay)
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probe on mean-pooled hidden states
    # Budget check (protocol v2): the first seed × target of every trained arm (tiny transformer, continued
    # pretraining) rerun at budget_factor × the steps, same warm-up fraction and cosine horizon scaled with it
    budget_factor: float = 2.0  # >= 2: the longer run must be a genuinely longer budget (issue #24)

    def __post_init__(self) -> None:
        check_types(self)
        require_non_empty(self, "sources", "targets", "methods", "seeds", "target_pseudocounts")
        require_subset("sources", self.sources, corpora.ALL_SOURCES)
        require_subset("max_chunks", self.max_chunks, corpora.ALL_SOURCES)
        require_subset("targets", self.targets, TARGETS)
        require_subset("methods", self.methods, METHODS)
        require_subset("tiny_lm_targets", self.tiny_lm_targets, TARGETS)
        require_subset("tiny_lm_methods", self.tiny_lm_methods, METHODS)
        require_subset("classify_targets", self.classify_targets, CLASSIFY_TASKS)
        require_subset("classify_methods", self.classify_methods, METHODS)
        require_choice(self, "downstream", ("bigram", "tiny_lm", "both"))
        require_unique(self, "seeds", "tiny_lm_seeds", "classify_seeds")
        require_non_negative(self, "seeds", "tiny_lm_seeds", "classify_seeds", "target_pseudocount",
                             "target_pseudocounts", "n_val")
        require_unique(self, "target_pseudocounts")
        require_positive(self, "workers", "chunk_words", "n_fit", "n_eval", "budget_k", "num_buckets", "pseudocount",
                         "temperature", "heuristic_alpha", "vocab_size", "lm_steps", "lm_context", "lm_batch",
                         "lm_hidden", "lm_layers", "lm_heads", "lm_lr", "threads", "classify_train", "classify_eval",
                         "base_chunks", "base_steps", "continue_steps", "continue_lr", "probe_c", "max_chunks")
        require_within(self, "discount", 0, 1, "[)")
        require_within(self, "budget_factor", 2, math.inf, "[)")
        if self.downstream in ("tiny_lm", "both") and self.n_val == 0:
            raise ValueError("parameter 'n_val' is 0; the tiny transformer's budget check scores validation chunks, "
                             "expected n_val > 0 with downstream 'tiny_lm' or 'both'")
        require_divisible(self, "lm_hidden", "lm_heads")
        require_device(self)



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


def prepare(cfg: Config, progress: bool = False) -> Prepared:
    """Build (or load from the labkit cache) the pool and its features; targets with too few chunks are skipped."""
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
    return Prepared(corpus, features, features.to_csr(), encoded, vocab_size, skipped)


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


def select(
    method: str,
    prepared: Prepared,
    split: Split,
    target: str,
    k: int,
    seed: int,
    cfg: Config,
    target_pseudocount: float | None = None,
) -> np.ndarray:
    """Indices into the corpus of the k chunks ``method`` picks from ``split.pool``.

    Every method sees the whole corpus with the target's fit, held-out and validation chunks excluded (``exclude=``),
    which equals selecting from the pool without copying it. ``target_pseudocount`` overrides the config's for DSIR.
    """
    drawn = split.drawn()
    fit_feats = prepared.features.subset(split.fit)
    if method == "random":
        return split.pool[random_select(len(split.pool), k, seed)]
    if method in ("dsir", "dsir-topk", "anti-dsir"):
        dsir = prepared.dsir(cfg, target_pseudocount).fit(prepared.features, fit_feats, exclude=drawn)
        if method == "anti-dsir":
            weights = dsir.log_weights()
            weights[drawn] = np.inf
            return gumbel_top_k(-weights, k, top_k=True)
        return dsir.resample(k, seed=seed, top_k=method == "dsir-topk", temperature=cfg.temperature)
    if method == "heuristic":
        return heuristic_select(
            prepared.matrix,
            fit_feats,
            k,
            seed,
            pareto_alpha=cfg.heuristic_alpha,
            num_buckets=cfg.num_buckets,
            exclude=drawn,
        )
    if method == "heuristic-words":
        words = prepared.words()
        return heuristic_select(words, words[split.fit], k, seed, pareto_alpha=cfg.heuristic_alpha,
                                num_buckets=words.shape[1], exclude=drawn)
    if method == "target-likelihood":
        return target_likelihood_select(prepared.matrix, fit_feats, k, num_buckets=cfg.num_buckets, exclude=drawn)
    if method == "tfidf":
        return tfidf_select(prepared.matrix, fit_feats, k, num_buckets=cfg.num_buckets, exclude=drawn)
    if method == "expert":  # oracle: the target's own labels first, then its source, then random
        corpus = prepared.corpus
        own = np.isin(corpus.label.to_numpy(), TARGETS[target])
        same_source = np.isin(corpus.source.to_numpy(), corpus.source.iloc[split.fit].unique())
        rank = np.random.default_rng(seed).random(len(corpus)) - 2.0 * own - 1.0 * same_source
        rank[drawn] = np.inf
        return np.argsort(rank, kind="stable")[:k]
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def kl_scorer(
    prepared: Prepared, split: Split, cfg: Config, total_counts: np.ndarray | None = None
) -> Callable[[np.ndarray], float]:
    """KL reduction of a selection (chunk ids -> float) toward the split's held-out chunks, against its pool.

    The pool's counts leave out the split's fit, held-out and reserved chunks, which no method may select.
    """
    total = prepared.features.total_counts() if total_counts is None else total_counts
    eval_counts = prepared.features.total_counts(split.eval)
    pool_counts = total - prepared.features.total_counts(split.drawn())

    def score(chosen: np.ndarray) -> float:
        return kl_reduction(
            prepared.features.total_counts(chosen),
            eval_counts,
            pool_counts,
            pseudocount=cfg.pseudocount,
            num_buckets=cfg.num_buckets,
        )

    return score


def byte_lm(cfg: Config, seed: int) -> nn.Module:
    """A fresh byte-level transformer of the config's size (``lm_hidden``, ``lm_layers``, ``lm_heads``)."""
    return byte_lm_module.build_byte_lm(cfg.lm_hidden, cfg.lm_layers, cfg.lm_heads, cfg.lm_context, seed)


def train_bytes(
    model: nn.Module, data: torch.Tensor, steps: int, lr: float, cfg: Config, seed: int, bins: int = 20
) -> list[float]:
    """Train ``model`` on ``lm_batch`` windows of ``lm_context`` bytes of ``data`` per step (AdamW, warm-up 10 %,
    cosine decay, as :func:`labkit.models.byte_lm.train_on_bytes`).

    Returns the loss curve, for figures: the mean next-byte loss in ``bins`` equal blocks of steps (convergence is
    judged by the budget check on validation text, not on this curve).
    """
    import torch

    from labkit.train import train_causal_lm

    window = cfg.lm_context + 1
    if len(data) <= window:
        raise ValueError(f"need more than {window} bytes of training text, got {len(data)}")
    generator = torch.Generator().manual_seed(seed)

    def windows(step: int) -> torch.Tensor:
        starts = torch.randint(0, len(data) - window, (cfg.lm_batch,), generator=generator)
        return torch.stack([data[s : s + window] for s in starts.tolist()])

    history = train_causal_lm(model, windows, steps, lr, warmup_steps=max(1, steps // 10), progress=False)
    blocks = np.array_split(history["loss"].to_numpy(dtype=np.float64), min(bins, max(1, steps)))
    return [float(b.mean()) for b in blocks if len(b)]


def budget_steps(steps: int, budget: float) -> int:
    """Steps of a run at ``budget`` × ``steps`` (the budget check's longer run; :func:`train_bytes` scales its warm-up
    and cosine horizon with them, so the schedule keeps its shape)."""
    return int(round(steps * budget))


def fork_map(fn: Callable[[Any], Any], jobs: list, workers: int, desc: str, progress: bool = True) -> list:
    """``[fn(job) for job in jobs]`` in order, in ``workers`` forked processes when more than one: they inherit the
    prepared pool (a module-level dict set before the call) instead of pickling it. Put the longest jobs first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            return list(tqdm(pool.map(fn, jobs), total=len(jobs), desc=desc, disable=not progress))
    return [fn(job) for job in tqdm(jobs, desc=desc, disable=not progress)]


def paired_gaps(
    scores: pd.DataFrame, method: str, reference: str, value: str = "bigram_nats_per_token", n_boot: int = 2000
) -> pd.DataFrame:
    """Per target and overall: mean of (method − reference) over seeds with a bootstrap 95 % interval.

    Negative = ``method`` has the lower loss. The overall row pairs every (seed, target) cell.
    """
    from labkit.stats import bootstrap_ci

    a = scores[scores.method == method].set_index(["seed", "target"])[value]
    b = scores[scores.method == reference].set_index(["seed", "target"])[value]
    diff = (a - b).dropna().reset_index()
    rows = []
    for target, group in diff.groupby("target", sort=False):
        mean, low, high = bootstrap_ci(group[value].to_numpy(), n_boot=n_boot)
        rows.append({"target": target, "mean_diff": mean, "low": low, "high": high, "n": len(group)})
    mean, low, high = bootstrap_ci(diff[value].to_numpy(), n_boot=n_boot)
    rows.append({"target": "all", "mean_diff": mean, "low": low, "high": high, "n": len(diff)})
    out = pd.DataFrame(rows)
    out.insert(0, "comparison", f"{method} − {reference}")
    return out


