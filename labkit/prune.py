"""Magnitude pruning masks and the IMP/SMS phase schedule.

Masks are ``dict[str, BoolTensor]`` keyed by state-dict name (``"fc1.weight"``), True = weight kept. They live
apart from the weights (``save_masks`` writes safetensors next to a clean state dict), and convert to and from
``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` layout. SMS: Zimmer et al., arXiv 2306.16788.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from labkit.config import number_in_range, renamed

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Masks = dict[str, Tensor]


def _strip(key: str) -> str:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def check_mask(key: str, mask: object, shape: Sequence[int] | None = None) -> Tensor:
    """``mask`` as a bool tensor, or an error naming ``key``: a mask is bool or exactly 0/1, of exactly ``shape``.

    A fractional mask (0.5) would scale weights instead of pruning them, and a broadcastable shape would prune the
    wrong entries, so both raise instead of being coerced.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask {key!r} is a {type(mask).__name__}, expected a bool (or 0/1) tensor")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask {key!r} has shape {tuple(mask.shape)}, expected exactly the weight's {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"mask {key!r} is complex ({mask.dtype}), expected bool or exactly 0/1")
    stray = (mask != 0) & (mask != 1)
    if stray.any():
        raise ValueError(
            f"mask {key!r} must be bool or exactly 0/1, found {int(stray.sum())} other value(s) such as "
            f"{mask[stray].flatten()[:3].tolist()}; a fractional mask would scale weights instead of pruning them"
        )
    return mask != 0


def _some_weights(weights: dict[str, Tensor], include: tuple[type[nn.Module], ...]) -> dict[str, Tensor]:
    """``weights`` if not empty; an empty set would give a sparsity of 0 and an empty mask without complaint."""
    if not weights:
        raise ValueError(
            f"no prunable weights found: expected {[c.__name__ for c in include]} modules, or >=2-D floating "
            "'*.weight' tensors in a state dict"
        )
    return weights


def prunable_weights(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> dict[str, Tensor]:
    """The tensors pruning acts on: ``weight`` of ``include`` modules, or of a state dict every >=2-D ``*.weight``.

    Norm layers and biases are never included (they are 1-D), matching SMS's global magnitude pruning.
    """
    if not isinstance(model_or_sd, nn.Module | Mapping):
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model_or_sd).__name__}")
    if isinstance(model_or_sd, nn.Module):
        out = {}
        for name, module in model_or_sd.named_modules():
            if isinstance(module, include):
                weight = getattr(module, "weight_orig", None)
                weight = module.weight if weight is None else weight * module.weight_mask
                out[_strip(f"{name}.weight" if name else "weight")] = weight.detach()
        return out
    sd = from_torch_prune(model_or_sd)[0] if any(k.endswith("_orig") for k in model_or_sd) else model_or_sd
    return {_strip(k): v for k, v in sd.items() if k.endswith("weight") and v.dim() >= 2 and v.is_floating_point()}


def imp_schedule(goal: float, phases: int) -> list[float]:
    """Cumulative sparsity after each of ``phases`` prune-retrain phases, ending exactly at ``goal``.

    Each phase removes the same fraction q = 1 - (1 - goal)^(1/phases) of the weights still alive (SMS/IMP).
    """
    goal = number_in_range("goal sparsity", goal, 0.0, 1.0, "[)")
    if isinstance(phases, bool) or not isinstance(phases, numbers.Integral) or phases < 1:
        raise ValueError(f"phases must be an integer >= 1, got {phases!r}")
    return [1.0 - (1.0 - goal) ** (p / phases) for p in range(1, phases)] + [float(goal)]


