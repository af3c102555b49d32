"""Model soups: uniform, weighted and sparse (SMS) soups, greedy soups, BN recalibration, EMA, soup geometry.

SMS (sparse model soups): Zimmer et al., arXiv 2306.16788; model soups: Wortsman et al., arXiv 2203.05482.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import labkit.merge.io as merge_io
from labkit.config import number_in_range
from labkit.merge.io import Item
from labkit.merge.methods import StateDict, check_weights, lerp, merge


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
        checked = check_weights(len(items), weights)
        if min(checked) < 0 or abs(sum(checked) - 1.0) > 1e-6:
            raise ValueError(
                f"average weights must be >= 0 and sum to 1, got {checked} (sum {sum(checked):g}); "
                "for any other weighted sum use merge('linear', items, weights=...)"
            )
    mask = shared_mask(items, masks) if masks is not None else None
    return merge("linear", items, weights=weights, masks=mask, out=out, strict=strict)


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
        frac = number_in_range("frac", frac, 0.0, 1.0, "(]")
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
    decay = number_in_range("decay", decay, 0.0, 1.0, "[)")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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
    points = [number_in_range(f"alphas[{i}]", t) for i, t in enumerate(alphas)]
    if not points:
        raise ValueError("alphas is empty; expected a count >= 2 or at least one point")
    a_sd, b_sd = merge_io.load_state_dict(a, "a"), merge_io.load_state_dict(b, "b")
    return [(t, _score(evaluate, lerp(a_sd, b_sd, t), f"alpha={t}")) for t in points]
