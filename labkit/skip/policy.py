"""The skip contexts: :func:`budget` (GateSkip's token budget) and :func:`static_skip` (whole layers or branches).

Also the policy the gated branches consult inside them, its accounting (:class:`SkipStats`), KV copy-forward and
:func:`calibrate_thresholds` for one-token decoding steps. Laitenberger et al., arXiv 2510.13876 (see
:mod:`labkit.skip` for the overview).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from labkit import gate as gate_lib
from labkit import layout
from labkit.config import NonNegative, check_value, number_in_range, renamed
from labkit.profile import count_flops
from labkit.skip.compact import compact_attention, compact_mlp, copy_forward_step, out_features
from labkit.skip.kv_cache import (
    CACHE_KWARGS,
    CacheLayoutError,
    copy_source,
    find_cache,
    layer_kv,
    self_attention_cache,
    where,
)
from labkit.skip.sparse_attention import is_sparse
from labkit.skip.static import branch_names

SCOPES = ("batch", "sequence", "step")
EXECUTIONS = ("masked", "compact")

RANKINGS = ("gate", "random")
KV_POLICIES = ("copy_forward", "compute")


@dataclass
class SkipStats:
    """Accounting of a skip context, filled when the block exits."""

    skipped_fraction: float = 0.0  # skipped (token, branch) pairs / all (real token, branch) pairs: the paper's metric
    flops: int | None = None  # FLOPs actually executed by the block's forwards (replayed under the FLOP counter)
    dense_flops: int | None = None  # the same forwards with nothing skipped (same wrappers, so gates included)
    seconds: float = 0.0  # wall time of the block itself, without the FLOP counter
    per_module: dict[str, float] = field(default_factory=dict)  # branch name "layer.attn|mlp" -> skipped fraction
    calls: int = 0  # top-level model forwards inside the block
    records: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # last forward: importance, keep

    @property
    def flops_saved(self) -> float | None:
        """1 - flops / dense_flops (None without FLOP counting)."""
        if not self.flops or not self.dense_flops:
            return None
        return 1.0 - self.flops / self.dense_flops


def _lowest_k(score: torch.Tensor, k: torch.Tensor | int, dim: int | None) -> torch.Tensor:
    """Boolean mask of the k lowest scores (over everything, or per row along ``dim``); ties by position."""
    if dim is None:
        order = torch.argsort(score.reshape(-1), stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel(), device=score.device)
        return (ranks < k).view(score.shape)
    order = torch.argsort(score, dim=dim, stable=True)
    ranks = torch.empty_like(order).scatter_(
        dim, order, torch.arange(score.shape[dim], device=score.device).expand_as(order).contiguous()
    )
    return ranks < k.unsqueeze(dim) if torch.is_tensor(k) else ranks < k


class _Policy:
    """What the wrapped branches consult inside a skip context (see ``labkit.gate.SkipPolicy``)."""

    def __init__(
        self,
        model: nn.Module,
        skip_fraction: float,
        scope: str,
        execution: str,
        ranking: str,
        kv: str,
        thresholds: dict[str, float] | None,
        seed: int,
        static: set[str] | None,
        record: bool,
        keep_calls: bool,
        protect: int,
    ) -> None:
        self.model, self.skip_fraction, self.scope, self.execution = model, skip_fraction, scope, execution
        self.protect = protect  # the first `protect` real tokens of every row are never skipped
        self.ranking, self.kv, self.thresholds, self.static, self.record = ranking, kv, thresholds, static, record
        self.never_skips = skip_fraction == 0.0 and static is None  # a zero budget: every branch runs on every token
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.exempt_ids = _exempt_token_ids(model)
        self.valid: torch.Tensor | None = None  # (B, T) real tokens of the current forward
        self.n_valid = 0  # how many (valid.sum(), counted once per forward rather than per branch)
        self.eligible: torch.Tensor | None = None  # (B, T) tokens that may be skipped (real, not pad/EOS); None: all
        self.key_valid: torch.Tensor | None = None  # (B, S) attention mask over past + current tokens
        self.tokens: tuple[int, int] | None = None  # (B, T) of the current forward
        self.skipped: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.records: dict[str, dict[str, torch.Tensor]] = {}
        self.keep_calls = keep_calls
        self.calls: list[dict[str, Any]] = []  # per forward: inputs and keep masks, for the FLOP replay
        self.replay: list[torch.Tensor | None] | None = None  # when set, decisions are popped from here
        self.dense = False  # when set, nothing is skipped (dense FLOP replay)
        self.use_cache = False  # whether the current top-level forward asked for a KV cache
        self.uniform: bool | None = None  # the latest decision kept every row (True), none (False), or varied (None)
        self.constants: dict[tuple, tuple[torch.Tensor, int]] = {}  # reused masks and zeros, with their versions

    # -- context of one top-level forward -------------------------------------------------------------------------
    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.key_valid = mask.bool() if torch.is_tensor(mask) and mask.dim() == 2 else None
        self.valid = self.eligible = None
        inputs = ids if torch.is_tensor(ids) else kwargs.get("inputs_embeds")
        self.tokens = tuple(inputs.shape[:2]) if torch.is_tensor(inputs) else None
        name, cache = find_cache(kwargs)
        if self.protect and not torch.is_tensor(ids):
            raise ValueError(f"protect={self.protect} needs the forward's input_ids to place its tokens; got "
                             f"{type(ids).__name__} (inputs_embeds are not supported)")
        if torch.is_tensor(ids):
            T = ids.shape[1]
            exempt = torch.isin(ids, self.exempt_ids.to(ids.device)) if self.exempt_ids.numel() else None
            if self.protect:
                first = self._positions(ids, mask, cache) < self.protect
                exempt = first if exempt is None else exempt | first
            self.valid = self.key_valid[:, -T:] if self.key_valid is not None else None
            self.n_valid = int(self.valid.sum()) if self.valid is not None else ids.numel()
            eligible = self.valid if exempt is None else ~exempt if self.valid is None else self.valid & ~exempt
            self.eligible = None if eligible is None or bool(eligible.all()) else eligible
        use_cache = kwargs.get("use_cache")
        default = getattr(getattr(module, "config", None), "use_cache", False)
        self.use_cache = bool(default if use_cache is None else use_cache)
        if self.keep_calls and self.replay is None and not self.dense:
            saved = dict(kwargs, **{name: copy.deepcopy(cache)}) if name is not None else dict(kwargs)
            self.calls.append({"args": args, "kwargs": saved, "keeps": []})

    def _positions(self, ids: torch.Tensor, mask: Any, cache: Any) -> torch.Tensor:
        """(B, T) place of each token of this forward among its row's real tokens, earlier (cached) ones included:
        counted along a 2-D attention mask over past and current tokens where there is one, else from the cache's
        length. A mask of another shape could not place left-padded rows: ValueError."""
        T = ids.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if mask is None:
            return (past + torch.arange(T, device=ids.device)).expand_as(ids)
        if self.key_valid is None or self.key_valid.shape[1] != past + T:
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"protect={self.protect} needs a 2-D attention mask over the {past} cached and {T} new "
                             f"tokens (batch, {past + T}), or none; got {shape}")
        return (self.key_valid.long().cumsum(1) - 1)[:, -T:]

    def token_shape(self) -> tuple[int, int]:
        if self.tokens is None:
            raise ValueError("a branch handed its tokens flattened (OPT's feed-forward) needs the forward's input_ids "
                             "or inputs_embeds to know its (batch, tokens)")
        return self.tokens

    # -- decisions --------------------------------------------------------------------------------------------------
    def decide(
        self, branch: gate_lib.GatedBranch, importance: torch.Tensor | None, hidden: torch.Tensor
    ) -> torch.Tensor | None:
        self.uniform = None
        if self.dense:
            return None
        if self.replay is not None:
            return self.replay.pop(0)
        B, T = hidden.shape[:2]
        here = self.valid is not None and self.valid.shape == (B, T)  # this forward's tokens (not a nested call's)
        valid = self.valid if here else None
        n_real = self.n_valid if here else B * T
        if self.protect and self.tokens is not None and B == self.tokens[0] and T != self.tokens[1]:
            raise ValueError(
                f"protect={self.protect}: branch {branch.name!r} sees {T} tokens per row where the forward's input_ids "
                f"hold {self.tokens[1]} (the model adds tokens of its own, as CPM-Ant's prompt), so the protected "
                "tokens cannot be placed; use protect=0")
        self.total[branch.name] = self.total.get(branch.name, 0) + n_real
        if self.never_skips and not self.record:  # r = 0: nothing to decide, at the cost of a dict update
            if self.calls and self.keep_calls:
                self.calls[-1]["keeps"].append(None)
            return None
        eligible = self.eligible if self.eligible is not None and self.eligible.shape == (B, T) else None
        keep = self._keep(branch, importance, hidden, valid, eligible)
        if self.uniform is not None:  # known without looking at the mask: count it without tensor ops
            dropped = 0 if self.uniform else n_real
        elif keep is not None:
            dropped = int((~keep if valid is None else ~keep & valid).sum())
        if keep is not None:
            self.skipped[branch.name] = self.skipped.get(branch.name, 0) + dropped
        if self.record:
            real = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=hidden.device)
            score = importance if importance is not None else torch.ones(B, T, device=hidden.device)
            self.records[branch.name] = {
                "importance": score.detach().float().cpu(),
                "keep": (keep if keep is not None else real).detach().cpu(),
            }
        if self.calls and self.keep_calls:
            self.calls[-1]["keeps"].append(keep)
        return keep

    def _keep(
        self,
        branch: gate_lib.GatedBranch,
        importance: torch.Tensor | None,
        hidden: torch.Tensor,
        valid: torch.Tensor | None,
        eligible: torch.Tensor | None,
    ) -> torch.Tensor | None:
        B, T = hidden.shape[:2]
        if self.static is not None:
            if branch.name not in self.static:
                return None
            return torch.zeros(B, T, dtype=torch.bool, device=hidden.device)
        if self.skip_fraction == 0.0:
            return None
        if self.ranking == "random":
            score = torch.rand(B, T, generator=self.generator, device=hidden.device)
        else:
            score = importance.detach().float()
        if T == 1 and self.scope != "batch":
            return self._one_token_keep(branch, score, eligible)
        eligible = eligible if eligible is not None else torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        n_real = valid.sum(1) if valid is not None else torch.full((B,), T, device=hidden.device)
        score = score.masked_fill(~eligible, math.inf)
        if self.scope == "batch":
            k = min(int(math.floor(self.skip_fraction * int(n_real.sum()))), int(eligible.sum()))
            skip = _lowest_k(score, k, None)
        else:  # sequence and step scopes: the same fraction of every row (a prompt forward)
            k = torch.minimum(torch.floor(self.skip_fraction * n_real.float()).long(), eligible.sum(1))
            skip = _lowest_k(score, k, 1)
        return ~(skip & eligible)

    def _one_token_keep(
        self, branch: gate_lib.GatedBranch, score: torch.Tensor, eligible: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, 1) keep mask of a one-token decoding step: per row (``sequence``), or one decision for the whole step
        (``step``, and any single row: the mean score of the step's eligible rows decides, so a skipped branch's
        weights are not read). A whole-step decision is a reused constant mask, known in Python (``self.uniform``)."""
        if self.ranking == "random":  # uniform scores: the calibrated threshold of a fraction r is r itself
            threshold = self.skip_fraction
        elif self.thresholds and branch.name in self.thresholds:
            threshold = self.thresholds[branch.name]
        else:
            raise ValueError(
                f"scope={self.scope!r} on a one-token decoding step needs a threshold for branch {branch.name!r}: "
                f"pass thresholds=calibrate_thresholds(model, batches, skip_fraction, scope={self.scope!r})"
            )
        B = score.shape[0]
        if self.scope == "sequence" and B > 1:
            skip = score < threshold if self.ranking == "random" else score <= threshold
            return ~skip if eligible is None else ~(skip & eligible)
        rows = score if eligible is None else score[eligible]
        if not rows.numel():
            skipped = False
        elif self.ranking == "random":  # one uniform draw decides the step: skipped with probability r
            skipped = float(rows[0]) < threshold
        else:
            skipped = float(rows.mean() if rows.numel() > 1 else rows) <= threshold
        if eligible is not None and skipped:
            return ~eligible  # pad and EOS rows still run the branch
        self.uniform = not skipped
        return self._constant(("keep", B, not skipped), lambda: torch.full((B, 1), not skipped, device=score.device))

    def _constant(self, key: tuple, make: Any) -> torch.Tensor:
        """A tensor made once per skip context and reused by every step; made again if a family wrote into it (Falcon
        adds its attention output into the MLP output in place)."""
        known = self.constants.get(key)
        if known is None or known[0]._version != known[1]:
            tensor = make()
            self.constants[key] = known = tensor, tensor._version
        return known[0]

    # -- execution --------------------------------------------------------------------------------------------------
    def compact(
        self,
        branch: gate_lib.GatedBranch | gate_lib.SiblingBranch,
        hidden: torch.Tensor,
        keep: torch.Tensor,
        args: tuple,
        kwargs: dict,
    ) -> tuple[torch.Tensor, tuple]:
        one_token = hidden.shape[1] == 1
        if self.uniform or (self.uniform is None and one_token and bool(keep.all())):
            out = branch.branch(*args, **kwargs)  # a decoding step that keeps every row: the branch as it is
            return (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
        copy = self.kv == "copy_forward" and not branch.training
        named = layout.call_arguments(branch.branch, args, kwargs)  # CPM-Ant hands its attention the cache by position
        if self.uniform is False:  # a decoding step that skips every row: nothing of the branch runs
            shape = (*hidden.shape[:-1], out_features(branch.branch, hidden.shape[-1]))  # an inline fc1: its width
            zeros = self._constant(("zeros", *shape, hidden.dtype), lambda: hidden.new_zeros(shape))
            _, cache = find_cache(named)
            attn = branch.branch
            if branch.role == "attn" and copy and cache is not None and branch.layer_index > 0 and \
                    not is_sparse(attn) and copy_forward_step(attn, cache, hidden, named, self.model):
                return zeros, ()  # a sparse attention's indexer still runs (compact_attention): its keys are cached
            if branch.role == "mlp":
                return zeros, ()
        if branch.role == "mlp":
            return compact_mlp(branch.branch, hidden, keep, layout.given_residual(branch.branch, args, kwargs)), ()
        return compact_attention(branch.branch, hidden, keep, named, self.key_valid, copy, self.model)

    def after(self, branch: gate_lib.GatedBranch, keep: torch.Tensor | None, args: tuple, kwargs: dict) -> None:
        if (
            branch.role != "attn"
            or keep is None
            or self.kv != "copy_forward"
            or branch.layer_index == 0
            or branch.training  # a training forward never decodes from its cache (and autograd needs it intact)
            or bool(keep.all())
            or getattr(branch.branch, "is_kv_shared_layer", False)  # Gemma 4: it caches nothing of its own to copy
        ):
            return
        kwargs = layout.call_arguments(branch.branch, args, kwargs)  # CPM-Ant hands its attention the cache by position
        _, cache = find_cache(kwargs)
        if cache is not None and self.execution == "compact" and keep.shape[1] == 1:
            return  # compact attention already stored the copy source's K/V for this step's skipped rows
        if cache is None:
            if self.use_cache:
                raise CacheLayoutError(
                    f"{where(self.model)}: the forward asked for a KV cache (use_cache=True) but attention branch "
                    f"{branch.name!r} received none under {CACHE_KWARGS}; its kwargs were {sorted(kwargs)}"
                )
            return
        copy_forward_kv(cache, branch.layer_index, ~keep, model=self.model)


@torch.no_grad()
def copy_forward_kv(cache: Any, layer: int, skipped: torch.Tensor, model: Any = "model") -> None:
    """Overwrite layer ``layer``'s cached K/V of the newest tokens marked ``skipped`` (B, T) with its copy source's
    (:func:`~labkit.skip.kv_cache.copy_source`: layer l-1, or the nearest earlier layer of the same head shape).

    Sliding-window layers (Gemma2/3, Mistral) hold fewer tokens: only tokens both layers still hold are rewritten,
    so a skipped token older than the source's window keeps its own layer-l K/V. A layer without a source (no earlier
    layer of its head shape: the first layer of each shape in Gemma 4 and MiMo-V2-Flash) keeps the K/V computed for
    it; the token's branch output is still skipped. Raises CacheLayoutError (naming ``model`` and the transformers
    version) when the layer holds no K/V, or a full (non-sliding) layer lacks this step's tokens.
    """
    keys, values = layer_kv(cache, layer, model)
    source = copy_source(cache, layer, model)
    if source is None:
        return
    prev_keys, prev_values = layer_kv(cache, source, model)
    layers = self_attention_cache(cache).layers
    n = skipped.shape[1]
    for index, held in ((layer, keys.shape[-2]), (source, prev_keys.shape[-2])):
        if getattr(layers[index], "is_sliding", False):
            n = min(n, held)  # the newest tokens a sliding-window layer still holds
    held = keys.shape[-2] >= n and prev_keys.shape[-2] >= n
    if not held or keys.shape[0] != skipped.shape[0]:
        raise CacheLayoutError(
            f"{where(model)}: KV copy-forward from layer {source} to {layer} needs both layers to hold the newest "
            f"{skipped.shape[1]} tokens of a batch of {skipped.shape[0]}; found keys "
            f"{tuple(prev_keys.shape)} and {tuple(keys.shape)}"
        )
    if n == 0:
        return
    mask = skipped[:, -n:, None][:, None]
    keys[:, :, -n:] = torch.where(mask, prev_keys[:, :, -n:], keys[:, :, -n:])
    values[:, :, -n:] = torch.where(mask, prev_values[:, :, -n:], values[:, :, -n:])


def _exempt_token_ids(model: nn.Module) -> torch.Tensor:
    ids: list[int] = []
    for source in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None) if source is not None else None
            ids.extend(value if isinstance(value, list | tuple) else [value] if value is not None else [])
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


