"""The KV cache of a Hugging Face decoder, found the same way on every supported transformers release.

transformers 5.17 hands the cache to decoder layers and attention modules as ``past_key_values=``; 5.24 renamed it
``cache=`` (the old name is deprecated until 5.40). labkit's skipping reads and rewrites the cache (KV copy-forward,
GateSkip §3.3), so it looks under both names, and raises instead of returning silently when a cache it needs is not
where it expects it: a silent miss once made copy-forward a no-op without failing anything.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers

CACHE_KWARGS = ("cache", "past_key_values")  # newest first: 5.24+ passes `cache=`, 5.17 `past_key_values=`
BRANCH_CACHE_KWARGS = (*CACHE_KWARGS, "layer_past")  # GPT-NeoX hands its attention the cache as `layer_past=`


class CacheLayoutError(RuntimeError):
    """The model did not hand labkit a KV cache, or its cache lacks the structure labkit reads."""


def where(model: Any) -> str:
    """``LlamaForCausalLM (transformers 5.24.0)``: what every cache error names."""
    name = model if isinstance(model, str) else type(model).__name__
    return f"{name} (transformers {transformers.__version__})"


def find_cache(kwargs: Mapping[str, Any]) -> tuple[str | None, Any]:
    """``(kwarg name, cache)`` of the first non-None entry of ``BRANCH_CACHE_KWARGS`` in kwargs, else (None, None)."""
    for name in BRANCH_CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return name, kwargs[name]
    return None, None


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its KV cache under (``cache`` on 5.24+, ``past_key_values`` before)."""
    names = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_KWARGS if name in names), CACHE_KWARGS[-1])


def output_cache(outputs: Any) -> Any:
    """The cache a forward returned (``outputs.cache`` on 5.24+, ``outputs.past_key_values`` before)."""
    for name in CACHE_KWARGS:
        cache = getattr(outputs, name, None)
        if cache is not None:
            return cache
    raise CacheLayoutError(f"the model output {type(outputs).__name__} carries no KV cache under {CACHE_KWARGS}; "
                           "was the forward called with use_cache=True?")


def self_attention_cache(cache: Any) -> Any:
    """The self-attention part of an encoder-decoder cache (GPT-2 may wrap its cache so); the cache otherwise."""
    return getattr(cache, "self_attention_cache", cache)


def _layers(cache: Any, layer: int, model: Any) -> list:
    """The cache's per-layer entries, which reach layer ``layer``; CacheLayoutError naming what it holds otherwise."""
    layers = getattr(self_attention_cache(cache), "layers", None)
    if layers is None or layer >= len(layers):
        held = f"{len(layers)} layers" if layers is not None else f"a {type(cache).__name__} without `.layers`"
        raise CacheLayoutError(f"{where(model)}: expected a KV cache with a layer {layer}, found {held}")
    return layers


def _kv(entry: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A cache layer's ``(keys, values)`` when it holds 4-D tensors, else None."""
    keys, values = getattr(entry, "keys", None), getattr(entry, "values", None)
    ok = torch.is_tensor(keys) and torch.is_tensor(values) and keys.dim() == 4 and values.dim() == 4
    return (keys, values) if ok else None


def layer_kv(cache: Any, layer: int, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s cached ``(keys, values)``, each (B, heads, S, head_dim); CacheLayoutError if there are none."""
    entry = _layers(cache, layer, model)[layer]
    found = _kv(entry)
    if found is None:
        keys = getattr(entry, "keys", None)
        shape = tuple(keys.shape) if torch.is_tensor(keys) else keys
        raise CacheLayoutError(f"{where(model)}: cache layer {layer} ({type(entry).__name__}) has no "
                               f"(batch, heads, tokens, head_dim) keys/values; found keys {shape}")
    return found


def _held(entry: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A cache layer's (keys, values) when it holds some, else None (empty, or a placeholder layer such as Gemma 4's
    KV-shared ones)."""
    found = _kv(entry)
    return found if found is not None and found[0].shape[-2] > 0 else None


_SOURCES: weakref.WeakKeyDictionary[Any, dict[int, int | None]] = weakref.WeakKeyDictionary()


def copy_source(
    cache: Any, layer: int, model: Any, entries: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
) -> int | None:
    """The layer whose K/V a skipped token's copy-forward to ``layer`` takes: the nearest earlier layer whose cached
    keys and values have ``layer``'s (heads, head_dim), usually layer - 1. Families that mix layer shapes
    (Gemma 4's wider full-attention heads, MiMo-V2-Flash's sliding layers with more heads) copy between layers of
    one kind; None where no earlier layer has the shape (the token's own K/V are computed there). ``entries`` gives
    the (keys, values) layer ``layer`` is about to cache, for a layer whose cache holds nothing yet. Head shapes are
    fixed per model, so the answer is found once per cache and layer (a decoding step asks it at every branch)."""
    known = _SOURCES.setdefault(cache, {})
    if layer not in known:
        layers = _layers(cache, layer, model)
        own = _held(layers[layer])
        if own is None and entries is None:
            own = layer_kv(cache, layer, model)  # raises, naming what the layer holds
        keys, values = own if own is not None else entries()
        earlier = ((s, _held(layers[s])) for s in range(layer - 1, -1, -1))
        known[layer] = next((s for s, held in earlier if held is not None and all(
            a.shape[1] == b.shape[1] and a.shape[-1] == b.shape[-1]
            for a, b in zip((keys, values), held, strict=True))), None)
    return known[layer]
