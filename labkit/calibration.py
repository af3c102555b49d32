"""Calibration of a classifier's probabilities: does a confidence of 0.8 mean right 80 % of the time?

Expected calibration error (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017, eq. 3): the confidence-weighted gap between accuracy and mean confidence over equal-width bins.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of class probabilities ``probs`` (N x classes) against integer ``labels`` (N) over ``bins`` equal-width
    confidence bins (a bin holds confidences in (lo, hi]); 0 is perfectly calibrated."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs N x classes and labels N, got probs {tuple(probs.shape)} and labels "
                         f"{tuple(labels.shape)}")
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return total
