"""GateSkip's arms and runs: the tuning grid (:mod:`.grid`), fine-tuning and scoring one configuration
(:mod:`.finetune`), the choices made on validation (:mod:`.selection`), and :func:`compute`, which runs every job
(:mod:`.compute`)."""

from labkit.experiments.gateskip.arms.compute import EXAMPLES, MODEL_PREFIX, budget_jobs, compute
from labkit.experiments.gateskip.arms.finetune import SCOPES, ArmResults, Pretrained, base_lm, pretrain, run_arm
from labkit.experiments.gateskip.arms.grid import CONTROL, FAMILIES, STATIC, Spec, longer, tuning_grid, tuning_runs
from labkit.experiments.gateskip.arms.selection import (
    choose,
    quality_column,
    saved_at_quality,
    stage1_choice,
    stage2_blockers,
)

__all__ = [
    "CONTROL",
    "EXAMPLES",
    "FAMILIES",
    "MODEL_PREFIX",
    "SCOPES",
    "STATIC",
    "ArmResults",
    "Pretrained",
    "Spec",
    "base_lm",
    "budget_jobs",
    "choose",
    "compute",
    "longer",
    "pretrain",
    "quality_column",
    "run_arm",
    "saved_at_quality",
    "stage1_choice",
    "stage2_blockers",
    "tuning_grid",
    "tuning_runs",
]
