"""Budgeted token skipping on gated decoder branches (GateSkip), its baselines, and compute accounting.

Laitenberger et al., arXiv 2510.13876. Inside ``with budget(model, r) as stats:`` every wrapped branch skips the
tokens with the lowest importance (``mean(g)``) so that a fraction ``r`` of the tokens skips that branch: over the
whole batch (``scope="batch"``, the paper's choice, so one sequence decoded one token at a time skips nothing) or
per sequence (``scope="sequence"``; one-token decoding steps then use per-branch thresholds from
:func:`calibrate_thresholds`), or per decoding step (``scope="step"``: the step's rows skip a branch together when
their mean importance is at or below its calibrated threshold, so compact execution does not read the branch's
weights at all; decoding is memory-bound, and skipping half the rows of a step saves almost nothing). A skipped
token's branch output is zero, so its residual stream passes through; in a cached forward its K/V at layer l are
copied from layer l-1 ("copy-forward"; where layer shapes differ, from the nearest earlier layer of l's head shape,
else computed: Gemma 4, MiMo-V2-Flash). Pad and EOS tokens are never skipped. Baselines share the machinery: random
ranking (``ranking="random"``), static branch/layer skipping (:func:`static_skip` with :func:`shortgpt_order` or
:func:`uls_layers`). Compact execution runs a family's attention from its projections; :func:`verify_compact`
checks once per branch (when a compact budget opens) that it reproduces the module's own output, and refuses clearly
where it does not.

Modules: :mod:`~labkit.skip.policy` (the skip contexts and their accounting), :mod:`~labkit.skip.compact` (compact
execution of a branch on its kept tokens), :mod:`~labkit.skip.adapters` (how each family's attention computes, the
pieces compact execution reassembles), :mod:`~labkit.skip.sparse_attention` (DeepSeek's key indexer),
:mod:`~labkit.skip.handed_scores` (CPM-Ant's mask and position bias per query and key), :mod:`~labkit.skip.static`
(ShortGPT and ULS orders), :mod:`~labkit.skip.kv_cache` (finding and rewriting the Hugging Face KV cache).
"""

from labkit.skip.policy import (
    EXECUTIONS,
    KV_POLICIES,
    RANKINGS,
    SCOPES,
    SkipStats,
    budget,
    calibrate_thresholds,
    copy_forward_kv,
    static_skip,
    verify_compact,
)
from labkit.skip.static import branch_names, shortgpt_order, uls_layers

__all__ = [
    "EXECUTIONS",
    "KV_POLICIES",
    "RANKINGS",
    "SCOPES",
    "SkipStats",
    "branch_names",
    "budget",
    "calibrate_thresholds",
    "copy_forward_kv",
    "shortgpt_order",
    "static_skip",
    "uls_layers",
    "verify_compact",
]
