"""Sparse Model Soups (Zimmer, Spiegel, Pokutta, ICLR 2024, arXiv 2306.16788) against IMP, at small scale.

``arms.compute`` trains IMP, IMP m x, SWA and the SMS chains for every seed plus the budget check's reruns and
returns their raw tables; ``summary.judge`` reads the choices made on validation, the premise, the claims
(:mod:`.claims`) and the sanity checks off them. The settings searched are declared in
``labkit/experiments/explorations/sparse_soups.toml`` (``labkit explore``).
"""

from labkit.experiments import Experiment
from labkit.experiments.sparse_soups import arms, claims, summary
from labkit.experiments.sparse_soups.arms import template
from labkit.experiments.sparse_soups.config import PRESETS, Config
from labkit.experiments.sparse_soups.data import load_data
from labkit.experiments.sparse_soups.summary import best_ingredient_controls, headline_metrics, verdict_text, withheld

EXPERIMENT = Experiment("sparse_soups", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = ["EXPERIMENT", "PRESETS", "Config", "arms", "claims", "configure", "headline_metrics", "load_data", "summary",
           "template", "best_ingredient_controls", "verdict_text", "withheld"]
