"""The merge methods: linear, slerp, task arithmetic, TIES and DARE as registered per-tensor functions.

Each method is a small pure function of fp32 tensors registered with its parameters and paper; :func:`merge` checks
the parameters and hands the function to the driver in :mod:`labkit.merge.io`, which walks the keys, loads and
streams checkpoints, copies integer buffers and restores dtypes.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labkit.merge import io as merge_io
from labkit.merge.io import Item

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A per-tensor merge: ``fn(tensors, base, **params) -> Tensor`` over fp32 tensors of one key."""

    name: str  # registry name
    fn: Callable[..., Tensor]  # the math
    params: dict[str, Any] = field(default_factory=dict)  # declared parameters and their defaults
    reference: str = ""  # the paper
    needs_base: bool = False  # True: task-vector methods that need the base model
    n_items: int | None = None  # the exact number of items the method takes (slerp: 2); None = any


METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str, reference: str, needs_base: bool = False, n_items: int | None = None, **params: Any
) -> Callable:
    """Register a per-tensor function as a merge method (re-registering a name raises)."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, dict(params), reference, needs_base, n_items)
        return fn

    return register


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float (a 0-d tensor is fine); a string, bool, NaN or inf raises naming ``name``."""
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def _in_range(name: str, value: Any, low: float, high: float, interval: str) -> float:
    """A finite number inside ``interval`` (written "[0, 1)" etc., whose brackets say which ends are included)."""
    x = _number(name, value)
    above = x >= low if interval[0] == "[" else x > low
    below = x <= high if interval[-1] == "]" else x < high
    if not (above and below):
        raise ValueError(f"{name} must be in {interval}, got {x}")
    return x


def _weights(n: int, weights: Sequence[float] | Tensor | None) -> list[float]:
    """``weights`` as ``n`` finite floats, one per item (default uniform 1/n): a sequence or a 1-D tensor."""
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, Tensor):
        if weights.dim() != 1:
            raise ValueError(f"weights must be 1-D (one per item), got a tensor of shape {tuple(weights.shape)}")
        weights = weights.tolist()
    if isinstance(weights, str | bytes | Mapping) or not isinstance(weights, Iterable):
        raise TypeError(f"weights must be a sequence or 1-D tensor of {n} numbers (one per item), got {weights!r}")
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"expected {n} weights (one per item), got {len(weights)}")
    return [_number(f"weights[{i}]", w) for i, w in enumerate(weights)]


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"seed must be an integer >= 0, got {value!r}")
    return int(value)


def _then(value: Any) -> str:
    if value not in ("linear", "ties"):
        raise ValueError(f"then must be 'linear' or 'ties', got {value!r}")
    return value


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return value

    return check


# Checks for the parameters the registered methods declare, by name (weights need the item count: see merge()).
_PARAM_CHECKS: dict[str, Callable[[Any], Any]] = {
    "t": lambda v: _in_range("t", v, 0.0, 1.0, "[0, 1]"),
    "scale": lambda v: _number("scale", v),
    "density": lambda v: _in_range("density", v, 0.0, 1.0, "(0, 1]"),
    "drop": lambda v: _in_range("drop", v, 0.0, 1.0, "[0, 1)"),
    "then": _then,
    "seed": _seed,
    "normalize": _flag("normalize"),
}
_INTERNAL_PARAMS = {"key"}  # filled in by merge() per tensor, never by the caller


@merge_method("linear", "https://arxiv.org/abs/2203.05482 (model soups)", weights=None)
def linear_tensor(tensors: list[Tensor], base: Tensor | None, weights: list[float]) -> Tensor:
    """Weighted sum sum_i w_i theta_i (uniform soup when w_i = 1/n)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out.add_(t, alpha=w)
    return out


SLERP_COLINEAR = 0.9995  # |cos| above this: lerp instead (mergekit's slerp DOT_THRESHOLD)


@merge_method("slerp", "https://arxiv.org/abs/2212.04089 ; Shoemake 1985", n_items=2, t=0.5)
def slerp_tensor(tensors: list[Tensor], base: Tensor | None, t: float, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of two tensors, each flattened; lerp when they are nearly colinear or opposite.

    Near an angle of 0 or pi, sin(angle) ~ 0 and the spherical weights blow up (exactly opposite tensors gave 1e7),
    so for |cos| > ``SLERP_COLINEAR`` the result is (1 - t) a + t b, as mergekit's ``slerp`` does. A zero tensor
    (norm < ``eps``) has no direction and falls back to lerp too.
    """
    a, b = tensors
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    cos = torch.clamp((a.flatten() @ b.flatten()) / (na * nb), -1.0, 1.0)
    if cos.abs() > SLERP_COLINEAR:
        return torch.lerp(a, b, t)
    omega = torch.arccos(cos)
    s = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / s) * a + (torch.sin(t * omega) / s) * b


