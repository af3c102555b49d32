"""Magnitude pruning masks and the IMP/SMS phase schedule.

Masks are ``dict[str, BoolTensor]`` keyed by state-dict name (``"fc1.weight"``), True = weight kept. They live
apart from the weights (``save_masks`` writes safetensors next to a clean state dict), and convert to and from
``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` layout. SMS: Zimmer et al., arXiv 2306.16788.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Masks = dict[str, Tensor]


def _strip(key: str) -> str:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def prunable_weights(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> dict[str, Tensor]:
    """The tensors pruning acts on: ``weight`` of ``include`` modules, or of a state dict every >=2-D ``*.weight``.

    Norm layers and biases are never included (they are 1-D), matching SMS's global magnitude pruning.
    """
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
    if not 0.0 <= goal < 1.0:
        raise ValueError(f"goal sparsity must be in [0, 1), got {goal}")
    if phases < 1:
        raise ValueError(f"phases must be >= 1, got {phases}")
    return [1.0 - (1.0 - goal) ** (p / phases) for p in range(1, phases)] + [float(goal)]


def magnitude_masks(
    model_or_sd: nn.Module | Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    *,
    include: tuple[type[nn.Module], ...] = PRUNABLE,
    prev_masks: Mapping[str, Tensor] | None = None,
) -> Masks:
    """Keep the largest-magnitude weights so that ``sparsity`` of the chosen weights is zero in total.

    ``scope="global"`` ranks all chosen weights together (SMS default), ``"layer"`` prunes each tensor to
    ``sparsity``. Weights already dead (zero, or False in ``prev_masks``) stay dead and count toward the total;
    if more are dead than ``sparsity`` asks for, nothing more is pruned. Exactly round(sparsity * n) are pruned.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = prunable_weights(model_or_sd, include)
    if not weights:
        raise ValueError(f"no prunable weights found (include={[c.__name__ for c in include]})")
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
            if prev[key].shape != w.shape:
                raise ValueError(f"mask {key!r} has shape {tuple(prev[key].shape)}, expected {tuple(w.shape)}")
            alive &= prev[key].to(device=w.device, dtype=torch.bool)
        scores[key] = torch.where(alive, w.abs().float(), torch.full_like(w, -1.0, dtype=torch.float32))
    groups = [list(weights)] if scope == "global" else [[k] for k in weights]
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


def _module_weights(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    params = {_strip(k): p for k, p in model.named_parameters()}
    missing = sorted(set(masks) - set(params))
    if missing:
        raise KeyError(
            f"masks name parameters the model does not have: {missing[:5]}; model has e.g. {sorted(params)[:5]}"
        )
    for key, mask in masks.items():
        if mask.shape != params[key].shape:
            raise ValueError(f"mask {key!r} has shape {tuple(mask.shape)}, expected {tuple(params[key].shape)}")
    return {k: params[k] for k in masks}


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
    params = _module_weights(model, masks)
    ready = {k: m.to(device=params[k].device, dtype=params[k].dtype) for k, m in masks.items()}
    handle = MaskHandle(params, ready, optimizer)
    handle.reapply()
    return handle


def sparsity(model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE) -> float:
    """Fraction of exact zeros over all prunable weights (the global sparsity SMS and IMP report)."""
    weights = prunable_weights(model_or_sd, include)
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / max(total, 1)


def layer_sparsity(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> dict[str, float]:
    """Fraction of exact zeros per prunable weight tensor, keyed by state-dict name."""
    return {k: float((w == 0).float().mean()) for k, w in prunable_weights(model_or_sd, include).items()}


def mask_of_zeros(
    model_or_sd: nn.Module | Mapping[str, Tensor], include: tuple[type[nn.Module], ...] = PRUNABLE
) -> Masks:
    """The mask a pruned model implies: True where a prunable weight is non-zero."""
    return {k: w != 0 for k, w in prunable_weights(model_or_sd, include).items()}


def mask_iou(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Intersection over union of the kept weights of two masks (1.0 = identical masks)."""
    if set(a) != set(b):
        raise ValueError(
            f"masks cover different keys: only in first {sorted(set(a) - set(b))[:5]}, "
            f"only in second {sorted(set(b) - set(a))[:5]}"
        )
    inter = sum(int((a[k].bool() & b[k].bool()).sum()) for k in a)
    union = sum(int((a[k].bool() | b[k].bool()).sum()) for k in a)
    return inter / union if union else 1.0


def to_torch_prune(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Install ``masks`` as ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` + ``weight_mask``)."""
    modules = dict(model.named_modules())
    _module_weights(model, masks)
    for key, mask in masks.items():
        owner, _, name = key.rpartition(".")
        torch_prune.custom_from_mask(modules[owner], name, mask.to(torch.bool))
    return model


def from_torch_prune(model_or_sd: nn.Module | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Masks]:
    """Split a ``torch.nn.utils.prune`` state dict into a clean state dict (``weight = orig * mask``) and masks.

    The clean state dict loads into an unpruned module; ``module.`` prefixes are dropped on the way.
    """
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    sd = {_strip(k): v for k, v in sd.items()}
    clean, masks = {}, {}
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            name = key[: -len("_orig")]
            mask = sd[name + "_mask"]
            clean[name] = (value * mask).to(value.dtype)
            masks[name] = mask.to(torch.bool)
        else:
            clean[key] = value
    return clean, masks


def save_masks(masks: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write masks as a safetensors file of uint8 tensors (safetensors has no portable bool)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: m.to(torch.uint8).contiguous().cpu() for k, m in masks.items()},
        str(path),
        metadata={"labkit": json.dumps({"kind": "pruning masks", "true_means": "kept"})},
    )
    return path


def load_masks(path: str | Path) -> Masks:
    """Read masks written by ``save_masks`` back as bool tensors."""
    from safetensors.torch import load_file

    return {k: v.to(torch.bool) for k, v in load_file(str(path)).items()}
