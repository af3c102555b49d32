"""Compact ("physical") execution of a skipped branch: gather the kept tokens, run the branch on them, scatter back.

GateSkip's default path computes every branch densely and zeroes skipped tokens (masked). Here the MLP runs on the kept
tokens only, and attention computes K/V for every token (later tokens may attend to them) but queries, scores,
values-mixing and the output projection for the kept tokens only. Output equals the masked path's up to floating-point
rounding (tested). How each family's attention computes (projections, rotary, norms, score scale and masks, output
gate) is in :mod:`labkit.skip.adapters`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.skip.adapters import (
    Settings,
    alibi_bias,
    attended_values,
    attention_settings,
    cache_entries,
    is_latent,
    is_mixture_of_attention,
    layer_index,
    mixed_heads,
    position_embeddings,
    project_out,
    project_q,
    query_key_chunks,
    query_scale,
    refuse_unsupported,
    rope_rows,
    rotated_queries,
    self_attention,
    share_kv,
)
from labkit.skip.handed_scores import handed_scores, kept_queries, needed_keys
from labkit.skip.kv_cache import copy_source, find_cache, layer_kv, self_attention_cache
from labkit.skip.sparse_attention import allowed_keys, hands_on_topk, picked_keys


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


def compact_mlp(
    branch: nn.Module, hidden: torch.Tensor, keep: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """A position-wise branch applied to the kept tokens only; zeros at skipped tokens. ``residual``: the zero a branch
    that adds its own residual (Bloom, MPT) is given in its place."""
    B, T, d = hidden.shape
    flat_keep = keep.reshape(-1)
    width = out_features(branch, d)
    out = hidden.new_zeros(B * T, width)
    if bool(flat_keep.any()):
        positions = flat_keep.nonzero().squeeze(1)
        x = hidden.reshape(B * T, d)[positions].unsqueeze(0)
        y = branch(x) if residual is None else branch(x, residual=residual)
        y = y[0] if isinstance(y, tuple) else y  # an MoE block's router logits are not kept (Llama4)
        out = out.index_put((positions,), y.reshape(-1, width))
    return out.view(B, T, width)


def out_features(branch: nn.Module, width: int) -> int:
    """The width a position-wise branch returns: its input's, but an inline feed-forward's entry linear (OPT, XGLM,
    BioGPT) returns the hidden width of the feed-forward, on which the layer's activation and exit linear then run
    for every token (zero at skipped ones)."""
    return branch.out_features if isinstance(branch, nn.Linear) else width


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    key_valid: torch.Tensor | None,
    settings: Settings,
    bias: torch.Tensor | None = None,
    chunks: tuple[torch.Tensor, torch.Tensor] | None = None,
    picked: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of queries at positions ``qpos`` (B, W) over all S keys: causal, sliding window, key padding, the
    ``chunks`` of queries and keys (:func:`~labkit.skip.adapters.query_key_chunks`), the keys a sparse attention's
    indexer ``picked`` (B, W, S), or instead of all these the mask the module was ``given`` (B, W, S) (CPM-Ant,
    :mod:`~labkit.skip.handed_scores`: a query reading no key outputs zeros); Gemma2's logit softcap
    ``tanh(s / c) c``, attention sinks (a per-head logit in the softmax's denominator only) and ALiBi ``bias``
    (B, heads, 1, S), or a bias per query (B, heads, W, S), added to the scaled scores computed explicitly."""
    scale, dropout, window, softcap, sinks = settings
    S = k.shape[2]
    allowed = given if given is not None else _allowed(qpos, S, key_valid, window, chunks, picked)
    empty = ~allowed.any(-1, keepdim=True)
    allowed = allowed | empty  # padded query rows: any finite output, discarded (zeroed below where given a mask)
    grouped = k.shape[1] != q.shape[1]
    if softcap is None and sinks is None and bias is None:  # grouped-query heads read their K/V head without a copy
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=dropout, scale=scale,
                                             enable_gqa=grouped)
        return out if given is None else out.masked_fill(empty[:, None], 0.0)
    if grouped:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None], -math.inf)
    if sinks is not None:
        sink = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if sinks is not None:
        weights = weights[..., :-1]
    out = F.dropout(weights, p=dropout, training=dropout > 0) @ v
    return out if given is None else out.masked_fill(empty[:, None], 0.0)


