"""GateSkip's arms (:mod:`labkit.experiments.gateskip`): one pretrained LM per task and seed, then every arm
fine-tuned from it and scored at every budget.

Each arm starts from the same checkpoint, gate initialisation and fine-tuning batches, so one arm's numbers do not
depend on which other arms ran (explorations reuse one pretrained checkpoint across many configs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import torch
from torch import nn

from labkit import gate, profile, seed_everything, skip
from labkit.experiments.gateskip_tasks import SkipContext, Task, evaluate, executed_flops, gate_maps, mean_gate
from labkit.models.decoder_lm import build_causal_lm, load_lm, n_parameters, save_lm
from labkit.train import train_causal_lm

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from labkit.experiments.gateskip import Config

T = TypeVar("T")
BudgetPoint = tuple[float, SkipContext, SkipContext]  # (budget, masked context for quality, compact one for FLOPs)


@dataclass
class SeedLog:
    """Wall seconds and training losses of one task and seed, in the order the phases ran."""

    task: str
    seed: int
    cost: list[dict[str, Any]] = field(default_factory=list)  # task, seed, phase, seconds
    history: list[pd.DataFrame] = field(default_factory=list)  # training losses, labelled by task, seed, phase

    def timed(self, phase: str, fn: Callable[[], T]) -> T:
        """``fn()``, its wall seconds recorded under ``phase``."""
        start = time.perf_counter()
        out = fn()
        self.cost.append({"task": self.task, "seed": self.seed, "phase": phase, "seconds": time.perf_counter() - start})
        return out

    def trained(self, phase: str, fn: Callable[[], pd.DataFrame]) -> None:
        """Run the training ``fn``: its losses kept under ``phase``, its time under ``"finetune " + phase``."""
        frame = self.timed(f"finetune {phase}", fn)
        self.history.append(frame.assign(task=self.task, seed=self.seed, phase=phase))


@dataclass
class Pretrained:
    """One task and seed's pretrained checkpoint, reused by every fine-tune of that seed (see :func:`pretrain`)."""

    task: Task  # data and metrics of the task for this seed
    seed: int  # the seed of pretraining, fine-tuning data and evaluation data
    checkpoint: Path  # save_pretrained folder of the pretrained LM
    history: list[pd.DataFrame]  # pretraining losses
    cost: list[dict[str, Any]]  # wall seconds of pretraining
    parameters: int  # parameters of the LM


@dataclass
class FinetuneResults:
    """Every arm of one task and seed (:func:`finetune_arms`): row lists for the tables of ``gateskip.Results``."""

    rows: list[dict[str, Any]]  # curve rows: task, arm, family, sparsity_weight, budget, quality, flops, seed
    gates: list[dict[str, Any]]  # mean gate importance per layer x branch x position (headline GateSkip arm, r = 0)
    skips: list[dict[str, Any]]  # skip fraction per branch x position at r = train_skip_end (headline arm)
    history: list[pd.DataFrame]  # training losses per phase
    cost: list[dict[str, Any]]  # wall seconds per phase
    model_path: str | None  # saved headline GateSkip model (None when no GateSkip arm ran)
    examples: torch.Tensor  # the first evaluation batch
    provenance: dict[str, Any]  # data provenance of the task (text: stdlib files and SHA-256)
    parameters: int  # parameters of the LM


