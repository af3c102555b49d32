"""Model merging: soups, sparse soups, interpolation, task arithmetic, TIES and DARE, as per-tensor methods.

Each method is a small pure function of fp32 tensors registered with its parameters and paper; the driver in
``labkit.merge_io`` walks the keys, loads and streams checkpoints, copies integer buffers and restores dtypes.
Public functions take ``items`` that may mix modules, state dicts and paths, and return a state dict, or the
path of a safetensors file when given ``out=PATH``. SMS: Zimmer et al., arXiv 2306.16788.
"""

from __future__ import annotations

import itertools
import math
import numbers
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labkit import merge_io
from labkit.merge_io import Item

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


def shared_mask(
    items: Sequence[Item], masks: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]] | str
) -> dict[str, Tensor]:
    """The one mask a sparse soup uses: given, or one per item (asserted identical), or ``"zeros"``/``"prune"``.

    ``"zeros"`` reads each item's exact-zero pattern over prunable weights; ``"prune"`` reads
    ``torch.nn.utils.prune`` masks. Differing masks raise, listing the keys where they differ.
    """
    from labkit import prune

    items = merge_io.as_item_list(items)
    if isinstance(masks, str):
        if masks not in ("zeros", "prune"):
            raise ValueError(f"masks must be a dict, a list of dicts, 'zeros' or 'prune', got {masks!r}")
        if masks == "zeros":
            masks = [prune.mask_of_zeros(merge_io.load_state_dict(i, f"item {n}")) for n, i in enumerate(items)]
        else:
            masks = [merge_io.Source(i, f"item {n}").pruning_masks() for n, i in enumerate(items)]
            bare = [n for n, m in enumerate(masks) if not m]
            if bare:
                raise ValueError(f"masks='prune' but items {bare} have no torch.nn.utils.prune *_orig/*_mask pairs")
    if isinstance(masks, Mapping):
        return _mask_dict(masks, "masks")
    if not isinstance(masks, Sequence):
        raise TypeError(f"masks must be a dict, a list of dicts, 'zeros' or 'prune', got {type(masks).__name__}")
    if len(masks) != len(items):
        raise ValueError(f"expected one mask dict per item ({len(items)}), got {len(masks)}")
    masks = [_mask_dict(m, f"masks[{n}]") for n, m in enumerate(masks)]
    reference = masks[0]
    for i, other in enumerate(masks[1:], start=1):
        if set(other) != set(reference):
            raise ValueError(
                f"masks of item 0 and item {i} cover different keys: {sorted(set(other) ^ set(reference))[:5]}"
            )
        differ = [k for k in reference if not torch.equal(reference[k], other[k])]
        if differ:
            raise ValueError(
                f"a sparse soup needs identical masks, but item {i} differs from item 0 in {differ[:5]} "
                "(SMS retrains copies of one pruned model so they share its mask)"
            )
    return reference


def _mask_dict(masks: Any, what: str) -> dict[str, Tensor]:
    """One mask dict with prefixes stripped, every mask checked to be bool or exactly 0/1."""
    from labkit import prune

    if not isinstance(masks, Mapping):
        raise TypeError(f"{what} is a {type(masks).__name__}, expected a dict of key -> bool tensor")
    return {merge_io.strip_prefix(k): prune.check_mask(k, v) for k, v in masks.items()}


def average(
    items: Sequence[Item],
    weights: Sequence[float] | None = None,
    masks: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]] | str | None = None,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """Weighted (default uniform) soup of ``items``; with ``masks``, the SMS sparse soup that stays exactly sparse.

    ``masks``: one dict, one dict per item (asserted identical), ``"zeros"`` or ``"prune"`` (see ``shared_mask``).
    ``weights`` must be >= 0 and sum to 1 (a soup is a convex combination; any other weighted sum is
    ``merge("linear", items, weights=...)``).
    """
    items = merge_io.as_item_list(items)
    if weights is not None:
        checked = _weights(len(items), weights)
        if min(checked) < 0 or abs(sum(checked) - 1.0) > 1e-6:
            raise ValueError(
                f"average weights must be >= 0 and sum to 1, got {checked} (sum {sum(checked):g}); "
                "for any other weighted sum use merge('linear', items, weights=...)"
            )
    mask = shared_mask(items, masks) if masks is not None else None
    return merge("linear", items, weights=weights, masks=mask, out=out, strict=strict)


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


def _score(evaluate: Callable[[StateDict], float], sd: StateDict, what: str) -> float:
    """``evaluate(sd)`` as a finite float, or an error naming ``what`` was scored and what came back."""
    value = evaluate(sd)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"evaluate returned {value!r} ({type(value).__name__}) for {what}; expected a finite number")
    if not math.isfinite(value):
        raise ValueError(f"evaluate returned {value} for {what}; expected a finite score")
    return float(value)


