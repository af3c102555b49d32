"""GateSkip (Laitenberger et al., arXiv 2510.13876): learned residual gates decide which tokens skip which branch.

Every arm starts from the same small decoder LM, pretrained here from a ``transformers`` config, saved with
``save_pretrained`` and reloaded with ``from_pretrained`` (as the paper fine-tunes a pretrained model), and gets the
same number of fine-tuning steps:

- ``gateskip λ=w``: vector gates (bias 5, std 0.01, detached input), L2 gate penalty of weight w, training budget
  ramped 0 -> ``train_skip_end``; evaluated with the per-branch batch quantile of gate importance;
- ``gateskip λ=w + random rank``: the same checkpoint, tokens ranked at random (isolates the learned ranking);
- ``random_skip``: fine-tuned with random hard skipping on the same ramp (no gates), evaluated with random ranking;
- ``dense``: fine-tuned without skipping (the quality reference);
- ``shortgpt`` and ``uls``: static branch / layer removal on the dense fine-tune (ShortGPT block influence on
  calibration batches; Unified Layer Skipping's evenly spaced middle layers).

Tasks: ``cumsum`` (running sums mod 10: token accuracy and exact match of chain + answer) and ``text`` (byte-level
LM on pinned CPython stdlib sources: bits per byte). Compute saved is reported as the paper's token x branch
fraction and as FLOPs actually executed in compact execution (``labkit.profile.count_flops``), vs the dense model.

This module holds the config, presets and :func:`run`; the tasks and their scoring live in
:mod:`labkit.experiments.gateskip_tasks`, the arms (pretraining, fine-tuning, baselines) in
:mod:`labkit.experiments.gateskip_arms`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from labkit import gate, profile, skip
from labkit.experiments import (
    check_types,
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
from labkit.experiments.gateskip_arms import FinetuneResults, finetune_arms, pretrain

TASKS = ("cumsum", "text")
PAPER_SAVED_AT_90 = 0.15  # abstract: "up to 15 % compute saved while keeping > 90 % of baseline accuracy"


@dataclass
class Config:
    tasks: tuple[str, ...] = ("cumsum",)  # "cumsum" (running sums, exact match) and/or "text" (stdlib bytes, bpb)
    arch: str = "llama"  # "llama" | "qwen2" | "gpt2": the transformers family of the tiny LM
    n_digits: int = 8  # running-sum digits N: sequences of 2N+5 tokens (21 for N=8)
    text_length: int = 128  # bytes per text window
    d_model: int = 128  # hidden size (0.8 M parameters at 4 layers: the trial's size)
    n_layers: int = 4  # decoder layers; static skipping is seed-fragile below ~8
    n_heads: int = 4  # attention heads
    batch_size: int = 64  # sequences per training step
    pretrain_steps: int = 300  # steps to pretrain the shared checkpoint (trial: EM 1.0 after 300)
    pretrain_lr: float = 3e-3  # AdamW peak lr, cosine (trial value)
    text_pretrain_steps: int = 600  # pretraining steps on the text task (harder than the toy)
    finetune_steps: int = 200  # fine-tuning steps of every arm
    finetune_lr: float = 1e-3  # fine-tuning peak lr (the paper: 3e-6 on 1B models for 6,800 steps)
    gate_lr: float = 0.0  # gate parameters' peak lr; 0 = finetune_lr (paper: gates-only phase 1e-4 vs 3e-6, 33x)
    sparsity_weights: tuple[float, ...] = (0.01,)  # gate-penalty weights λ, one GateSkip arm each (paper: 1.0)
    penalty: str = "l2"  # "l2" (paper) | "l1" | "kl"
    gate_kind: str = "vector"  # "vector" (paper) | "scalar"
    train_skip_end: float = 0.2  # training budget ramps linearly 0 -> this over fine-tuning (paper: 0.2)
    budgets: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)  # inference skip ratios r
    scope: str = "batch"  # budget quantile over the whole eval batch (paper) or "sequence"
    seeds: int = 3  # seeds 0 .. seeds-1 (pretraining, fine-tuning and data)
    eval_size: int = 1024  # held-out sequences per point
    eval_batch: int = 64  # sequences per evaluation forward (the batch the quantile is taken over)
    flops_batch: int = 16  # sequences in the compact forward whose FLOPs are counted
    calib_batches: int = 4  # ShortGPT calibration batches of batch_size sequences
    device: str = "auto"  # "auto": CUDA when present
    threads: int = 1  # torch intra-op threads per worker (1 is fastest for tiny models on 2 shared cores)
    workers: int = 1  # processes running (task, seed) jobs in parallel (2 on a 2-core machine)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        check_types(self)
        require_non_empty(self, "tasks", "sparsity_weights", "budgets")
        require_subset("tasks", self.tasks, TASKS)
        require_choice(self, "arch", sorted(gate.ARCHITECTURES))
        require_choice(self, "penalty", gate.PENALTY_KINDS)
        require_choice(self, "gate_kind", ("vector", "scalar"))
        require_choice(self, "scope", skip.SCOPES)
        require_positive(self, "n_digits", "text_length", "d_model", "n_layers", "n_heads", "batch_size",
                         "pretrain_steps", "pretrain_lr", "text_pretrain_steps", "finetune_steps", "finetune_lr",
                         "seeds", "eval_size", "eval_batch", "flops_batch", "calib_batches", "threads", "workers")
        require_non_negative(self, "gate_lr", "sparsity_weights")
        require_within(self, "train_skip_end", 0, 1, "()" if self.penalty == "kl" else "[)")  # kl: keep 1 - it
        require_within(self, "budgets", 0, 1, "[)")
        require_divisible(self, "d_model", "n_heads")
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "n_digits": 4,
        "batch_size": 16,
        "pretrain_steps": 20,
        "finetune_steps": 10,
        "seeds": 1,
        "eval_size": 64,
        "eval_batch": 32,
        "flops_batch": 4,
        "calib_batches": 1,
        "budgets": (0.0, 0.2, 0.5),
        "sparsity_weights": (0.01,),
        "progress": False,
    },
    "cpu": {  # the text track, where GateSkip held at this scale (reports/gateskip/explorations.md §4)
        "tasks": ("text",),  # tasks=("cumsum",): running sums, N=4 / 1200 steps (GateSkip lost to ShortGPT there)
        "d_model": 64,
        "n_digits": 4,
        "pretrain_steps": 1200,
        "text_length": 64,
        "text_pretrain_steps": 500,  # dense fine-tune ~2.4 bits per byte (unigram 4.45, bigram 3.56)
        "eval_size": 256,
        "seeds": 3,
        "workers": 3,
        "gate_lr": 3e-2,  # 30x finetune_lr: at 1e-3 the gates barely leave sigmoid(5) in 200 steps
        "sparsity_weights": (1.0, 0.01),  # the first λ is the headline arm (and gets the random-rank control)
    },
    "gpu": {
        "tasks": ("cumsum", "text"),
        "d_model": 256,
        "n_layers": 8,
        "n_heads": 8,
        "n_digits": 12,
        "pretrain_steps": 2000,
        "text_pretrain_steps": 4000,
        "finetune_steps": 1000,
        "seeds": 5,
        "gate_lr": 3e-2,  # the gate lr where GateSkip held on text at cpu scale (explorations §4); unverified here
        "sparsity_weights": (1.0, 0.1, 0.01, 0.001),  # the first λ is the headline arm, as in cpu
        "eval_size": 4096,
        "flops_batch": 64,
        "threads": 4,
    },
}


# `labkit report --preset cpu` also writes reports/gateskip/cpu-cumsum/: the running-sum task, where the claim did not
# hold at this scale, reported beside the text track where it did.
REPORT_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {"cpu": {"cumsum": {"tasks": ("cumsum",)}}}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


@dataclass
class Results:
    """Tidy tables of :func:`run` plus the seed-0 GateSkip model for the token widget."""

    curves: pd.DataFrame  # one row per task x seed x arm x budget: quality and compute saved three ways
    gates: pd.DataFrame  # mean gate importance per task x seed x layer x branch x position (GateSkip, r = 0)
    skips: pd.DataFrame  # skip fraction per task x seed x branch x position at r = train_skip_end
    history: pd.DataFrame  # training losses per task x seed x phase x step
    cost: pd.DataFrame  # wall seconds per task x seed x phase (not a metric: varies run to run)
    provenance: dict[str, Any]  # model size, data provenance (text: stdlib files and SHA-256)
    model: nn.Module  # seed-0 GateSkip model (first λ, first task) for the widget
    examples: torch.Tensor  # its first evaluation batch


def run_seed(cfg: Config, task_name: str, seed: int, workdir: Path) -> FinetuneResults:
    """All arms of one task and seed (:func:`pretrain`, then :func:`finetune_arms`), pretraining's log first."""
    pre = pretrain(cfg, task_name, seed, workdir)
    out = finetune_arms(cfg, pre, workdir)
    return dataclasses.replace(out, history=pre.history + out.history, cost=pre.cost + out.cost)


