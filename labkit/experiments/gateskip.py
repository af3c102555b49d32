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
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit import gate, profile, seed_everything, skip
from labkit.data import sequences
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
from labkit.models.decoder_lm import build_causal_lm, load_lm, n_parameters, save_lm
from labkit.train import train_causal_lm

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
    curves: pd.DataFrame  # one row per task x seed x arm x budget: quality and compute saved three ways
    gates: pd.DataFrame  # mean gate importance per task x seed x layer x branch x position (GateSkip, r = 0)
    skips: pd.DataFrame  # skip fraction per task x seed x branch x position at r = train_skip_end
    history: pd.DataFrame  # training losses per task x seed x phase x step
    cost: pd.DataFrame  # wall seconds per task x seed x phase (not a metric: varies run to run)
    provenance: dict[str, Any]  # model size, data provenance (text: stdlib files and SHA-256)
    model: nn.Module  # seed-0 GateSkip model (first λ, first task) for the widget
    examples: torch.Tensor  # its first evaluation batch


# ---------------------------------------------------------------------------------------------------------- tasks
class _Task:
    """Data and metrics of one task for one seed."""

    def __init__(self, name: str, cfg: Config, seed: int, device: torch.device) -> None:
        self.name, self.cfg, self.device = name, cfg, device
        self.train_gen = torch.Generator().manual_seed(seed)
        eval_gen = torch.Generator().manual_seed(10_000 + seed)
        self.calib_gen_seed = 20_000 + seed
        self.provenance: dict[str, Any] = {}
        if name == "cumsum":
            self.vocab, self.eos, self.pad = sequences.VOCAB_SIZE, sequences.EOS, sequences.PAD
            self.eval_tokens = sequences.running_sum_batch(cfg.eval_size, cfg.n_digits, eval_gen)
            self.scored = sequences.running_sum_scored(cfg.n_digits)
        else:
            self.vocab, self.eos, self.pad = 256, None, None
            self.train_bytes, prov = sequences.stdlib_bytes(sequences.STDLIB_TRAIN_FILES)
            eval_bytes, eval_prov = sequences.stdlib_bytes(sequences.STDLIB_EVAL_FILES)
            self.provenance = {"train": prov, "eval": eval_prov}
            self.eval_tokens = sequences.byte_windows(eval_bytes, cfg.eval_size, cfg.text_length, eval_gen)
            self.scored = torch.ones(cfg.text_length - 1, dtype=torch.bool)

    def batch(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator or self.train_gen
        if self.name == "cumsum":
            return sequences.running_sum_batch(n, self.cfg.n_digits, gen)
        return sequences.byte_windows(self.train_bytes, n, self.cfg.text_length, gen)

    def calibration(self) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.calib_gen_seed)
        return [self.batch(self.cfg.batch_size, gen).to(self.device) for _ in range(self.cfg.calib_batches)]


@torch.no_grad()
def evaluate(model: nn.Module, task: _Task, context=None) -> dict[str, float]:
    """Quality over the task's held-out set, each eval batch inside ``context()`` (a skip context or None)."""
    cfg = task.cfg
    model.eval()
    scored = task.scored.to(task.device)
    n_tok = n_correct = n_seq_ok = 0
    nll = 0.0
    fractions = []
    for start in range(0, task.eval_tokens.shape[0], cfg.eval_batch):
        x = task.eval_tokens[start : start + cfg.eval_batch].to(task.device)
        if context is None:
            logits = model(x, use_cache=False).logits
        else:
            with context() as stats:
                logits = model(x, use_cache=False).logits
            fractions.append(stats.skipped_fraction)
        pred, target = logits[:, :-1], x[:, 1:]
        correct = (pred.argmax(-1) == target) & scored
        n_correct += int(correct.sum())
        n_tok += int(scored.sum()) * x.shape[0]
        n_seq_ok += int((correct | ~scored).all(1).sum())
        nll += float(
            F.cross_entropy(pred[:, scored].reshape(-1, pred.shape[-1]), target[:, scored].reshape(-1), reduction="sum")
        )
    out = {"token_acc": n_correct / n_tok, "skipped_fraction": float(np.mean(fractions)) if fractions else 0.0}
    if task.name == "cumsum":
        out["seq_em"] = n_seq_ok / task.eval_tokens.shape[0]
    else:
        out["bpb"] = nll / n_tok / math.log(2)
    return out


