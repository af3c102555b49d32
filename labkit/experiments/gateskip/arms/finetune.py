"""GateSkip's arms: one pretrained LM per task and seed, then one fine-tune per arm configuration, scored at every
budget on validation (tuning) or test (the frozen choice).

The number of fine-tuning steps is tuned as early stopping: every run follows the same ``cfg.finetune_steps``
schedule (cosine lr and skip ramp) and a validation run is scored at each stopping point of ``cfg.finetune_stops``; a
test run stops at the chosen one, which trains exactly as the checkpointed run did up to there. The convergence check
reruns a chosen configuration on a longer schedule of the same shape (:func:`~.grid.longer`).

Every configuration starts from the same checkpoint, gate initialisation and fine-tuning batches of its seed, so
one job's numbers do not depend on which other jobs ran, and jobs run in any order or process.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from torch import nn

from labkit import gate, profile, seed_everything, skip
from labkit.experiments.gateskip.arms.grid import CONTROL, STATIC, Spec
from labkit.experiments.gateskip.config import Config
from labkit.experiments.gateskip.data import (
    SkipContext,
    Task,
    TokenText,
    evaluate,
    executed_flops,
    gate_importance,
    gate_maps,
    gate_shift,
    generate_chains,
    mean_gate,
    skipping,
    vocabulary,
)
from labkit.models.decoder_lm import build_causal_lm, load_lm, n_parameters, save_lm
from labkit.train import train_causal_lm

T = TypeVar("T")
SCOPES = ("batch", "sequence")  # generation: quantile over the step's batch, or calibrated per-branch thresholds


@dataclass
class Pretrained:
    """One task and seed's pretrained checkpoint, reused by every fine-tune of that seed (see :func:`pretrain`)."""

    task: str  # task name
    seed: int  # the seed of pretraining, fine-tuning data and evaluation data
    checkpoint: Path  # save_pretrained folder of the pretrained LM
    history: pd.DataFrame  # pretraining losses
    seconds: float  # wall seconds of pretraining
    parameters: int  # parameters of the LM
    provenance: dict[str, Any]  # data provenance of the task (text: stdlib files and SHA-256 per split)


@dataclass
class ArmResults:
    """What one fine-tuning job returns: row lists for the computed tables (:func:`~.compute.compute`)."""

    rows: list[dict[str, Any]]  # teacher-forced curve rows: task, seed, split, arm, spec columns, budget, quality
    generation: list[dict[str, Any]] = field(default_factory=list)  # generated-chain rows (cumsum, test)
    gates: list[dict[str, Any]] = field(default_factory=list)  # mean gate per layer x branch x position (GateSkip)
    skips: list[dict[str, Any]] = field(default_factory=list)  # skip fraction per branch x position (GateSkip)
    history: pd.DataFrame | None = None  # fine-tuning losses
    cost: list[dict[str, Any]] = field(default_factory=list)  # wall seconds per phase
    model_path: str | None = None  # saved GateSkip model (test split)


def base_lm(cfg: Config, task_name: str, positions: int, seed: int | None = None) -> nn.Module:
    """The tiny decoder LM of ``task_name`` (its vocabulary, EOS and padding) for sequences of ``positions`` tokens,
    initialised from ``seed`` (None: the current random state, for a model whose weights are loaded next)."""
    vocab, eos, pad = vocabulary(task_name)
    return build_causal_lm(
        cfg.arch,
        vocab,
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        max_positions=positions,
        eos_token_id=eos,
        pad_token_id=pad,
        seed=seed,
    )


def pretrain(cfg: Config, task_name: str, seed: int, workdir: Path, progress: bool = False) -> Pretrained:
    """Pretrain the shared LM of one task and seed and save it under ``workdir`` (the expensive part of a seed)."""
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    task = Task(task_name, cfg, seed, device)
    base = base_lm(cfg, task_name, task.tokens("test").shape[1], seed).to(device)
    steps = cfg.pretrain_steps if task_name == "cumsum" else cfg.text_pretrain_steps
    start = time.perf_counter()
    frame = train_causal_lm(
        base,
        lambda s: task.batch(cfg.batch_size),
        steps,
        cfg.pretrain_lr,
        warmup_steps=steps // 20,
        progress=progress,
        desc=f"pretrain {task_name} s{seed}",
    )
    seconds = time.perf_counter() - start
    checkpoint = save_lm(base, Path(workdir) / f"{task_name}-pretrained-{seed}")
    history = frame.assign(task=task_name, seed=seed, phase="pretrain")
    return Pretrained(task_name, seed, checkpoint, history, seconds, n_parameters(base), task.provenance)


