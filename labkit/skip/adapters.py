"""How each family's attention computes, in the pieces compact execution (:mod:`labkit.skip.compact`) reassembles
for the kept tokens only.

Small per-family adapters for the projections: separate q/k/v/o (Llama, Mistral, Qwen2/3, Gemma2/3, OLMo2, StableLM,
Phi, GPT-J, GPT-Neo, CTRL, CPM-Ant, ModernBERT-decoder and the MoE families Mixtral, Qwen2-MoE, OLMoE; q/k norms per
head or over the width, before rotary or after it as HunYuan's), fused ``qkv_proj`` (Phi3; CodeGen's in
model-parallel shards of [q | v | k]) or ``Wqkv`` (DBRX, MPT; clipped to ``clip_qkv``), fused ``query_key_value`` per
head (GPT-NeoX, GPT-NeoX-Japanese, Persimmon, Bloom) or per K/V group (Falcon), Conv1D ``c_attn`` (GPT-2) and JetMoE's
mixture of attention (routed query and output experts over shared K/V heads); multi-head latent attention (MLA:
DeepSeek-V2/V3 and Sarvam, MiniCPM3, GLM-4-MoE-Lite, Youtu, AXK1), whose cache holds the normalised KV latent and the
rotated shared key, expanded into per-head keys and values by the module's own ``expand_kv``; rotary through the
family's own function (cos/sin, the interleaved pairs of ``rope_interleave``, or DeepSeek-V2's complex frequencies) or
the attention's own ``rotary_emb`` (Moshi), partial rotary included, none on the full-attention layers of AFMoE, Cohere2
and Flint, and query scaling by position (Llama-4's: Ministral3, Mistral4; the scale Beam hands its layers); unscaled
scores (GPT-Neo), sliding windows (GPT-Neo's local layers among them), Gemma2's logit softcap, attention sinks and ALiBi
biases (Bloom, MPT, Falcon-RW) in the mask and scores; an output gate (AFMoE, Laguna, Beam) or a norm (BitNet) before
the output projection; differential attention (DiffLlama: two softmax maps of the same queries and keys, the second's
output subtracted, then a norm). An MoE feed-forward is position-wise, so it runs on the kept tokens like any MLP. Llama
4's complex rotary embedding, NoPE-layer temperature and chunked attention are applied too, and value norms or scales
(Gemma 4, MiMo-V2-Flash); a sparse attention's key indexer is in :mod:`labkit.skip.sparse_attention`, the mask and
position bias CPM-Ant hands its attention for every (query, key) pair in :mod:`labkit.skip.handed_scores`. Zaya's
convolutional q/k/v projection, Gemma 4's KV-shared layers and the inputs in :data:`UNSUPPORTED_INPUTS` have no adapter
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

from labkit.skip.kv_cache import self_attention_cache

# Inputs some attention modules take that the adapters below do not apply (the 3-token probe may not expose them)
UNSUPPORTED_INPUTS = {
    "cycle_offset": "the layers run once per recurrent cycle, each with its own cache slot (HRM)",
}


# Attention classes that rotate queries and keys on their sliding-window layers only: full attention is NoPE
SLIDING_ONLY_ROTARY = ("AfmoeAttention", "Cohere2Attention", "FlintAttention")


# Attention classes whose output gate g_proj is a softplus (dots3's and most others' are a sigmoid)
SOFTPLUS_G_PROJ = ("LagunaAttention",)


# Attention classes whose model masks full-causal though the config sets a sliding window (it only truncates the cache)
FULL_CAUSAL = ("MoshiAttention",)


Rope = tuple[torch.Tensor, ...]  # rotary rows of some tokens: (cos, sin), (complex frequencies,) or () without rotary


_MISSING = object()


def _attr(attn: nn.Module, name: str, default: Any = None) -> Any:
    """``getattr(attn, name, default)``, remembering which names ``attn`` lacks: adapters ask every attention module
    for a dozen attributes its family does not have, at every branch of every decoding step, and each miss costs
    ``nn.Module.__getattr__`` a raised AttributeError (~2 us)."""
    missing = attn.__dict__.setdefault("_labkit_missing", set())
    if name in missing:
        return default
    value = getattr(attn, name, _MISSING)
    if value is _MISSING:
        missing.add(name)
        return default
    return value


def _has(attn: nn.Module, name: str) -> bool:
    """``hasattr(attn, name)`` through :func:`_attr`."""
    return _attr(attn, name, _MISSING) is not _MISSING



def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(attn: nn.Module, x: torch.Tensor, *rope: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of tokens ``x`` (N, heads, head_dim) with their ``rope`` rows: cos and sin (N, width), one
    complex tensor (N, width / 2) for DeepSeek-V2's ``apply_rotary_emb``, or none (``x`` unchanged). Through the
    family's own function where its modeling module has one (``apply_rotary_pos_emb_interleave`` when the config sets
    ``rope_interleave``, or for latent attention whose config has no such switch), else rotate-half. Partial rotary
    (GPT-NeoX, Phi, Phi3, StableLM, GPT-J) rotates the first ``rot`` dimensions and passes the rest through; GPT-J's
    function takes ``(tensor, sin, cos)`` of half width and rotates interleaved pairs."""
    if not rope:  # a layer without rotary
        return x
    module = sys.modules.get(type(attn).__module__)
    if len(rope) == 1:  # complex frequencies, one (token, head) a row: DeepSeek-V2's and Llama 4's broadcasts agree
        n, heads, dim = x.shape
        x4 = x.reshape(n * heads, 1, 1, dim)
        return module.apply_rotary_emb(x4, x4, rope[0].repeat_interleave(heads, 0).unsqueeze(1))[0].view(n, heads, dim)
    cos, sin = rope
    # the config's switch where it has one; latent attention without it interleaves whenever its family can
    # (DeepSeek-V3.2, GLM-MoE-DSA, AXK2, dots3: apply_rotary_pos_emb_interleave unconditionally)
    always = is_latent(attn) and hasattr(module, "apply_rotary_pos_emb_interleave")
    interleaved = getattr(_attr(attn, "config", None), "rope_interleave", always)
    apply = getattr(module, "apply_rotary_pos_emb_interleave" if interleaved else "apply_rotary_pos_emb", None)
    if apply is not None and _gptj_style(apply):
        rot = 2 * cos.shape[-1]
        done = apply(x[..., :rot].unsqueeze(1), sin.unsqueeze(1), cos.unsqueeze(1)).squeeze(1)
        return torch.cat([done.to(x.dtype), x[..., rot:]], dim=-1)
    rot = cos.shape[-1]
    if apply is not None and 2 * rot == _rotary_dims(attn, x.shape[-1]):  # half-width cos / sin (GPT-OSS)
        rot *= 2
    x4, c, s = x[..., :rot].unsqueeze(2), cos.unsqueeze(1), sin.unsqueeze(1)  # (N, H, 1, rot) and (N, 1, width)
    if apply is not None and _rotates_one(apply):  # Gemma 4: apply(x, cos, sin)
        done = apply(x4, c, s).squeeze(2).to(x.dtype)
    elif apply is not None:  # it rotates a (q, k) pair: x as q, one head of x as a k that is discarded
        done = apply(x4, x4[:, :1], c, s)[0].squeeze(2).to(x.dtype)
    else:
        done = (x4 * c.unsqueeze(1) + _rotate_half(x4) * s.unsqueeze(1)).squeeze(2)
    return done if rot == x.shape[-1] else torch.cat([done, x[..., rot:]], dim=-1)