@torch.no_grad()
def executed_flops(model: nn.Module, task: _Task, context=None) -> int:
    """FLOPs of one forward over the first ``flops_batch`` eval sequences (compact execution inside ``context``)."""
    x = task.eval_tokens[: task.cfg.flops_batch].to(task.device)
    if context is None:
        return profile.count_flops(lambda: model(x, use_cache=False))
    with context() as stats:
        model(x, use_cache=False)
    return int(stats.flops)


# ------------------------------------------------------------------------------------------------------ training
def _ramp(cfg: Config, step: int) -> float:
    return cfg.train_skip_end * step / max(1, cfg.finetune_steps - 1)


def _finetune(
    model: nn.Module, task: _Task, cfg: Config, kind: str, weight: float, desc: str, seed: int
) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(30_000 + seed)  # every arm of a seed sees the same fine-tuning batches

    def batches(step: int) -> torch.Tensor:
        return task.batch(cfg.batch_size, gen)

    if kind == "dense":
        return train_causal_lm(model, batches, cfg.finetune_steps, cfg.finetune_lr, progress=cfg.progress, desc=desc)
    ranking = "gate" if kind == "gateskip" else "random"

    def context(step: int):
        return skip.budget(model, _ramp(cfg, step), scope=cfg.scope, ranking=ranking, seed=step, measure_flops=False)

    def penalty(m: nn.Module) -> torch.Tensor:
        return weight * gate.gate_penalty(m, cfg.penalty, target_keep=1 - cfg.train_skip_end)

    return train_causal_lm(
        model,
        batches,
        cfg.finetune_steps,
        cfg.finetune_lr,
        step_context=context,
        extra_loss=penalty if kind == "gateskip" else None,
        parameters=gate.parameter_groups(model, cfg.finetune_lr, cfg.gate_lr),
        progress=cfg.progress,
        desc=desc,
    )


# ----------------------------------------------------------------------------------------------------------- runs
def _points(model, task, cfg, arm, family, weight, contexts, dense_flops) -> list[dict[str, Any]]:
    """Evaluate ``model`` under each (budget, masked-context, compact-context) and return curve rows."""
    rows = []
    for budget, masked, compact in contexts:
        quality = evaluate(model, task, masked)
        flops = executed_flops(model, task, compact)
        rows.append(
            {
                "task": task.name,
                "arm": arm,
                "family": family,
                "sparsity_weight": weight,
                "budget": budget,
                **quality,
                "flops": flops,
                "flops_saved": 1.0 - flops / dense_flops,
            }
        )
    return rows


def _budget_contexts(model, cfg, ranking, seed):
    def make(r, execution, flops):
        return lambda: skip.budget(
            model, r, scope=cfg.scope, execution=execution, ranking=ranking, seed=seed, measure_flops=flops
        )

    return [(r, make(r, "masked", False), make(r, "compact", True)) for r in cfg.budgets]


def _static_contexts(model, sets):
    def make(layers, execution, flops):
        return lambda: skip.static_skip(model, layers, execution, measure_flops=flops)

    return [(len(layers), make(layers, "masked", False), make(layers, "compact", True)) for layers in sets]


def _gate_maps(model: nn.Module, task: _Task, cfg: Config) -> tuple[list[dict], list[dict]]:
    x = task.eval_tokens[: cfg.eval_batch].to(task.device)
    gates, skips = [], []
    with torch.no_grad(), skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x)
    for name, rec in stats.records.items():
        layer, role = name.split(".")
        for pos, value in enumerate(rec["importance"].mean(0).tolist()):
            gates.append({"task": task.name, "layer": int(layer), "branch": role, "position": pos, "importance": value})
    with (
        torch.no_grad(),
        skip.budget(model, cfg.train_skip_end, scope=cfg.scope, measure_flops=False, record=True) as stats,
    ):
        model(x)
    for name, rec in stats.records.items():
        for pos, value in enumerate((~rec["keep"]).float().mean(0).tolist()):
            skips.append({"task": task.name, "module": name, "position": pos, "skip_fraction": value})
    return gates, skips


@dataclass
class Pretrained:
    """One task and seed's pretrained checkpoint, reused by every fine-tune of that seed (see :func:`pretrain`)."""

    task: _Task  # data and metrics of the task for this seed
    seed: int  # the seed of pretraining, fine-tuning data and evaluation data
    checkpoint: Path  # save_pretrained folder of the pretrained LM
    history: list[pd.DataFrame]  # pretraining losses
    cost: list[dict[str, Any]]  # wall seconds of pretraining
    parameters: int  # parameters of the LM


