"""GateSkip's parameters: the base LM (a tiny one pretrained here, or the catalogued SmolLM2-135M), the fine-tuning
schedule and its stopping points, every family's tuning grid (each of the same size: the equal tuning budget), the
inference budgets, and the seeds.

Two regimes share these rooms. ``model="tiny"`` (presets ``smoke`` and ``toy``) pretrains a small decoder per seed and
runs the whole comparison. ``model="smollm2"`` (presets ``cpu`` and ``gpu``) starts from the real pretrained LLM and
runs stage 1 first, the premise on validation (:mod:`labkit.experiments.gateskip.arms.premise`): do trained gates rank
tokens better than random ranking of the same model? Then stage 2 compares the chosen gates with the baselines on
test seeds (:mod:`labkit.experiments.gateskip.arms.comparison`).

``tune_seeds`` and ``seeds`` are counts: choices are made on validation seeds ``0 .. tune_seeds-1``, and reported
on fresh test seeds ``100 .. 100+seeds-1`` (:data:`TEST_SEED_OFFSET`: new pretraining, fine-tuning and data seeds,
disjoint from every tuning seed). Stage 1 runs on one seed of its own, ``premise_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from labkit import config, gate, skip
from labkit.config import NON_EMPTY, UNIQUE, BudgetFactor, Count, Device, Interval, NonNegative, Positive
from labkit.models import decoder_lm

TASKS = ("cumsum", "text", "dictmc")
LLM_TASKS = ("text", "dictmc")  # a pretrained LLM's: its gates train on text; dictmc only scores them
MODELS = ("tiny", "smollm2")  # pretrained here from a transformers config, or the catalogued real LLM
TEST_SEED_OFFSET = 100  # test seeds start here: fresh pretraining, fine-tuning and data seeds

# Gates lie in [0, 1] and start saturated at sigmoid(5) = 0.9933, 0.0067 below 1. A mean shift of at most 0.01, about
# that whole headroom, has not left the initialisation: the ranking is then the random init's, not a learned one.
GATE_SHIFT_TOLERANCE = 0.01
# Health: at full compute every arm must be within 5 % (relative) of the dense fine-tune of its seed (stage 1: of the
# pretrained LM). 95 % of dense is the strictest level the claims are read at: an arm already further below at r = 0
# saves 0 there by construction, which the claims would read as "GateSkip saves nothing" when it measures damage.
HEALTH_TOLERANCE_PCT = 5.0
Grid = Annotated[tuple[float, ...], NON_EMPTY, UNIQUE]  # a tuning grid: a repeated value would count twice
Rate = Annotated[tuple[float, ...], Interval("(0, inf)"), NON_EMPTY, UNIQUE]  # a grid of learning rates


@dataclass
class Config:
    model: Literal[*MODELS] = "tiny"  # the base LM: pretrained here per seed, or SmolLM2-135M (stages 1, 2)
    # "text" (stdlib sources, bits per byte), "cumsum" (running sums, exact match; tiny model only) and "dictmc"
    # (GCIDE multiple choice, accuracy; a pretrained LLM only, scoring the gates trained on text)
    tasks: Annotated[tuple[Literal[*TASKS], ...], NON_EMPTY, UNIQUE] = ("text", "cumsum")
    arch: Literal[*decoder_lm.ARCHS] = "llama"  # transformers family of the tiny LM
    n_digits: Count = 8  # running-sum digits N: sequences of 2N+5 tokens (21 for N=8)
    text_length: Count = 128  # bytes per text window
    d_model: Count = 128  # hidden size (0.8 M parameters at 4 layers: the trial's size)
    n_layers: Count = 4  # decoder layers; static skipping is seed-fragile below ~8
    n_heads: Count = 4  # attention heads
    batch_size: Count = 64  # sequences per training step
    pretrain_steps: Count = 300  # steps to pretrain the shared checkpoint on running sums (trial: EM 1.0 after 300)
    pretrain_lr: Positive = 3e-3  # AdamW peak lr, cosine (trial value)
    text_pretrain_steps: Count = 600  # pretraining steps on the text task (harder than the toy)
    finetune_steps: Count = 200  # fine-tuning schedule of every configuration (the paper: 6,800 steps on 1B models)
    # Stopping points tuned on validation, as fractions of finetune_steps: one run per configuration is scored at
    # each (early stopping); the test run stops at the chosen one. The cosine lr and skip ramp span finetune_steps.
    finetune_stops: Annotated[tuple[float, ...], Interval("(0, 1]"), NON_EMPTY] = (0.5, 0.75, 1.0)
    finetune_lr: Positive = 1e-3  # GateSkip's LM weights' peak lr (the paper: 3e-6 on 1B models)
    # Tuning grids, chosen on validation; every fine-tuned family gets the same number of configurations.
    gate_lrs: Annotated[Grid, Interval("[0, inf)")] = (0.0, 3e-2)  # gate peak lrs; 0 = finetune_lr (paper: 33x)
    sparsity_weights: Annotated[Grid, Interval("[0, inf)")] = (1.0, 0.01)  # gate-penalty weights λ (paper: 1.0)
    dense_lrs: Rate = (3e-4, 1e-3, 3e-3, 1e-2)  # dense fine-tune lrs (also ShortGPT's and ULS's base)
    random_lrs: Rate = (1e-3, 3e-3)  # random-skip fine-tune lrs
    # random-skip training budgets at the end of the ramp
    random_skip_ends: Annotated[Grid, Interval("(0, 1)")] = (0.2, 0.4)
    penalty: Literal[*gate.PENALTY_KINDS] = "l2"  # "l2" (paper) | "l1" | "kl"
    gate_kind: Literal["vector", "scalar"] = "vector"  # "vector" (paper) | "scalar"
    # GateSkip's training budget ramps linearly 0 -> this over fine-tuning (paper: 0.2); kl needs it > 0
    train_skip_end: Annotated[float, Interval("[0, 1)")] = 0.2
    # stage 1 (smollm2): train the gates only, the LM frozen (its pilot's joint fine-tunes degraded the LM)
    freeze_lm: bool = False
    # dictmc: validation questions, every one judged (nothing is chosen on dictmc). 800 for power: on 200 the health
    # difference's SD was 0.34 per question (~12 % of questions flip), an interval of ±0.048 against a tolerance of
    # 0.0345 that could never hold; at 800 a true difference of 0 holds with ~80 % power (the SD, not the effect)
    mc_questions: Count = 800
    # stage 1: skipped fractions (ascending) at which learned and random ranking are compared; the premise is read
    # at the last
    premise_budgets: Annotated[tuple[float, ...], Interval("(0, 1)"), NON_EMPTY, UNIQUE] = (0.02, 0.05)
    # stage 1's seed: its validation windows and questions, the gates' initialisation and training batches
    premise_seed: NonNegative = 0
    # a pretrained LLM: run stage 2 (the comparison on test seeds) when stage 1's chosen gates moved, stayed healthy
    # and beat random ranking on the choosing half of the validation windows (else its premises cannot hold)
    compare: bool = True
    # stage 2: held-out text windows per test seed (SmolLM2's test files hold 287 windows of 64 tokens: 5 x 56)
    test_windows: Count = 56
    mc_test_questions: Count = 100  # stage 2: GCIDE test questions per test seed (each scored at every point)
    decode_windows: Count = 16  # stage 2: test windows decoded token by token with a KV cache (batch, sequence scope)
    budgets: Annotated[tuple[float, ...], Interval("[0, 1)"), NON_EMPTY, UNIQUE] = (
        0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)  # inference skip ratios r
    # compute saved is read where quality falls below these x dense
    levels: Annotated[tuple[float, ...], Interval("(0, 1)"), NON_EMPTY, UNIQUE] = (0.9, 0.95)
    budget_factor: BudgetFactor = 2.0  # convergence check: the first test seed of each trained choice this x longer
    # the first n real tokens of every row are never skipped, in training and evaluation alike (attention sinks;
    # the budget still counts them): 0 = the paper's (only pad and EOS exempt)
    protect_first: NonNegative = 0
    # teacher-forced budget quantile over the whole eval batch (paper) or per "sequence"
    scope: Literal[*skip.SCOPES] = "batch"
    tune_seeds: Count = 1  # validation seeds 0 .. tune_seeds-1 on which every choice is made
    seeds: Count = 5  # fresh test seeds 100 .. 100+seeds-1 running the frozen choice (TEST_SEED_OFFSET)
    eval_size: Count = 1024  # held-out sequences per split and point
    eval_batch: Count = 64  # sequences per evaluation forward (the batch the quantile is taken over)
    flops_batch: Count = 16  # sequences in the compact forward whose FLOPs are counted
    calib_batches: Count = 4  # ShortGPT calibration batches of batch_size training sequences
    device: Device = "auto"  # "auto": CUDA when present
    threads: Count = 1  # torch intra-op threads per worker (1 is fastest for tiny models on 2 shared cores)
    workers: Count = 1  # processes running jobs in parallel (2 on a 2-core machine)

    def __post_init__(self) -> None:
        config.check(self)
        if self.penalty == "kl" and self.train_skip_end == 0:
            raise ValueError("parameter 'train_skip_end' must be in (0, 1) with penalty 'kl' (its target keeps "
                             f"1 - train_skip_end), got {self.train_skip_end}")
        if len(stop_steps(self)) != len(self.finetune_stops):
            raise ValueError(
                f"finetune_stops {self.finetune_stops} of {self.finetune_steps} steps round to the same step: "
                f"{stop_steps(self)}; use fewer stops or more finetune_steps"
            )
        config.require_divisible(self, "d_model", "n_heads")
        if self.model == "tiny" and "dictmc" in self.tasks:
            raise ValueError("task 'dictmc' needs a pretrained LLM (parameter 'model'), got model 'tiny'")
        if self.model != "tiny" and (self.tasks[0] != "text" or not set(self.tasks) <= set(LLM_TASKS)):
            raise ValueError(f"parameter 'tasks' must start with 'text' and hold only {LLM_TASKS} with model "
                             f"{self.model!r} (its gates train on text; running sums need the tiny model's own "
                             f"vocabulary), got {self.tasks}")
        if self.budgets[0] != 0 or list(self.budgets) != sorted(self.budgets):
            raise ValueError(f"parameter 'budgets' must ascend from 0 (full compute, every arm's reference point), "
                             f"got {self.budgets}")
        if self.model != "tiny" and self.compare and not self.freeze_lm:
            raise ValueError("stage 2 compares gates trained on a frozen LM with static removal from that LM: set "
                             "freeze_lm=True, or compare=False for stage 1 alone")
        if list(self.premise_budgets) != sorted(self.premise_budgets):
            raise ValueError(f"parameter 'premise_budgets' must ascend (the premise is read at the last, the "
                             f"largest), got {self.premise_budgets}")
        if self.model != "tiny":  # stage 1 tunes GateSkip alone: the other families' grids are not used
            return
        sizes = {
            "dense_lrs": len(self.dense_lrs),
            "gate_lrs x sparsity_weights": len(self.gate_lrs) * len(self.sparsity_weights),
            "random_lrs x random_skip_ends": len(self.random_lrs) * len(self.random_skip_ends),
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every family needs the same tuning budget (grid size); got {sizes}")


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "n_digits": 4,
        "text_length": 32,
        "batch_size": 16,
        "pretrain_steps": 20,
        "text_pretrain_steps": 20,
        "finetune_steps": 10,
        "finetune_stops": (0.5, 1.0),
        "gate_lrs": (0.0,),
        "sparsity_weights": (0.01,),
        "dense_lrs": (1e-3,),
        "random_lrs": (1e-3,),
        "random_skip_ends": (0.2,),
        "seeds": 2,
        "eval_size": 64,
        "eval_batch": 32,
        "flops_batch": 4,
        "calib_batches": 1,
        "budgets": (0.0, 0.2, 0.5),
    },
    "toy": {  # the tiny LM: both tasks, 4 configurations per family tuned on 1 validation seed, 5 fresh test seeds
        "d_model": 64,
        "n_digits": 4,
        "pretrain_steps": 1200,  # running sums, N=4: dense exact match ~1 after pretraining
        "text_length": 64,
        "text_pretrain_steps": 500,  # dense fine-tune ~2.4 bits per byte (unigram 4.45)
        "eval_size": 256,
        "workers": 2,
    },
    # SmolLM2-135M, stage 1 (the premise) on validation: scalar gates trained alone (34,620 parameters; vector gates
    # are 46.5 M here) for 150 steps of 8 x 64 tokens, the budget ramped to 5 %, over gate lr x λ; the settings of
    # the pilot (gate lr 5e-2, λ 0.01, ramp to 5 %: learned ahead of random at every budget) and around it
    "cpu": {
        "model": "smollm2",
        "tasks": ("text", "dictmc"),
        "gate_kind": "scalar",
        "freeze_lm": True,
        "text_length": 64,
        "batch_size": 8,
        "finetune_steps": 150,
        "finetune_stops": (0.5, 1.0),
        "finetune_lr": 1e-5,  # unused while the LM is frozen
        "gate_lrs": (1e-2, 5e-2),
        "sparsity_weights": (0.01, 0.1),
        "train_skip_end": 0.05,
        # the window's first token (the attention sink) is never skipped, and stage 1 runs on seed 1: exploration
        # smollm2_sink found the ranking premise only with the sink protected, on seed 0's windows, so the report
        # confirms it on seed 1's: validation windows disjoint from seed 0's, its own gate initialisation and
        # training batches (dictmc's questions may repeat some of seed 0's; that exploration never scored dictmc)
        "protect_first": 1,
        "premise_seed": 1,
        "eval_size": 64,
        "eval_batch": 16,
        "workers": 2,
        # stages 1 + 2 sized to the 120 minutes on 2 cores from a one-seed timing run of stage 2 (GCIDE scoring
        # costs ~1.1 s per question and point, a gate-training step 3.8 s): 400 validation questions (800 cost 66 of
        # stage 1's 118 CPU minutes; the health interval widens from ±0.024 to ~±0.034), 20 test questions per seed
        # and point, 32 test windows, 8 decoded; budgets out to 20 % (ShortGPT was within 10 % of dense at 10 %)
        "mc_questions": 400,
        "budgets": (0.0, 0.02, 0.05, 0.1, 0.2),
        "test_windows": 32,
        "mc_test_questions": 20,
        "decode_windows": 8,
        "flops_batch": 4,
    },
    # SmolLM2-135M with the paper's vector gates and a longer schedule, for a lent GPU: stage 1 with the first token
    # protected as on CPU (its 128-token windows of seed 0 were never read)
    "gpu": {
        "model": "smollm2",
        "tasks": ("text", "dictmc"),
        "freeze_lm": True,
        "text_length": 128,
        "batch_size": 16,
        "finetune_steps": 1000,
        "finetune_lr": 1e-5,
        "gate_lrs": (1e-3, 1e-2),
        "sparsity_weights": (0.01, 0.1),
        "train_skip_end": 0.05,
        "protect_first": 1,
        "premise_budgets": (0.02, 0.05, 0.1),
        # the stdlib validation text holds 246 windows of 128 tokens and the test text 143: 2 tuning parts of 64,
        # then 5 test seeds x 23 in each split
        "eval_size": 64,
        "test_windows": 23,
        "eval_batch": 32,
        "threads": 4,
    },
}


def stop_steps(cfg: Config) -> list[int]:
    """The fine-tuning steps at which a run may stop (``cfg.finetune_stops`` of the schedule), ascending."""
    return sorted({max(1, round(f * cfg.finetune_steps)) for f in cfg.finetune_stops})


def tune_seeds(cfg: Config) -> list[int]:
    """The validation seeds every choice is made on: ``0 .. tune_seeds-1``."""
    return list(range(cfg.tune_seeds))


def test_seeds(cfg: Config) -> list[int]:
    """The fresh seeds the frozen choice is reported on: ``100 .. 100+seeds-1`` (disjoint from :func:`tune_seeds`)."""
    return list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + cfg.seeds))
