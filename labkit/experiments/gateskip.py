"""GateSkip (Laitenberger et al., arXiv 2510.13876): learned residual gates decide which tokens skip which branch,
reproduced under the protocol (:mod:`labkit.protocol`).

Every arm starts from the same small decoder LM, pretrained here from a ``transformers`` config, saved with
``save_pretrained`` and reloaded with ``from_pretrained`` (as the paper fine-tunes a pretrained model), and gets the
same fine-tuning schedule (``finetune_steps``; where to stop in it is tuned on validation):

- ``gateskip``: vector gates (bias 5, std 0.01, detached input), L2 gate penalty of weight λ, training budget ramped
  0 -> ``train_skip_end``; evaluated with the per-branch batch quantile of gate importance;
- ``gateskip + random rank``: the same model, tokens ranked at random (isolates the learned ranking);
- ``random_skip``: fine-tuned with random hard skipping on a ramp (no gates), evaluated with random ranking;
- ``dense``: fine-tuned without skipping (the quality reference);
- ``shortgpt`` and ``uls``: static branch / layer removal on a dense fine-tune (ShortGPT block influence on
  calibration batches; Unified Layer Skipping's evenly spaced middle layers).

Protocol: three disjoint splits (training stream, validation, test). Each family is tuned on validation over a grid
of the same size (GateSkip: gate lr x λ; random skip: lr x ramp end; dense, ShortGPT and ULS: the dense lr; each
times the stopping points ``finetune_stops``), on ``tune_seeds`` seeds; the frozen choices then run on test with
``seeds`` fresh seeds (pretraining included). Convergence is checked by budget: every trained choice (the dense
fine-tunes, GateSkip, random skip) is rerun on the first test seed at 1x and at ``budget_factor`` x its schedule,
both scored on validation (:func:`budget_jobs`).
Tasks: ``text`` (byte-level LM on pinned CPython stdlib sources: bits per byte) and ``cumsum`` (running sums mod 10:
exact match teacher-forced and of chains generated with a KV cache). Compute saved is reported as the paper's
token x branch fraction and as FLOPs actually executed in compact execution, at 90 % and 95 % of dense quality.

This module holds the config, presets, :func:`run` and the reading of its results; the tasks live in
:mod:`~labkit.experiments.gateskip_tasks`, the arms in :mod:`~labkit.experiments.gateskip_arms`, the summaries and
the validation choices in :mod:`~labkit.experiments.gateskip_summary`, the claims in
:mod:`~labkit.experiments.gateskip_claims`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from labkit import gate, profile, protocol, skip
from labkit.experiments import (
    check_types,
    gateskip_claims,
    require_choice,
    require_device,
    require_divisible,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_subset,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.experiments import gateskip_summary as summary
from labkit.experiments.gateskip_arms import (
    ArmResults,
    Pretrained,
    Spec,
    longer,
    pretrain,
    run_arm,
    stop_steps,
    tuning_grid,
    tuning_runs,
)
from labkit.experiments.gateskip_tasks import Task, trivial_quality
from labkit.models import decoder_lm

T = TypeVar("T")
TASKS = ("cumsum", "text")
TEST_SEED_OFFSET = 100  # test seeds start here: fresh pretraining, fine-tuning and data seeds
PAPER_SAVED_AT_90 = 0.15  # abstract: "up to 15 % compute saved while keeping > 90 % of baseline accuracy"


@dataclass
class Config:
    tasks: tuple[str, ...] = ("text", "cumsum")  # "text" (stdlib bytes, bpb) and "cumsum" (running sums, exact match)
    arch: str = "llama"  # transformers family of the tiny LM (any of models.decoder_lm.ARCHS)
    n_digits: int = 8  # running-sum digits N: sequences of 2N+5 tokens (21 for N=8)
    text_length: int = 128  # bytes per text window
    d_model: int = 128  # hidden size (0.8 M parameters at 4 layers: the trial's size)
    n_layers: int = 4  # decoder layers; static skipping is seed-fragile below ~8
    n_heads: int = 4  # attention heads
    batch_size: int = 64  # sequences per training step
    pretrain_steps: int = 300  # steps to pretrain the shared checkpoint on running sums (trial: EM 1.0 after 300)
    pretrain_lr: float = 3e-3  # AdamW peak lr, cosine (trial value)
    text_pretrain_steps: int = 600  # pretraining steps on the text task (harder than the toy)
    finetune_steps: int = 200  # fine-tuning schedule of every configuration (the paper: 6,800 steps on 1B models)
    # Stopping points tuned on validation, as fractions of finetune_steps: one run per configuration is scored at
    # each (early stopping); the test run stops at the chosen one. The cosine lr and skip ramp span finetune_steps.
    finetune_stops: tuple[float, ...] = (0.5, 0.75, 1.0)
    finetune_lr: float = 1e-3  # GateSkip's LM weights' peak lr (the paper: 3e-6 on 1B models)
    # Tuning grids, chosen on validation; every fine-tuned family gets the same number of configurations.
    gate_lrs: tuple[float, ...] = (0.0, 3e-2)  # GateSkip gate peak lrs; 0 = finetune_lr (paper: gates 33x)
    sparsity_weights: tuple[float, ...] = (1.0, 0.01)  # GateSkip gate-penalty weights λ (paper: 1.0)
    dense_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)  # dense fine-tune lrs (also ShortGPT's and ULS's base)
    random_lrs: tuple[float, ...] = (1e-3, 3e-3)  # random-skip fine-tune lrs
    random_skip_ends: tuple[float, ...] = (0.2, 0.4)  # random-skip training budgets at the end of the ramp
    penalty: str = "l2"  # "l2" (paper) | "l1" | "kl"
    gate_kind: str = "vector"  # "vector" (paper) | "scalar"
    train_skip_end: float = 0.2  # GateSkip's training budget ramps linearly 0 -> this over fine-tuning (paper: 0.2)
    budgets: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)  # inference skip ratios r
    levels: tuple[float, ...] = (0.9, 0.95)  # compute saved is read where quality falls below these x dense
    budget_factor: float = 2.0  # convergence check: the first test seed of every trained choice rerun this x longer
    scope: str = "batch"  # teacher-forced budget quantile over the whole eval batch (paper) or per "sequence"
    tune_seeds: int = 1  # validation seeds 0 .. tune_seeds-1 on which every choice is made
    seeds: int = 5  # fresh test seeds 100 .. 100+seeds-1 running the frozen choice
    eval_size: int = 1024  # held-out sequences per split and point
    eval_batch: int = 64  # sequences per evaluation forward (the batch the quantile is taken over)
    flops_batch: int = 16  # sequences in the compact forward whose FLOPs are counted
    calib_batches: int = 4  # ShortGPT calibration batches of batch_size training sequences
    device: str = "auto"  # "auto": CUDA when present
    threads: int = 1  # torch intra-op threads per worker (1 is fastest for tiny models on 2 shared cores)
    workers: int = 1  # processes running jobs in parallel (2 on a 2-core machine)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        check_types(self)
        require_non_empty(
            self,
            "tasks",
            "gate_lrs",
            "sparsity_weights",
            "dense_lrs",
            "random_lrs",
            "random_skip_ends",
            "finetune_stops",
            "budgets",
            "levels",
        )
        require_subset("tasks", self.tasks, TASKS)
        require_choice(self, "arch", sorted(decoder_lm.ARCHS))
        require_choice(self, "penalty", gate.PENALTY_KINDS)
        require_choice(self, "gate_kind", ("vector", "scalar"))
        require_choice(self, "scope", skip.SCOPES)
        require_positive(
            self,
            "n_digits",
            "text_length",
            "d_model",
            "n_layers",
            "n_heads",
            "batch_size",
            "pretrain_steps",
            "pretrain_lr",
            "text_pretrain_steps",
            "finetune_steps",
            "finetune_lr",
            "dense_lrs",
            "random_lrs",
            "tune_seeds",
            "seeds",
            "eval_size",
            "eval_batch",
            "flops_batch",
            "calib_batches",
            "threads",
            "workers",
        )
        require_non_negative(self, "gate_lrs", "sparsity_weights")
        require_within(self, "train_skip_end", 0, 1, "()" if self.penalty == "kl" else "[)")  # kl: keep 1 - it
        require_within(self, "random_skip_ends", 0, 1, "()")
        require_within(self, "budgets", 0, 1, "[)")
        require_within(self, "levels", 0, 1, "()")
        require_within(self, "finetune_stops", 0, 1, "(]")
        require_within(self, "budget_factor", 2, math.inf, "[)")  # the protocol's longer run: at least twice
        if len(stop_steps(self)) != len(self.finetune_stops):
            raise ValueError(
                f"finetune_stops {self.finetune_stops} of {self.finetune_steps} steps round to the same step: "
                f"{stop_steps(self)}; use fewer stops or more finetune_steps"
            )
        require_divisible(self, "d_model", "n_heads")
        require_device(self)
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
        "progress": False,
    },
    "cpu": {  # both tasks, 4 configurations per family tuned on 1 validation seed, 5 fresh test seeds
        "d_model": 64,
        "n_digits": 4,
        "pretrain_steps": 1200,  # running sums, N=4: dense exact match ~1 after pretraining
        "text_length": 64,
        "text_pretrain_steps": 500,  # dense fine-tune ~2.4 bits per byte (unigram 4.45)
        "eval_size": 256,
        "workers": 2,
    },
    "gpu": {
        "d_model": 256,
        "n_layers": 8,
        "n_heads": 8,
        "n_digits": 12,
        "pretrain_steps": 2000,
        "text_pretrain_steps": 4000,
        "finetune_steps": 1000,
        "sparsity_weights": (1.0, 0.1),
        "tune_seeds": 2,
        "eval_size": 4096,
        "flops_batch": 64,
        "threads": 4,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


def tune_seeds(cfg: Config) -> list[int]:
    """The validation seeds every choice is made on."""
    return list(range(cfg.tune_seeds))


def test_seeds(cfg: Config) -> list[int]:
    """The fresh seeds the frozen choice is reported on (disjoint from :func:`tune_seeds`)."""
    return list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + cfg.seeds))


@dataclass
class Results:
    """Tidy tables of :func:`run` plus a test-seed GateSkip model for the token widget."""

    curves: pd.DataFrame  # one row per task x split x seed x arm x config x budget: quality and compute saved
    generation: pd.DataFrame  # cumsum, test: generated-chain exact match per seed x arm x scope x budget
    chosen: pd.DataFrame  # per task x role: the configuration chosen on validation
    validation: pd.DataFrame  # every configuration run on validation: quality, saving, which role chose it
    trivial: pd.DataFrame  # per task x seed: the trivial predictor's test quality
    gates: pd.DataFrame  # mean gate importance per task x seed x layer x branch x position (GateSkip, r = 0)
    skips: pd.DataFrame  # skip fraction per task x seed x branch x position at r = train_skip_end
    history: pd.DataFrame  # training losses per task x split x seed x phase x step
    cost: pd.DataFrame  # wall seconds per task x split x seed x phase (not a metric: varies run to run)
    provenance: dict[str, Any]  # model size, data provenance (text: stdlib files and SHA-256 per split)
    model: nn.Module  # the first test seed's GateSkip model (first task) for the widget
    examples: torch.Tensor  # its first test batch
    scores: pd.DataFrame  # per task x arm x test seed: compute saved (%) at each level and measure, quality, gate shift
    budget: pd.DataFrame  # convergence: per task x trained arm, the first test seed's validation measure at 1x and 2x
    health: pd.DataFrame  # per task x arm x test seed: full-compute quality against the dense fine-tune's
    claims: pd.DataFrame  # every claim judged, premises first (protocol.claims_table)
    sanity: pd.DataFrame  # per task x arm: converged at 2x budget, healthy, beats the trivial predictor


def _pretrain_job(args: tuple[Config, str, int, str]) -> Pretrained:
    cfg, task_name, seed, workdir = args
    return pretrain(cfg, task_name, seed, Path(workdir))


def _arm_job(args: tuple[Config, Pretrained, Spec, str, str, tuple[str, ...], tuple[int, ...]]) -> ArmResults:
    cfg, pre, spec, split, workdir, roles, stops = args
    return run_arm(cfg, pre, spec, split, Path(workdir), roles, stops)


def _test_jobs(cfg: Config, chosen: pd.DataFrame) -> list[tuple[str, Spec, tuple[str, ...]]]:
    """(task, spec, roles) per frozen choice; one dense fine-tune serves every role that chose its lr."""
    jobs = []
    for task_name, group in chosen.groupby("task", sort=False):
        by_spec: dict[Spec, list[str]] = {}
        for row in group.to_dict("records"):
            by_spec.setdefault(row["spec"], []).append(row["role"])
        jobs += [(task_name, spec, tuple(roles)) for spec, roles in by_spec.items()]
    return jobs


def budget_jobs(cfg: Config, chosen: pd.DataFrame) -> list[tuple[str, Spec, Config, Spec, float]]:
    """The convergence check's runs: (task, chosen spec, config and spec of the run, budget) for every trained choice
    (one dense fine-tune per distinct dense spec, GateSkip, random skip), at 1x and at ``cfg.budget_factor`` x.

    Both run on the first test seed and are scored on its validation split: the 1x run trains exactly as that seed's
    test run (same checkpoint, batches and schedule; jobs do not depend on each other), the longer one stretches the
    schedule, skip ramp and chosen stopping step together (:func:`~labkit.experiments.gateskip_arms.longer`). There is
    no patience to scale: the stopping step is a fraction of the schedule, chosen on validation.
    """
    jobs = []
    for task, spec, _ in _test_jobs(cfg, chosen):
        jobs += [(task, spec, cfg, spec, 1.0), (task, spec, *longer(cfg, spec, cfg.budget_factor), cfg.budget_factor)]
    return jobs


def run(cfg: Config) -> Results:
    """Tune every family on validation, freeze the choices, run them on test with fresh seeds, and rerun the first
    test seed of every trained choice at ``budget_factor`` x its schedule (the convergence check).

    Jobs (pretraining per task and seed, then one fine-tune per configuration) run in ``cfg.workers`` spawned
    processes of ``cfg.threads`` threads when ``workers > 1``.
    """
    with tempfile.TemporaryDirectory(prefix="labkit-gateskip-") as tmp, _pool(cfg) as pool:
        seeds = tune_seeds(cfg) + test_seeds(cfg)
        pre_args = [(cfg, t, s, tmp) for t in cfg.tasks for s in seeds]
        pretrained = {(p.task, p.seed): p for p in pool(_pretrain_job, pre_args, "pretrain")}
        tune_args = [
            (cfg, pretrained[t, s], spec, "val", tmp, (), stops)
            for t in cfg.tasks
            for s in tune_seeds(cfg)
            for spec, stops in tuning_runs(tuning_grid(cfg))
        ]
        tuned = pool(_arm_job, tune_args, "tune")
        val = pd.DataFrame([row for out in tuned for row in out.rows])
        chosen, validation = summary.choose(val, cfg.levels[0])
        test_args = [
            (cfg, pretrained[t, s], spec, "test", tmp, roles, ())
            for t, spec, roles in _test_jobs(cfg, chosen)
            for s in test_seeds(cfg)
        ]
        reruns = budget_jobs(cfg, chosen)
        first = test_seeds(cfg)[0]
        rerun_args = [
            (run_cfg, pretrained[t, first], run_spec, "val", tmp, ("dense",), ())
            for t, _, run_cfg, run_spec, _ in reruns
        ]
        done = pool(_arm_job, rerun_args + test_args, "test and budget")  # the longest jobs first: none ends last
        checked, tested = done[: len(rerun_args)], done[len(rerun_args) :]
        outs = tuned + tested
        device = profile.resolve_device(cfg.device)
        trivial = []
        for t in cfg.tasks:
            for s in test_seeds(cfg):
                trivial.append({"task": t, "seed": s, "arm": "trivial", **trivial_quality(Task(t, cfg, s, device))})
        saved_model = next(o for o in tested if o.model_path is not None)
        model = gate.from_pretrained(saved_model.model_path).to(device).eval()
        examples = Task(cfg.tasks[0], cfg, test_seeds(cfg)[0], device).tokens("test")[: cfg.eval_batch]
    curves = pd.DataFrame([row for out in outs for row in out.rows])
    generation = pd.DataFrame([row for out in outs for row in out.generation])
    checked_runs = list(zip(checked, reruns, strict=True))
    budget_runs = pd.DataFrame(
        [
            dict(row, chosen_config=spec.config, run_budget=factor)
            for out, (_, spec, *_, factor) in checked_runs
            for row in out.rows
        ]
    )
    history = pd.concat(
        [p.history.assign(split="pretrain") for p in pretrained.values()]
        + [out.history for out in outs]
        + [out.history.assign(split="budget", run_budget=job[-1]) for out, job in checked_runs],
        ignore_index=True,
    )
    trivial = pd.DataFrame(trivial)
    scores = summary.test_scores(curves, generation, cfg.levels)
    budget = gateskip_claims.convergence(summary.budget_values(budget_runs, chosen, cfg.levels[0]))
    health = gateskip_claims.health(scores)
    claims, sanity = gateskip_claims.verdicts(scores, trivial, budget, health, cfg.levels)
    provenance = {t: {"parameters": p.parameters, **p.provenance} for (t, _), p in pretrained.items()}
    cost = [
        {"task": p.task, "seed": p.seed, "split": "pretrain", "phase": "pretrain", "seconds": p.seconds}
        for p in pretrained.values()
    ]
    cost += [dict(row, split="budget", phase=f"budget {row['phase']}") for out in checked for row in out.cost]
    return Results(
        curves=curves,
        generation=generation,
        chosen=chosen.drop(columns="spec"),
        validation=validation,
        trivial=trivial,
        gates=pd.DataFrame([row for out in tested for row in out.gates]),
        skips=pd.DataFrame([row for out in tested for row in out.skips]),
        history=history,
        cost=pd.DataFrame(cost + [row for out in outs for row in out.cost]),
        provenance=provenance,
        model=model,
        examples=examples,
        scores=scores,
        budget=budget,
        health=health,
        claims=claims,
        sanity=sanity,
    )


def verdict_lines(results: Results) -> list[str]:
    """The rule, every claim with its effect (percentage points; premises in their own units), interval, n and
    verdict, then the sanity flags and the configurations chosen on validation: one line each
    (:func:`labkit.protocol.verdict_lines`)."""
    picks = [f"{r.task}/{r.role} {r.config}" for r in results.chosen.itertuples()]
    premise = results.claims.role == "premise"
    claims = results.claims.assign(effect=results.claims.effect.where(premise, results.claims.effect + " pp"))
    ok = (
        "every trained arm converged at the longer budget, every arm within "
        f"{gateskip_claims.HEALTH_TOLERANCE_PCT:g} % of dense at full compute and beat the trivial predictor"
    )
    return protocol.verdict_lines(claims, results.sanity, ok, notes=["chosen on validation: " + ", ".join(picks)])


def verdict_text(results: Results) -> str:
    """The recorded verdict: :func:`verdict_lines` joined as :func:`labkit.protocol.verdict_text` joins them."""
    return "; ".join(verdict_lines(results))


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per task and arm the saved fractions (%), full-compute quality and gate shift;
    each claim's effect (pp); each premise's effect (in its own units) and whether it was met (1 or 0)."""
    out = {}
    means = results.scores.groupby(["task", "arm"], sort=False).mean(numeric_only=True).drop(columns="seed")
    for (task, arm), row in means.iterrows():
        for column, value in row.items():
            if pd.notna(value):
                out[f"{task}/{arm}/{column}"] = float(value)
    for r in results.claims.itertuples():
        name = r.claim.replace(": ", "/")
        if r.role == "premise":
            out[f"premise/{name}"] = float(r.mean)
            out[f"premise/{name}/met"] = float(r.verdict == "held")
        else:
            out[f"claim/{name}_pp"] = float(r.mean)
    return out


@contextlib.contextmanager
def _pool(cfg: Config) -> Iterator[Callable[[Callable[[Any], T], list[Any], str], list[T]]]:
    """``map(fn, args, desc)`` over ``cfg.workers`` spawned processes (in order; in-process when workers == 1)."""
    if cfg.workers == 1:
        yield lambda fn, args, desc: [fn(a) for a in tqdm(args, desc=f"gateskip {desc}", disable=not cfg.progress)]
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def mapper(fn: Callable[[Any], T], args: list[Any], desc: str) -> list[T]:
        args = [(dataclasses.replace(a[0], progress=False), *a[1:]) for a in args]  # each job keeps its own config
        return list(tqdm(pool.map(fn, args), total=len(args), desc=f"gateskip {desc}", disable=not cfg.progress))

    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield mapper
