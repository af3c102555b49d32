"""Profiling tour: one decoder block built from a ``transformers`` config, timed, counted and traced
(``arms.compute``), and what that shows (``summary``)."""

from labkit.experiments import Experiment
from labkit.experiments.profiling import arms, summary
from labkit.experiments.profiling.config import PRESETS, Config

EXPERIMENT = Experiment("profiling", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = ["EXPERIMENT", "PRESETS", "Config", "configure", "summary"]