def greedy_soup(
    items: Sequence[Item],
    evaluate: Callable[[StateDict], float],
    *,
    strict: bool = False,
    masks: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]] | str | None = None,
) -> tuple[StateDict, list[int], list[float]]:
    """Greedy soup: rank ingredients by ``evaluate`` (higher is better), add each if the soup's score does not drop.

    ``strict=False`` keeps ties (``>=``, as SMS); ``strict=True`` needs an improvement (``>``, as model-soups).
    ``evaluate`` should recalibrate BN itself if the model has any. Returns (soup, chosen indices, item scores).
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a function state dict -> score, got {type(evaluate).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    items = [merge_io.load_state_dict(item, f"item {i}") for i, item in enumerate(merge_io.as_item_list(items))]

    def score(sd: StateDict, what: str) -> float:
        return _score(evaluate, sd, what)

    scores = [score(sd, f"item {i}") for i, sd in enumerate(items)]
    order = sorted(range(len(items)), key=lambda i: -scores[i])
    chosen, best = [order[0]], scores[order[0]]
    soup = average([items[order[0]]], masks=masks)
    for i in order[1:]:
        candidate = average([items[j] for j in [*chosen, i]], masks=masks)
        value = score(candidate, f"the soup of items {[*chosen, i]}")
        if value > best or (not strict and value == best):
            chosen, best, soup = [*chosen, i], value, candidate
    return soup, chosen, scores


_NO_BATCH = object()  # what an empty loader yields first


def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    *,
    frac: float | None = None,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Recompute BatchNorm running statistics after a merge (``torch.optim.swa_utils.update_bn``, cumulative mean).

    ``frac`` (of ``len(loader)``) or ``max_batches`` limits the passes (SMS uses 20 % of the training data).
    """
    from torch.optim.swa_utils import update_bn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if frac is not None and max_batches is not None:
        raise ValueError(f"pass frac or max_batches, not both (got frac={frac}, max_batches={max_batches})")
    limit = max_batches
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, numbers.Integral) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be an integer >= 1, got {max_batches!r}")
    if frac is not None:
        frac = _in_range("frac", frac, 0.0, 1.0, "(0, 1]")
        if not hasattr(loader, "__len__"):
            raise TypeError(f"frac needs a loader with len(), got a {type(loader).__name__}; pass max_batches instead")
        limit = max(1, math.ceil(frac * len(loader)))  # type: ignore[arg-type]
    batches = iter(itertools.islice(loader, limit) if limit is not None else loader)
    first = next(batches, _NO_BATCH)
    if first is _NO_BATCH:
        raise ValueError("loader yielded no batches; recalibrating on none would reset BatchNorm statistics to 0/1")
    update_bn(itertools.chain([first], batches), model, device=device)
    return model


def ema_model(model: nn.Module, decay: float = 0.999) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model`` (``AveragedModel`` + ``get_ema_multi_avg_fn``); call
    ``.update_parameters(model)`` after each step. Buffers are averaged too (pytorch/pytorch#84053)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    decay = _in_range("decay", decay, 0.0, 1.0, "[0, 1)")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def swa_model(model: nn.Module) -> torch.optim.swa_utils.AveragedModel:
    """An equal-weight average of checkpoints along one run (SWA); recalibrate BN on it before use."""
    from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())


def _flat_params(items: Sequence[Item]) -> Tensor:
    """One row per item: its floating parameters (BN running statistics excluded) flattened in key order.

    Items must have the same keys and shapes and finite values; otherwise the rows would compare different
    parameters, so the first offending item and key raise.
    """
    sds = [merge_io.load_state_dict(item, f"item {i}") for i, item in enumerate(merge_io.as_item_list(items))]

    def params(sd: StateDict) -> dict[str, Tensor]:
        return {k: v for k, v in sorted(sd.items()) if v.is_floating_point() and "running_" not in k}

    reference = params(sds[0])
    if not reference:
        raise ValueError("item 0 has no floating parameters to compare")
    rows = []
    for i, sd in enumerate(sds):
        mine = params(sd)
        if set(mine) != set(reference):
            lacks, extra = sorted(set(reference) - set(mine)), sorted(set(mine) - set(reference))
            raise ValueError(f"item {i} lacks {lacks[:5]} and has extra {extra[:5]} compared with item 0")
        for k, v in mine.items():
            if v.shape != reference[k].shape:
                raise ValueError(f"item {i} has {k!r} of shape {tuple(v.shape)}, item 0 {tuple(reference[k].shape)}")
            if not torch.isfinite(v).all():
                raise ValueError(f"item {i} has non-finite values in {k!r}")
        rows.append(torch.cat([v.detach().float().flatten() for v in mine.values()]))
    return torch.stack(rows)


def soup_distances(items: Sequence[Item]) -> dict[str, Any]:
    """Pairwise L2 distance and angle (degrees) between ingredients, and each one's distance to their average.

    Over floating parameters only (BN running statistics excluded), as SMS logs them.
    """
    stacked = _flat_params(items)
    center = stacked.mean(0)
    l2 = torch.cdist(stacked[None], stacked[None])[0]
    unit = stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = torch.rad2deg(torch.arccos((unit @ unit.T).clamp(-1, 1)))
    angle.fill_diagonal_(0.0)
    return {"l2": l2, "angle_degrees": angle, "to_average": (stacked - center).norm(dim=1)}


def interpolation_curve(
    a: Item, b: Item, evaluate: Callable[[StateDict], float], alphas: int | Sequence[float] = 11
) -> list[tuple[float, float]]:
    """Score along the straight line from ``a`` (alpha=0) to ``b`` (alpha=1): a linear-mode-connectivity curve.

    ``alphas``: a count >= 2 of evenly spaced points in [0, 1], or the points themselves (any finite values).
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a function state dict -> score, got {type(evaluate).__name__}")
    if isinstance(alphas, numbers.Integral) and not isinstance(alphas, bool):
        if alphas < 2:
            raise ValueError(f"alphas must be a count >= 2 (both ends) or a list of points, got {alphas}")
        alphas = [i / (alphas - 1) for i in range(alphas)]
    elif isinstance(alphas, str | bytes) or not isinstance(alphas, Iterable):
        raise TypeError(f"alphas must be a count >= 2 or a list of numbers, got {alphas!r}")
    points = [_number(f"alphas[{i}]", t) for i, t in enumerate(alphas)]
    if not points:
        raise ValueError("alphas is empty; expected a count >= 2 or at least one point")
    a_sd, b_sd = merge_io.load_state_dict(a, "a"), merge_io.load_state_dict(b, "b")
    return [(t, _score(evaluate, lerp(a_sd, b_sd, t), f"alpha={t}")) for t in points]
