"""Met²Net (Li et al., ICCV 2025, arXiv 2507.17189): per-variable encoders + variable attention + implicit two-stage.

The arms (:mod:`.arms`) train on locally generated fields whose variables differ in statistics and scale (wind,
temperature, bounded humidity, intermittent heavy-tailed precipitation, cloud fraction, a fine-scale advected tracer;
:mod:`labkit.data.fields`, windows and scores in :mod:`.data`); :mod:`.summary` chooses Met²Net's momentum on
validation and judges the claims of :mod:`.claims`, premise (attention beats no attention) first.
"""

from labkit.experiments import Experiment
from labkit.experiments.met2net import arms, claims, summary
from labkit.experiments.met2net.arms import build_model, longer_budget, train_arm
from labkit.experiments.met2net.config import ARMS, PRESETS, TRIVIAL, VARIABLES, Config
from labkit.experiments.met2net.data import FieldData, batch, evaluate, forecast, load_data
from labkit.experiments.met2net.summary import (
    PAPER_RELATIVE_MSE,
    headline_metrics,
    judge,
    relative_change,
    sample_forecasts,
    verdict_text,
)

EXPERIMENT = Experiment("met2net", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = ["ARMS", "EXPERIMENT", "PAPER_RELATIVE_MSE", "PRESETS", "TRIVIAL", "VARIABLES", "Config", "FieldData",
           "arms", "batch", "build_model", "claims", "configure", "evaluate", "forecast", "headline_metrics", "judge",
           "load_data", "longer_budget", "relative_change", "sample_forecasts", "summary", "train_arm",
           "verdict_text"]