def _run_job(args: tuple[Config, str, int, str]) -> FinetuneResults:
    cfg, task_name, seed, workdir = args
    return run_seed(cfg, task_name, seed, Path(workdir))


def run(cfg: Config) -> Results:
    """Every task, seed and arm of ``cfg``; tidy tables plus the seed-0 GateSkip model for the widget.

    With ``cfg.workers > 1`` the (task, seed) jobs run in that many spawned processes of ``cfg.threads`` threads.
    """
    rows, gates, skips, history, cost = [], [], [], [], []
    provenance: dict[str, Any] = {}
    model, examples = None, None
    with tempfile.TemporaryDirectory(prefix="labkit-gateskip-") as tmp:
        jobs = [(t, s) for t in cfg.tasks for s in range(cfg.seeds)]
        if cfg.workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            quiet = dataclasses.replace(cfg, progress=False)
            args = [(quiet, t, s, tmp) for t, s in jobs]
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=context) as pool:
                outs = list(
                    tqdm(pool.map(_run_job, args), total=len(jobs), desc="gateskip seeds", disable=not cfg.progress)
                )
        else:
            outs = [
                run_seed(cfg, t, s, Path(tmp)) for t, s in tqdm(jobs, desc="gateskip seeds", disable=not cfg.progress)
            ]
        for out, (task_name, _) in zip(outs, jobs, strict=True):
            rows += out.rows
            gates += out.gates
            skips += out.skips
            history += out.history
            cost += out.cost
            provenance[task_name] = {"parameters": out.parameters, **out.provenance}
            if model is None:
                device = profile.resolve_device(cfg.device)
                model, examples = gate.from_pretrained(out.model_path).to(device).eval(), out.examples
    return Results(
        curves=pd.DataFrame(rows),
        gates=pd.DataFrame(gates),
        skips=pd.DataFrame(skips),
        history=pd.concat(history, ignore_index=True),
        cost=pd.DataFrame(cost),
        provenance=provenance,
        model=model,
        examples=examples,
    )
