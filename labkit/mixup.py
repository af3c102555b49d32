"""Mixup for regression and classification: pair samplers, a λ sampler, and input / hidden-state / target mixers.

Every mixup method is a *pair sampler* (who mixes with whom) + a *λ sampler* + *mixers*. Vanilla mixup (Zhang et
al., 2018) draws partners uniformly; C-Mixup (Yao et al., NeurIPS 2022, github.com/huaxiuyao/C-Mixup) draws the
partner of example i with probability ∝ exp(−‖y_i − y_j‖² / 2σ²) over the training set, so examples mostly mix with
neighbours in label space. The official code stores that distribution as a dense N×N matrix; here ``mode="truncated"``
samples the same (kernel cut at ``truncate``·σ) distribution in O(N·k) memory. The same sampler on inputs or embeddings
is the feature-similarity variant the paper compares against.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "CMixupSampler",
    "UniformSampler",
    "ManifoldMixup",
    "MixupTransform",
    "bandwidth_from_std",
    "bandwidth_sweep",
    "beta_lambda",
    "cutmix",
    "kernel_probabilities",
    "manifold_mixup",
    "mix",
    "self_pair_rate",
    "within_batch_partners",
]

DENSE_AUTO_LIMIT = 4096  # mode="auto": dense N×N below this many examples (128 MB in float64), truncated above


def _as_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` as N×d (dtype and device kept); a scalar, no rows, or NaN / inf raise naming ``name`` and the rows."""
    if t.ndim == 0:
        raise ValueError(f"{name} must have one entry per example, got a scalar")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least 1 example")
    t = t.reshape(t.shape[0], -1)
    bad = ~torch.isfinite(t).all(1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"{name} must be finite; found NaN or inf at indices {rows} ({int(bad.sum())} in all)")
    return t


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[float], name: str = "labels") -> torch.Tensor:
    """Labels as a float64 N×d tensor; NaN / inf and empty inputs raise naming ``name``."""
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    return _as_rows(t.detach().to("cpu", torch.float64), name)


def _check_bandwidth(bandwidth: float) -> float:
    ok = isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool)
    if not (ok and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth (σ) must be a finite number > 0, got {bandwidth!r}")
    return float(bandwidth)


def _check_lam(lam: torch.Tensor) -> None:
    """Mixing weights must be finite and in [0, 1]: NaN would otherwise pass every comparison and poison the batch."""
    bad = ~torch.isfinite(lam) | (lam < 0) | (lam > 1)
    if bad.any():
        shown = lam.item() if lam.ndim == 0 else lam[bad][:5].tolist()
        raise ValueError(f"lam must be finite and lie in [0, 1], got {shown}")


def bandwidth_from_std(labels: torch.Tensor | np.ndarray, sigma_in_std: float) -> float:
    """Convert a bandwidth given in units of std(y) to label units (the official code's σ is in raw label units).

    For vector labels the scale is the root-mean-square of the per-dimension standard deviations.
    """
    y = _as_labels(labels)
    scale = float(y.var(0, unbiased=False).mean().sqrt()) if y.shape[0] > 1 else 0.0
    if scale == 0.0:
        raise ValueError("labels are constant; a bandwidth in units of std(y) is undefined")
    return _check_bandwidth(sigma_in_std) * scale


def beta_lambda(alpha: float, size: int | Sequence[int] = (), generator: torch.Generator | None = None) -> torch.Tensor:
    """Mixing weights λ ~ Beta(α, α) (mixup, C-Mixup: α = 2 for most datasets); ``size=()`` gives one per batch.

    Sampled as G₁/(G₁+G₂) with Gamma(α) draws so a seeded ``torch.Generator`` makes it reproducible.
    """
    if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    shape = (size,) if isinstance(size, int) else tuple(size)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"size must be an int >= 0 or a tuple of them, got {size!r}")
    conc = torch.full((2, *shape), float(alpha), dtype=torch.float64)
    if generator is None:
        g = torch._standard_gamma(conc)
    else:  # torch's gamma has no generator argument: inverse-transform is not closed form, so reseed a local stream
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g = torch._standard_gamma(conc)
    return (g[0] / (g[0] + g[1])).to(torch.float32)


