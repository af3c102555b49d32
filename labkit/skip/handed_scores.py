"""Attention handed its own mask and position bias for every (query, key) pair (CPM-Ant) under compact execution.

Most families' attention masks causally (with padding and windows) and compact execution rebuilds that mask from
positions. CPM-Ant's model instead hands each attention a mask (B, T, S) of the keys every query reads (its
prompt and input attend bidirectionally, decoding steps read everything before them; padded queries read nothing)
and a relative position bias (B, heads, T, S) added to the scaled scores. Compact execution takes the kept queries'
rows of both; a padded query, reading no key, outputs zeros as the module's own forward gives it. Which keys a step
must project follows from that mask, not from causality: a kept query may read a later skipped token.
"""

from __future__ import annotations

import torch


def handed_scores(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (query, key) mask (B, T, S) as booleans and the position bias (B, heads, T, S) or None, where an attention
    is handed them (CPM-Ant's ``attention_mask``, of integers: 0 masks, and ``position_bias``); None where it is
    handed no 3-D mask of booleans or integers (every other family: masks by position, or a 4-D additive mask)."""
    mask = kwargs.get("attention_mask")
    if not (torch.is_tensor(mask) and mask.dim() == 3 and not mask.is_floating_point()):
        return None
    bias = kwargs.get("position_bias")
    if bias is not None and (bias.dim() != 4 or bias.shape[2:] != mask.shape[1:]):
        raise ValueError(f"compact execution has no adapter for a position_bias of shape {tuple(bias.shape)} beside "
                         f"a (query, key) mask of shape {tuple(mask.shape)} (expected CPM-Ant's (batch, heads, "
                         f"{mask.shape[1]}, {mask.shape[2]})); use execution='masked'")
    return mask.bool(), bias


def kept_queries(pairs: torch.Tensor, rows: torch.Tensor | slice, index: torch.Tensor) -> torch.Tensor:
    """The rows of ``pairs`` (B, T, S) or (B, heads, T, S) of the kept queries: ``index`` (R, W) of batch ``rows``, as
    compact execution gathers them; (R, W, S) or (R, heads, W, S)."""
    pairs = pairs[rows]
    if pairs.dim() == 3:
        return torch.gather(pairs, 1, index.unsqueeze(-1).expand(-1, -1, pairs.shape[-1]))
    return torch.gather(pairs, 2, index[:, None, :, None].expand(-1, pairs.shape[1], -1, pairs.shape[-1]))


def needed_keys(keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) tokens of the step whose K/V this forward needs: kept ones, and those a kept query reads by ``mask``
    (B, T, S); the step's tokens are the last T keys."""
    return keep | (keep[:, :, None] & mask[:, :, -keep.shape[1]:]).any(1)