def pretrain(cfg: Config, task_name: str, seed: int, workdir: Path) -> Pretrained:
    """Pretrain the shared LM of one task and seed and save it under ``workdir`` (the expensive part of a seed)."""
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    task = Task(task_name, cfg, seed, device)
    log = SeedLog(task_name, seed)
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
    frame = log.timed(
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
    return Pretrained(task, seed, checkpoint, history, log.cost, n_parameters(base))


def _ramp(cfg: Config, step: int) -> float:
    """The training budget at ``step``: linear from 0 to ``train_skip_end`` over fine-tuning (the paper's ramp)."""
    return cfg.train_skip_end * step / max(1, cfg.finetune_steps - 1)


def _finetune(
    model: nn.Module, task: Task, cfg: Config, kind: str, weight: float, desc: str, seed: int
) -> pd.DataFrame:
    """Fine-tune ``model`` densely (``kind="dense"``) or with skipping ramped in, ranked by its gates ("gateskip",
    with the gate penalty of weight ``weight``) or at random ("random")."""
    gen = torch.Generator().manual_seed(30_000 + seed)  # every arm of a seed sees the same fine-tuning batches

    def batches(step: int) -> torch.Tensor:
        return task.batch(cfg.batch_size, gen)

    if kind == "dense":
        return train_causal_lm(model, batches, cfg.finetune_steps, cfg.finetune_lr, progress=cfg.progress, desc=desc)
    ranking = "gate" if kind == "gateskip" else "random"

    def context(step: int) -> AbstractContextManager[skip.SkipStats]:
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


def _budget_contexts(model: nn.Module, cfg: Config, ranking: str, seed: int) -> list[BudgetPoint]:
    """One point per inference budget r of ``cfg.budgets``, tokens ranked by ``ranking`` ("gate" or "random")."""

    def make(r: float, execution: str, flops: bool) -> SkipContext:
        return lambda: skip.budget(
            model, r, scope=cfg.scope, execution=execution, ranking=ranking, seed=seed, measure_flops=flops
        )

    return [(r, make(r, "masked", False), make(r, "compact", True)) for r in cfg.budgets]


def _static_contexts(model: nn.Module, sets: list[list[Any]]) -> list[BudgetPoint]:
    """One point per set of removed layers or branches (its budget: the set's size, replaced by the saved fraction)."""

    def make(layers: list[Any], execution: str, flops: bool) -> SkipContext:
        return lambda: skip.static_skip(model, layers, execution, measure_flops=flops)

    return [(len(layers), make(layers, "masked", False), make(layers, "compact", True)) for layers in sets]


@dataclass
class _SeedArms:
    """What every arm of one task and seed shares: the config, the checkpoint, the dense FLOPs and the log."""

    cfg: Config
    pre: Pretrained
    workdir: Path
    dense_flops: int  # FLOPs of the pretrained dense model's forward: the 0 % saved reference
    log: SeedLog

    def fresh(self, kind: str) -> nn.Module:
        """The pretrained LM with gates of ``kind``, initialised the same whatever ran before."""
        torch.manual_seed(40_000 + self.pre.seed)
        return gate.add_gates(load_lm(self.pre.checkpoint, self.pre.task.device), kind=kind)

    def points(
        self, model: nn.Module, arm: str, family: str, weight: float, contexts: list[BudgetPoint]
    ) -> list[dict[str, Any]]:
        """Evaluate ``model`` under each (budget, masked context, compact context) and return curve rows."""
        rows = []
        for budget, masked, compact in contexts:
            quality = evaluate(model, self.pre.task, masked)
            flops = executed_flops(model, self.pre.task, compact)
            rows.append(
                {
                    "task": self.pre.task.name,
                    "arm": arm,
                    "family": family,
                    "sparsity_weight": weight,
                    "budget": budget,
                    **quality,
                    "flops": flops,
                    "flops_saved": 1.0 - flops / self.dense_flops,
                }
            )
        return rows


def _dense_arm(run: _SeedArms) -> tuple[nn.Module, dict[str, Any]]:
    """The dense fine-tune (the quality reference) and its single full-compute row."""
    cfg, task, seed = run.cfg, run.pre.task, run.pre.seed
    model = load_lm(run.pre.checkpoint, task.device)
    run.log.trained("dense", lambda: _finetune(model, task, cfg, "dense", 0.0, "dense", seed))
    row = {
        "task": task.name,
        "arm": "dense",
        "family": "dense",
        "sparsity_weight": 0.0,
        "budget": 0.0,
        **evaluate(model, task),
        "flops": run.dense_flops,
        "flops_saved": 0.0,
    }
    return model, row


def _gateskip_arm(run: _SeedArms, weight: float, headline: bool) -> tuple[nn.Module, Path, list[dict[str, Any]]]:
    """Fine-tune the GateSkip arm of penalty weight ``weight``, save and reload it as users do, and score it at every
    budget; the ``headline`` arm is also scored with random ranking (the control isolating the learned ranking)."""
    cfg, task, seed = run.cfg, run.pre.task, run.pre.seed
    arm = f"gateskip λ={weight:g}"
    trained = run.fresh(cfg.gate_kind)
    run.log.trained(arm, lambda: _finetune(trained, task, cfg, "gateskip", weight, arm, seed))
    saved = run.workdir / f"{task.name}-gateskip-{weight:g}-{seed}"
    trained.save_pretrained(saved)
    model = gate.from_pretrained(saved).to(task.device).eval()  # the reload path users take
    gate_value = mean_gate(model, task)
    gated = _budget_contexts(model, cfg, "gate", seed)
    rows = run.log.timed(f"eval {arm}", lambda: run.points(model, arm, "gateskip", weight, gated))
    if headline:
        shuffled = _budget_contexts(model, cfg, "random", seed)
        rows += run.log.timed(
            f"eval {arm} + random rank",
            lambda: run.points(model, f"{arm} + random rank", "gateskip random rank", weight, shuffled),
        )
    return model, saved, [dict(row, gate_mean=gate_value) for row in rows]


def _random_skip_arm(run: _SeedArms) -> list[dict[str, Any]]:
    """Fine-tuned with random hard skipping on the same ramp (no gates), scored with random ranking."""
    cfg, task, seed = run.cfg, run.pre.task, run.pre.seed
    model = run.fresh("none")
    run.log.trained("random_skip", lambda: _finetune(model, task, cfg, "random", 0.0, "random skip", seed))
    contexts = _budget_contexts(model, cfg, "random", seed)
    return run.log.timed("eval random_skip", lambda: run.points(model, "random_skip", "random_skip", 0.0, contexts))


def _static_arms(run: _SeedArms, dense_model: nn.Module, dense_row: dict[str, Any]) -> list[dict[str, Any]]:
    """ShortGPT and ULS points on the dense fine-tune, each at its own saved fraction, plus their 0 % point."""
    cfg, task = run.cfg, run.pre.task
    order = run.log.timed("shortgpt order", lambda: skip.shortgpt_order(dense_model, task.calibration()))
    n_branches = 2 * cfg.n_layers
    ks = sorted({round(r * n_branches) for r in cfg.budgets} - {0})
    shortgpt_sets = [order[:k] for k in ks if k < n_branches]
    rows = run.points(dense_model, "shortgpt", "static", 0.0, _static_contexts(dense_model, shortgpt_sets))
    uls_sets = sorted(s for s in {tuple(skip.uls_layers(cfg.n_layers, 1.0 / (1.0 - r))) for r in cfg.budgets if r > 0}
                      if s)
    rows += run.points(dense_model, "uls", "static", 0.0, _static_contexts(dense_model, [list(s) for s in uls_sets]))
    for row in rows:
        row["budget"] = row["skipped_fraction"]  # static points sit at their own saved fraction
    return rows + [{**dense_row, "arm": arm, "family": "static"} for arm in ("shortgpt", "uls")]


def finetune_arms(cfg: Config, pre: Pretrained, workdir: Path, baselines: bool = True) -> FinetuneResults:
    """Every arm of ``cfg`` fine-tuned from ``pre``'s checkpoint; ``baselines=False``: only the GateSkip arms.

    Order: dense, one GateSkip arm per λ of ``sparsity_weights`` (the first is the headline arm), random skip, then
    ShortGPT and ULS on the dense fine-tune.
    """
    task, seed = pre.task, pre.seed
    seed_everything(seed, threads=cfg.threads)
    dense_flops = executed_flops(load_lm(pre.checkpoint, task.device), task)
    run = _SeedArms(cfg, pre, Path(workdir), dense_flops, SeedLog(task.name, seed))
    rows: list[dict[str, Any]] = []
    if baselines:
        dense_model, dense_row = _dense_arm(run)
        rows.append(dense_row)
    headline: Path | None = None
    gate_rows: list[dict[str, Any]] = []
    skip_rows: list[dict[str, Any]] = []
    for weight in cfg.sparsity_weights:
        model, saved, arm_rows = _gateskip_arm(run, weight, headline=headline is None)
        if headline is None:
            headline = saved  # reloaded by run() (workers cannot hand back modules cheaply)
            gate_rows, skip_rows = gate_maps(model, task, cfg)
        rows += arm_rows
    if baselines:
        rows += _random_skip_arm(run)
        rows += _static_arms(run, dense_model, dense_row)
    return FinetuneResults(
        rows=[dict(row, seed=seed) for row in rows],
        gates=[dict(r, seed=seed) for r in gate_rows],
        skips=[dict(r, seed=seed) for r in skip_rows],
        history=run.log.history,
        cost=run.log.cost,
        model_path=str(headline) if headline is not None else None,
        examples=task.eval_tokens[: cfg.eval_batch],
        provenance=task.provenance,
        parameters=pre.parameters,
    )
