"""DSIR's arms and their training: the selection methods (:mod:`.selection`), the LM track (:mod:`.lm`: bigram LM
and tiny byte-level transformer), the classification track (:mod:`.classify`), the paper's own setting on SmolLM2
(:mod:`.llm`) and :func:`compute`, which runs them all (:mod:`.run`)."""

from labkit.experiments.dsir.arms.classify import pooled_features, probe, run_classification
from labkit.experiments.dsir.arms.lm import budget_steps, byte_lm, train_byte_lm, train_bytes
from labkit.experiments.dsir.arms.run import choose_settings, compute, compute_on, tuning_table
from labkit.experiments.dsir.arms.selection import kl_scorer, select

__all__ = ["budget_steps", "byte_lm", "choose_settings", "compute", "compute_on", "kl_scorer", "pooled_features",
           "probe", "run_classification", "select", "train_byte_lm", "train_bytes", "tuning_table"]
