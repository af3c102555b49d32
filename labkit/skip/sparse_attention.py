"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-MoE-DSA, AXK2, dots3) under compact execution.

A lightweight indexer picks each query's top-k keys; attention then reads only those. Compact execution runs the
module's own indexer over *every* token of the step, as the masked path does: its key cache must hold every token
(later tokens may pick them), and a later ``"shared"`` layer of GLM-MoE-DSA reuses this layer's top-k for queries this
layer skipped. Only the main attention (queries, scores, value mixing, output projection) is compacted; the indexer's
queries of skipped tokens are computed and discarded, a cost the executed FLOPs count.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from labkit.skip.adapters import is_latent, latent_query, position_embeddings


def is_sparse(attn: nn.Module) -> bool:
    """Whether ``attn`` is DeepSeek Sparse Attention: latent attention restricted to keys an indexer picks (its own,
    or a previous layer's). Other indexers (MiniMax-M3's block-sparse one) are refused by
    :func:`~labkit.skip.adapters.refuse_unsupported`."""
    return is_latent(attn) and (getattr(attn, "indexer", None) is not None or bool(getattr(attn, "skip_topk", False)))


@functools.cache
def hands_on_topk(attention: type[nn.Module]) -> bool:
    """Whether an ``attention`` class returns its top-k last for the next layer (it takes ``prev_topk_indices``:
    GLM-MoE-DSA); asked once per class."""
    return "prev_topk_indices" in inspect.signature(attention.forward).parameters


def picked_keys(attn: nn.Module, hidden: torch.Tensor, kwargs: dict, cache: Any) -> torch.Tensor | None:
    """The (B, T, top-k) key indices every query of the step may read: the module's indexer over every token (its
    key cache updated as the module's own forward updates it), or on a ``"shared"`` layer the previous indexer
    layer's, handed in as ``prev_topk_indices``; None where ``attn`` is dense."""
    if not is_sparse(attn):
        return None
    if attn.indexer is None:
        topk = kwargs.get("prev_topk_indices")
        if topk is None:
            raise ValueError(f"{type(attn).__name__} is a shared sparse-attention layer but its decoder layer handed "
                             "it no prev_topk_indices (the top-k of a previous indexer layer)")
        return topk
    mask = kwargs.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 4:
        raise ValueError(f"compact execution of {type(attn).__name__} needs the 4-D attention mask its indexer "
                         f"scores against; got {type(mask).__name__ if not torch.is_tensor(mask) else mask.shape}")
    names = inspect.signature(attn.indexer.forward).parameters
    where = {"cache" if "cache" in names else "past_key_values": cache}
    return attn.indexer(hidden, latent_query(attn, hidden), position_embeddings(attn, hidden, kwargs), mask[:, 0],
                        kwargs.get("position_ids"), **where)


def allowed_keys(topk: torch.Tensor, rows: Any, index: torch.Tensor, keys: int) -> torch.Tensor:
    """(rows, W, keys) True at the keys each kept query (``index`` of ``rows``, as compact execution gathers them)
    may read."""
    picked = torch.zeros(*topk.shape[:2], keys, dtype=torch.bool, device=topk.device)
    picked.scatter_(-1, topk.long(), True)
    picked = picked[rows]
    return torch.gather(picked, 1, index.unsqueeze(-1).expand(-1, -1, keys))