def finetune(
    model: nn.Module,
    task: Task | TokenText,
    cfg: Config,
    spec: Spec,
    seed: int,
    stops: tuple[int, ...],
    on_stop: Callable,
    progress: bool = False,
) -> pd.DataFrame:
    """Fine-tune ``model`` as ``spec`` says for ``spec.steps`` of the ``cfg.finetune_steps`` schedule, calling
    ``on_stop(done)`` at the earlier ``stops``: densely, or with skipping ramped in over the schedule (the paper's ramp
    0 -> ``train_skip_end``), ranked by its gates with the gate penalty ("gateskip") or at random ("random_skip")."""
    gen = torch.Generator().manual_seed(30_000 + seed)  # every arm of a seed sees the same fine-tuning batches
    common = {
        "schedule_steps": cfg.finetune_steps,
        "checkpoints": stops,
        "on_checkpoint": on_stop,
        "progress": progress,
        "desc": f"{spec.family} {spec.config}",
    }
    steps = spec.steps or cfg.finetune_steps

    def batches(step: int) -> torch.Tensor:
        return task.batch(cfg.batch_size, gen)

    if spec.family == "dense":
        return train_causal_lm(model, batches, steps, spec.finetune_lr, **common)
    ranking = "gate" if spec.family == "gateskip" else "random"

    def context(step: int) -> AbstractContextManager[skip.SkipStats]:
        ratio = spec.train_skip_end * step / max(1, cfg.finetune_steps - 1)
        return skipping(model, cfg, ratio, ranking=ranking, seed=step)

    def penalty(m: nn.Module) -> torch.Tensor:
        return spec.sparsity_weight * gate.gate_penalty(m, cfg.penalty, keep_fraction=1 - spec.train_skip_end)

    return train_causal_lm(
        model,
        batches,
        steps,
        spec.finetune_lr,
        step_context=context,
        extra_loss=penalty if spec.family == "gateskip" else None,
        parameters=gate.parameter_groups(model, spec.finetune_lr, spec.gate_lr),
        **common,
    )


@dataclass
class _Job:
    """One fine-tuning job: its config, task, spec, split and what it records."""

    cfg: Config
    pre: Pretrained
    task: Task
    spec: Spec
    split: str  # "val" (tuning) or "test" (the frozen configuration)
    workdir: Path
    stops: tuple[int, ...] = ()  # earlier stopping points scored on the way (validation)
    progress: bool = False  # a progress bar over fine-tuning steps
    cost: list[dict[str, Any]] = field(default_factory=list)
    dense_flops: int = 0  # FLOPs of the pretrained model's forward (test only): the 0 % saved reference
    initial_gates: torch.Tensor | None = None  # gate importance before fine-tuning (GateSkip): the shift's reference
    _nested: float = 0.0  # seconds of timed phases run inside other timed phases (not counted twice)

    def timed(self, phase: str, fn: Callable[[], T]) -> T:
        """``fn()``, its wall seconds recorded under ``phase`` (less those of timed phases run inside it)."""
        start, nested = time.perf_counter(), self._nested
        out = fn()
        seconds = time.perf_counter() - start
        row = {"task": self.task.name, "seed": self.pre.seed, "split": self.split, "phase": phase}
        self.cost.append({**row, "seconds": seconds - (self._nested - nested)})
        self._nested = nested + seconds
        return out

    @property
    def flops_input(self) -> torch.Tensor:
        """The batch whose executed FLOPs are counted: the first ``flops_batch`` test sequences."""
        return self.task.tokens("test")[: self.cfg.flops_batch].to(self.task.device)

    def at(self, done: int) -> Spec:
        """The job's spec stopped after ``done`` fine-tuning steps."""
        return dataclasses.replace(self.spec, steps=done)

    def row(self, spec: Spec, arm: str, budget: float, quality: dict[str, float], flops: int | None) -> dict:
        out = {"task": self.task.name, "seed": self.pre.seed, "split": self.split, "arm": arm, **spec.columns()}
        out.update(budget=budget, **quality)
        if flops is not None:
            out.update(flops=flops, flops_saved=1.0 - flops / self.dense_flops)
        return out

    def points(
        self, model: nn.Module, spec: Spec, arm: str, make: Callable[[Any, str, bool], SkipContext], budgets: list
    ) -> list:
        """Teacher-forced rows of ``model`` at each budget (FLOPs of compact execution on test only)."""
        rows = []
        for budget in budgets:
            quality = evaluate(model, self.task, make(budget, "masked", False), self.split)
            flops = executed_flops(model, self.flops_input, make(budget, "compact", True)) if self.split == "test" \
                else None
            rows.append(self.row(spec, arm, budget, quality, flops))
        return rows


