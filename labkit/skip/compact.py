"""Compact ("physical") execution of a skipped branch: gather the kept tokens, run the branch on them, scatter back.

GateSkip's default path computes every branch densely and zeroes skipped tokens (masked). Here the MLP runs on
the kept tokens only, and attention computes K/V for every token (later tokens may attend to them) but queries,
scores, values-mixing and the output projection for the kept tokens only. Output equals the masked path's up to
floating-point rounding (tested). Per-architecture adapters: Llama/Qwen2 (q/k/v/o projections with rotary
embeddings) and GPT-2 (fused ``c_attn``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit.skip.kv_cache import find_cache, self_attention_cache


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
        y = branch(hidden.reshape(B * T, d)[positions].unsqueeze(0)).squeeze(0)
        out = out.index_put((positions,), y)
    return out.view(B, T, d)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _masked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    dropout: float,
) -> torch.Tensor:
    S = k.shape[2]
    allowed = torch.arange(S, device=q.device)[None, None, :] <= qpos[:, :, None]
    if key_valid is not None and key_valid.shape[-1] == S:
        allowed = allowed & key_valid[:, None, :].to(torch.bool)
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padded query rows: any finite output, discarded
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=dropout, scale=scale)


def compact_attention(
    attn: nn.Module, hidden: torch.Tensor, keep: torch.Tensor, kwargs: dict, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Self-attention output for the kept queries only (zeros elsewhere); K/V of every token go to the cache."""
    B, T, d = hidden.shape
    index, valid = _kept_index(keep)
    x_kept = _gather_rows(hidden, index)
    _, cache = find_cache(kwargs)
    dropout = getattr(attn, "attention_dropout", 0.0) if attn.training else 0.0
    if hasattr(attn, "q_proj"):  # Llama / Qwen2
        hd = attn.head_dim
        q = attn.q_proj(x_kept).view(B, index.shape[1], attn.q_proj.out_features // hd, hd).transpose(1, 2)
        k = attn.k_proj(hidden).view(B, T, -1, hd).transpose(1, 2)
        v = attn.v_proj(hidden).view(B, T, -1, hd).transpose(1, 2)
        cos, sin = kwargs["position_embeddings"]
        cos, sin = cos.expand(B, -1, -1), sin.expand(B, -1, -1)
        cq, sq = _gather_rows(cos, index).unsqueeze(1), _gather_rows(sin, index).unsqueeze(1)
        q = q * cq + _rotate_half(q) * sq
        k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
        scale, out_proj = attn.scaling, attn.o_proj
    elif hasattr(attn, "c_attn"):  # GPT-2 (Conv1D: y = x W + b, W of shape (d, 3d))
        hd, width = attn.head_dim, attn.split_size
        weight, bias = attn.c_attn.weight, attn.c_attn.bias
        q = (x_kept @ weight[:, :width] + bias[:width]).view(B, index.shape[1], width // hd, hd).transpose(1, 2)
        k, v = (hidden @ weight[:, width:] + bias[width:]).split(width, dim=2)
        k, v = k.view(B, T, -1, hd).transpose(1, 2), v.view(B, T, -1, hd).transpose(1, 2)
        scale = 1.0 / math.sqrt(hd) if attn.scale_attn_weights else 1.0
        if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(attn.layer_idx + 1)
        dropout = attn.attn_dropout.p if attn.training else 0.0

        def out_proj(o: torch.Tensor) -> torch.Tensor:
            return attn.resid_dropout(attn.c_proj(o))
    else:
        raise ValueError(
            f"compact execution has no adapter for attention module {type(attn).__name__}; "
            "supported: Llama/Qwen2 (q_proj..o_proj) and GPT-2 (c_attn/c_proj); use execution='masked'"
        )
    if cache is not None:
        k, v = self_attention_cache(cache).update(k, v, attn.layer_idx)
    if index.shape[1] == 0:
        return hidden.new_zeros(B, T, d)
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    past = k.shape[2] - T
    o = _masked_sdpa(q, k, v, past + index, key_valid, scale, dropout)
    o = out_proj(o.transpose(1, 2).reshape(B, index.shape[1], -1))
    return _scatter_rows(o, index, valid, hidden.shape)