def _timer(cost: list[dict[str, Any]], task_name: str, seed: int):
    def timed(phase, fn):
        start = time.perf_counter()
        out = fn()
        cost.append({"task": task_name, "seed": seed, "phase": phase, "seconds": time.perf_counter() - start})
        return out

    return timed


def pretrain(cfg: Config, task_name: str, seed: int, workdir: Path) -> Pretrained:
    """Pretrain the shared LM of one task and seed and save it under ``workdir`` (the expensive part of a seed)."""
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    task = _Task(task_name, cfg, seed, device)
    cost: list[dict[str, Any]] = []
    timed = _timer(cost, task_name, seed)
    base = build_causal_lm(
        cfg.arch,
        task.vocab,
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        max_positions=task.eval_tokens.shape[1],
        eos_token_id=task.eos,
        pad_token_id=task.pad,
        seed=seed,
    ).to(device)
    steps = cfg.pretrain_steps if task_name == "cumsum" else cfg.text_pretrain_steps
    frame = timed(
        "pretrain",
        lambda: train_causal_lm(
            base,
            lambda s: task.batch(cfg.batch_size),
            steps,
            cfg.pretrain_lr,
            warmup_steps=steps // 20,
            progress=cfg.progress,
            desc=f"pretrain {task_name} s{seed}",
        ),
    )
    checkpoint = save_lm(base, Path(workdir) / f"{task_name}-pretrained-{seed}")
    history = [frame.assign(task=task_name, seed=seed, phase="pretrain")]
    return Pretrained(task, seed, checkpoint, history, cost, n_parameters(base))


@torch.no_grad()
def mean_gate(model: nn.Module, task: _Task) -> float:
    """Mean gate value over every branch and token of the first evaluation batch at r = 0 (init: sigmoid(5))."""
    x = task.eval_tokens[: task.cfg.eval_batch].to(task.device)
    with skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x, use_cache=False)
    return float(torch.stack([rec["importance"].float().mean() for rec in stats.records.values()]).mean())


def finetune_arms(cfg: Config, pre: Pretrained, workdir: Path, baselines: bool = True) -> dict[str, Any]:
    """Every arm of ``cfg`` fine-tuned from ``pre``'s checkpoint; ``baselines=False``: only the GateSkip arms.

    Each arm starts from the same checkpoint, gate initialisation and fine-tuning batches, so one arm's numbers do
    not depend on which other arms ran (explorations reuse one pretrained checkpoint across many configs).
    """
    task, seed, checkpoint = pre.task, pre.seed, pre.checkpoint
    task_name, device = task.name, task.device
    workdir = Path(workdir)
    seed_everything(seed, threads=cfg.threads)
    cost, history, rows = [], [], []
    timed = _timer(cost, task_name, seed)

    def log(phase, frame):
        history.append(frame.assign(task=task_name, seed=seed, phase=phase))

    def fresh(kind: str) -> nn.Module:
        torch.manual_seed(40_000 + seed)  # the same gate initialisation whatever ran before
        return gate.add_gates(load_lm(checkpoint, device), kind=kind)

    dense_flops = executed_flops(load_lm(checkpoint, device), task)
    if baselines:
        dense_model = load_lm(checkpoint, device)
        log("dense", timed("finetune dense", lambda: _finetune(dense_model, task, cfg, "dense", 0.0, "dense", seed)))
        dense_quality = evaluate(dense_model, task)
        rows.append(
            {
                "task": task_name,
                "arm": "dense",
                "family": "dense",
                "sparsity_weight": 0.0,
                "budget": 0.0,
                **dense_quality,
                "flops": dense_flops,
                "flops_saved": 0.0,
            }
        )

    first_gated, gate_rows, skip_rows = None, [], []
    for weight in cfg.sparsity_weights:
        model = fresh(cfg.gate_kind)
        log(
            f"gateskip λ={weight:g}",
            timed(
                f"finetune gateskip λ={weight:g}",
                lambda m=model, w=weight: _finetune(m, task, cfg, "gateskip", w, f"gateskip λ={w:g}", seed),
            ),
        )
        saved = workdir / f"{task_name}-gateskip-{weight:g}-{seed}"
        model.save_pretrained(saved)
        model = gate.from_pretrained(saved).to(device).eval()  # the reload path users take
        arm = f"gateskip λ={weight:g}"
        gate_value = mean_gate(model, task)
        points = timed(
            f"eval {arm}",
            lambda m=model, a=arm, w=weight: _points(
                m, task, cfg, a, "gateskip", w, _budget_contexts(m, cfg, "gate", seed), dense_flops
            ),
        )
        if first_gated is None:  # the random-ranking control of the headline (first) λ
            points += timed(
                f"eval {arm} + random rank",
                lambda m=model, a=arm, w=weight: _points(
                    m,
                    task,
                    cfg,
                    a + " + random rank",
                    "gateskip random rank",
                    w,
                    _budget_contexts(m, cfg, "random", seed),
                    dense_flops,
                ),
            )
            first_gated = saved  # reloaded by run() (workers cannot hand back modules cheaply)
            gates, skips_ = _gate_maps(model, task, cfg)
            gate_rows += gates
            skip_rows += skips_
        rows += [dict(row, gate_mean=gate_value) for row in points]

    if baselines:
        rand = fresh("none")
        log(
            "random_skip",
            timed("finetune random_skip", lambda: _finetune(rand, task, cfg, "random", 0.0, "random skip", seed)),
        )
        rows += timed(
            "eval random_skip",
            lambda: _points(
                rand,
                task,
                cfg,
                "random_skip",
                "random_skip",
                0.0,
                _budget_contexts(rand, cfg, "random", seed),
                dense_flops,
            ),
        )
        rows += _static_rows(cfg, task, dense_model, dense_flops, timed)
        dense_row = next(r for r in rows if r["arm"] == "dense")
        for arm in ("shortgpt", "uls"):  # the dense fine-tune is the 0 % point of the static arms
            rows.append({**dense_row, "arm": arm, "family": "static"})

    for row in rows:
        row["seed"] = seed
    return {
        "rows": rows,
        "gates": [dict(r, seed=seed) for r in gate_rows],
        "skips": [dict(r, seed=seed) for r in skip_rows],
        "history": history,
        "cost": cost,
        "model_path": str(first_gated) if first_gated is not None else None,
        "examples": task.eval_tokens[: cfg.eval_batch],
        "provenance": task.provenance,
        "parameters": pre.parameters,
    }


