"""The Sparse Model Soups data: train / validation / test splits of the configured dataset and deterministic OOD
copies of the test set, one per corruption type (the same labels, corrupted inputs). Validation is carved from the
training set, so every choice (greedy soup, best ingredient, the baselines' learning rates) is made without test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labkit.data import corruptions
from labkit.experiments.sparse_soups.config import Config
from labkit.profile import resolve_device


@dataclass
class Data:
    """Tensors on the run's device; ``ood`` maps each corruption spec to its corrupted test set (labels ``test_y``)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    ood: dict[str, Tensor]
    name: str
    images: bool  # 2-D images (augmentation and rotation apply) or 1-D signals


def load_data(cfg: Config) -> Data:
    """The configured dataset, subset to ``n_train``, with its deterministic OOD test splits (one per ``cfg.ood``)."""
    device = resolve_device(cfg.device)
    if cfg.data in ("mnist", "digits"):
        from labkit.data import images

        s = images.mnist() if cfg.data == "mnist" else images.digits()
        tx, ty, vx, vy, sx, sy, name = s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y, s.name
    else:  # mnist1d (Config admits no other value)
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # generated locally (get_dataset would download)
        x, y = d["x"].astype(np.float32)[:, None], d["y"].astype(np.int64)
        cut = int(0.8 * len(y))
        tx, ty, vx, vy = x[:cut], y[:cut], x[cut:], y[cut:]
        sx, sy, name = d["x_test"].astype(np.float32)[:, None], d["y_test"].astype(np.int64), "MNIST-1D (generated)"
    if cfg.n_train and cfg.n_train < len(ty):
        keep = np.random.default_rng(12345).permutation(len(ty))[: cfg.n_train]
        tx, ty = tx[keep], ty[keep]
    t = {k: torch.as_tensor(v) for k, v in dict(tx=tx, ty=ty, vx=vx, vy=vy, sx=sx, sy=sy).items()}
    images = t["sx"].dim() == 4
    ood = {spec: corruptions.corrupt(t["sx"], spec, seed=0, clip=images).to(device) for spec in cfg.ood}
    return Data(*(v.to(device) for v in t.values()), ood, name, images)


_CACHE: dict[tuple[Any, ...], Data] = {}


def cached_data(cfg: Config) -> Data:
    """:func:`load_data` once per process and data setting (worker processes run many jobs on the same data)."""
    key = (cfg.data, cfg.n_train, cfg.ood, cfg.device)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_data(cfg)
    return _CACHE[key]


def chance_accuracy(data: Data) -> float:
    """The trivial predictor's test accuracy (%): always the most frequent test label (OOD shares the labels)."""
    return 100 * float(torch.bincount(data.test_y).max() / len(data.test_y))