def _allowed(
    qpos: torch.Tensor,
    S: int,
    key_valid: torch.Tensor | None,
    window: int | None,
    chunks: tuple[torch.Tensor, torch.Tensor] | None,
    picked: torch.Tensor | None,
) -> torch.Tensor:
    """(B, W, S) keys each query at ``qpos`` reads: causal, within the window, not padding, of its chunk, picked."""
    kpos = torch.arange(S, device=qpos.device)[None, None, :]
    allowed = kpos <= qpos[:, :, None]
    if window is not None:
        allowed = allowed & (kpos > qpos[:, :, None] - window)
    if key_valid is not None and key_valid.shape[-1] >= S:
        allowed = allowed & key_valid[:, None, -S:].to(torch.bool)
    if chunks is not None:  # Llama 4's chunked attention: keys of the query's own chunk only
        allowed = allowed & (chunks[0][:, :, None] == chunks[1][:, None, :])
    if picked is not None:
        allowed = allowed & picked
    return allowed


def _handed_on(attn: nn.Module, topk: torch.Tensor | None) -> tuple:
    """What compact attention returns after the output and attention weights: the top-k, where ``attn`` hands it on."""
    return (topk,) if hands_on_topk(type(attn)) else ()


def _needed(keep: torch.Tensor) -> torch.Tensor:
    """Tokens whose K/V this forward needs: kept ones and skipped ones a later kept token of the row attends to."""
    return keep.flip(1).to(torch.int8).cummax(1).values.flip(1).bool()


def _source(attn: nn.Module, cache: Any, model: Any, hidden: torch.Tensor, kwargs: dict) -> int | None:
    """Layer l's copy source (:func:`~labkit.skip.kv_cache.copy_source`); before l's cache holds anything (a prompt's
    forward) the shapes of its entries come from projecting one token."""

    def one_token() -> tuple[torch.Tensor, torch.Tensor]:
        rope = rope_rows(attn, position_embeddings(attn, hidden, kwargs), hidden.shape[0])
        k, v = cache_entries(attn, hidden[:1, 0], tuple(r[:1, 0] for r in rope))
        return k.transpose(0, 1)[None], v.transpose(0, 1)[None]

    return copy_source(cache, layer_index(attn), model, one_token)


def copy_forward_step(attn: nn.Module, cache: Any, hidden: torch.Tensor, kwargs: dict, model: Any = "model") -> bool:
    """A one-token decoding step that skips attention at layer l for every row: the layer's new K/V are its copy
    source's newest position (GateSkip's copy-forward from layer l-1, or the nearest earlier layer of l's head shape),
    appended to the cache; no projection runs, one position moves. Under latent attention the cache holds the latent
    and the rotated shared key, so those are what is copied. False, copying nothing, where l has no copy source."""
    attn = self_attention(attn)
    source = _source(attn, cache, model, hidden, kwargs)
    if source is None:
        return False
    keys, values = layer_kv(cache, source, model)
    share_kv(attn, kwargs, *self_attention_cache(cache).update(keys[:, :, -1:], values[:, :, -1:], layer_index(attn)))
    return True