def _budget_maker(model: nn.Module, cfg: Config, ranking: str, seed: int) -> Callable[[Any, str, bool], SkipContext]:
    def make(r: float, execution: str, flops: bool) -> SkipContext:
        return lambda: skipping(model, cfg, r, execution=execution, ranking=ranking, seed=seed, measure_flops=flops)

    return make


def _static_maker(model: nn.Module) -> Callable[[Any, str, bool], SkipContext]:
    def make(layers: list[Any], execution: str, flops: bool) -> SkipContext:
        return lambda: skip.static_skip(model, layers, execution, measure_flops=flops)

    return make


def _generation(job: _Job, model: nn.Module, arm: str, ranking: str | None, sets: list | None = None) -> list:
    """Generated-chain rows (test: the job's own spec): per budget and scope (gate or random ranking) or per static
    set (``sets``)."""
    cfg, task, seed = job.cfg, job.task, job.pre.seed
    base = {"task": task.name, "seed": seed, "split": job.split, "arm": arm, "config": job.spec.config}
    rows = []
    if sets is not None:
        for layers in sets:
            out = generate_chains(
                model, task, lambda layers=layers: skip.static_skip(model, layers, measure_flops=False)
            )
            rows += [{**base, "scope": scope, "budget": out["skipped_fraction"], **out} for scope in SCOPES]
        return rows
    val = [task.tokens("val")[i : i + cfg.eval_batch].to(task.device) for i in range(0, cfg.eval_size, cfg.eval_batch)]
    for budget in cfg.budgets:
        for scope in SCOPES:
            thresholds = None
            if scope == "sequence" and ranking == "gate" and budget > 0:
                thresholds = skip.calibrate_thresholds(model, val, budget)  # calibrated on validation
            out = generate_chains(
                model,
                task,
                lambda b=budget, s=scope, t=thresholds: skipping(model, cfg, b, scope=s, ranking=ranking, thresholds=t,
                                                                 seed=seed),
            )
            rows.append({**base, "scope": scope, "budget": budget, **out})
    return rows


def static_sets(
    model: nn.Module, calibration: list[torch.Tensor], n_layers: int, budgets: tuple[float, ...]
) -> dict[str, list[list[Any]]]:
    """ShortGPT's branch sets (lowest block influence on the training ``calibration`` batches) and ULS's layer sets of
    a model of ``n_layers`` layers, one per budget of ``budgets`` that removes at least one and not every branch."""
    order = skip.shortgpt_order(model, calibration)
    n_branches = 2 * n_layers
    ks = sorted({round(r * n_branches) for r in budgets} - {0})
    uls = sorted({tuple(skip.uls_layers(n_layers, 1.0 / (1.0 - r))) for r in budgets if r > 0} - {()})
    return {"shortgpt": [order[:k] for k in ks if k < n_branches], "uls": [list(s) for s in uls]}


def _dense(job: _Job, roles: tuple[str, ...]) -> ArmResults:
    """A dense fine-tune: at each stop its full-compute row (role "dense") and static skipping on it (roles
    "shortgpt", "uls")."""
    model = load_lm(job.pre.checkpoint, job.task.device)
    out = ArmResults([])

    def score(done: int) -> None:
        _score_dense(job, model, job.at(done), roles, out)

    out.history = job.timed(
        f"finetune {job.spec.family}",
        lambda: finetune(model, job.task, job.cfg, job.spec, job.pre.seed, job.stops, score, job.progress),
    )
    score(job.spec.steps)
    return out


def _score_dense(job: _Job, model: nn.Module, spec: Spec, roles: tuple[str, ...], out: ArmResults) -> None:
    cfg, task = job.cfg, job.task
    full = evaluate(model, task, split=job.split)
    flops = job.dense_flops if job.split == "test" else None
    out.rows += [job.row(spec, role, 0.0, full, flops) for role in roles]
    if job.split == "test" and task.name == "cumsum":
        chains = generate_chains(model, task)
        out.generation += [
            {
                "task": task.name,
                "seed": job.pre.seed,
                "split": "test",
                "arm": role,
                "config": spec.config,
                "scope": scope,
                "budget": 0.0,
                **chains,
            }
            for role in roles
            for scope in SCOPES
        ]
    sets = job.timed("static orders", lambda: static_sets(model, task.calibration(), cfg.n_layers, cfg.budgets))
    for arm in (r for r in roles if r in STATIC):
        points = job.timed(f"eval {arm}", lambda arm=arm: job.points(model, spec, arm, _static_maker(model), sets[arm]))
        for row, layers in zip(points, sets[arm], strict=True):
            row["budget"] = row["skipped_fraction"]  # static points sit at their own saved fraction
            row["removed"] = str(layers)
        out.rows += points
        if job.split == "test" and task.name == "cumsum":
            out.generation += job.timed(
                f"generate {arm}", lambda arm=arm: _generation(job, model, arm, None, sets[arm])
            )


