"""C-Mixup (Yao et al., NeurIPS 2022): ERM, mixup, manifold mixup, feature-similarity mixup and C-Mixup on
regression, under the reproduction protocol (:mod:`labkit.protocol`).

- ``config``: the datasets, arms, validation grids (equal size per tuned arm: equal tuning budget) and presets.
- ``data``: one split per (dataset, seed), shared by every arm of the seed (paired).
- ``arms``: every arm trained to its plateau (early stopping on validation), the first seed of each chosen arm rerun
  at ``budget_factor`` × the budget (the convergence check), and the mean predictor scored: ``compute``.
- ``claims``: the claims as data, judged per dataset with paired Student-t intervals; sanity flags (converged, beats
  the mean predictor, mixes: a kernel that mostly pairs a sample with itself is ERM under another name).
- ``summary``: ``judge`` (selection on validation rows only, ``best_prior``, claims, sanity, budget) and the readings.
"""

from labkit.experiments import Experiment
from labkit.experiments.cmixup import arms, claims, summary
from labkit.experiments.cmixup.arms import longer, mean_predictor, sizes, train_arm
from labkit.experiments.cmixup.config import ARMS, DATASETS, PRESETS, Config, configurations
from labkit.experiments.cmixup.data import load
from labkit.experiments.cmixup.summary import headline_metrics, verdict_text

EXPERIMENT = Experiment("cmixup", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = [
    "ARMS",
    "DATASETS",
    "EXPERIMENT",
    "PRESETS",
    "Config",
    "arms",
    "claims",
    "configurations",
    "configure",
    "headline_metrics",
    "load",
    "longer",
    "mean_predictor",
    "sizes",
    "train_arm",
    "verdict_text",
]
