"""GateSkip's tuning grid: one :class:`Spec` per configuration of each fine-tuned family (the same number per
family: the equal tuning budget), the fine-tuning runs that score them, and the longer run of the convergence check.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from labkit.experiments.gateskip.config import Config, stop_steps

FAMILIES = ("dense", "gateskip", "random_skip")  # fine-tuned families, each tuned on a grid of the same size
STATIC = ("shortgpt", "uls")  # static skipping on a dense fine-tune (its learning rate tuned for them)
CONTROL = "gateskip + random rank"  # the chosen GateSkip model with tokens ranked at random


@dataclass(frozen=True)
class Spec:
    """One fine-tuning configuration of a family (the unit of tuning)."""

    family: str  # one of FAMILIES
    finetune_lr: float  # peak lr of the LM's weights
    gate_lr: float = 0.0  # peak lr of the gates (GateSkip); 0 = finetune_lr
    sparsity_weight: float = 0.0  # gate-penalty weight λ (GateSkip)
    train_skip_end: float = 0.0  # training budget at the end of the ramp (GateSkip and random skip)
    steps: int = 0  # fine-tuning steps before stopping; 0 = the whole schedule (cfg.finetune_steps)

    @property
    def config(self) -> str:
        """A short label of the settings that vary within the family."""
        if self.family == "gateskip":
            label = f"gate lr={self.gate_lr or self.finetune_lr:g}, λ={self.sparsity_weight:g}"
        elif self.family == "random_skip":
            label = f"lr={self.finetune_lr:g}, ramp to {self.train_skip_end:g}"
        else:
            label = f"lr={self.finetune_lr:g}"
        return f"{label}, {self.steps} steps" if self.steps else label

    def columns(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config}


def tuning_grid(cfg: Config) -> list[Spec]:
    """Every configuration tuned on validation, stopping points included: the same number per family (the equal
    tuning budget)."""
    runs = (
        [Spec("dense", lr) for lr in cfg.dense_lrs]
        + [
            Spec("gateskip", cfg.finetune_lr, g, w, cfg.train_skip_end)
            for g, w in itertools.product(cfg.gate_lrs, cfg.sparsity_weights)
        ]
        + [
            Spec("random_skip", lr, 0.0, 0.0, end)
            for lr, end in itertools.product(cfg.random_lrs, cfg.random_skip_ends)
        ]
    )
    return [dataclasses.replace(spec, steps=steps) for spec in runs for steps in stop_steps(cfg)]


def longer(cfg: Config, spec: Spec, factor: float) -> tuple[Config, Spec]:
    """``spec`` trained ``factor`` times as long, for the convergence check: the schedule (its cosine lr horizon and
    its skip ramp both span ``finetune_steps``) and the stopping step chosen on validation are stretched together, so
    the longer run has the same shape at every fraction of it and stops at the same fraction of its schedule."""
    steps = spec.steps or cfg.finetune_steps
    return (
        dataclasses.replace(cfg, finetune_steps=round(cfg.finetune_steps * factor)),
        dataclasses.replace(spec, steps=round(steps * factor)),
    )


def tuning_runs(specs: list[Spec]) -> list[tuple[Spec, tuple[int, ...]]]:
    """``specs`` grouped into fine-tuning runs: (the longest spec, the earlier stops scored on the way)."""
    runs: dict[Spec, list[int]] = {}
    for spec in specs:
        runs.setdefault(dataclasses.replace(spec, steps=0), []).append(spec.steps)
    return [(dataclasses.replace(base, steps=max(s)), tuple(sorted(s)[:-1])) for base, s in runs.items()]