def _sync(model: nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _skipping(model: nn.Module, policy: _Policy, measure_flops: bool) -> Iterator[SkipStats]:
    branches = gate_lib.gated_branches(model)
    stats = SkipStats()
    hook = model.register_forward_pre_hook(policy.capture, with_kwargs=True)
    for b in branches:
        b.policy = policy
    try:
        _sync(model)
        start = time.perf_counter()
        yield stats
        _sync(model)
        stats.seconds = time.perf_counter() - start
        stats.calls = len(policy.calls) if policy.keep_calls else 0
        total = sum(policy.total.values())
        stats.skipped_fraction = sum(policy.skipped.values()) / total if total else 0.0
        stats.per_module = {n: policy.skipped.get(n, 0) / t for n, t in policy.total.items() if t}
        stats.records = policy.records
        if measure_flops and policy.calls:
            stats.flops, stats.dense_flops = _replay_flops(model, policy)
    finally:
        hook.remove()
        for b in branches:
            b.policy = None


@torch.no_grad()
def _replay_flops(model: nn.Module, policy: _Policy) -> tuple[int, int]:
    """Re-run the block's forwards under the FLOP counter with the same keep decisions, then with none."""
    flops = dense = 0
    with _frozen(model):
        for call in policy.calls:
            for mode in ("skip", "dense"):
                kwargs = dict(call["kwargs"])
                name, cache = find_cache(kwargs)
                if name is not None:
                    kwargs[name] = copy.deepcopy(cache)
                policy.replay, policy.dense = (list(call["keeps"]), False) if mode == "skip" else (None, True)
                n = count_flops(lambda a=call["args"], k=kwargs: model(*a, **k))
                flops, dense = (flops + n, dense) if mode == "skip" else (flops, dense + n)
    policy.replay, policy.dense = None, False
    return flops, dense


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad for a replay: torch's FLOP counter hooks every module input that requires
    grad, and a view of a parameter taken under no_grad claims to without a graph to hook (DBRX's experts), which
    fails inside the counter."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _check_common(model: nn.Module, execution: str, kv: str) -> None:
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    if kv not in KV_POLICIES:
        raise ValueError(f"kv must be one of {KV_POLICIES}, got {kv!r}")
    if not gate_lib.gated_branches(model):
        raise ValueError(f"{type(model).__name__} has no gated branches; call labkit.gate.add_gates(model) first")


@torch.no_grad()
def _widened(tensor: torch.Tensor) -> torch.Tensor:
    """A float16 / bfloat16 tensor of a probe call in float32; others as they are."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


@contextlib.contextmanager
def _in_float32(module: nn.Module) -> Iterator[None]:
    """``module``'s float16 / bfloat16 parameters and buffers in float32 inside the block, restored exactly after
    (every such value is a float32 value); float32 and wider stay as they are."""
    tensors = [t for t in itertools.chain(module.parameters(), module.buffers())
               if t.is_floating_point() and t.element_size() < 4]
    dtypes = [t.dtype for t in tensors]
    for t in tensors:
        t.data = t.data.float()
    try:
        yield
    finally:
        for t, dtype in zip(tensors, dtypes, strict=True):
            t.data = t.data.to(dtype)


def verify_compact(branch: gate_lib.GatedBranch) -> None:
    """Before a budget first runs a branch compact: its compact execution, keeping every token of add_gates' probe
    forward, must reproduce the branch's own output there, else ValueError (and every later try raises the same).

    labkit's compact adapters re-implement attention from a family's projections; a family that does something more
    (a differential or gated attention, a norm the adapter does not apply) would otherwise give silently wrong
    logits. Compared once per branch, with the module's weights at that moment (it may have been fine-tuned since
    add_gates recorded the probe input: 3 tokens, no cache). What 3 tokens at positions 0-2 cannot show (a query
    scale by position, a sparse key indexer) the adapters apply by name or refuse.
    """
    if branch.compact_error is not None:
        raise ValueError(branch.compact_error)
    if branch.compact_checked or branch.probe is None:
        return
    hidden, args, kwargs = branch.probe
    hidden = hidden[None] if hidden.dim() == 2 else hidden  # tokens handed flattened (OPT's feed-forward): one row
    module = branch.branch
    what = f"{type(module).__name__} (branch {branch.name})"
    keep = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    kwargs = {k: v for k, v in kwargs.items() if k not in CACHE_KWARGS}
    training = module.training
    module.eval()  # the module's weights now (it may have been fine-tuned since the probe), without dropout
    hidden, args, kwargs = gate_lib.map_tensors(_widened, (hidden, args, kwargs))
    try:
        with _in_float32(module):  # a bf16 model's rounding would hide a mismatch of a few per cent
            own = module(*args, **kwargs)  # as the layer called it (CTRL passes its input as v, k and q)
            own = (own[0] if isinstance(own, (tuple, list)) else own).reshape(*hidden.shape[:-1], -1)
            if branch.role == "mlp":
                out = compact_mlp(module, hidden, keep, layout.given_residual(module, args, kwargs))
            else:
                out, _ = compact_attention(module, hidden, keep, layout.call_arguments(module, args, kwargs))
    except ValueError as error:  # labkit's own refusal (no adapter) says what it looked for
        branch.compact_error = str(error)
    except Exception as error:
        branch.compact_error = (f"compact execution cannot run {what}: its adapter failed with {type(error).__name__}: "
                                f"{error}; use execution='masked'")
    else:
        tol = max(1e-5, 64 * torch.finfo(own.dtype).eps) * (1 + float(own.detach().abs().max()))  # float32 or wider
        err = float((out.to(own.dtype) - own).detach().abs().max()) if out.shape == own.shape else math.inf
        if not err <= tol:
            branch.compact_error = (
                f"compact execution does not reproduce {what}: keeping every token of a 3-token probe it differs from "
                f"the module's own output by {err:.3g} (tolerance {tol:.3g}); this family does something labkit's "
                "adapter does not (e.g. a norm, gate or scale of its own); use "
                "execution='masked'")
    finally:
        module.train(training)
    branch.probe = None  # checked once; the probe's tensors are not kept
    branch.compact_checked = True
    if branch.compact_error is not None:
        raise ValueError(branch.compact_error)


@renamed(ratio="skip_fraction")
@contextlib.contextmanager
def budget(
    model: nn.Module,
    skip_fraction: float,
    scope: str = "batch",
    execution: str = "masked",
    *,
    ranking: str = "gate",
    kv: str = "copy_forward",
    thresholds: dict[str, float] | None = None,
    seed: int = 0,
    measure_flops: bool = True,
    record: bool = False,
    protect: int = 0,
) -> Iterator[SkipStats]:
    """Skip the lowest-importance fraction ``skip_fraction`` of tokens in every gated branch inside the block.

    ``scope``: ``"batch"`` (one quantile over the batch's tokens, the paper's), ``"sequence"`` (the same fraction of
    every row; one-token steps compare each row with ``thresholds``) or ``"step"`` (as ``"sequence"`` in a prompt
    forward; a one-token step skips a branch for all its rows or none, by their mean importance against
    ``thresholds``, calibrated with ``calibrate_thresholds(..., scope="step")``).

    ``ranking="random"`` ranks tokens at random instead (the paper's random-skip baseline; works on
    ``add_gates(kind="none")`` wrappers). After the block the yielded :class:`SkipStats` holds the paper's
    ``skipped_fraction``, the executed ``flops`` (forwards replayed under ``labkit.profile.count_flops`` when
    ``measure_flops``) and the block's wall ``seconds``; ``record`` keeps the last forward's importances and masks.

    ``protect``: the first ``protect`` real tokens of every row are never skipped, like pad and EOS (the attention
    sink: a pretrained LLM's first token draws attention in every layer); the budget still counts them, so the other
    tokens of a row or batch absorb it.
    """
    number_in_range("skip_fraction", skip_fraction, 0.0, 1.0, "[)")
    check_value("protect", protect, NonNegative)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    _check_common(model, execution, kv)
    if execution == "compact":  # refuse a family whose compact execution would differ, before anything runs
        for branch in gate_lib.gated_branches(model):
            verify_compact(branch)
    if ranking == "gate" and any(b.residual_gate is None for b in gate_lib.gated_branches(model)):
        raise ValueError(
            "ranking='gate' needs gates with weights; this model was wrapped with kind='none' "
            "(use ranking='random' or add_gates(model, kind='vector'))"
        )
    policy = _Policy(model, skip_fraction, scope, execution, ranking, kv, thresholds, seed, None, record,
                     measure_flops, protect)
    with _skipping(model, policy, measure_flops) as stats:
        yield stats


def _branch_names(model: nn.Module, layers: Iterable[int | tuple[int, str] | str]) -> set[str]:
    return branch_names(layers, len(layout.decoder_layers(model)))


@contextlib.contextmanager
def static_skip(
    model: nn.Module,
    layers: Iterable[int | tuple[int, str] | str],
    execution: str = "masked",
    *,
    kv: str = "copy_forward",
    measure_flops: bool = True,
    record: bool = False,
) -> Iterator[SkipStats]:
    """Skip whole layers (ints) or single branches (``(layer, "attn"|"mlp")`` or ``"3.mlp"``) for every token.

    The static baselines (ShortGPT, Unified Layer Skipping). Works on an ungated model too: it is wrapped with
    ``kind="none"`` wrappers for the block and unwrapped afterwards.
    """
    temporary = not gate_lib.gated_branches(model)
    if temporary:
        gate_lib.add_gates(model, kind="none")
    try:
        _check_common(model, execution, kv)
        names = _branch_names(model, layers)
        policy = _Policy(model, 0.0, "batch", execution, "gate", kv, None, 0, names, record, measure_flops, 0)
        with _skipping(model, policy, measure_flops) as stats:
            yield stats
    finally:
        if temporary:
            gate_lib.remove_gates(model)


@torch.no_grad()
@renamed(ratio="skip_fraction")
def calibrate_thresholds(
    model: nn.Module, batches: Iterable[torch.Tensor | dict], skip_fraction: float, scope: str = "sequence"
) -> dict[str, float]:
    """Per-branch importance thresholds that skip ``skip_fraction`` of held-out decoding steps (``sequence`` / ``step``
    scope).

    Runs ``budget(model, skip_fraction, scope="sequence")`` over ``batches`` and takes each branch's
    ``skip_fraction``-quantile of what a decoding step compares: a token's importance (``scope="sequence"``), or the
    mean importance of the rows of a step (``scope="step"``: the batch's tokens at each position, so calibrate on
    batches of the decoding batch size). A later one-token step skips iff that value is at or below the threshold.
    """
    if scope not in ("sequence", "step"):
        raise ValueError(f"thresholds are calibrated for scope 'sequence' or 'step' (one-token steps), got {scope!r}")
    seen: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        with budget(model, skip_fraction, scope="sequence", measure_flops=False, record=True) as stats:
            model(**batch) if isinstance(batch, dict) else model(batch)
        for name, rec in stats.records.items():
            values = rec["importance"].mean(0) if scope == "step" else rec["importance"].reshape(-1)
            seen.setdefault(name, []).append(values)
    if not seen:
        raise ValueError("calibrate_thresholds got no batches")
    return {name: float(torch.quantile(torch.cat(v), skip_fraction)) if skip_fraction > 0 else -math.inf
            for name, v in seen.items()}
