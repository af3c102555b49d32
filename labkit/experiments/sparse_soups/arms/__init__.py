"""The Sparse Model Soups arms and their training (the compute closure): :func:`runs.compute` trains every arm and
returns the computed tables; :mod:`.training` holds the retraining loop, scoring and the IMP, SWA and SMS chains."""

from labkit.experiments.sparse_soups.arms.runs import compute, template

__all__ = ["compute", "template"]