def _static_rows(cfg: Config, task: _Task, dense_model: nn.Module, dense_flops: int, timed) -> list[dict[str, Any]]:
    """ShortGPT and ULS points on the dense fine-tune, each at its own saved fraction."""
    order = timed("shortgpt order", lambda: skip.shortgpt_order(dense_model, task.calibration()))
    n_branches = 2 * cfg.n_layers
    ks = sorted({round(r * n_branches) for r in cfg.budgets} - {0})
    static_rows = _points(
        dense_model,
        task,
        cfg,
        "shortgpt",
        "static",
        0.0,
        _static_contexts(dense_model, [order[:k] for k in ks if k < n_branches]),
        dense_flops,
    )
    uls_sets = {tuple(skip.uls_layers(cfg.n_layers, 1.0 / (1.0 - r))) for r in cfg.budgets if r > 0}
    uls_sets = sorted(s for s in uls_sets if s)
    static_rows += _points(
        dense_model,
        task,
        cfg,
        "uls",
        "static",
        0.0,
        _static_contexts(dense_model, [list(s) for s in uls_sets]),
        dense_flops,
    )
    for row in static_rows:
        row["budget"] = row["skipped_fraction"]  # static points sit at their own saved fraction
    return static_rows


def run_seed(cfg: Config, task_name: str, seed: int, workdir: Path) -> dict[str, Any]:
    """All arms of one task and seed (:func:`pretrain`, then :func:`finetune_arms`)."""
    pre = pretrain(cfg, task_name, seed, workdir)
    out = finetune_arms(cfg, pre, workdir)
    out["history"] = pre.history + out["history"]
    out["cost"] = pre.cost + out["cost"]
    return out


def _run_job(args: tuple[Config, str, int, str]) -> dict[str, Any]:
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
            rows += out["rows"]
            gates += out["gates"]
            skips += out["skips"]
            history += out["history"]
            cost += out["cost"]
            provenance[task_name] = {"parameters": out["parameters"], **out["provenance"]}
            if model is None:
                device = profile.resolve_device(cfg.device)
                model, examples = gate.from_pretrained(out["model_path"]).to(device).eval(), out["examples"]
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