@merge_method("task_arithmetic", "https://arxiv.org/abs/2212.04089", needs_base=True, weights=None, scale=1.0)
def task_arithmetic_tensor(tensors: list[Tensor], base: Tensor, weights: list[float], scale: float) -> Tensor:
    """theta = base + scale * sum_i w_i (theta_i - base) (Ilharco et al. 2023)."""
    return base + scale * linear_tensor([t - base for t in tensors], None, weights)


def trim_top(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest (TIES step 1)."""
    k = round(density * delta.numel())
    if k >= delta.numel():
        return delta
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(delta.abs().flatten(), k, sorted=False).indices] = True
    return delta * keep.view_as(delta)


def ties_deltas(deltas: list[Tensor], weights: list[float], normalize: bool = True) -> Tensor:
    """Elect a sign per entry from the weighted sum, then merge only the weighted deltas that agree (TIES steps 2-3).

    ``normalize=True`` divides by the total |weight| of the agreeing deltas (the paper's disjoint mean);
    ``normalize=False`` keeps their weighted sum, as mergekit's ``normalize: false`` (merge_methods/
    generalized_task_arithmetic.py: the weights multiply the deltas either way; only the division by the agreeing
    weights is skipped). mergekit divides by the signed weight sum; the two agree for weights >= 0.
    """
    stacked = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(0)
    if not normalize:
        return total
    count = (agree * torch.tensor(weights).abs().view(-1, *[1] * deltas[0].dim())).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


@merge_method(
    "ties", "https://arxiv.org/abs/2306.01708", needs_base=True, weights=None, density=0.2, scale=1.0, normalize=True
)
def ties_tensor(
    tensors: list[Tensor], base: Tensor, weights: list[float], density: float, scale: float, normalize: bool
) -> Tensor:
    """TIES-merging: trim each task vector to its top ``density``, elect signs, disjoint mean (Yadav et al. 2023)."""
    deltas = [trim_top(t - base, density) for t in tensors]
    return base + scale * ties_deltas(deltas, weights, normalize)


def drop_and_rescale(delta: Tensor, drop: float, generator: torch.Generator) -> Tensor:
    """DARE: zero each entry with probability ``drop``, scale survivors by 1 / (1 - drop) to keep the expectation."""
    if drop == 0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) >= drop
    return delta * keep / (1.0 - drop)


@merge_method(
    "dare",
    "https://arxiv.org/abs/2311.03099",
    needs_base=True,
    weights=None,
    drop=0.9,
    then="linear",
    scale=1.0,
    density=1.0,
    seed=0,
    key="",
)
def dare_tensor(
    tensors: list[Tensor],
    base: Tensor,
    weights: list[float],
    drop: float,
    then: str,
    scale: float,
    density: float,
    seed: int,
    key: str,
) -> Tensor:
    """DARE (Yu et al. 2023) then a linear sum or TIES; the random drop is seeded by ``seed`` and the key name."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    deltas = [drop_and_rescale(t - base, drop, gen) for t in tensors]
    if then == "linear":
        return base + scale * linear_tensor(deltas, None, weights)
    return base + scale * ties_deltas([trim_top(d, density) for d in deltas], weights)


def merge(
    method: str,
    items: Sequence[Item],
    *,
    base: Item | None = None,
    masks: Mapping[str, Tensor] | None = None,
    out: str | Path | None = None,
    strict: bool = True,
    **params: Any,
) -> StateDict | Path:
    """Run a registered method over every key of ``items`` (the one driver all public merges go through).

    Every parameter is checked before any file is read: its range, the weights' count, the number of items the
    method takes, and that ``base=`` is given exactly to the methods that use it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(METHODS)}")
    spec = METHODS[method]
    accepted = sorted(set(spec.params) - _INTERNAL_PARAMS)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {method!r}; accepted: {accepted}")
    if spec.needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs base=, the model the items were fine-tuned from")
    if base is not None and not spec.needs_base:
        raise ValueError(
            f"merge method {method!r} takes no base= (it would be ignored); methods that use one: "
            f"{sorted(m for m, s in METHODS.items() if s.needs_base)}"
        )
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    items = merge_io.as_item_list(items)
    if spec.n_items is not None and len(items) != spec.n_items:
        raise ValueError(f"merge method {method!r} takes exactly {spec.n_items} items, got {len(items)}")
    values = {**spec.params, **params}
    for name, value in values.items():
        if name == "weights":
            values[name] = _weights(len(items), value)
        elif name in _PARAM_CHECKS:
            values[name] = _PARAM_CHECKS[name](value)
    if values.get("then") == "linear" and values.get("density", 1.0) != 1.0:
        raise ValueError(f"density={values['density']} trims only with then='ties'; with then='linear' it must be 1.0")

    def per_tensor(key: str, tensors: list[Tensor], base_t: Tensor | None) -> Tensor:
        extra = {"key": key} if "key" in spec.params else {}
        return spec.fn(tensors, base_t, **{**values, **extra})

    return merge_io.run(
        per_tensor, items, base=base, masks=masks, out=out, strict=strict, metadata={"labkit_merge": method}
    )


def lerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Linear interpolation (1 - t) a + t b, the path of a linear-mode-connectivity curve (any finite t)."""
    t = _number("t", t)
    return merge("linear", [a, b], weights=[1.0 - t, t], out=out, strict=strict)


def slerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Spherical interpolation per tensor between ``a`` (t=0) and ``b`` (t=1), t in [0, 1]."""
    return merge("slerp", [a, b], t=t, out=out, strict=strict)


def task_arithmetic(
    base: Item,
    items: Sequence[Item],
    scale: float = 1.0,
    weights: Sequence[float] | Tensor | None = None,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """base + scale * sum of task vectors (weights default to 1 each; a negative scale removes a skill)."""
    items = merge_io.as_item_list(items)
    weights = [1.0] * len(items) if weights is None else weights
    return merge("task_arithmetic", items, base=base, weights=weights, scale=scale, out=out, strict=strict)


def ties(
    base: Item,
    items: Sequence[Item],
    density: float = 0.2,
    scale: float = 1.0,
    weights: Sequence[float] | Tensor | None = None,
    *,
    normalize: bool = True,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """TIES-merging: trim task vectors to ``density``, elect signs, average the agreeing entries.

    ``normalize=False`` sums the agreeing weighted entries instead of averaging them (mergekit's ``normalize:
    false``), so every mergekit TIES setting has an equivalent here (see ``ties_deltas``).
    """
    items = merge_io.as_item_list(items)
    weights = [1.0] * len(items) if weights is None else weights
    return merge(
        "ties",
        items,
        base=base,
        weights=weights,
        density=density,
        scale=scale,
        normalize=normalize,
        out=out,
        strict=strict,
    )


def dare(
    base: Item,
    items: Sequence[Item],
    drop: float = 0.9,
    then: str = "linear",
    scale: float = 1.0,
    weights: Sequence[float] | Tensor | None = None,
    density: float = 1.0,
    seed: int = 0,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """DARE: randomly drop ``drop`` of each task vector and rescale, then merge ``then="linear"`` or ``"ties"``.

    ``density`` (< 1 trims each dropped task vector to its top entries) applies only with ``then="ties"``.
    """
    items = merge_io.as_item_list(items)
    weights = [1.0] * len(items) if weights is None else weights
    return merge(
        "dare",
        items,
        base=base,
        weights=weights,
        drop=drop,
        then=then,
        scale=scale,
        density=density,
        seed=seed,
        out=out,
        strict=strict,
    )