def _rotary_dims(attn: nn.Module, head_dim: int) -> int:
    """How many dimensions of a head the family rotates: the module's ``rotary_ndims``, else by its config (partial
    rotary: a fraction of them); GPT-NeoX-Japanese's attention keeps no config."""
    if _has(attn, "rotary_ndims"):
        return attn.rotary_ndims
    config = _attr(attn, "config", None)
    rope = getattr(config, "rope_parameters", None)
    fraction = (rope.get("partial_rotary_factor") if isinstance(rope, dict) else None) or \
        getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None) or 1.0
    return int(head_dim * fraction)


@functools.cache
def _gptj_style(apply: Any) -> bool:
    """Whether a family's ``apply_rotary_pos_emb`` is GPT-J's ``(tensor, sin, cos)``, not ``(q, k, cos, sin, ...)``."""
    return list(inspect.signature(apply).parameters)[:3] == ["tensor", "sin", "cos"]


@functools.cache
def _rotates_one(apply: Any) -> bool:
    """Whether a family's ``apply_rotary_pos_emb`` rotates one tensor, ``(x, cos, sin, ...)`` (Gemma 4)."""
    return list(inspect.signature(apply).parameters)[:3] == ["x", "cos", "sin"]


def _norm_heads(norm: nn.Module | None, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(N, width) -> (N, heads, head_dim), with the family's q/k norm over the whole width (OLMo2) or per head
    (Qwen3, Gemma3), chosen by the norm's weight size."""
    if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() == x.shape[-1]:
        return norm(x).view(x.shape[0], -1, head_dim)
    x = x.view(x.shape[0], -1, head_dim)
    return norm(x) if norm is not None else x


def _qk_norm(attn: nn.Module, which: str) -> nn.Module | None:
    """The norm a family applies to its queries (``which`` "q") or keys ("k") before rotary: ``q_norm`` (Qwen3,
    OLMo2, Gemma3) or ``q_layernorm`` (Persimmon, Phi, StableLM); None without one."""
    norm = _attr(attn, f"{which}_norm", None)
    return norm if norm is not None else _attr(attn, f"{which}_layernorm", None)


def _after_rotary(attn: nn.Module, which: str, x: torch.Tensor) -> torch.Tensor:
    """Queries or keys (N, heads, head_dim) through the per-head norm a family applies after rotary
    (``query_layernorm`` / ``key_layernorm``: HunYuan; one ``qk_norm`` for both: Llama 4), else unchanged."""
    norm = _attr(attn, f"{which}_layernorm", None)
    norm = _attr(attn, "qk_norm", None) if norm is None else norm
    return norm(x) if norm is not None else x


def _rows(linear: nn.Module, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = linear.bias[rows] if linear.bias is not None else None
    return linear.weight[rows], bias


def _head_dim(attn: nn.Module) -> int:
    return int(_attr(attn, "head_dim", None) or _attr(attn, "dim_head", None) or attn.head_size)


def is_latent(attn: nn.Module) -> bool:
    """Whether ``attn`` is multi-head latent attention (MLA): K/V come from one low-rank latent per token."""
    return _has(attn, "kv_a_proj_with_mqa")


def is_mixture_of_attention(attn: nn.Module) -> bool:
    """Whether ``attn`` is JetMoE's mixture of attention heads: query and output projections are per-token routed
    experts (``experts.map`` / ``experts.reduce``) over shared K/V heads."""
    return hasattr(_attr(attn, "experts", None), "reduce")


def project_q(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Queries (N, heads, head_dim) of tokens x (N, d), before rotary."""
    if _has(attn, "q_gate_proj"):  # AXK2: queries and output gate from one projection of the low-rank query
        return _latent_query_gate(attn, x)[0]
    if is_latent(attn):  # MLA: a low-rank query (q_a -> norm -> q_b) unless q_lora_rank is None
        q = attn.q_proj(x) if attn.q_lora_rank is None else attn.q_b_proj(latent_query(attn, x))
        return q.view(x.shape[0], -1, attn.qk_head_dim)
    hd = _head_dim(attn)
    if is_mixture_of_attention(attn):  # JetMoE: each token's top-k query experts, top_k x kv heads query heads
        return attn.experts.map(x.unsqueeze(0))[0].view(x.shape[0], -1, hd)
    if _has(attn, "Wq"):  # CTRL
        return attn.Wq(x).view(x.shape[0], -1, hd)
    if _has(attn, "project_q"):  # CPM-Ant
        return attn.project_q(x).view(x.shape[0], -1, hd)
    if _has(attn, "q_proj"):  # Llama, Mistral, Qwen2/3, Gemma2/3, OLMo2
        return _norm_heads(_qk_norm(attn, "q"), attn.q_proj(x), hd)
    if _has(attn, "mp_num"):  # CodeGen
        return F.linear(x, *_rows(attn.qkv_proj, _codegen_rows(attn, 0))).view(x.shape[0], -1, hd)
    if _fused_qkv(attn) is not None:  # Phi3, DBRX, MPT: [q | k | v] rows
        width = _query_heads(attn) * hd
        return _clipped(attn, F.linear(x, *_rows(_fused_qkv(attn), slice(0, width)))).view(x.shape[0], -1, hd)
    if _has(attn, "query_key_value"):  # GPT-NeoX, Persimmon, Bloom, Falcon: per head or K/V group [q | k | v]
        q = F.linear(x, *_rows(attn.query_key_value, _neox_rows(attn, 0)))
        return _norm_heads(_qk_norm(attn, "q"), q, hd)
    if isinstance(_attr(attn, "c_attn", None), nn.Linear):  # GPTBigCode
        return F.linear(x, *_rows(attn.c_attn, _bigcode_rows(attn, 0))).view(x.shape[0], -1, hd)
    if _has(attn, "c_attn"):  # GPT-2 (Conv1D: y = x W + b, W of shape (d, 3d))
        width = attn.split_size
        return (x @ attn.c_attn.weight[:, :width] + attn.c_attn.bias[:width]).view(x.shape[0], -1, hd)
    raise _no_adapter(attn)


def latent_query(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normed low-rank query of latent attention (what a sparse attention's indexer reads too), times the scale
    dots3 gives it (``q_lora_scale``)."""
    q = attn.q_a_layernorm(attn.q_a_proj(x))
    scale = _attr(attn, "q_lora_scale", None)
    return q if scale is None else q * scale


def _latent_query_gate(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AXK2's queries (N, heads, qk_head_dim) and output-gate logits (N, heads x v_head_dim) of tokens x (N, d): one
    projection of the normed low-rank query beside the raw one, split per head."""
    compressed = attn.q_a_proj(x)
    fused = attn.q_gate_proj(torch.cat([attn.q_a_layernorm(compressed), compressed], dim=-1))
    q, gate = fused.view(x.shape[0], -1, attn.qk_head_dim + attn.v_head_dim).split(
        [attn.qk_head_dim, attn.v_head_dim], dim=-1)
    return q, gate.reshape(x.shape[0], -1)


def project_kv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (N, kv heads, head_dim) of tokens x (N, d), before rotary; under latent attention the pair the
    cache holds instead: the normalised KV latent and the shared rotary key, each (N, 1, width)."""
    n = x.shape[0]
    if is_latent(attn):
        latent, shared = attn.kv_a_proj_with_mqa(x).split([attn.kv_lora_rank, attn.qk_rope_head_dim], dim=-1)
        latent = attn.kv_a_layernorm(latent.contiguous())
        scale, norm = _attr(attn, "kv_lora_scale", None), _attr(attn, "k_rope_only_layernorm", None)  # dots3
        latent = latent if scale is None else latent * scale
        return latent.view(n, 1, -1), (shared if norm is None else norm(shared)).view(n, 1, -1)
    hd = _head_dim(attn)
    if is_mixture_of_attention(attn):  # JetMoE: [k | v]
        k, v = attn.kv_proj(x).chunk(2, dim=-1)
        return k.reshape(n, -1, hd), v.reshape(n, -1, hd)
    if _has(attn, "Wk"):  # CTRL
        return attn.Wk(x).view(n, -1, hd), attn.Wv(x).view(n, -1, hd)
    if _has(attn, "project_k"):  # CPM-Ant
        return attn.project_k(x).view(n, -1, hd), attn.project_v(x).view(n, -1, hd)
    if _has(attn, "k_proj"):
        return _norm_heads(_qk_norm(attn, "k"), attn.k_proj(x), hd), _project_v(attn, x)
    if _has(attn, "mp_num"):
        k, v = (F.linear(x, *_rows(attn.qkv_proj, _codegen_rows(attn, part))) for part in (1, 2))
        return k.view(n, -1, hd), v.view(n, -1, hd)
    if _fused_qkv(attn) is not None:
        width = _query_heads(attn) * hd
        k, v = _clipped(attn, F.linear(x, *_rows(_fused_qkv(attn), slice(width, None)))).chunk(2, dim=-1)
        return k.reshape(n, -1, hd), v.reshape(n, -1, hd)
    if _has(attn, "query_key_value"):
        k, v = (F.linear(x, *_rows(attn.query_key_value, _neox_rows(attn, part))) for part in (1, 2))
        k, v = _norm_heads(_qk_norm(attn, "k"), k, hd), v.view(n, -1, hd)
        if _attr(attn, "new_decoder_architecture", False):  # Falcon caches each group's K/V once per query head
            k, v = (t.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1) for t in (k, v))
        return k, v
    if isinstance(_attr(attn, "c_attn", None), nn.Linear):
        k, v = (F.linear(x, *_rows(attn.c_attn, _bigcode_rows(attn, part))) for part in (1, 2))
        return k.view(n, -1, hd), v.view(n, -1, hd)
    if _has(attn, "c_attn"):
        width = attn.split_size
        k, v = (x @ attn.c_attn.weight[:, width:] + attn.c_attn.bias[width:]).split(width, dim=-1)
        return k.reshape(n, -1, hd), v.reshape(n, -1, hd)
    raise _no_adapter(attn)


def _fused_qkv(attn: nn.Module) -> nn.Linear | None:
    """A projection of [q | k | v] rows: ``qkv_proj`` (Phi3) or ``Wqkv`` (DBRX, MPT), else None."""
    fused = _attr(attn, "qkv_proj", None)
    return fused if fused is not None else _attr(attn, "Wqkv", None)


def _query_heads(attn: nn.Module) -> int:
    """Query heads of a fused [q | k | v] projection: MPT's ``n_heads``, else the config's."""
    return _attr(attn, "n_heads", None) or attn.config.num_attention_heads


def _clipped(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Projected q, k or v clamped to ±``clip_qkv`` where the family clips them (DBRX, MPT), else unchanged."""
    clip = _attr(attn, "clip_qkv", None)
    return x.clamp(-clip, clip) if clip else x


def _project_v(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Values (N, kv heads, value head_dim) of tokens x from ``v_proj``, or from ``k_proj`` in a layer without one
    (Gemma 4's K = V full-attention layers); through a value norm (Gemma 4's ``v_norm``) and times a value scale
    (MiMo-V2-Flash's ``v_scale``) where the family has them."""
    v = (_attr(attn, "v_proj", None) or attn.k_proj)(x)
    v = _norm_heads(_attr(attn, "v_norm", None), v, _attr(attn, "v_head_dim", None) or _head_dim(attn))
    scale = _attr(attn, "v_scale", None)
    return v * scale if isinstance(scale, float | int) else v


def _neox_rows(attn: nn.Module, part: int, fused: nn.Linear | None = None) -> torch.Tensor:
    """Rows of a fused projection (``query_key_value``, or ``fused``) holding part 0 (q), 1 (k) or 2 (v), laid out
    per K/V group as [q x n | k | v]: one query head per group (GPT-NeoX), or as :func:`_fused_groups` says."""
    fused = attn.query_key_value if fused is None else fused
    hd = _head_dim(attn)
    groups = _fused_groups(attn) or fused.out_features // (3 * hd)
    size = fused.out_features // (groups * hd)  # heads per group: n queries, a key and a value
    device = fused.weight.device
    offsets = torch.arange(size - 2, device=device) if part == 0 else torch.tensor([size - 3 + part], device=device)
    heads = torch.arange(groups, device=device)[:, None] * size + offsets
    return (heads.reshape(-1, 1) * hd + torch.arange(hd, device=device)).reshape(-1)


def _fused_groups(attn: nn.Module) -> int | None:
    """K/V groups of Falcon's fused ``query_key_value``: ``num_kv_heads`` under its new decoder architecture, one
    under multi-query attention; None (one per head) otherwise."""
    if _attr(attn, "new_decoder_architecture", False):
        return attn.num_kv_heads
    return 1 if _attr(attn, "multi_query", False) else None


def _codegen_rows(attn: nn.Module, part: int) -> torch.Tensor:
    """Rows of CodeGen's fused ``qkv_proj`` holding part 0 (q), 1 (k) or 2 (v): ``mp_num`` model-parallel shards,
    each [q | v | k] for its consecutive slice of the heads."""
    local = attn.embed_dim // attn.mp_num
    device = attn.qkv_proj.weight.device
    start = torch.arange(attn.mp_num, device=device)[:, None] * 3 * local + (0, 2, 1)[part] * local
    return (start + torch.arange(local, device=device)).reshape(-1)


def _bigcode_rows(attn: nn.Module, part: int) -> torch.Tensor | slice:
    """Rows of GPTBigCode's fused ``c_attn`` holding part 0 (q), 1 (k) or 2 (v): [q | k | v] with one K/V head under
    multi-query attention, else per head like GPT-NeoX."""
    if not attn.multi_query:
        return _neox_rows(attn, part, attn.c_attn)
    start = (0, attn.embed_dim, attn.embed_dim + attn.kv_dim)[part]
    return slice(start, start + (attn.embed_dim if part == 0 else attn.kv_dim))


def cache_entries(attn: nn.Module, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    """What the KV cache holds for tokens x (N, d) with their ``rope`` rows (empty without rotary): keys after rotary
    and any key norm, and values; under latent attention the latent and the rotated shared key."""
    k, v = project_kv(attn, x)
    if is_latent(attn):
        return k, _rotary(attn, v, *rope)
    k = _rotary(attn, k, *rope)
    return _after_rotary(attn, "key", k), v


def rotated_queries(attn: nn.Module, q: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Queries after rotary and any query norm; under latent attention only the trailing rotary part is rotated."""
    if is_latent(attn):
        nope = attn.qk_nope_head_dim
        return torch.cat([q[..., :nope], _rotary(attn, q[..., nope:], *rope)], dim=-1)
    q = _rotary(attn, q, *rope)
    return _after_rotary(attn, "query", q)


def query_scale(attn: nn.Module, kwargs: dict, batch: int, rows: Any, index: torch.Tensor, past: int
                 ) -> torch.Tensor | None:
    """Llama-4 attention scaling (Ministral3, Mistral4): each kept query (``index`` of ``rows``) times
    1 + β log(1 + ⌊position / original max⌋), as (N, 1, 1), at the ``position_ids`` the layer was handed (else cache
    length + index); the per-token scale the layer was handed as ``attention_scaling`` (B or 1, 1, T, 1) (Beam's
    full-attention layers); Llama 4's temperature 1 + s log(1 + ⌊(position + 1) / floor⌋) on its NoPE layers; None
    where none applies."""
    if _attr(attn, "attn_temperature_tuning", False) and not attn.use_rope:  # by cache position, as Llama 4 counts
        positions = (past + index).float()
        return (torch.log1p(torch.floor((positions + 1) / attn.floor_scale)) * attn.attn_scale + 1).reshape(-1, 1, 1)
    given = kwargs.get("attention_scaling")
    if given is not None:
        per_token = given.reshape(given.shape[0], -1).expand(batch, -1)[rows]
        return torch.gather(per_token, 1, index).reshape(-1, 1, 1)
    params = getattr(_attr(attn, "config", None), "rope_parameters", None)
    beta = params.get("llama_4_scaling_beta") if isinstance(params, dict) else None
    if beta is None:
        return None
    ids = kwargs.get("position_ids")
    positions = past + index if ids is None else torch.gather(ids.expand(batch, -1)[rows], 1, index)
    scale = 1 + beta * torch.log(1 + torch.floor(positions / params.get("original_max_position_embeddings")))
    return scale.reshape(-1, 1, 1)


def refuse_unsupported(attn: nn.Module, kwargs: dict) -> None:
    """ValueError naming what ``attn`` does that no adapter here applies: an input of :data:`UNSUPPORTED_INPUTS`, a
    key indexer other than DeepSeek Sparse Attention's, a q/k/v projection that is not position-wise (Zaya) or K/V
    shared from an earlier layer (Gemma 4; Zaya's convolutional attention mixes each token's queries and keys with its
    predecessors' and its values with the previous token's, so a kept query would need skipped neighbours'
    projections); masked execution runs them all."""
    for name, what in UNSUPPORTED_INPUTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"compact execution cannot run {type(attn).__name__}: it takes {name!r} ({what}), which "
                             "labkit's adapter does not apply; use execution='masked'")
    if not is_latent(attn) and _attr(attn, "indexer", None) is not None:
        raise ValueError(f"compact execution cannot run {type(attn).__name__}: its sparse attention picks each "
                         "query's key blocks with an indexer of its own (MiniMax-M3), which labkit's adapter does not "
                         "apply (only DeepSeek Sparse Attention's, on latent attention); use execution='masked'")
    proj = _attr(attn, "qkv_proj", None)
    if proj is not None and not isinstance(proj, nn.Linear):
        raise ValueError(f"compact execution cannot run {type(attn).__name__}: its q/k/v projection "
                         f"{type(proj).__name__} is not a linear layer (Zaya's convolutional attention mixes each "
                         "token's queries, keys and values with earlier tokens'); use execution='masked'")
    if _attr(attn, "is_kv_shared_layer", False):
        raise ValueError(f"compact execution cannot run {type(attn).__name__}: it reuses an earlier layer's K/V "
                         "(shared_kv_states, Gemma 4's KV-shared layers), which labkit's adapter does not read; use "
                         "execution='masked'")


def _no_adapter(attn: nn.Module) -> ValueError:
    return ValueError(
        f"compact execution has no adapter for attention module {type(attn).__name__}; looked for q_proj/k_proj/"
        "v_proj/o_proj (Llama family), qkv_proj (Phi3) or Wqkv/out_proj (DBRX), query_key_value/dense (GPT-NeoX), "
        "c_attn/c_proj (GPT-2), Wq/Wk/Wv (CTRL), project_q/k/v (CPM-Ant), experts/kv_proj (JetMoE) or "
        "kv_a_proj_with_mqa (latent attention); use execution='masked'"
    )


def _output_gate(attn: nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Gated attention: the mixed values ``o`` times a gate of each token's input ``x`` before the output projection,
    sigmoid of ``gate_proj`` (AFMoE, HRM; plus a bias per head, Beam), of the gate half of ``q_gate_proj`` (AXK2) or
    of ``g_proj`` (dots3), or softplus of ``g_proj`` (Laguna), per channel or one per head; ``o`` unchanged for an
    attention without one."""
    if _has(attn, "q_gate_proj"):
        logits = _latent_query_gate(attn, x.reshape(-1, x.shape[-1]))[1].view(o.shape)
        return (o * torch.sigmoid(logits.float())).to(o.dtype)
    if _has(attn, "g_proj"):
        logits = attn.g_proj(x)
        softplus = type(attn).__name__ in SOFTPLUS_G_PROJ
        gate = F.softplus(logits.float()).to(o.dtype) if softplus else torch.sigmoid(logits)
    elif _has(attn, "gate_proj"):
        logits = attn.gate_proj(x)
        bias = _attr(attn, "gate_bias", None)  # one per head (Beam)
        if bias is not None:
            logits = (logits.view(*logits.shape[:-1], bias.numel(), -1) + bias[:, None]).view(logits.shape)
        gate = torch.sigmoid(logits)
    else:
        return o
    if gate.shape[-1] != o.shape[-1]:  # one gate per head
        return (o.view(*o.shape[:-1], gate.shape[-1], -1) * gate.unsqueeze(-1)).view(o.shape)
    return o * gate


def project_out(attn: nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The attention output of the mixed values ``o`` (N, W, heads x head_dim) of tokens ``x`` (N, W, d): under
    JetMoE's mixture of attention each token's top-k output experts, routed by ``x`` as its queries were (the
    routing is per token), weighted and summed; else any output gate, then the output projection."""
    if is_mixture_of_attention(attn):
        n, width = o.shape[:2]
        topology = attn.experts.router(x.reshape(n * width, -1))[:4]
        return attn.experts.reduce(o.view(1, n * width, attn.top_k, -1), topology).view(n, width, -1)
    return _out_proj(attn, _output_gate(attn, x, o))


def _differential(attn: nn.Module) -> bool:
    """Whether ``attn`` is differential attention (DiffLlama): two softmax maps, the second's output subtracted."""
    return _has(attn, "lambda_q1")


def attended_values(attn: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The values (B, kv heads, S, head_dim) attended over; under differential attention, per kv head, the values
    of the first half of the kv heads beside those of the second half (repeated to every head, as its module does):
    one attention call then gives the outputs of its module's two calls (same queries and keys) side by side."""
    if not _differential(attn):
        return v
    first, second = (half.repeat(1, 2, 1, 1) for half in v.chunk(2, dim=1))
    return torch.cat([first, second], dim=-1)


def mixed_heads(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """The attention output (N, W, heads, width) as the output projection takes it, (N, W, heads x width); under
    differential attention the first half of the heads minus λ times the second, RMS-normed, times 1 - λ_init."""
    if _differential(attn):
        first, second = o.chunk(2, dim=2)
        lambda_1, lambda_2 = (torch.exp(torch.sum(q * k, dim=-1, dtype=torch.float32)).to(o.dtype)
                              for q, k in ((attn.lambda_q1, attn.lambda_k1), (attn.lambda_q2, attn.lambda_k2)))
        lam = lambda_1 - lambda_2 + attn.lambda_init
        o = (1 - attn.lambda_init) * attn.groupnorm(first - lam * second)
    return o.reshape(*o.shape[:2], -1)


def _out_proj(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """The output projection of the mixed values, after BitNet's ``attn_sub_norm`` where the family has one."""
    sub_norm = _attr(attn, "attn_sub_norm", None)
    o = sub_norm(o) if sub_norm is not None else o
    if _has(attn, "o_proj"):
        return attn.o_proj(o)
    if _has(attn, "out_proj"):  # GPT-J, GPT-Neo: then their output dropout
        dropout = _attr(attn, "resid_dropout", None)
        return attn.out_proj(o) if dropout is None else dropout(attn.out_proj(o))
    if _has(attn, "Wo"):  # ModernBERT-decoder
        return attn.out_drop(attn.Wo(o))
    if _has(attn, "attention_out"):  # CPM-Ant
        return attn.attention_out(o)
    if _has(attn, "dense"):  # GPT-NeoX, Falcon, Persimmon; Bloom's then drops out (hidden_dropout, in training)
        rate = _attr(attn, "hidden_dropout", 0.0)
        return F.dropout(attn.dense(o), rate, attn.training) if rate else attn.dense(o)
    return attn.resid_dropout(attn.c_proj(o))


class Settings(NamedTuple):
    """How an attention module's own forward scores its keys."""

    scale: float
    dropout: float
    window: int | None  # sliding window, or None for full attention
    softcap: float | None  # Gemma2's logit softcap
    sinks: torch.Tensor | None  # a learned sink logit per head (GPT-OSS, Granite-SWA): an extra softmax column


def attention_settings(attn: nn.Module) -> Settings:
    """The :class:`Settings` of an attention module, as its own forward uses them."""
    dropout = 0.0
    if attn.training:
        rate = _attr(attn, "attention_dropout", None)
        rate = _attr(attn, "attn_dropout", 0.0) if rate is None else rate  # GPT-2's is a module
        rate = _attr(attn, "attn_dropout_p", rate)  # MPT's
        dropout = float(rate.p if isinstance(rate, nn.Dropout) else rate or 0.0)
    sinks = _attr(attn, "sinks", None)
    return Settings(_scale(attn), dropout, _sliding_window(attn), _attr(attn, "attn_logit_softcapping", None),
                    sinks if isinstance(sinks, torch.Tensor) else None)


def _scale(attn: nn.Module) -> float:
    """The factor on query-key products: ``scaling``, ``inv_norm_factor`` (Falcon, Bloom), ``softmax_scale`` (MPT),
    1 / ``norm_factor`` (GPT-NeoX-Japanese), 1 / sqrt(``dim_head``) (CPM-Ant), or 1 for GPT-Neo, whose global and
    local layers (``attention_type``) do not scale scores by 1 / sqrt(head_dim)."""
    for name in ("scaling", "inv_norm_factor", "softmax_scale"):
        if _attr(attn, name, None) is not None:
            return _attr(attn, name)
    if _attr(attn, "norm_factor", None) is not None:
        return 1 / attn.norm_factor
    if _attr(attn, "dim_head", None) is not None:  # CPM-Ant divides its scores by sqrt(dim_head)
        return 1 / math.sqrt(attn.dim_head)
    if _attr(attn, "attention_type", None) in ("global", "local"):
        return 1.0
    raise ValueError(f"compact execution has no adapter for {type(attn).__name__}'s score scale (looked for scaling, "
                     "inv_norm_factor, softmax_scale, norm_factor, dim_head); use execution='masked'")


def alibi_bias(attn: nn.Module, kwargs: dict, batch: int, keys: int) -> torch.Tensor | None:
    """ALiBi biases on the scores of every key, (B, heads, 1, keys): Bloom's and Falcon-RW's ``alibi`` (B x heads, 1,
    keys) times the module's ``beta`` (Falcon-RW's is its score scale), or MPT's ``position_bias`` (heads, 1, L), its
    last ``keys`` columns; None without either."""
    alibi = kwargs.get("alibi")
    if alibi is not None:
        return attn.beta * alibi.view(batch, -1, 1, alibi.shape[-1])[..., -keys:]
    bias = kwargs.get("position_bias")
    if bias is None:
        return None
    if bias.dim() != 3 or bias.shape[1] != 1:
        raise ValueError(f"compact execution has no adapter for {type(attn).__name__}'s position_bias of shape "
                         f"{tuple(bias.shape)} (expected MPT's ALiBi, (heads, 1, length)); use execution='masked'")
    return bias[None, :, :, -keys:].expand(batch, -1, -1, -1)


def _sliding_window(attn: nn.Module) -> int | None:
    """The attention's sliding window, or None for full attention: set on the module for sliding layers only (Qwen2/3,
    Gemma2/3); else the config's, unless the config switches it off (``use_sliding_window=False``, Qwen2-MoE) or
    types this layer as full attention, or the family masks full-causal (:data:`FULL_CAUSAL`). A window of 0 or None
    means none (Qwen2-MoE's config says 0)."""
    if type(attn).__name__ in FULL_CAUSAL:
        return None
    if _has(attn, "sliding_window"):
        return attn.sliding_window or None
    if _attr(attn, "attention_type", None) in ("global", "local"):  # GPT-Neo: a window on its local layers
        return attn.config.window_size if attn.attention_type == "local" else None
    config = _attr(attn, "config", None)
    types = getattr(config, "layer_types", None)
    if getattr(config, "use_sliding_window", True) is False or (types and types[attn.layer_idx] != "sliding_attention"):
        return None
    return getattr(config, "sliding_window", None) or None


def position_embeddings(attn: nn.Module, hidden: torch.Tensor, kwargs: dict) -> Any:
    """The rotary rows this layer applies: the ``position_embeddings`` its decoder layer hands it, else those of its
    own ``rotary_emb`` at ``position_ids`` (Moshi); None on a layer without rotary (a full-attention layer of
    :data:`SLIDING_ONLY_ROTARY`: AFMoE's ``is_local_attention`` False, else no ``sliding_window``)."""
    local = _attr(attn, "is_local_attention", _attr(attn, "sliding_window", None) is not None)
    if type(attn).__name__ in SLIDING_ONLY_ROTARY and not local:
        return None
    rope, rotary = kwargs.get("position_embeddings"), _attr(attn, "rotary_emb", None)
    if rope is not None or rotary is None:
        return rope
    if kwargs.get("position_ids") is None:
        raise ValueError(f"compact execution cannot run {type(attn).__name__}: it computes its rotary embedding from "
                         "position_ids, which its decoder layer did not hand it; use execution='masked'")
    return rotary(hidden, kwargs["position_ids"])


def query_key_chunks(attn: nn.Module, cache: Any, key_valid: torch.Tensor | None, qpos: torch.Tensor, S: int
            ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Llama 4's chunked attention (``attention_chunk_size`` on its chunked_attention layers): the chunk of each kept
    query at ``qpos`` (rows, W) and of each of the S held keys (rows, S), by position from the row's first real token
    as transformers' chunked mask counts it; None for any other layer."""
    config = _attr(attn, "config", None)
    size, types = getattr(config, "attention_chunk_size", None), getattr(config, "layer_types", None)
    if size is None or not types or types[attn.layer_idx] != "chunked_attention":
        return None
    start = self_attention_cache(cache).get_seq_length(attn.layer_idx) - S if cache is not None else 0  # first held
    pad = (key_valid.cumsum(-1) == 0).sum(-1, keepdim=True) if key_valid is not None else 0
    keys = start + torch.arange(S, device=qpos.device)[None, :] - pad
    return torch.div(start + qpos - pad, size, rounding_mode="floor"), torch.div(keys, size, rounding_mode="floor")


def rope_rows(attn: nn.Module, rope: Any, batch: int) -> Rope:
    """The ``position_embeddings`` a decoder layer hands its attention, each (B, T, width): (cos, sin) (GPT-J hands
    (sin, cos)), one complex tensor (DeepSeek-V2's latent attention, Llama 4), or () without rotary."""
    if rope is None or not _attr(attn, "use_rope", True):  # Llama 4's NoPE layers are handed one and ignore it
        return ()
    if torch.is_tensor(rope) and rope.is_complex():
        return (rope.expand(batch, -1, -1),)
    if not (isinstance(rope, tuple | list) and len(rope) == 2):
        raise ValueError(
            f"compact execution has no adapter for {type(attn).__name__}'s rotary embedding (position_embeddings "
            f"{type(rope).__name__}, expected a (cos, sin) pair); use execution='masked'"
        )
    first, second = (c.expand(batch, -1, -1) for c in rope)
    apply = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    return (second, first) if apply is not None and _gptj_style(apply) else (first, second)


def self_attention(attn: nn.Module) -> nn.Module:
    """The module that computes the attention: GPT-Neo's ``GPTNeoAttention`` only dispatches to the global or local
    self-attention it holds as ``attention``."""
    inner = _attr(attn, "attention", None)
    return inner if isinstance(inner, nn.Module) and _has(attn, "attention_layers") else attn


def layer_index(attn: nn.Module) -> int:
    """The attention's layer index in the KV cache (``layer_id`` in GPT-Neo)."""
    return attn.layer_idx if _has(attn, "layer_idx") else attn.layer_id


def share_kv(attn: nn.Module, kwargs: dict, keys: torch.Tensor, values: torch.Tensor) -> None:
    """The layer's K/V (after the cache update) in ``shared_kv_states`` where its forward keeps them there for later
    layers or an assistant model (Gemma 4's ``store_full_length_kv``)."""
    if _attr(attn, "store_full_length_kv", False):
        kwargs["shared_kv_states"][attn.layer_type] = keys, values