@renamed(scope="granularity")
def magnitude_masks(
    model_or_sd: nn.Module | Mapping[str, Tensor],
    sparsity: float,
    granularity: str = "global",
    *,
    include: tuple[type[nn.Module], ...] = PRUNABLE,
    prev_masks: Mapping[str, Tensor] | None = None,
) -> Masks:
    """Keep the largest-magnitude weights so that ``sparsity`` of the chosen weights is zero in total.

    ``granularity="global"`` ranks all chosen weights together (SMS default), ``"layer"`` prunes each tensor to
    ``sparsity``. Weights already dead (zero, or False in ``prev_masks``) stay dead and count toward the total;
    if more are dead than ``sparsity`` asks for, nothing more is pruned. Exactly round(sparsity * n) are pruned.
    """
    sparsity = number_in_range("sparsity", sparsity, 0.0, 1.0, "[]")
    if granularity not in ("global", "layer"):
        raise ValueError(f"granularity must be 'global' or 'layer', got {granularity!r}")
    weights = _some_weights(prunable_weights(model_or_sd, include), include)
    for key, w in weights.items():
        if not torch.isfinite(w).all():
            raise ValueError(
                f"weight {key!r} has {int((~torch.isfinite(w)).sum())} non-finite value(s) (NaN/inf); "
                "magnitude pruning needs finite weights"
            )
    if prev_masks is not None and not isinstance(prev_masks, Mapping):
        raise TypeError(f"prev_masks must be a dict of masks, got {type(prev_masks).__name__}")
    prev = {_strip(k): v for k, v in (prev_masks or {}).items()}
    unknown = sorted(set(prev) - set(weights))
    if unknown:
        raise ValueError(
            f"prev_masks has keys that are not prunable weights: {unknown[:5]}; expected some of {sorted(weights)[:5]}"
        )
    scores = {}
    for key, w in weights.items():
        alive = w != 0
        if key in prev:
            alive &= check_mask(key, prev[key], w.shape).to(w.device)
        scores[key] = torch.where(alive, w.abs().float(), torch.full_like(w, -1.0, dtype=torch.float32))
    groups = [list(weights)] if granularity == "global" else [[k] for k in weights]
    masks: Masks = {}
    for keys in groups:
        flat = torch.cat([scores[k].flatten() for k in keys])
        n_keep = min(flat.numel() - round(sparsity * flat.numel()), int((flat >= 0).sum()))
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        if n_keep > 0:
            keep[torch.topk(flat, n_keep, sorted=False).indices] = True
        for k, part in zip(keys, torch.split(keep, [scores[k].numel() for k in keys]), strict=True):
            masks[k] = part.view_as(scores[k])
    return masks


def _module_weights(model: nn.Module, masks: Mapping[str, Tensor]) -> tuple[dict[str, nn.Parameter], Masks]:
    """The parameters ``masks`` name, and the masks as bool tensors, each checked once (bool or 0/1, exact shape)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of name -> bool tensor, got {type(masks).__name__}")
    params = {_strip(k): p for k, p in model.named_parameters()}
    missing = sorted(set(masks) - set(params))
    if missing:
        raise KeyError(
            f"masks name parameters the model does not have: {missing[:5]}; model has e.g. {sorted(params)[:5]}"
        )
    checked = {key: check_mask(key, mask, params[key].shape) for key, mask in masks.items()}
    return {k: params[k] for k in masks}, checked


class MaskHandle:
    """What ``apply_masks`` returns: ``.reapply()`` zeroes pruned weights again, ``.remove()`` drops the hooks."""

    def __init__(self, params: dict[str, nn.Parameter], masks: Masks, optimizer: torch.optim.Optimizer | None):
        self.params, self.masks, self.optimizer = params, masks, optimizer
        self._hooks = [p.register_hook(lambda g, m=masks[k]: g * m) for k, p in params.items()]
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.reapply()))

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero pruned weights and any optimizer state (momentum, Adam moments) that belongs to them."""
        for key, p in self.params.items():
            mask = self.masks[key]
            p.mul_(mask)
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.mul_(mask)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def apply_masks(
    model: nn.Module, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None
) -> MaskHandle:
    """Zero pruned weights now and keep them exactly zero through training.

    Gradients are masked by a hook; given the ``optimizer``, its state (momentum, Adam moments) is masked too and
    weights are re-zeroed after every ``step`` (weight decay and stale momentum cannot revive a pruned weight).
    """
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    params, checked = _module_weights(model, masks)
    ready = {k: m.to(device=params[k].device, dtype=params[k].dtype) for k, m in checked.items()}
    handle = MaskHandle(params, ready, optimizer)
    handle.reapply()
    return handle


