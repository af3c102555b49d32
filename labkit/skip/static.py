"""Static skipping orders (baselines of GateSkip): ShortGPT block influence and Unified Layer Skipping.

Both return which branches or layers to drop; :func:`labkit.skip.static_skip` drops them. ShortGPT: Men et al.,
"ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (2024); ULS: Liu et al.,
"Accelerating Inference in Large Language Models with a Unified Layer Skipping Strategy" (2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from labkit import layout

BRANCH_ROLES = ("attn", "mlp")
_ACCEPTED = "a layer index (3), a (layer, 'attn'|'mlp') pair ((3, 'mlp')) or a 'layer.role' string ('3.mlp')"


def branch_names(layers: Iterable[int | tuple[int, str] | str], n_layers: int) -> set[str]:
    """The branch names (``"3.mlp"``) that static skipping drops, from whole layers (ints) or single branches
    (``(layer, "attn"|"mlp")`` or ``"3.mlp"``); raises naming any entry of another form or out of range."""
    names: set[str] = set()
    for item in layers:
        if isinstance(item, str):
            layer_text, dot, role = item.partition(".")
            try:
                layer, roles = int(layer_text), [role]
            except ValueError:
                raise ValueError(f"static skip entry {item!r} is not {_ACCEPTED}") from None
            if not dot:
                raise ValueError(f"static skip entry {item!r} is not {_ACCEPTED}")
        elif isinstance(item, tuple):
            if len(item) != 2 or isinstance(item[0], bool) or not isinstance(item[0], int):
                raise ValueError(f"static skip entry {item!r} is not {_ACCEPTED}")
            layer, roles = item[0], [item[1]]
        elif isinstance(item, int) and not isinstance(item, bool):
            layer, roles = item, list(BRANCH_ROLES)
        else:
            raise TypeError(f"static skip entry {item!r} ({type(item).__name__}) is not {_ACCEPTED}")
        if roles[0] not in BRANCH_ROLES:
            raise ValueError(f"branch role must be 'attn' or 'mlp', got {roles[0]!r} in {item!r}")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer index {layer} out of range in {item!r}; the model has {n_layers} layers")
        names.update(f"{layer}.{r}" for r in roles)
    return names


@torch.no_grad()
def shortgpt_order(model: nn.Module, batches: Iterable[torch.Tensor | dict], granularity: str = "branch") -> list:
    """Branches (``"layer.attn|mlp"``) or layers (ints) from least to most influential: ShortGPT's block influence
    ``1 - cos(h_in, h_out)`` of the residual stream around each, averaged over the tokens of ``batches``."""
    if granularity not in ("branch", "layer"):
        raise ValueError(f"granularity must be 'branch' or 'layer', got {granularity!r}")
    arch = layout.architecture(model)
    layers = layout.decoder_layers(model)
    sums: dict[str, float] = {}
    count = 0
    current: dict[str, torch.Tensor] = {}
    handles = []

    def layer_in(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            current[f"{i}.in"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    def attn_out(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            y = output[0] if isinstance(output, tuple) else output
            residual = layout.given_residual(module, args, kwargs)  # Bloom's attention returns it plus its own
            current[f"{i}.attn"] = y if residual is None else y - residual

        return hook

    def layer_out(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            current[f"{i}.out"] = output[0] if isinstance(output, tuple) else output

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(layer_in(i), with_kwargs=True))
        added = layout.submodule(layer, arch.attention_norm or arch.attention)  # what the residual receives
        handles.append(added.register_forward_hook(attn_out(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(layer_out(i), with_kwargs=True))

    def influence(a: torch.Tensor, b: torch.Tensor) -> float:
        return (1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)).sum().item()

    try:
        for batch in batches:
            current.clear()
            model(**batch) if isinstance(batch, dict) else model(batch)
            for i in range(len(layers)):
                h_in, h_out = current[f"{i}.in"], current[f"{i}.out"]
                h_mid = h_in + current[f"{i}.attn"]
                if granularity == "layer":
                    sums[str(i)] = sums.get(str(i), 0.0) + influence(h_in, h_out)
                else:
                    sums[f"{i}.attn"] = sums.get(f"{i}.attn", 0.0) + influence(h_in, h_mid)
                    h_before_mlp = h_in if arch.parallel else h_mid  # parallel residual: both read the layer input
                    h_after_mlp = h_out - current[f"{i}.attn"] if arch.parallel else h_out
                    sums[f"{i}.mlp"] = sums.get(f"{i}.mlp", 0.0) + influence(h_before_mlp, h_after_mlp)
            count += h_in.shape[0] * h_in.shape[1]
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ValueError("batches is empty; expected at least one calibration batch to measure block influence")
    order = sorted(sums, key=lambda n: sums[n] / max(count, 1))
    return [int(n) for n in order] if granularity == "layer" else order


def uls_layers(n_layers: int, speedup: float) -> list[int]:
    """Unified Layer Skipping (Liu et al. 2024): skip evenly spaced intermediate layers for a target speed-up.

    Keeps ``round(n_layers / speedup)`` layers, always the first and the last; returns the skipped indices.
    """
    valid_layers = isinstance(n_layers, int) and not isinstance(n_layers, bool) and n_layers >= 1
    if not (valid_layers and math.isfinite(speedup) and speedup >= 1.0):
        raise ValueError(f"expected n_layers >= 1 and speedup >= 1, got n_layers={n_layers}, speedup={speedup}")
    n_skip = min(n_layers - round(n_layers / speedup), max(n_layers - 2, 0))
    if n_skip <= 0:
        return []
    middle = list(range(1, n_layers - 1))
    positions = torch.linspace(0, len(middle) - 1, n_skip + 2)[1:-1] if n_skip < len(middle) else None
    if positions is None:
        return middle
    chosen = sorted({middle[int(round(p.item()))] for p in positions})
    for candidate in middle:  # rounding collisions: fill with the nearest unused middle layers
        if len(chosen) >= n_skip:
            break
        if candidate not in chosen:
            chosen = sorted([*chosen, candidate])
    return chosen