def compact_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    keep: torch.Tensor,
    kwargs: dict,
    key_valid: torch.Tensor | None = None,
    copy_forward: bool = False,
    model: Any = "model",
) -> tuple[torch.Tensor, tuple]:
    """Self-attention output for the kept queries only (zeros elsewhere); K/V of every token go to the cache. With it,
    what the module returns after its attention weights that compact execution computes too: a sparse attention's
    top-k of every token where the module hands it on to the next layer (GLM-MoE-DSA), else nothing.

    With ``copy_forward`` and a cache (decoding), a skipped token that no later kept token of its row attends to
    (every skipped token of a one-token step) is not computed at all: its K/V at this layer are layer l-1's (or
    those of the nearest earlier layer of this one's head shape, :func:`copy_forward_step`), as GateSkip's
    copy-forward would leave them; a layer without such a source computes them. The official code raises
    NotImplementedError for this case.
    """
    B, T, d = hidden.shape
    attn = self_attention(attn)
    refuse_unsupported(attn, kwargs)
    layer = layer_index(attn)
    _, cache = find_cache(kwargs)
    copying = copy_forward and cache is not None and layer > 0
    if copying and T == 1 and not bool(keep.any()) and copy_forward_step(attn, cache, hidden, kwargs, model):
        return hidden.new_zeros(B, T, d), _handed_on(attn, picked_keys(attn, hidden, kwargs, cache))
    settings = attention_settings(attn)
    alibi = kwargs.get("alibi") is not None  # Falcon-RW is handed rotary embeddings too, and applies ALiBi instead
    rope = rope_rows(attn, None if alibi else position_embeddings(attn, hidden, kwargs), B)
    needed = torch.ones_like(keep)
    prev = None
    handed = handed_scores(kwargs)  # CPM-Ant's mask and position bias for every (query, key) pair
    if copying:
        needed = _needed(keep) if handed is None else needed_keys(keep, handed[0])
        source = None if bool(needed.all()) else _source(attn, cache, model, hidden, kwargs)
        if source is not None:
            keys, values = layer_kv(cache, source, model)
            if keys.shape[2] >= T:  # the source holds this step's tokens (a short sliding window may not)
                prev = keys[:, :, -T:].transpose(1, 2), values[:, :, -T:].transpose(1, 2)
            else:
                needed = torch.ones_like(keep)
    token_rope = tuple(r.reshape(B * T, -1) for r in rope)
    if prev is None:  # every token's K/V: project the whole step, no gather
        k_new, v_new = cache_entries(attn, hidden.reshape(B * T, d), token_rope)
        k, v = k_new.view(B, T, *k_new.shape[1:]), v_new.view(B, T, *v_new.shape[1:])
    else:
        flat = needed.reshape(-1).nonzero().squeeze(1)
        k, v = prev
        if flat.numel():  # else every token is copied forward (a skipped one-token step)
            k_new, v_new = cache_entries(attn, hidden.reshape(B * T, d)[flat], tuple(r[flat] for r in token_rope))
            k, v = (old.reshape(B * T, *new.shape[1:]).index_put((flat,), new.to(old.dtype)).view(B, T, *new.shape[1:])
                    for old, new in ((k, k_new), (v, v_new)))
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if cache is not None:
        k, v = self_attention_cache(cache).update(k, v, layer)
    share_kv(attn, kwargs, k, v)
    topk = picked_keys(attn, hidden, kwargs, cache)  # after the main cache's update, as the module's own forward
    if is_latent(attn):  # per-head keys and values of every cached token, as the module's own forward expands them
        k, v = attn.expand_kv(k, v)
    if is_mixture_of_attention(attn):  # query head h of JetMoE reads K/V head h mod kv heads (tiled, not grouped)
        k, v = k.repeat(1, attn.top_k, 1, 1), v.repeat(1, attn.top_k, 1, 1)
    has_kept = keep.any(1)
    every_row = bool(has_kept.all())
    if not every_row and not bool(has_kept.any()):
        return hidden.new_zeros(B, T, d), _handed_on(attn, topk)
    rows = slice(None) if every_row else has_kept.nonzero().squeeze(1)  # a slice: no copy of the step's tensors
    index, valid = _kept_index(keep[rows])
    n_rows, width = index.shape
    x = _gather_rows(hidden[rows], index)  # the kept tokens' inputs (n_rows, width, d)
    q = project_q(attn, x.reshape(n_rows * width, d))
    q = rotated_queries(attn, q, tuple(_gather_rows(r[rows], index).reshape(n_rows * width, -1) for r in rope))
    past = k.shape[2] - T
    scale = query_scale(attn, kwargs, B, rows, index, past)
    q = q if scale is None else q * scale.to(q.dtype)
    q = q.view(n_rows, width, *q.shape[1:]).transpose(1, 2)
    kv_rows = key_valid[rows] if key_valid is not None else None
    chunks = query_key_chunks(attn, cache, kv_rows, past + index, k.shape[2])
    picked = allowed_keys(topk, rows, index, k.shape[2]) if topk is not None else None
    if handed is None:
        given, bias = None, alibi_bias(attn, kwargs, B, k.shape[2])
        bias = bias[rows] if bias is not None else None
    else:
        given, bias = (kept_queries(t, rows, index) if t is not None else None for t in handed)
    o = _attend(q, k[rows], attended_values(attn, v[rows]), past + index, kv_rows, settings, bias, chunks, picked,
                given)
    o = project_out(attn, x, mixed_heads(attn, o.transpose(1, 2)))
    scattered = _scatter_rows(o.to(hidden.dtype), index, valid, torch.Size((n_rows, T, d)))
    if every_row:
        return scattered, _handed_on(attn, topk)
    out = hidden.new_zeros(B, T, d)
    out[rows] = scattered
    return out, _handed_on(attn, topk)