def _fresh(job: _Job, kind: str) -> nn.Module:
    """The pretrained LM with gates of ``kind``, initialised the same whatever ran before."""
    torch.manual_seed(40_000 + job.pre.seed)
    return gate.add_gates(load_lm(job.pre.checkpoint, job.task.device), kind=kind)


def _skipping(job: _Job) -> ArmResults:
    """A GateSkip or random-skip fine-tune scored at every budget and stop; on test, the GateSkip model is saved and
    reloaded as users do, also scored with random ranking (the control isolating the learned ranking) and mapped."""
    cfg, task, spec, seed = job.cfg, job.task, job.spec, job.pre.seed
    gated = spec.family == "gateskip"
    model = _fresh(job, cfg.gate_kind if gated else "none")
    if gated:
        job.initial_gates = gate_importance(model, task)
    out = ArmResults([])
    out.history = job.timed(
        f"finetune {spec.family}",
        lambda: finetune(
            model, task, cfg, spec, seed, job.stops, lambda done: _score_skipping(job, model, done, out), job.progress
        ),
    )
    if gated and job.split == "test":
        saved = job.workdir / f"{task.name}-gateskip-{seed}"
        model.save_pretrained(saved)
        model = gate.from_pretrained(saved).to(task.device).eval()  # the reload path users take
        out.model_path = str(saved)
        out.gates, out.skips = gate_maps(model, task, cfg)
    _score_skipping(job, model, spec.steps, out)
    return out


def _score_skipping(job: _Job, model: nn.Module, done: int, out: ArmResults) -> None:
    cfg, task, spec = job.cfg, job.task, job.at(done)
    gated = spec.family == "gateskip"
    arms = [(spec.family, "gate" if gated else "random")]
    if gated and job.split == "test":
        arms.append((CONTROL, "random"))
    rows = []
    for arm, ranking in arms:
        make = _budget_maker(model, cfg, ranking, job.pre.seed)
        rows += job.timed(f"eval {arm}", lambda a=arm, m=make: job.points(model, spec, a, m, list(cfg.budgets)))
        if job.split == "test" and task.name == "cumsum":
            out.generation += job.timed(f"generate {arm}", lambda a=arm, r=ranking: _generation(job, model, a, r))
    if gated:
        importance = gate_importance(model, task)
        gates = {"gate_mean": mean_gate(importance), "gate_shift": gate_shift(importance, job.initial_gates)}
        rows = [dict(row, **gates) for row in rows]
    out.rows += rows


def run_arm(
    cfg: Config,
    pre: Pretrained,
    spec: Spec,
    split: str,
    workdir: Path,
    roles: tuple[str, ...] = (),
    stops: tuple[int, ...] = (),
    progress: bool = False,
) -> ArmResults:
    """Fine-tune ``spec`` from ``pre``'s checkpoint and score it on ``split`` after ``spec.steps`` steps and at the
    earlier ``stops`` (each stop's rows carry its own steps in their spec columns).

    A dense spec is scored in each of its ``roles`` ("dense", "shortgpt", "uls"; default all three).
    """
    spec = spec if spec.steps else dataclasses.replace(spec, steps=cfg.finetune_steps)
    late = [s for s in stops if not 1 <= s < spec.steps]
    if late:
        raise ValueError(f"stops {late} do not lie before the run's end (steps={spec.steps}) of {spec.config!r}")
    seed_everything(pre.seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    task = Task(pre.task, cfg, pre.seed, device)
    job = _Job(cfg, pre, task, spec, split, Path(workdir), tuple(sorted(stops)), progress)
    if split == "test":
        job.dense_flops = executed_flops(load_lm(pre.checkpoint, device), job.flops_input)
    out = _dense(job, roles or ("dense", *STATIC)) if spec.family == "dense" else _skipping(job)
    label = {"task": task.name, "seed": pre.seed, "split": split, "phase": f"{spec.family} {spec.config}"}
    out.history = out.history.assign(**label)
    out.cost = job.cost
    return out