def mix(
    x: torch.Tensor, y: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear mixup of inputs and targets: (λ·x + (1−λ)·x2, λ·y + (1−λ)·y2).

    ``lam`` is a float, a 0-d tensor (one per batch, as the official code) or one value per example.
    Float targets (regression, soft labels) of any trailing shape are mixed the same way.
    """
    if x.shape != x2.shape:
        raise ValueError(f"x and x2 must have the same shape, got {tuple(x.shape)} and {tuple(x2.shape)}")
    if y.shape != y2.shape:
        raise ValueError(f"y and y2 must have the same shape, got {tuple(y.shape)} and {tuple(y2.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}")
    if not (y.is_floating_point() and y2.is_floating_point()):
        raise ValueError(f"targets must be floating point (regression values or one-hot / soft labels), got {y.dtype}")
    lam_t = torch.as_tensor(lam, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    if lam_t.ndim > 0 and lam_t.shape != (x.shape[0],):
        raise ValueError(f"lam must be a scalar or one value per example ({x.shape[0]},), got {tuple(lam_t.shape)}")
    _check_lam(lam_t)

    def blend(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = lam_t.to(a.dtype) if lam_t.ndim == 0 else lam_t.to(a.dtype).reshape(-1, *([1] * (a.ndim - 1)))
        return w * a + (1 - w) * b

    return blend(x, x2), blend(y, y2)


def kernel_probabilities(
    labels: torch.Tensor,
    candidates: torch.Tensor,
    bandwidth: float,
    kernel: str = "gaussian",
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Partner probabilities p_ij ∝ k(‖y_i − y_j‖ / σ) of anchor ``labels`` over ``candidates`` (C-Mixup, eq. 6).

    Gaussian: a softmax of −d²/2σ² in log space, so tiny σ does not underflow to 0/0; tophat: uniform within σ.
    ``exclude`` (bool, anchors × candidates) removes pairs such as self-pairs.
    """
    bandwidth = _check_bandwidth(bandwidth)
    a, c = _as_rows(labels, "labels"), _as_rows(candidates, "candidates")
    if a.shape[1] != c.shape[1]:
        raise ValueError(f"labels and candidates must have the same label dimension, got {a.shape[1]} and {c.shape[1]}")
    if exclude is not None and tuple(exclude.shape) != (a.shape[0], c.shape[0]):
        raise ValueError(f"exclude must be a bool mask of shape (anchors, candidates) = {(a.shape[0], c.shape[0])}, "
                         f"got {tuple(exclude.shape)}")
    d2 = torch.cdist(a, c).square() if a.shape[1] > 1 else (a - c.T).square()
    if kernel == "gaussian":
        logits = -d2 / (2 * bandwidth**2)
    elif kernel == "tophat":
        logits = torch.where(d2 <= bandwidth**2, 0.0, -math.inf).to(d2.dtype)
    else:
        raise ValueError(f"kernel must be 'gaussian' or 'tophat', got {kernel!r}")
    if exclude is not None:
        logits = logits.masked_fill(exclude, -math.inf)
    empty = torch.isinf(logits).all(1)
    if empty.any():
        raise ValueError(
            f"anchors {torch.nonzero(empty).flatten()[:5].tolist()} have no candidate partner within "
            f"the kernel (bandwidth {bandwidth}); use a larger bandwidth or the gaussian kernel"
        )
    return torch.softmax(logits, dim=1)


class UniformSampler:
    """Vanilla mixup's pair sampler: each anchor's partner uniform over the dataset (with replacement, self included).

    ``exclude_self=True`` redraws self-pairs (as the official PovertyMap code).
    """

    def __init__(self, n: int, exclude_self: bool = False) -> None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 or (exclude_self and n < 2):
            raise ValueError(f"n must be an int >= {2 if exclude_self else 1}, got {n!r}")
        self.n, self.exclude_self = int(n), exclude_self

    def sample(self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Partner indices into the same dataset, one per entry of ``indices``."""
        idx = _check_indices(indices, self.n)
        if not self.exclude_self:
            return torch.randint(0, self.n, idx.shape, generator=generator)
        draw = torch.randint(0, self.n - 1, idx.shape, generator=generator)
        return draw + (draw >= idx).long()  # skip over self


def _check_indices(indices: torch.Tensor | Sequence[int], n: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise TypeError(f"indices must be integer positions into the dataset, got dtype {idx.dtype} "
                        "(a float index would be truncated silently)")
    idx = idx.to("cpu", torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    return idx


class CMixupSampler:
    """C-Mixup's pair sampler: partner j of anchor i drawn with probability ∝ exp(−‖y_i − y_j‖² / 2σ²).

    ``bandwidth`` σ is in label units (the official code's ``kde_bandwidth``; see ``bandwidth_from_std``). Modes:
    ``"dense"`` stores the N×N matrix (the official implementation; O(N²) memory); ``"truncated"`` keeps only partners
    within ``truncate``·σ, found by sorting (1-D labels, rejection sampling inside the window) or a radius-neighbour
    index (vector labels, CSR rows); ``"auto"`` is dense up to 4,096 examples. Pass inputs or embeddings as ``labels``
    for the feature-similarity variant. Self is a candidate, as in the official code, unless ``exclude_self``.
    """

    def __init__(
        self,
        labels: torch.Tensor | np.ndarray | Sequence[float],
        bandwidth: float,
        mode: str = "auto",
        kernel: str = "gaussian",
        exclude_self: bool = False,
        truncate: float = 6.0,
    ) -> None:
        self.labels = _as_labels(labels)
        self.bandwidth = _check_bandwidth(bandwidth)
        if mode not in ("auto", "dense", "truncated"):
            raise ValueError(f"mode must be 'auto', 'dense' or 'truncated', got {mode!r}")
        if kernel not in ("gaussian", "tophat"):
            raise ValueError(f"kernel must be 'gaussian' or 'tophat', got {kernel!r}")
        if not truncate > 0:
            raise ValueError(f"truncate must be > 0 (in units of the bandwidth), got {truncate!r}")
        self.n = self.labels.shape[0]
        if exclude_self and self.n < 2:
            raise ValueError("exclude_self=True needs at least 2 examples")
        self.kernel, self.exclude_self = kernel, exclude_self
        self.radius = self.bandwidth * (1.0 if kernel == "tophat" else float(truncate))
        self.mode = ("dense" if self.n <= DENSE_AUTO_LIMIT else "truncated") if mode == "auto" else mode
        if self.mode == "dense":
            self._build_dense()
        elif self.labels.shape[1] == 1:
            self._build_sorted()
        else:
            self._build_neighbours()

    # -- dense: the official construction, vectorised ------------------------------------------------------------
    def _build_dense(self, chunk: int = 2048) -> None:
        probs = torch.empty(self.n, self.n, dtype=torch.float64)
        for s in range(0, self.n, chunk):
            rows = torch.arange(s, min(s + chunk, self.n))
            excl = None
            if self.exclude_self:
                excl = torch.zeros(len(rows), self.n, dtype=torch.bool)
                excl[torch.arange(len(rows)), rows] = True
            probs[rows] = kernel_probabilities(self.labels[rows], self.labels, self.bandwidth, self.kernel, excl)
        self.probs = probs

    # -- truncated, 1-D labels: sorted windows + rejection ------------------------------------------------------
    def _build_sorted(self) -> None:
        y = self.labels[:, 0]
        self.sorted_y, self.order = torch.sort(y)
        self.lo = torch.searchsorted(self.sorted_y, y - self.radius, side="left")
        self.hi = torch.searchsorted(self.sorted_y, y + self.radius, side="right")
        if self.exclude_self and ((self.hi - self.lo) < 2).any():
            bad = torch.nonzero((self.hi - self.lo) < 2).flatten()[:5].tolist()
            raise ValueError(
                f"exclude_self=True but anchors {bad} have no other label within {self.radius:g}; "
                "increase the bandwidth or truncate"
            )

    def _weight(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        d2 = (self.labels[i] - self.labels[j]).square().sum(-1)
        if self.kernel == "tophat":
            return (d2 <= self.bandwidth**2).to(torch.float64)
        return torch.exp(-d2 / (2 * self.bandwidth**2))

    def _sample_sorted(
        self, idx: torch.Tensor, generator: torch.Generator | None, max_rounds: int = 64
    ) -> torch.Tensor:
        out = torch.empty_like(idx)
        pending = torch.arange(idx.numel())
        for _ in range(max_rounds):  # propose uniformly in the window, accept with the kernel weight (≤ 1): exact
            if pending.numel() == 0:
                return out
            anchors = idx[pending]
            lo, width = self.lo[anchors], self.hi[anchors] - self.lo[anchors]
            u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64)
            pos = lo + torch.minimum((u * width).long(), width - 1)
            cand = self.order[pos]
            accept = torch.rand(pending.numel(), generator=generator, dtype=torch.float64) < self._weight(anchors, cand)
            if self.exclude_self:
                accept &= cand != anchors
            out[pending[accept]] = cand[accept]
            pending = pending[~accept]
        for p in pending.tolist():  # rare: windows where the kernel mass is tiny; draw from the explicit row
            i = int(idx[p])
            cand = self.order[self.lo[i] : self.hi[i]]
            w = self._weight(torch.full_like(cand, i), cand)
            if self.exclude_self:
                w = w.masked_fill(cand == i, 0.0)
            out[p] = cand[torch.multinomial(w, 1, generator=generator)]
        return out

    # -- truncated, vector labels: radius neighbours in CSR ------------------------------------------------------
    def _build_neighbours(self, chunk: int = 4096) -> None:
        from sklearn.neighbors import NearestNeighbors

        y = self.labels.numpy()
        index = NearestNeighbors(radius=self.radius).fit(y)
        cols, cum, offsets = [], [], [0]
        for s in range(0, self.n, chunk):
            dist, nbr = index.radius_neighbors(y[s : s + chunk], return_distance=True)
            for r, (d, j) in enumerate(zip(dist, nbr, strict=True)):
                w = np.exp(-(d**2) / (2 * self.bandwidth**2)) if self.kernel == "gaussian" else np.ones_like(d)
                if self.exclude_self:
                    w = np.where(j == s + r, 0.0, w)
                if w.sum() <= 0:
                    raise ValueError(f"anchor {s + r} has no partner within {self.radius:g}; increase the bandwidth")
                cols.append(j)
                cum.append(np.cumsum(w) / w.sum())
                offsets.append(offsets[-1] + len(j))
        self.csr_cols = torch.from_numpy(np.concatenate(cols).astype(np.int64))
        self.csr_cum = torch.from_numpy(np.concatenate(cum))
        self.csr_offsets = torch.tensor(offsets, dtype=torch.long)
        # row-local inverse CDF: add the row number to each row's cumulative weights so one searchsorted serves all
        rows = torch.arange(self.n, dtype=torch.float64).repeat_interleave(self.csr_offsets.diff())
        self.csr_key = rows + self.csr_cum

    def _sample_neighbours(self, idx: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        start, stop = self.csr_offsets[idx], self.csr_offsets[idx + 1]
        u = torch.rand(idx.shape, generator=generator, dtype=torch.float64)
        pos = torch.searchsorted(self.csr_key, idx.to(torch.float64) + u, side="right")
        return self.csr_cols[torch.minimum(torch.maximum(pos, start), stop - 1)]

    def sample(self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Partner indices (into the same dataset) for the anchors ``indices``, one draw each, with replacement."""
        idx = _check_indices(indices, self.n)
        shape, flat = idx.shape, idx.reshape(-1)
        if flat.numel() == 0:
            return idx.clone()
        if self.mode == "dense":
            step = max(1, 2**24 // self.n)  # gather at most ~128 MB of rows at a time
            out = torch.cat(
                [
                    torch.multinomial(self.probs[flat[s : s + step]], 1, generator=generator).flatten()
                    for s in range(0, flat.numel(), step)
                ]
            )
        elif self.labels.shape[1] == 1:
            out = self._sample_sorted(flat, generator)
        else:
            out = self._sample_neighbours(flat, generator)
        return out.reshape(shape)

    def probabilities(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Exact partner probabilities of the anchors ``indices`` over the dataset (rows × N; truncated where cut)."""
        idx = _check_indices(indices, self.n).reshape(-1)
        if self.mode == "dense":
            return self.probs[idx].clone()
        excl = None
        if self.exclude_self:
            excl = torch.zeros(len(idx), self.n, dtype=torch.bool)
            excl[torch.arange(len(idx)), idx] = True
        d = torch.cdist(self.labels[idx], self.labels)
        excl = (d > self.radius) if excl is None else (excl | (d > self.radius))
        return kernel_probabilities(self.labels[idx], self.labels, self.bandwidth, self.kernel, excl)


def within_batch_partners(
    labels: torch.Tensor,
    bandwidth: float,
    candidates: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    exclude_self: bool = False,
) -> torch.Tensor:
    """Batch-level C-Mixup (the official RCF-MNIST variant): each anchor's partner from a small candidate pool.

    Without ``candidates`` the pool is the batch itself; the official code passes anchors + a random partner batch
    (2B candidates), which is O(B²) per step. Returns positions into the pool.
    """
    y = _as_labels(labels)
    pool = y if candidates is None else _as_labels(candidates, "candidates")
    if y.shape[1] != pool.shape[1]:
        raise ValueError(
            f"labels and candidates must have the same label dimension, got {y.shape[1]} and {pool.shape[1]}"
        )
    if pool.shape[0] < 2:
        raise ValueError(f"a batch of {pool.shape[0]} example cannot be mixed; expected at least 2 candidates")
    excl = None
    if exclude_self:
        excl = torch.zeros(y.shape[0], pool.shape[0], dtype=torch.bool)
        excl[torch.arange(y.shape[0]), torch.arange(y.shape[0])] = True
    probs = kernel_probabilities(y, pool, _check_bandwidth(bandwidth), exclude=excl)
    return torch.multinomial(probs, 1, generator=generator).flatten()


def self_pair_rate(indices: torch.Tensor, partners: torch.Tensor) -> float:
    """Fraction of anchors paired with themselves (a no-op mix): high values mean σ is so small C-Mixup is ERM."""
    idx, part = torch.as_tensor(indices), torch.as_tensor(partners)
    if idx.shape != part.shape:
        raise ValueError(f"indices and partners must have the same shape, got {tuple(idx.shape)} and "
                         f"{tuple(part.shape)}")
    if idx.numel() == 0:
        raise ValueError("indices and partners are empty; expected at least one pair")
    return float((idx == part.to(idx.device)).double().mean())


def cutmix(
    x: torch.Tensor, x2: torch.Tensor, lam: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """CutMix (Yun et al., 2019): paste a random box of ``x2`` covering ≈ 1−λ of the area into ``x`` (N×C×H×W).

    Returns the mixed images and the effective λ (the kept area fraction after clipping at the border), which is the
    weight to mix the targets with.
    """
    if x.ndim != 4 or x.shape != x2.shape:
        raise ValueError(
            f"cutmix expects two image batches N×C×H×W of equal shape, got {tuple(x.shape)} and {tuple(x2.shape)}"
        )
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - float(lam))
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = (int(v) for v in (torch.rand(2, generator=generator) * torch.tensor([h, w])).long())
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x2[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


class ManifoldMixup:
    """Manifold mixup (Verma et al., 2019) via a forward hook: mix hidden states at ``layer`` instead of inputs.

    ``mm(x1, x2, lam)`` runs both batches through the layers up to ``layer`` as one batch, replaces the layer's output
    by λ·h1 + (1−λ)·h2, and finishes the pass on B rows (C-Mixup's ``forward_mixup`` at a fixed layer). Targets are
    mixed with ``mix`` or by hand. Use as a context manager or call ``remove()`` to detach the hook.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        if isinstance(layer, str):
            modules = dict(model.named_modules())
            if layer not in modules:
                raise ValueError(
                    f"layer {layer!r} not found in {type(model).__name__}; expected one of "
                    f"{[n for n in modules if n][:20]}"
                )
            layer = modules[layer]
        elif not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
        self.model, self.layer = model, layer
        self._lam: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._lam is None:
            return None  # plain forward passes (evaluation) are untouched
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"manifold mixup needs the layer to return a tensor, got {type(output).__name__}")
        h1, h2 = output.chunk(2, dim=0)
        lam = self._lam.to(output.dtype)
        if lam.ndim:
            lam = lam.reshape(-1, *([1] * (output.ndim - 1)))
        return lam * h1 + (1 - lam) * h2

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        lam_t = torch.as_tensor(lam, device=x1.device)
        _check_lam(lam_t)
        if lam_t.ndim > 0 and lam_t.shape != (x1.shape[0],):
            raise ValueError(
                f"lam must be a scalar or one value per example ({x1.shape[0]},), got {tuple(lam_t.shape)}"
            )
        self._lam = lam_t
        try:
            return self.model(torch.cat([x1, x2], 0))
        finally:
            self._lam = None

    def remove(self) -> None:
        """Detach the hook; the model is unchanged afterwards."""
        self._handle.remove()

    def __enter__(self) -> ManifoldMixup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def manifold_mixup(model: nn.Module, layer: str | nn.Module) -> ManifoldMixup:
    """Attach manifold mixup at ``layer`` (a module or its dotted name); returns the callable ``ManifoldMixup``."""
    return ManifoldMixup(model, layer)


class MixupTransform:
    """A batch transform ``(x, y) -> (x_mix, y_mix)`` for a DataLoader's collate or a training loop.

    Partners come from inside the batch: a random permutation (vanilla mixup), or C-Mixup's label kernel when
    ``bandwidth`` is given; λ ~ Beta(α, α) once per batch or per sample. For whole-dataset C-Mixup use
    ``CMixupSampler`` on dataset indices instead.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        bandwidth: float | None = None,
        per: str = "batch",
        generator: torch.Generator | None = None,
    ) -> None:
        beta_lambda(alpha)  # validates alpha
        if bandwidth is not None:
            _check_bandwidth(bandwidth)
        if per not in ("batch", "sample"):
            raise ValueError(f"per must be 'batch' or 'sample', got {per!r}")
        self.alpha, self.bandwidth, self.per, self.generator = alpha, bandwidth, per, generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] < 2:
            raise ValueError(f"a batch of {x.shape[0]} example cannot be mixed; expected at least 2 (drop_last=True)")
        if self.bandwidth is None:
            partner = torch.randperm(x.shape[0], generator=self.generator)
        else:
            partner = within_batch_partners(y, self.bandwidth, generator=self.generator)
        partner = partner.to(x.device)
        lam = beta_lambda(self.alpha, () if self.per == "batch" else x.shape[0], self.generator)
        if not y.is_floating_point():
            raise ValueError(
                f"targets must be floating point (regression values or one-hot / soft labels), got {y.dtype}; "
                "for classes pass torch.nn.functional.one_hot(y, num_classes).float()"
            )
        return mix(x, y, x[partner], y[partner], lam.to(x.device))


def bandwidth_sweep(
    validation_loss: Callable[[float], float], bandwidths: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """Pick σ on validation, as the paper does: evaluate ``validation_loss(σ)`` for each σ and return the best.

    Returns (best σ, {σ: loss}); ties go to the smaller σ. A σ whose loss is NaN or inf (a diverged run) is never
    picked: it stays in the returned dict and a RuntimeWarning names it; if every loss is non-finite, ValueError.
    """
    if len(bandwidths) == 0:
        raise ValueError("bandwidths is empty; expected at least one σ to try")
    losses: dict[float, float] = {}
    for b in bandwidths:
        sigma = _check_bandwidth(b)
        loss = validation_loss(sigma)
        if not isinstance(loss, (numbers.Real, torch.Tensor, np.ndarray)) or isinstance(loss, bool):
            raise TypeError(f"validation_loss({sigma:g}) returned {loss!r}; expected a number")
        losses[sigma] = float(loss)
    failed = [b for b, loss in losses.items() if not math.isfinite(loss)]
    if len(failed) == len(losses):
        raise ValueError(f"validation_loss is non-finite (NaN or inf) for every bandwidth {failed}; nothing to pick")
    if failed:
        warnings.warn(f"validation_loss is non-finite (NaN or inf) at bandwidth(s) {failed}; they are not picked",
                      RuntimeWarning, stacklevel=2)
    best = min(sorted(b for b in losses if b not in failed), key=lambda b: losses[b])
    return best, losses
