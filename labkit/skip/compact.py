"""Compact ("physical") execution of a skipped branch: gather the kept tokens, run the branch on them, scatter back.

GateSkip's default path computes every branch densely and zeroes skipped tokens (masked). Here the MLP runs on
the kept tokens only, and attention computes K/V for every token (later tokens may attend to them) but queries,
scores, values-mixing and the output projection for the kept tokens only. Output equals the masked path's up to
floating-point rounding (tested). Small per-family adapters for the projections: separate q/k/v/o (Llama, Mistral,
Qwen2/3, Gemma2/3, OLMo2, StableLM, Phi, GPT-J and the MoE families Mixtral, Qwen2-MoE, OLMoE; q/k norms per head or
over the width, before rotary or after it as HunYuan's), fused ``qkv_proj`` (Phi3), per-head fused
``query_key_value`` (GPT-NeoX) and Conv1D ``c_attn`` (GPT-2); rotary through the family's own function, partial
rotary included; sliding windows, Gemma2's logit softcap and attention sinks in the mask and scores; an output gate
before the output projection (AFMoE, Laguna, Beam). An MoE feed-forward is position-wise, so it runs on the kept
tokens like any MLP. Llama4's complex rotary embedding and the inputs in :data:`UNSUPPORTED_INPUTS` have no adapter
(a clear error; masked execution works).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from labkit.skip.kv_cache import find_cache, layer_kv, self_attention_cache

# Inputs some attention modules take that the adapters below do not apply (the 3-token probe may not expose them)
UNSUPPORTED_INPUTS = {
    "attention_scaling": "a position-dependent query scale (Beam's full-attention layers)",
    "cycle_offset": "the layers run once per recurrent cycle, each with its own cache slot (HRM)",
}


def _kept_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the positions of kept tokens left-aligned and padded: index (B, K) and validity (B, K)."""
    counts = keep.sum(1)
    width = int(counts.max().item()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return order, valid


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _scatter_rows(values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    B, T, d = shape
    flat = (torch.arange(B, device=index.device)[:, None] * T + index)[valid]
    out = values.new_zeros(B * T, d)
    return out.index_put((flat,), values[valid]).view(B, T, d)


def compact_mlp(branch: nn.Module, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A position-wise branch applied to the kept tokens only; zeros at skipped tokens."""
    B, T, d = hidden.shape
    flat_keep = keep.reshape(-1)
    out = hidden.new_zeros(B * T, d)
    if bool(flat_keep.any()):
        positions = flat_keep.nonzero().squeeze(1)
        y = branch(hidden.reshape(B * T, d)[positions].unsqueeze(0))
        y = y[0] if isinstance(y, tuple) else y  # an MoE block's router logits are not kept (Llama4)
        out = out.index_put((positions,), y.reshape(-1, d))
    return out.view(B, T, d)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of tokens ``x`` (N, heads, head_dim) with their cos/sin (N, width): the family's own
    ``apply_rotary_pos_emb`` where its modeling module has one, else rotate-half. Partial rotary (GPT-NeoX, Phi,
    Phi3, StableLM, GPT-J) rotates the first ``rot`` dimensions and passes the rest through; GPT-J's function takes
    ``(tensor, sin, cos)`` of half width and rotates interleaved pairs."""
    apply = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if apply is not None and _gptj_style(apply):
        rot = 2 * cos.shape[-1]
        done = apply(x[..., :rot].unsqueeze(1), sin.unsqueeze(1), cos.unsqueeze(1)).squeeze(1)
        return torch.cat([done.to(x.dtype), x[..., rot:]], dim=-1)
    rot = cos.shape[-1]
    if apply is not None and 2 * rot == _rotary_dims(attn, x.shape[-1]):  # half-width cos / sin (GPT-OSS)
        rot *= 2
    x4, c, s = x[..., :rot].unsqueeze(2), cos.unsqueeze(1), sin.unsqueeze(1)  # (N, H, 1, rot) and (N, 1, width)
    if apply is not None:  # it rotates a (q, k) pair: x as q, one head of x as a k that is discarded
        done = apply(x4, x4[:, :1], c, s)[0].squeeze(2).to(x.dtype)
    else:
        done = (x4 * c.unsqueeze(1) + _rotate_half(x4) * s.unsqueeze(1)).squeeze(2)
    return done if rot == x.shape[-1] else torch.cat([done, x[..., rot:]], dim=-1)


def _rotary_dims(attn: nn.Module, head_dim: int) -> int:
    """How many dimensions of a head the family rotates, by its config (partial rotary: a fraction of them)."""
    config = getattr(attn, "config", None)
    rope = getattr(config, "rope_parameters", None)
    fraction = (rope.get("partial_rotary_factor") if isinstance(rope, dict) else None) or \
        getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None) or 1.0
    return int(head_dim * fraction)


@functools.cache
def _gptj_style(apply: Any) -> bool:
    """Whether a family's ``apply_rotary_pos_emb`` is GPT-J's ``(tensor, sin, cos)``, not ``(q, k, cos, sin, ...)``."""
    return list(inspect.signature(apply).parameters)[:3] == ["tensor", "sin", "cos"]


def _norm_heads(norm: nn.Module | None, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(N, width) -> (N, heads, head_dim), with the family's q/k norm over the whole width (OLMo2) or per head
    (Qwen3, Gemma3), chosen by the norm's weight size."""
    if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() == x.shape[-1]:
        return norm(x).view(x.shape[0], -1, head_dim)
    x = x.view(x.shape[0], -1, head_dim)
    return norm(x) if norm is not None else x


def _after_rotary(attn: nn.Module, which: str, x: torch.Tensor) -> torch.Tensor:
    """Queries or keys (N, heads, head_dim) through the per-head norm a family applies after rotary
    (``query_layernorm`` / ``key_layernorm``: HunYuan), else unchanged."""
    norm = getattr(attn, f"{which}_layernorm", None)
    return norm(x) if norm is not None else x


def _rows(linear: nn.Module, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = linear.bias[rows] if linear.bias is not None else None
    return linear.weight[rows], bias


def _head_dim(attn: nn.Module) -> int:
    return int(getattr(attn, "head_dim", None) or attn.head_size)


def _project_q(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Queries (N, heads, head_dim) of tokens x (N, d), before rotary."""
    hd = _head_dim(attn)
    if hasattr(attn, "q_proj"):  # Llama, Mistral, Qwen2/3, Gemma2/3, OLMo2
        return _norm_heads(getattr(attn, "q_norm", None), attn.q_proj(x), hd)
    if hasattr(attn, "qkv_proj"):  # Phi3: [q | k | v] rows
        width = attn.config.num_attention_heads * hd
        return F.linear(x, *_rows(attn.qkv_proj, slice(0, width))).view(x.shape[0], -1, hd)
    if hasattr(attn, "query_key_value"):  # GPT-NeoX: per head [q | k | v]
        return F.linear(x, *_rows(attn.query_key_value, _neox_rows(attn, 0))).view(x.shape[0], -1, hd)
    if isinstance(getattr(attn, "c_attn", None), nn.Linear):  # GPTBigCode
        return F.linear(x, *_rows(attn.c_attn, _bigcode_rows(attn, 0))).view(x.shape[0], -1, hd)
    if hasattr(attn, "c_attn"):  # GPT-2 (Conv1D: y = x W + b, W of shape (d, 3d))
        width = attn.split_size
        return (x @ attn.c_attn.weight[:, :width] + attn.c_attn.bias[:width]).view(x.shape[0], -1, hd)
    raise _no_adapter(attn)


def _project_kv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (N, kv heads, head_dim) of tokens x (N, d), before rotary."""
    hd, n = _head_dim(attn), x.shape[0]
    if hasattr(attn, "k_proj"):
        return _norm_heads(getattr(attn, "k_norm", None), attn.k_proj(x), hd), attn.v_proj(x).view(n, -1, hd)
    if hasattr(attn, "qkv_proj"):
        width = attn.config.num_attention_heads * hd
        k, v = F.linear(x, *_rows(attn.qkv_proj, slice(width, None))).chunk(2, dim=-1)
        return k.reshape(n, -1, hd), v.reshape(n, -1, hd)
    if hasattr(attn, "query_key_value"):
        k = F.linear(x, *_rows(attn.query_key_value, _neox_rows(attn, 1)))
        v = F.linear(x, *_rows(attn.query_key_value, _neox_rows(attn, 2)))
        return k.view(n, -1, hd), v.view(n, -1, hd)
    if isinstance(getattr(attn, "c_attn", None), nn.Linear):
        k, v = (F.linear(x, *_rows(attn.c_attn, _bigcode_rows(attn, part))) for part in (1, 2))
        return k.view(n, -1, hd), v.view(n, -1, hd)
    if hasattr(attn, "c_attn"):
        width = attn.split_size
        k, v = (x @ attn.c_attn.weight[:, width:] + attn.c_attn.bias[width:]).split(width, dim=-1)
        return k.reshape(n, -1, hd), v.reshape(n, -1, hd)
    raise _no_adapter(attn)


def _neox_rows(attn: nn.Module, part: int, fused: nn.Linear | None = None) -> torch.Tensor:
    """Rows of a per-head fused projection (GPT-NeoX's ``query_key_value``, or ``fused``) holding part 0 (q), 1 (k)
    or 2 (v) of every head."""
    fused = attn.query_key_value if fused is None else fused
    hd = _head_dim(attn)
    heads = fused.out_features // (3 * hd)
    device = fused.weight.device
    rows = torch.arange(heads, device=device)[:, None] * 3 * hd + part * hd + torch.arange(hd, device=device)
    return rows.reshape(-1)


def _bigcode_rows(attn: nn.Module, part: int) -> torch.Tensor | slice:
    """Rows of GPTBigCode's fused ``c_attn`` holding part 0 (q), 1 (k) or 2 (v): [q | k | v] with one K/V head under
    multi-query attention, else per head like GPT-NeoX."""
    if not attn.multi_query:
        return _neox_rows(attn, part, attn.c_attn)
    start = (0, attn.embed_dim, attn.embed_dim + attn.kv_dim)[part]
    return slice(start, start + (attn.embed_dim if part == 0 else attn.kv_dim))


def _no_adapter(attn: nn.Module) -> ValueError:
    return ValueError(
        f"compact execution has no adapter for attention module {type(attn).__name__}; looked for q_proj/k_proj/"
        "v_proj/o_proj (Llama family), qkv_proj (Phi3), query_key_value/dense (GPT-NeoX) or c_attn/c_proj (GPT-2); "
        "use execution='masked'"
    )


def _output_gate(attn: nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Gated attention: the mixed values ``o`` times a gate of each token's input ``x`` before the output projection,
    sigmoid of ``gate_proj`` (AFMoE, HRM; plus a bias per head, Beam) or softplus of ``g_proj`` (Laguna), per channel
    or one per head; ``o`` unchanged for an attention without one."""
    if hasattr(attn, "g_proj"):
        gate = F.softplus(attn.g_proj(x).float()).to(o.dtype)
    elif hasattr(attn, "gate_proj"):
        logits = attn.gate_proj(x)
        bias = getattr(attn, "gate_bias", None)  # one per head (Beam)
        if bias is not None:
            logits = (logits.view(*logits.shape[:-1], bias.numel(), -1) + bias[:, None]).view(logits.shape)
        gate = torch.sigmoid(logits)
    else:
        return o
    if gate.shape[-1] != o.shape[-1]:  # one gate per head
        return (o.view(*o.shape[:-1], gate.shape[-1], -1) * gate.unsqueeze(-1)).view(o.shape)
    return o * gate


def _out_proj(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    if hasattr(attn, "o_proj"):
        return attn.o_proj(o)
    if hasattr(attn, "out_proj"):  # GPT-J
        return attn.out_proj(o)
    if hasattr(attn, "dense"):
        return attn.dense(o)
    return attn.resid_dropout(attn.c_proj(o))


class Settings(NamedTuple):
    """How an attention module's own forward scores its keys."""

    scale: float
    dropout: float
    window: int | None  # sliding window, or None for full attention
    softcap: float | None  # Gemma2's logit softcap
    sinks: torch.Tensor | None  # a learned sink logit per head (GPT-OSS, Granite-SWA): an extra softmax column


def _attention_settings(attn: nn.Module) -> Settings:
    """The :class:`Settings` of an attention module, as its own forward uses them."""
    dropout = 0.0
    if attn.training:
        rate = getattr(attn, "attention_dropout", None)
        rate = getattr(attn, "attn_dropout", 0.0) if rate is None else rate  # GPT-2's is a module
        dropout = float(rate.p if isinstance(rate, nn.Dropout) else rate or 0.0)
    sinks = getattr(attn, "sinks", None)
    return Settings(attn.scaling, dropout, _sliding_window(attn), getattr(attn, "attn_logit_softcapping", None),
                    sinks if isinstance(sinks, torch.Tensor) else None)


def _sliding_window(attn: nn.Module) -> int | None:
    """The attention's sliding window, or None for full attention: set on the module for sliding layers only (Qwen2/3,
    Gemma2/3); else the config's, unless the config switches it off (``use_sliding_window=False``, Qwen2-MoE) or
    types this layer as full attention. A window of 0 or None means none (Qwen2-MoE's config says 0)."""
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window or None
    config = getattr(attn, "config", None)
    types = getattr(config, "layer_types", None)
    if getattr(config, "use_sliding_window", True) is False or (types and types[attn.layer_idx] != "sliding_attention"):
        return None
    return getattr(config, "sliding_window", None) or None


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    key_valid: torch.Tensor | None,
    settings: Settings,
) -> torch.Tensor:
    """Attention of queries at positions ``qpos`` (B, W) over all S keys: causal, sliding window, key padding;
    Gemma2's logit softcap ``tanh(s / c) c`` and attention sinks (a per-head logit in the softmax's denominator
    only) computed explicitly (SDPA has neither)."""
    scale, dropout, window, softcap, sinks = settings
    S = k.shape[2]
    kpos = torch.arange(S, device=q.device)[None, None, :]
    allowed = kpos <= qpos[:, :, None]
    if window is not None:
        allowed = allowed & (kpos > qpos[:, :, None] - window)
    if key_valid is not None and key_valid.shape[-1] >= S:
        allowed = allowed & key_valid[:, None, -S:].to(torch.bool)
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padded query rows: any finite output, discarded
    grouped = k.shape[1] != q.shape[1]
    if softcap is None and sinks is None:  # grouped-query heads read their K/V head without a copy per query head
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=dropout, scale=scale,
                                              enable_gqa=grouped)
    if grouped:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None], -math.inf)
    if sinks is not None:
        sink = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if sinks is not None:
        weights = weights[..., :-1]
    return F.dropout(weights, p=dropout, training=dropout > 0) @ v


def _cos_sin(attn: nn.Module, rope: Any, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The ``position_embeddings`` a decoder layer hands its attention as (cos, sin), each (B, T, width); GPT-J
    hands (sin, cos)."""
    if rope is None:
        return None, None
    if not (isinstance(rope, tuple | list) and len(rope) == 2):  # Llama4: one complex freqs_cis tensor
        raise ValueError(
            f"compact execution has no adapter for {type(attn).__name__}'s rotary embedding (position_embeddings "
            f"{type(rope).__name__}, expected a (cos, sin) pair); use execution='masked'"
        )
    first, second = (c.expand(batch, -1, -1) for c in rope)
    apply = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    return (second, first) if apply is not None and _gptj_style(apply) else (first, second)


def _needed(keep: torch.Tensor) -> torch.Tensor:
    """Tokens whose K/V this forward needs: kept ones and skipped ones a later kept token of the row attends to."""
    return keep.flip(1).to(torch.int8).cummax(1).values.flip(1).bool()


def copy_forward_step(attn: nn.Module, cache: Any, model: Any = "model") -> None:
    """A one-token decoding step that skips attention at layer l for every row: the layer's new K/V are layer
    l-1's newest position (GateSkip's copy-forward), appended to the cache; no projection runs, one position moves."""
    keys, values = layer_kv(cache, attn.layer_idx - 1, model)
    self_attention_cache(cache).update(keys[:, :, -1:], values[:, :, -1:], attn.layer_idx)


def compact_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    keep: torch.Tensor,
    kwargs: dict,
    key_valid: torch.Tensor | None = None,
    copy_forward: bool = False,
    model: Any = "model",
) -> torch.Tensor:
    """Self-attention output for the kept queries only (zeros elsewhere); K/V of every token go to the cache.

    With ``copy_forward`` and a cache (decoding), a skipped token that no later kept token of its row attends to
    (every skipped token of a one-token step) is not computed at all: its K/V at this layer are layer l-1's, as
    GateSkip's copy-forward would leave them. The official code raises NotImplementedError for this case.
    """
    B, T, d = hidden.shape
    for name, what in UNSUPPORTED_INPUTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"compact execution cannot run {type(attn).__name__}: it takes {name!r} ({what}), which "
                             "labkit's adapter does not apply; use execution='masked'")
    _, cache = find_cache(kwargs)
    if copy_forward and cache is not None and T == 1 and attn.layer_idx > 0 and not bool(keep.any()):
        copy_forward_step(attn, cache, model)
        return hidden.new_zeros(B, T, d)
    settings = _attention_settings(attn)
    cos, sin = _cos_sin(attn, kwargs.get("position_embeddings"), B)
    needed = torch.ones_like(keep)
    prev = None
    if copy_forward and cache is not None and attn.layer_idx > 0:
        needed = _needed(keep)
        if not bool(needed.all()):
            keys, values = layer_kv(cache, attn.layer_idx - 1, model)
            if keys.shape[2] >= T:  # layer l-1 holds this step's tokens (a short sliding window may not)
                prev = keys[:, :, -T:].transpose(1, 2), values[:, :, -T:].transpose(1, 2)
            else:
                needed = torch.ones_like(keep)
    if prev is None:  # every token's K/V: project the whole step, no gather
        k_new, v_new = _project_kv(attn, hidden.reshape(B * T, d))
        if cos is not None:
            k_new = _rotary(attn, k_new, cos.reshape(B * T, -1), sin.reshape(B * T, -1))
        k_new = _after_rotary(attn, "key", k_new)
        k, v = k_new.view(B, T, *k_new.shape[1:]), v_new.view(B, T, *v_new.shape[1:])
    else:
        flat = needed.reshape(-1).nonzero().squeeze(1)
        k, v = prev
        if flat.numel():  # else every token is copied forward (a skipped one-token step)
            k_new, v_new = _project_kv(attn, hidden.reshape(B * T, d)[flat])
            if cos is not None:
                k_new = _rotary(attn, k_new, cos.reshape(B * T, -1)[flat], sin.reshape(B * T, -1)[flat])
            k_new = _after_rotary(attn, "key", k_new)
            k, v = (old.reshape(B * T, *new.shape[1:]).index_put((flat,), new.to(old.dtype)).view(B, T, *new.shape[1:])
                    for old, new in ((k, k_new), (v, v_new)))
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if cache is not None:
        k, v = self_attention_cache(cache).update(k, v, attn.layer_idx)
    has_kept = keep.any(1)
    every_row = bool(has_kept.all())
    if not every_row and not bool(has_kept.any()):
        return hidden.new_zeros(B, T, d)
    rows = slice(None) if every_row else has_kept.nonzero().squeeze(1)  # a slice: no copy of the step's tensors
    index, valid = _kept_index(keep[rows])
    n_rows, width = index.shape
    x = _gather_rows(hidden[rows], index)  # the kept tokens' inputs (n_rows, width, d)
    q = _project_q(attn, x.reshape(n_rows * width, d))
    if cos is not None:
        q = _rotary(
            attn,
            q,
            _gather_rows(cos[rows], index).reshape(n_rows * width, -1),
            _gather_rows(sin[rows], index).reshape(n_rows * width, -1),
        )
    q = _after_rotary(attn, "query", q).view(n_rows, width, *q.shape[1:]).transpose(1, 2)
    past = k.shape[2] - T
    kv_rows = key_valid[rows] if key_valid is not None else None
    o = _attend(q, k[rows], v[rows], past + index, kv_rows, settings)
    o = _out_proj(attn, _output_gate(attn, x, o.transpose(1, 2).reshape(n_rows, width, -1)))
    scattered = _scatter_rows(o.to(hidden.dtype), index, valid, torch.Size((n_rows, T, d)))
    if every_row:
        return scattered
    out = hidden.new_zeros(B, T, d)
    out[rows] = scattered
    return out
