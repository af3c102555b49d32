"""DSIR (Xie et al., NeurIPS 2023): select k chunks for a target from a labelled offline pool, compare methods.

Rooms: :mod:`.config` (Config, presets, targets and methods), :mod:`.data` (the pool, target splits, classification
tasks), :mod:`.arms` (selection methods and the trained tracks: ``compute``), :mod:`.claims` (the claims as data and
their verdicts, protocol v2) and :mod:`.summary` (``judge`` and the readings the notebook shows).
"""

from labkit.experiments import Experiment
from labkit.experiments.dsir import arms, summary
from labkit.experiments.dsir.arms import byte_lm, select, train_byte_lm
from labkit.experiments.dsir.claims import BUDGET_TOLERANCE, HEALTH_ACCURACY_DROP, PREMISE_TOLERANCE
from labkit.experiments.dsir.config import CLASSIFY_TASKS, METHODS, PRESETS, TARGETS, TINY_TRACK, VARIANTS, Config
from labkit.experiments.dsir.data import Prepared, Split, prepare, split_target
from labkit.experiments.dsir.summary import (
    PAPER_R,
    SCORE_COLUMNS,
    classify_held,
    dsir_gaps,
    explorer_weights,
    headline_metrics,
    targets_below,
    verdict_text,
)

EXPERIMENT = Experiment("dsir", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = ["BUDGET_TOLERANCE", "CLASSIFY_TASKS", "EXPERIMENT", "HEALTH_ACCURACY_DROP", "METHODS", "PAPER_R",
           "PREMISE_TOLERANCE", "PRESETS", "SCORE_COLUMNS", "TARGETS", "TINY_TRACK", "VARIANTS", "Config", "Prepared",
           "Split", "byte_lm", "classify_held", "configure", "dsir_gaps", "explorer_weights", "headline_metrics",
           "prepare", "select", "split_target", "targets_below", "train_byte_lm", "verdict_text"]