def sparsity(model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE) -> float:
    """Fraction of exact zeros over all prunable weights (the global sparsity SMS and IMP report)."""
    weights = _some_weights(prunable_weights(model_or_sd, include), include)
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / max(total, 1)


def layer_sparsity(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> dict[str, float]:
    """Fraction of exact zeros per prunable weight tensor, keyed by state-dict name."""
    weights = _some_weights(prunable_weights(model_or_sd, include), include)
    return {k: float((w == 0).float().mean()) for k, w in weights.items()}


def mask_of_zeros(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> Masks:
    """The mask a pruned model implies: True where a prunable weight is non-zero."""
    return {k: w != 0 for k, w in _some_weights(prunable_weights(model_or_sd, include), include).items()}


def mask_iou(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Intersection over union of the kept weights of two masks (1.0 = identical masks)."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise TypeError(f"expected two dicts of masks, got {type(a).__name__} and {type(b).__name__}")
    if not a:
        raise ValueError("masks are empty: expected at least one key to compare")
    if set(a) != set(b):
        raise ValueError(
            f"masks cover different keys: only in first {sorted(set(a) - set(b))[:5]}, "
            f"only in second {sorted(set(b) - set(a))[:5]}"
        )
    a = {k: check_mask(k, m) for k, m in a.items()}
    b = {k: check_mask(k, b[k], a[k].shape) for k in a}
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0


def to_torch_prune(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Install ``masks`` as ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` + ``weight_mask``)."""
    modules = dict(model.named_modules())
    _, checked = _module_weights(model, masks)
    for key, mask in checked.items():
        owner, _, name = key.rpartition(".")
        torch_prune.custom_from_mask(modules[owner], name, mask)
    return model


def from_torch_prune(model_or_sd: nn.Module | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Masks]:
    """Split a ``torch.nn.utils.prune`` state dict into a clean state dict (``weight = orig * mask``) and masks.

    The clean state dict loads into an unpruned module; ``module.`` prefixes are dropped on the way.
    """
    if not isinstance(model_or_sd, nn.Module | Mapping):
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model_or_sd).__name__}")
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    sd = {_strip(k): v for k, v in sd.items()}
    clean, masks = {}, {}
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            name = key[: -len("_orig")]
            mask = check_mask(name + "_mask", sd[name + "_mask"], value.shape)
            clean[name] = (value * mask).to(value.dtype)
            masks[name] = mask
        else:
            clean[key] = value
    return clean, masks


def save_masks(masks: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write masks as a safetensors file of uint8 tensors (safetensors has no portable bool)."""
    from safetensors.torch import save_file

    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of name -> bool tensor, got {type(masks).__name__}")
    checked = {k: check_mask(k, m).to(torch.uint8).contiguous().cpu() for k, m in masks.items()}
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"save_masks: {path} is a directory, expected a file path such as masks.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        checked,
        str(path),
        metadata={"labkit": json.dumps({"kind": "pruning masks", "true_means": "kept"})},
    )
    return path


def load_masks(path: str | Path) -> Masks:
    """Read masks written by ``save_masks`` back as bool tensors (a file of other values, e.g. weights, raises)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_masks: {path} is not a file; expected a safetensors file from save_masks")
    try:
        loaded = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for a corrupt file
        raise ValueError(f"load_masks: {path} is not a readable safetensors file ({error})") from error
    try:
        return {k: check_mask(k, v) for k, v in loaded.items()}
    except ValueError as error:
        raise ValueError(f"load_masks: {path} does not hold pruning masks: {error}") from None
