"""Model merging: soups, sparse soups, interpolation, task arithmetic, TIES and DARE, as per-tensor methods.

Each method is a small pure function of fp32 tensors registered with its parameters and paper; the driver in
``labkit.merge_io`` walks the keys, loads and streams checkpoints, copies integer buffers and restores dtypes.
Public functions take ``items`` that may mix modules, state dicts and paths, and return a state dict, or the
path of a safetensors file when given ``out=PATH``. SMS: Zimmer et al., arXiv 2306.16788.
"""

from __future__ import annotations

import itertools
import math
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


METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, reference: str, needs_base: bool = False, **params: Any) -> Callable:
    """Register a per-tensor function as a merge method (re-registering a name raises)."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, dict(params), reference, needs_base)
        return fn

    return register


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"expected {n} weights (one per item), got {len(weights)}")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, got {weights}")
    return weights


@merge_method("linear", "https://arxiv.org/abs/2203.05482 (model soups)", weights=None)
def linear_tensor(tensors: list[Tensor], base: Tensor | None, weights: list[float]) -> Tensor:
    """Weighted sum sum_i w_i theta_i (uniform soup when w_i = 1/n)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out.add_(t, alpha=w)
    return out


@merge_method("slerp", "https://arxiv.org/abs/2212.04089 ; Shoemake 1985", t=0.5)
def slerp_tensor(tensors: list[Tensor], base: Tensor | None, t: float, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of two tensors, each flattened; falls back to lerp when nearly colinear."""
    a, b = tensors
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    cos = torch.clamp((a.flatten() @ b.flatten()) / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:
        return torch.lerp(a, b, t)
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


def ties_deltas(deltas: list[Tensor], weights: list[float]) -> Tensor:
    """Elect a sign per entry from the weighted sum, then average only the deltas that agree (TIES steps 2-3)."""
    stacked = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(0)
    count = (agree * torch.tensor(weights).abs().view(-1, *[1] * deltas[0].dim())).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


@merge_method("ties", "https://arxiv.org/abs/2306.01708", needs_base=True, weights=None, density=0.2, scale=1.0)
def ties_tensor(tensors: list[Tensor], base: Tensor, weights: list[float], density: float, scale: float) -> Tensor:
    """TIES-merging: trim each task vector to its top ``density``, elect signs, disjoint mean (Yadav et al. 2023)."""
    deltas = [trim_top(t - base, density) for t in tensors]
    return base + scale * ties_deltas(deltas, weights)


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
    """Run a registered method over every key of ``items`` (the one driver all public merges go through)."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(METHODS)}")
    spec = METHODS[method]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {method!r}; accepted: {sorted(spec.params)}")
    if spec.needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs base=, the model the items were fine-tuned from")
    values = {**spec.params, **params}
    items = list(items)
    if not items:
        raise ValueError("nothing to merge: expected at least one model, state dict or path, got an empty list")
    if "weights" in values:
        values["weights"] = _weights(len(items), values["weights"])

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

    if isinstance(masks, str):
        if masks not in ("zeros", "prune"):
            raise ValueError(f"masks must be a dict, a list of dicts, 'zeros' or 'prune', got {masks!r}")
        if masks == "zeros":
            masks = [prune.mask_of_zeros(merge_io.load_state_dict(i)) for i in items]
        else:
            masks = [merge_io.Source(i, f"item {n}").pruning_masks() for n, i in enumerate(items)]
    if isinstance(masks, Mapping):
        return {merge_io.strip_prefix(k): v.bool() for k, v in masks.items()}
    masks = [{merge_io.strip_prefix(k): v.bool() for k, v in m.items()} for m in masks]
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
    """
    items = list(items)
    mask = shared_mask(items, masks) if masks is not None else None
    return merge("linear", items, weights=weights, masks=mask, out=out, strict=strict)


def lerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Linear interpolation (1 - t) a + t b, the path of a linear-mode-connectivity curve."""
    return merge("linear", [a, b], weights=[1.0 - t, t], out=out, strict=strict)


def slerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Spherical interpolation per tensor between ``a`` (t=0) and ``b`` (t=1)."""
    return merge("slerp", [a, b], t=t, out=out, strict=strict)


def task_arithmetic(
    base: Item,
    items: Sequence[Item],
    scale: float = 1.0,
    weights: Sequence[float] | None = None,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """base + scale * sum of task vectors (weights default to 1 each; a negative scale removes a skill)."""
    items = list(items)
    return merge(
        "task_arithmetic", items, base=base, weights=weights or [1.0] * len(items), scale=scale, out=out, strict=strict
    )


def ties(
    base: Item,
    items: Sequence[Item],
    density: float = 0.2,
    scale: float = 1.0,
    weights: Sequence[float] | None = None,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """TIES-merging: trim task vectors to ``density``, elect signs, average the agreeing entries."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    items = list(items)
    return merge(
        "ties",
        items,
        base=base,
        weights=weights or [1.0] * len(items),
        density=density,
        scale=scale,
        out=out,
        strict=strict,
    )


def dare(
    base: Item,
    items: Sequence[Item],
    drop: float = 0.9,
    then: str = "linear",
    scale: float = 1.0,
    weights: Sequence[float] | None = None,
    density: float = 1.0,
    seed: int = 0,
    *,
    out: str | Path | None = None,
    strict: bool = True,
) -> StateDict | Path:
    """DARE: randomly drop ``drop`` of each task vector and rescale, then merge ``then="linear"`` or ``"ties"``."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    if then not in ("linear", "ties"):
        raise ValueError(f"then must be 'linear' or 'ties', got {then!r}")
    items = list(items)
    return merge(
        "dare",
        items,
        base=base,
        weights=weights or [1.0] * len(items),
        drop=drop,
        then=then,
        scale=scale,
        density=density,
        seed=seed,
        out=out,
        strict=strict,
    )


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
    items = [merge_io.load_state_dict(i) for i in items]
    if not items:
        raise ValueError("nothing to merge: expected at least one model, state dict or path, got an empty list")

    def score(sd: StateDict, what: str) -> float:
        value = float(evaluate(sd))
        if not math.isfinite(value):
            raise ValueError(f"evaluate returned {value} for {what}; expected a finite score")
        return value

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

    limit = max_batches
    if frac is not None:
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"frac must be in (0, 1], got {frac}")
        limit = max(1, math.ceil(frac * len(loader)))  # type: ignore[arg-type]
    batches = itertools.islice(loader, limit) if limit is not None else loader
    update_bn(batches, model, device=device)
    return model


def ema_model(model: nn.Module, decay: float = 0.999) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model`` (``AveragedModel`` + ``get_ema_multi_avg_fn``); call
    ``.update_parameters(model)`` after each step. Buffers are averaged too (pytorch/pytorch#84053)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def swa_model(model: nn.Module) -> torch.optim.swa_utils.AveragedModel:
    """An equal-weight average of checkpoints along one run (SWA); recalibrate BN on it before use."""
    from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())


def _flat_params(sd: Mapping[str, Tensor]) -> Tensor:
    return torch.cat(
        [v.detach().float().flatten() for k, v in sorted(sd.items()) if v.is_floating_point() and "running_" not in k]
    )


def soup_distances(items: Sequence[Item]) -> dict[str, Any]:
    """Pairwise L2 distance and angle (degrees) between ingredients, and each one's distance to their average.

    Over floating parameters only (BN running statistics excluded), as SMS logs them.
    """
    flats = [_flat_params(merge_io.load_state_dict(i)) for i in items]
    stacked = torch.stack(flats)
    center = stacked.mean(0)
    l2 = torch.cdist(stacked[None], stacked[None])[0]
    unit = stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = torch.rad2deg(torch.arccos((unit @ unit.T).clamp(-1, 1)))
    angle.fill_diagonal_(0.0)
    return {"l2": l2, "angle_degrees": angle, "to_average": (stacked - center).norm(dim=1)}


def interpolation_curve(
    a: Item, b: Item, evaluate: Callable[[StateDict], float], alphas: int | Sequence[float] = 11
) -> list[tuple[float, float]]:
    """Score along the straight line from ``a`` (alpha=0) to ``b`` (alpha=1): a linear-mode-connectivity curve."""
    if isinstance(alphas, int):
        alphas = [i / (alphas - 1) for i in range(alphas)]
    a_sd, b_sd = merge_io.load_state_dict(a), merge_io.load_state_dict(b)
    return [(float(t), float(evaluate(lerp(a_sd, b_sd, t)))) for t in alphas]
