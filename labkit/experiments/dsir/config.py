"""DSIR's parameters: the targets and methods it compares, the ``Config`` (type, range and meaning of every field
declared once in its hint, see :mod:`labkit.config`) and the smoke / cpu / gpu presets.

Seeds are counts: ``seeds = 3`` runs seeds 0, 1, 2 (each redraws the target split and the selection); the transformer
track runs the first ``tiny_lm_seeds`` of them, the classification track seeds ``0 .. classify_seeds - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

from labkit import config
from labkit.config import (
    NON_EMPTY,
    UNIQUE,
    BudgetFactor,
    Check,
    Count,
    Device,
    Interval,
    NonNegative,
    Positive,
    number_in_range,
)
from labkit.data import corpora
from labkit.select.baselines import TfWeighting

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
METHODS = ("random", "dsir", "dsir-topk", "dsir-smoothed", "heuristic", "heuristic-words", "target-likelihood", "tfidf",
           "expert", "anti-dsir")
# "dsir" is the paper's setting (target_pseudocount, default 0); "dsir-smoothed" is labkit's variant, its target
# pseudocount chosen on validation from target_pseudocounts. Variants of a listed method count once in method-level
# statistics (the correlation).
SMOOTHED = "dsir-smoothed"
VARIANTS = ("dsir-topk", SMOOTHED, "heuristic-words")
# The trained tracks (budget-table names): the tiny transformer from scratch, continued pretraining of a byte LM then
# a probe (classification), and the paper's setting, a real pretrained LM continued on each selection
TINY_TRACK, CLASSIFY_TRACK = "tiny transformer", "byte-LM continued pretraining"
LLM_TRACK = "SmolLM2 continued pretraining"
LLM = "smollm2"  # that LM: a labkit.models.pretrained name (from the data catalogue, never a model hub)
PREMISE_ARM = "target"  # the tiny transformer trained on the target's own held-in text (the premise claim's arm)
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



class HeuristicSetting(NamedTuple):
    """One setting of heuristic classification (hashed or word features): the knobs of the paper's baseline, each a
    finite number > 0 (:func:`heuristic_setting` checks it)."""

    pareto_alpha: float  # shape of the Pareto acceptance noise (GPT-3 / The Pile: 9; larger = closer to top-k)
    c: float  # inverse L2 strength of the logistic regression (scikit-learn's default: 1)
    negatives_per_target: float  # random raw chunks per target chunk the classifier is trained against


def heuristic_setting(name: str, value: tuple[float, float, float]) -> HeuristicSetting:
    """``value`` as a :class:`HeuristicSetting` if each knob is a finite number > 0; else an error naming the
    parameter and the knob."""
    for knob, number in zip(HeuristicSetting._fields, value, strict=True):
        number_in_range(f"parameter {name!r} knob {knob!r}", number, 0.0, interval="()")
    return HeuristicSetting(*value)


Source = Literal[*corpora.ALL_SOURCES]
Target = Literal[*TARGETS]
Method = Literal[*METHODS]
# Each tuned method -> the Config field holding its grid; the setting with the lowest mean validation bigram loss
# over every (seed, target) cell becomes its arm.
TUNED = {SMOOTHED: "target_pseudocounts", "heuristic": "heuristic_grid", "heuristic-words": "heuristic_grid",
         "target-likelihood": "target_likelihood_pseudocounts", "tfidf": "tfidf_weightings"}
ClassifyTarget = Literal[*CLASSIFY_TASKS]


@dataclass
class Config:
    sources: Annotated[list[Source], NON_EMPTY] = field(default_factory=lambda: list(corpora.ALL_SOURCES))  # corpora
    chunk_words: Count = 64  # words per chunk (the paper: 128; 64 gives more documents on CPU)
    max_chunks: Annotated[dict[Source, int], Interval("[1, inf)")] = field(  # per-source caps (seeded subsample)
        default_factory=lambda: {"gcide": 35000, "man": 30000})
    targets: Annotated[list[Target], NON_EMPTY] = field(  # see TARGETS
        default_factory=lambda: [t for t in TARGETS if t != "python-topics"])
    methods: Annotated[list[Method], NON_EMPTY] = field(default_factory=lambda: list(METHODS))  # see METHODS
    n_fit: Count = 150  # target chunks DSIR (and every method) may look at (FOLDOC networking has 413)
    n_eval: Count = 150  # held-out (test) target chunks for KL reduction and LM loss
    n_val: NonNegative = 50  # validation target chunks: all the tuning and the budget check see (never test)
    budget_k: Count = 3000  # chunks selected (≈ 192k words, ~2 % of the pool)
    seeds: Count = 3  # seeds 0 .. seeds-1; each redraws the target split and selection
    num_buckets: Count = 10000  # hashed n-gram buckets (paper and data-selection default)
    pseudocount: Positive = 1.0  # added to every bucket of selected and pool counts in KL reduction
    temperature: Positive = 1.0  # DSIR Gumbel temperature (1 = the paper's importance resampling)
    target_pseudocount: Annotated[float, Interval("[0, inf)")] = 0.0  # smoothing of target bucket counts of "dsir",
    # "dsir-topk" and "anti-dsir" (0 = the paper and data-selection 1.0.3: the main verdicts' setting)
    target_pseudocounts: Annotated[list[float], Interval("(0, inf)"), NON_EMPTY, UNIQUE] = field(  # the grid the
        default_factory=lambda: [0.1, 1.0, 10.0])  # "dsir-smoothed" arm chooses from on validation (1.0 inside it)
    workers: Count = 1  # processes running (seed, target) cells in parallel (2 on a 2-core machine)
    # Tuning on validation (bigram loss of the validation chunks, never test): each tuned method's grid has as many
    # settings as the smoothed DSIR variant's (3), its first the paper's or the library default (see TUNED)
    heuristic_grid: Annotated[list[tuple[float, float, float]], Check(heuristic_setting), NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: [(9.0, 1.0, 5.0), (100.0, 1.0, 20.0), (1000.0, 1.0, 50.0)])  # see HeuristicSetting;
    # (100, 1, 20), the last point of the former grid (9, 1, 5), (9, 0.1, 5), (100, 1, 20), was chosen in every run,
    # so the grid goes further in that direction (C = 0.1 was never chosen)
    target_likelihood_pseudocounts: Annotated[list[float], Interval("[0, inf)"), NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: [0.0, 0.1, 1.0])  # additive smoothing of the target counts (0: none)
    tfidf_weightings: Annotated[list[TfWeighting], NON_EMPTY, UNIQUE] = field(  # term-frequency weighting
        default_factory=lambda: ["raw", "log", "binary"])
    vocab_size: Count = 30000  # bigram-LM vocabulary: most frequent tokens of the pool
    discount: Annotated[float, Interval("[0, 1)")] = 0.75  # absolute discount of the bigram LM
    downstream: Literal["bigram", "tiny_lm", "both"] = "both"  # which LM scores each selection
    # The tiny transformer track is the main downstream (it does not read DSIR's hashed features, though with 32 bytes
    # of context it reads mostly local statistics): it runs the listed targets and methods that are also in
    # ``targets`` and ``methods``, plus the premise arm
    tiny_lm_targets: list[Target] = field(default_factory=lambda: [  # four domains of different sources
        "foldoc-networking", "gcide-botany", "python-api-docs", "shakespeare-tragedies"])
    tiny_lm_methods: list[Method] = field(default_factory=lambda: list(METHODS))  # every method
    tiny_lm_seeds: Count = 5  # the transformer track runs the first tiny_lm_seeds of the seeds
    lm_steps: Count = 2500  # AdamW steps of the byte-level transformer (≈ 2.6 M bytes, ≈ 2 passes over k chunks)
    lm_context: Count = 32  # bytes per training window (≈ 5 words; 64-word chunks are ≈ 400 bytes)
    lm_batch: Count = 32  # windows per step
    lm_hidden: Count = 32  # transformer width (32 x 1 layer: ≈ 0.008 CPU-s a step; see the cpu preset for why)
    lm_layers: Count = 1  # transformer depth
    lm_heads: Count = 2  # attention heads (16 dimensions each)
    lm_lr: Positive = 3e-3  # peak learning rate (warm-up 10 %, cosine decay)
    device: Device = "cpu"  # for the transformers; "auto" picks CUDA when there is one
    threads: Count = 1  # torch threads (1 was faster than 2 on the shared 2-core machine)
    # Downstream classification (the paper's continued pretraining + target-task fine-tuning, at byte-LM scale):
    classify: bool = False  # pretrain a base byte LM, continue it on each selection, probe the target's domain tags
    # four targets whose tags have the chunks for >= 1,000 evaluation examples (FOLDOC networking has 413 chunks in
    # all: too few to reserve a task and still draw its fit and held-out samples)
    classify_targets: list[ClassifyTarget] = field(default_factory=lambda: [
        "gcide-botany", "man2-syscalls", "python-api-docs", "devils-dictionary"])
    classify_methods: list[Method] = field(default_factory=lambda: ["random", "dsir", "heuristic"])
    classify_seeds: Count = 3  # selection + continued-pretraining seeds 0 .. classify_seeds-1
    classify_train: Count = 100  # labelled chunks per tag to train the probe (5 tags: 500 examples)
    classify_eval: Count = 250  # labelled chunks per tag to evaluate it (4-6 tags: 1,000-1,500 examples; disjoint from
    # training and from the pool)
    base_chunks: Count = 5000  # random pool chunks (task chunks excluded) the base LM is pretrained on
    base_steps: Count = 1500  # AdamW steps of base pretraining (lr = lm_lr); one base model per run
    continue_steps: Count = 750  # AdamW steps of continued pretraining on each selection
    continue_lr: Positive = 1e-3  # peak learning rate of continued pretraining (warm-up 10 %, cosine decay)
    probe_c: Positive = 1.0  # inverse L2 strength of the logistic-regression probe on mean-pooled hidden states
    # The paper's own setting (a pilot below 5 seeds): SmolLM2-135M-Instruct (LLM, `labkit fetch smollm2`; Q4_1
    # weights dequantized) continued on each selection with all but its last llm_layers decoder layers frozen, scored
    # by held-out target bits per byte
    llm: bool = False  # run the track (the listed targets and methods also in ``targets`` and ``methods``)
    llm_targets: Annotated[list[Target], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["gcide-botany", "python-api-docs"])
    llm_methods: Annotated[list[Method], NON_EMPTY, UNIQUE] = field(
        default_factory=lambda: ["random", "dsir", "heuristic"])
    llm_seeds: Count = 3  # the track runs the first llm_seeds of the seeds
    llm_steps: Count = 24  # AdamW steps of continued pretraining (warm-up 10 %, cosine decay)
    llm_lr: Positive = 1e-4  # peak learning rate
    llm_layers: Count = 4  # trainable: the last llm_layers decoder layers and the final norm (of 30)
    llm_context: Count = 64  # tokens per training window and per scored held-out chunk
    llm_batch: Count = 8  # windows per step
    llm_eval_chunks: Count = 64  # held-out (and validation) target chunks scored per cell, evenly spaced over the
    # split's (sorted) chunks
    # Budget check (protocol v2): the first seed × target of every trained arm (tiny transformer, continued
    # pretraining) rerun at budget_factor × the steps, same warm-up fraction and cosine horizon scaled with it
    budget_factor: BudgetFactor = 2.0  # >= 2: the longer run must be a genuinely longer budget (issue #24)

    def __post_init__(self) -> None:
        config.check(self)
        if self.downstream in ("tiny_lm", "both") and self.n_val == 0:
            raise ValueError("parameter 'n_val' is 0; the tiny transformer's budget check scores validation chunks, "
                             "expected n_val > 0 with downstream 'tiny_lm' or 'both'")
        if self.llm and self.n_val == 0:
            raise ValueError("parameter 'n_val' is 0; the SmolLM2 track's budget check scores validation chunks, "
                             "expected n_val > 0 with llm = True")
        config.require_divisible(self, "lm_hidden", "lm_heads")
        sizes = {TUNED[m]: len(self.grid(m)) for m in self.methods if m in TUNED}
        if len(set(sizes.values())) > 1:  # the claims compare tuned methods as equals: no method gets more tries
            found = ", ".join(f"{knob}: {size}" for knob, size in sizes.items())
            raise ValueError(f"the tuned methods' grids differ in size ({found}); expected grids of equal size, so "
                             "that each tuned method chooses from as many settings")

    def grid(self, method: str) -> list[Any]:
        """The settings a tuned method (:data:`TUNED`) chooses from on validation."""
        return getattr(self, TUNED[method])


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "sources": list(corpora.LOCAL_SOURCES),
        "max_chunks": {"man": 2500, "python": 1500},
        "targets": ["python-topics", "man2-syscalls"],
        "methods": ["random", "dsir", "dsir-smoothed", "heuristic", "heuristic-words", "expert", "anti-dsir"],
        "n_fit": 40,
        "n_eval": 40,
        "n_val": 20,
        "target_pseudocounts": [0.1, 1.0],
        "heuristic_grid": [(9.0, 1.0, 5.0), (100.0, 1.0, 20.0)],  # as large as the smoothed DSIR's grid
        "budget_k": 150,
        "seeds": 1,
        "vocab_size": 3000,
        "tiny_lm_targets": ["python-topics"],
        "tiny_lm_methods": ["random", "dsir"],
        "tiny_lm_seeds": 1,
        "lm_steps": 3,
        "lm_context": 32,
        "lm_batch": 4,
        "lm_hidden": 32,
        "lm_layers": 1,
        "lm_heads": 2,
        "classify": True,
        "classify_targets": ["python-topics"],
        "classify_methods": ["random", "dsir"],
        "classify_seeds": 1,
        "classify_train": 6,
        "classify_eval": 6,
        "base_chunks": 200,
        "base_steps": 2,
        "continue_steps": 2,
    },
    # cpu: 5 seeds, 2 workers; the tiny transformer (the main downstream) on 4 targets × 5 seeds × every method (10) +
    # the premise arm; the classification track on 4 targets × (random, DSIR, heuristic) × 5 seeds; the SmolLM2 pilot
    # on 2 targets × 3 seeds × (random, DSIR, heuristic) + base. Size: 32 wide × 1 layer,
    # context 32, batch 32 costs 0.008 CPU-s a step (64 × 2 at context 64: 0.039; v1's 128 × 2 at 128: 0.234) and
    # reached the quality of 64 × 2 at the same cost, nearer a plateau. Convergence (exploration dsir/lm_steps,
    # foldoc-networking seed 0, validation bits/byte at 2x steps): 2,500 -> 5,000 random -5.8 %, dsir -4.2 %, target
    # -4.5 %; 5,000 -> 10,000 -3.0, -3.2, -1.2 %; a peak lr of 1e-2 (-3.6 %) or 3e-2 (-11.8 %) does not get there
    # sooner. No step count that fits the 75 minutes passes the 1 % budget check, so the transformer arms are
    # flagged not converged (the report's verdicts say so); 2,500 steps is what fits. Cost: 220 runs × ≈ 22 CPU-s +
    # the 11 budget runs at 2x ≈ 450 → ≈ 2,650 s wall on 2 workers; the bigram cells with the tuning sweep (20
    # selections each) ≈ 320 s; classification ≈ 300 s; pool and figures ≈ 100 s; SmolLM2 (one thread a worker:
    # ≈ 2.5 s a step of 8 × 64 tokens; a probe at 30 steps on gcide-botany seed 0: 1x jobs ≈ 97 s, 2x ≈ 171 s, base
    # ≈ 25 s; at 24 steps ≈ 82 and ≈ 140 s) 18 × 82 + 3 × 140 + 6 × 25 ≈ 2,050 worker-s ≈ 17 min: ≈ 72 min in all,
    # near the 75 (more SmolLM2 seeds do not fit, so it stays a pilot).
    "cpu": {
        "seeds": 5,
        "workers": 2,
        "classify": True,
        "classify_seeds": 5,
        "continue_steps": 500,
        "llm": True,
    },
    "gpu": {
        "max_chunks": {},
        "seeds": 5,  # the SmolLM2 track's llm_seeds need as many
        "budget_k": 5000,
        "tiny_lm_targets": list(TARGETS)[:8],
        "tiny_lm_methods": list(METHODS),
        "tiny_lm_seeds": 3,
        "lm_steps": 2000,
        "lm_context": 256,
        "lm_batch": 64,
        "lm_hidden": 384,
        "lm_layers": 6,
        "lm_heads": 6,
        "lm_lr": 1e-3,
        "device": "auto",
        "classify": True,
        "classify_targets": list(TARGETS)[:8],
        "classify_methods": list(METHODS),
        "base_chunks": 50000,
        "base_steps": 3000,
        "continue_steps": 1000,
        "continue_lr": 3e-4,
        "llm": True,
        "llm_targets": ["foldoc-networking", "gcide-botany", "python-api-docs", "shakespeare-tragedies"],
        "llm_seeds": 5,
        "llm_steps": 500,
        "llm_layers": 30,
        "llm_context": 256,
        "llm_batch": 16,
        "llm_eval_chunks": 150,
    },
}
