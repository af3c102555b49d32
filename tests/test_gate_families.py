"""Residual gates and budgeted skipping on every decoder family add_gates finds by structure (labkit issue #13).

Each family is a tiny random model built from its config (hidden 32, 2 layers, vocab 64; nothing downloaded). The
``expect`` column is the layout :func:`labkit.layout.architecture` must find: post-branch norms where the family
normalises a branch output before the residual add, and GPT-NeoX's parallel residual.
"""

from typing import Any

import pytest
import torch
import transformers

from labkit import gate, layout, skip
from labkit.skip import adapters, compact, handed_scores, kv_cache
from tests import test_families
from tests.gate_helpers import BOS, EOS, PAD, V, budget_generate, check_round_trip, randomize_gates, tokens

COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    eos_token_id=EOS,
    pad_token_id=PAD,
    bos_token_id=BOS,
    tie_word_embeddings=True,
)
SEQ = ("self_attn", "mlp", None, None, False)  # attention, mlp, attention post-norm, mlp post-norm, parallel
POST = ("self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm", False)
GEMMA = dict(head_dim=8, query_pre_attn_scalar=8, attn_implementation="eager")  # eager: Gemma2's logit softcap
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
           v_head_dim=12, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
           first_k_dense_replace=1)  # multi-head latent attention, a dense first layer, then MoE
FAMILIES = {
    # name: (config class, model class, config kwargs, expected layout)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}, SEQ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": 5}, SEQ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 1}, SEQ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 8}, SEQ),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"num_key_value_heads": 2, "sliding_window": 5, **GEMMA}, POST),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"num_key_value_heads": 2, **GEMMA}, POST),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 2}, SEQ),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {"num_key_value_heads": 2}, POST),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}, ("attn", "mlp", None, None, False)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}, ("attention", "mlp", None, None, True)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {"num_key_value_heads": 2, "partial_rotary_factor": 0.25},
                 SEQ),
    "phi": ("PhiConfig", "PhiForCausalLM", {"partial_rotary_factor": 0.5}, ("self_attn", "mlp", None, None, True)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", {"rotary_dim": 4, "n_inner": 64}, ("attn", "mlp", None, None, True)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2}, SEQ),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",  # its config's sliding_window=0 means none
                  {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                   "shared_expert_intermediate_size": 32}, SEQ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
              SEQ),
    # a residual multiplier (muP: h + 0.22 branch), attention sinks and sliding layers
    "granite_swa": ("GraniteSWAConfig", "GraniteSWAForCausalLM",
                    {"num_key_value_heads": 2, "residual_multiplier": 0.22, "sliding_window": 5,
                     "attn_implementation": "eager"}, SEQ),
    # an output gate per head (softplus) before the output projection, q/k norms, an MoE feed-forward
    "laguna": ("LagunaConfig", "LagunaForCausalLM",
               {"num_key_value_heads": 2, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2,
                "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16}, SEQ),
    # multi-head latent attention: the cache holds a low-rank KV latent; rotary on interleaved pairs of part of a head
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", MLA, SEQ),
    # ... with DeepSeek-V2's complex rotary frequencies and a full-rank query
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", {**MLA, "q_lora_rank": None}, SEQ),
    # a norm of the mixed values before the output projection
    "bitnet": ("BitNetConfig", "BitNetForCausalLM", {"num_key_value_heads": 2}, SEQ),
    # the attention one level down (in norm_attn_norm, with the pre-norms), a fused Wqkv clipped to clip_qkv, an MoE
    "dbrx": ("DbrxConfig", "DbrxForCausalLM",
             {"d_model": 32, "n_heads": 4, "n_layers": 2, "tie_word_embeddings": False,
              "attn_config": {"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 0.1},  # clips about 40 % of them
              "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}},
             ("norm_attn_norm.attn", "ffn", None, None, False)),
    # the MLP output gets the attention output added in place; multi-query [q x 4 | k | v] fused projection
    "falcon": ("FalconConfig", "FalconForCausalLM", {}, ("self_attention", "mlp", None, None, True)),
    # ... and the new decoder architecture: [q x 2 | k | v] per K/V group, K/V cached once per query head
    "falcon_grouped": ("FalconConfig", "FalconForCausalLM", {"num_kv_heads": 2, "new_decoder_architecture": True},
                       ("self_attention", "mlp", None, None, True)),
    # ALiBi biases instead of rotary (handed both), a per-head fused projection, sequential residual
    "falcon_rw": ("FalconConfig", "FalconForCausalLM",
                  {"alibi": True, "multi_query": False, "num_kv_heads": 4, "parallel_attn": False},
                  ("self_attention", "mlp", None, None, False)),
    # branches that take the residual and add it themselves; ALiBi per key with left padding (Bloom), clipped q/k/v
    # and a fixed ALiBi table (MPT)
    "bloom": ("BloomConfig", "BloomForCausalLM", {"attn_implementation": "eager"},
              ("self_attention", "mlp", None, None, False)),
    "mpt": ("MptConfig", "MptForCausalLM",
            {"max_seq_len": 64, "attn_config": {"clip_qkv": 0.5}, "attn_implementation": "eager"},
            ("attn", "ffn", None, None, False)),
    # a shared MLP beside the MoE, on its input, added to its output: gated with it
    "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                         {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
                          "shared_intermediate_size": 32, "residual_multiplier": 0.22},
                         ("self_attn", "block_sparse_moe", None, None, False)),
    # the feed-forward inline in the layer's own forward: fc1 is the gated branch, fc2's output is what it scales;
    # OPT flattens the tokens to (B x T, d) before it
    "opt": ("OPTConfig", "OPTForCausalLM", {"ffn_dim": 64, "word_embed_proj_dim": 32},
            ("self_attn", "fc1", None, "fc2", False)),
    "xglm": ("XGLMConfig", "XGLMForCausalLM", {"ffn_dim": 64, "attn_implementation": "eager"},
             ("self_attn", "fc1", None, "fc2", False)),
    # residual sub-blocks (each adds the residual itself: the branches inside them are gated); an attention handed
    # its mask and relative position bias per (query, key), called with positional arguments, over 32 prompt tokens
    # ahead of the input that attend bidirectionally with it
    "cpmant": ("CpmAntConfig", "CpmAntForCausalLM",
               {"dim_head": 8, "dim_ff": 64, "position_bias_num_buckets": 32, "position_bias_max_distance": 64,
                "init_std": 0.1, "attn_implementation": "eager"},  # init_std 1: logits ~15, rounding past 1e-5
               ("self_att.self_attention", "ffn.ffn", None, None, False)),
    "gpt_neox_sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {"use_parallel_residual": False},
        ("attention", "mlp", None, None, False),
    ),
}
PROMPT_AHEAD = {"cpmant": 32}  # families that run learned prompt tokens ahead of the input and ignore attention_mask
GPT2_NAMES = dict(n_embd=32, n_layer=2, n_head=4, n_inner=64)


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """The tiny random causal LM of ``family`` in eval mode."""
    torch.set_num_threads(1)
    config_name, model_name, extra, _ = FAMILIES[family]
    kwargs = {**COMMON, **extra}
    if family == "gpt2":
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            kwargs.pop(key)
        kwargs.update(GPT2_NAMES)
    attn = kwargs.pop("attn_implementation", "sdpa")
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)._from_config(config, attn_implementation=attn).eval()
    model.generation_config.pad_token_id = PAD
    return model


def assert_compact_matches_masked(model: torch.nn.Module) -> None:
    """Compact execution gives the masked logits at every real token of a left-padded batch, skipping > 30 %."""
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    logits = {}
    for execution in ("masked", "compact"):
        with torch.no_grad(), skip.budget(model, 0.4, execution=execution, measure_flops=False) as stats:
            logits[execution] = model(x, attention_mask=mask).logits
        assert stats.skipped_fraction > 0.3
    torch.testing.assert_close(logits["compact"][mask.bool()], logits["masked"][mask.bool()], atol=1e-5, rtol=1e-5)


def assert_rowwise_decoding_matches_masked(model: torch.nn.Module) -> None:
    """Greedy decoding with per-row decisions (sequence scope, random ranking) at batch 1 and 2 reaches the one-token
    paths that keep, or skip, a branch for every row of a step: compact gives the masked tokens and scores."""
    for batch in (1, 2):
        with torch.no_grad():
            runs = {execution: budget_generate(model, tokens(batch, 6), execution, scope="sequence",
                                               ranking="random")[0] for execution in ("masked", "compact")}
        assert torch.equal(runs["masked"].sequences, runs["compact"].sequences)
        for masked_scores, compact_scores in zip(runs["masked"].scores, runs["compact"].scores, strict=True):
            torch.testing.assert_close(compact_scores, masked_scores, atol=1e-5, rtol=1e-5)


def gated(family: str, kind: str = "vector") -> torch.nn.Module:
    """Gated, with random gate weights so that importances differ between tokens."""
    model = gate.add_gates(build(family), kind=kind)
    return randomize_gates(model) if kind != "none" else model


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_layout_found_by_structure_and_open_gates_equal_ungated(family):
    model = build(family)
    x = tokens()
    dense = model(x).logits
    arch = layout.architecture(model)
    assert (arch.attention, arch.mlp, arch.attention_norm, arch.mlp_norm, arch.parallel) == FAMILIES[family][3]
    assert len(layout.decoder_layers(model)) == 2
    gate.add_gates(model)
    assert [b.name for b in gate.gated_branches(model)] == ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    torch.testing.assert_close(model(x).logits, dense, atol=0.1, rtol=0.0)  # sigmoid(5) = 0.993
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.weight.zero_()
            b.residual_gate.linear.bias.fill_(40.0)  # g = 1 exactly in float32
    torch.testing.assert_close(model(x).logits, dense, atol=1e-6, rtol=0.0)
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.bias.fill_(-40.0)  # g = 0: every branch closed, the residual passes through
    closed = model(x).logits
    assert not torch.allclose(closed, dense, atol=1e-3)
    gate.remove_gates(model)
    torch.testing.assert_close(model(x).logits, dense, atol=0.0, rtol=0.0)
    assert not gate.gated_branches(model)
    for norm in (arch.attention_norm, arch.mlp_norm):  # the post-norm hooks are gone too
        if norm is not None:
            assert not getattr(layout.decoder_layers(model)[0], norm)._forward_hooks


def test_gate_scales_what_the_residual_receives(family):
    """With every gate at 0 each layer is the identity on the residual stream; a gate of 0.5 halves what it adds."""
    model = gate.add_gates(build(family))
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.weight.zero_()
            b.residual_gate.linear.bias.fill_(-40.0)
    seen = []
    layer = layout.decoder_layers(model)[1]
    hook = layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    pre = layer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get("hidden_states", a[0] if a else None)), with_kwargs=True
    )
    model(tokens())
    hook.remove()
    pre.remove()
    torch.testing.assert_close(seen[1], seen[0], atol=1e-6, rtol=0.0)
    # A scalar gate of 0.5 halves what layer 0's attention adds to the residual (its input is the same as without
    # gates). Gating before a post-norm instead would be (partly) undone by the norm.
    model = build(family)
    arch = layout.architecture(model)

    def contribution() -> torch.Tensor:
        added = []
        module = layout.submodule(layout.decoder_layers(model)[0], arch.attention_norm or arch.attention)

        def hook(m: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            y = out[0] if isinstance(out, tuple) else out
            residual = layout.given_residual(m, args, kwargs)  # Bloom's attention returns residual + its contribution
            added.append(y if residual is None else y - residual)

        hook = module.register_forward_hook(hook, with_kwargs=True)
        model(tokens())
        hook.remove()
        return added[0]

    ungated = contribution()
    gate.add_gates(model, kind="scalar")
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.weight.zero_()
            b.residual_gate.linear.bias.zero_()  # g = sigmoid(0) = 0.5
    torch.testing.assert_close(contribution(), 0.5 * ungated, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_compact_equals_masked(family, scope):
    model = gated(family)
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :2] = 0  # left padding in one row
    with skip.budget(model, 0.4, scope=scope, record=True, measure_flops=False) as masked_stats:
        masked = model(x, attention_mask=mask).logits
    with skip.budget(model, 0.4, scope=scope, execution="compact", measure_flops=False) as compact_stats:
        compact_logits = model(x, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(compact_logits[real], masked[real], atol=1e-5, rtol=1e-5)
    assert compact_stats.skipped_fraction == masked_stats.skipped_fraction > 0.3
    if family in PROMPT_AHEAD:  # the attention mask is not the model's: its prompt and every input token are real
        real = torch.ones(3, PROMPT_AHEAD[family] + x.shape[1], dtype=torch.bool)
    if scope == "batch":
        n = int(real.sum())  # 25 real tokens
        assert masked_stats.skipped_fraction == pytest.approx(int(0.4 * n) / n)
    else:
        for rec in masked_stats.records.values():  # floor(0.4 * 7 | 9) = 2 | 3 per row
            assert ((~rec["keep"] & real).sum(1) == (0.4 * real.sum(1)).floor().long()).all()


def test_compact_saves_flops(family):
    model = gated(family)
    with skip.budget(model, 0.5, execution="compact") as stats:
        model(tokens())
    assert stats.flops < 0.9 * stats.dense_flops


def test_generate_copy_forward_and_compact_decoding(family, monkeypatch):
    model = gated(family)
    prompt = tokens(3, 4)
    with skip.budget(model, 0.4, record=True, measure_flops=False) as stats:
        out = model(prompt, use_cache=True)
    cache = kv_cache.self_attention_cache(kv_cache.output_cache(out))
    skipped = ~stats.records["1.attn"]["keep"]
    assert skipped.any()
    for b, t in skipped.nonzero().tolist():  # copy-forward: layer 1's K/V of a skipped token are layer 0's
        torch.testing.assert_close(cache.layers[1].keys[b, :, t], cache.layers[0].keys[b, :, t], atol=0.0, rtol=0.0)
        torch.testing.assert_close(cache.layers[1].values[b, :, t], cache.layers[0].values[b, :, t], atol=0, rtol=0)
    b, t = (~skipped).nonzero()[0].tolist()
    assert not torch.equal(cache.layers[1].keys[b, :, t], cache.layers[0].keys[b, :, t])

    projected = []  # tokens whose K/V compact execution computes, per attention call
    project_kv = adapters.project_kv
    monkeypatch.setattr(adapters, "project_kv", lambda attn, x: projected.append(x.shape[0]) or project_kv(attn, x))
    runs = {}
    for execution in ("masked", "compact"):
        runs[execution], stats = budget_generate(model, prompt, execution, record=True)
        assert 0.3 < stats.skipped_fraction < 0.5  # one of 3 tokens skipped per decoding step
    assert torch.equal(runs["masked"].sequences, runs["compact"].sequences)
    for masked_scores, compact_scores in zip(runs["masked"].scores, runs["compact"].scores, strict=True):
        torch.testing.assert_close(compact_scores, masked_scores, atol=1e-5, rtol=1e-5)
    decode_calls = projected[len(projected) - 2 * 4 :]  # 4 decoding steps x 2 layers
    assert decode_calls[1::2] == [2] * 4  # layer 1: the skipped token of each step is not computed
    assert decode_calls[0::2] == [3] * 4  # layer 0 has no layer to copy from: every token computed


def test_save_and_from_pretrained_round_trip(family, tmp_path):
    check_round_trip(gated(family, kind="vector"), tmp_path)


def test_static_skip_and_shortgpt(family):
    model = build(family)
    x = tokens()
    order = skip.shortgpt_order(model, [x])
    assert sorted(order) == ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    for layers in ([0], [order[0]]):
        with skip.static_skip(model, layers, measure_flops=False):
            masked = model(x).logits
        with skip.static_skip(model, layers, execution="compact", measure_flops=False):
            compact_logits = model(x).logits
        torch.testing.assert_close(compact_logits, masked, atol=1e-5, rtol=1e-5)
    assert not gate.gated_branches(model)


def test_sliding_window_longer_than_the_window():
    """Mistral (one window everywhere) and Gemma2 (sliding layer 0, global layer 1) past a window of 5 tokens."""
    for family in ("mistral", "gemma2"):
        model = gated(family)
        x = tokens(2, 12)
        with skip.budget(model, 0.4, measure_flops=False):
            masked = model(x).logits
        with skip.budget(model, 0.4, execution="compact", measure_flops=False):
            compact_logits = model(x).logits
        torch.testing.assert_close(compact_logits, masked, atol=1e-5, rtol=1e-5)


def test_detection_finds_the_layout_of_every_family_decoder_lm_builds_and_base_models_work():
    from labkit.models.decoder_lm import ARCHS, build_causal_lm

    layouts = {"llama": layout.Architecture(("model", "layers"), "self_attn", "mlp"),
               "qwen2": layout.Architecture(("model", "layers"), "self_attn", "mlp"),
               "gpt2": layout.Architecture(("transformer", "h"), "attn", "mlp")}
    assert set(layouts) == set(ARCHS)
    for arch, expected in layouts.items():
        model = build_causal_lm(arch, vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=0).eval()
        assert layout.architecture(model) == expected
    base = build("llama").model  # LlamaModel: the layers sit directly on it
    assert layout.architecture(base).layers == ("layers",)
    gate.add_gates(base)
    assert len(gate.gated_branches(base)) == 4
    base(tokens())


def test_llama4_masked_equals_compact():
    """Llama4's MoE feed-forward returns (flattened tokens, router logits), its attention takes one complex rotary
    tensor, its NoPE layers scale queries by position and its rotary layers attend within chunks: with chunks of 4
    and a temperature from position 1 on, compact execution gives the masked logits of a left-padded batch."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(**{**COMMON, "num_key_value_heads": 2, "num_local_experts": 4,
                                              "num_experts_per_tok": 1, "intermediate_size_mlp": 64, "head_dim": 8,
                                              "attention_chunk_size": 4, "floor_scale": 2, "no_rope_layers": [1, 0]})
    model = gate.add_gates(transformers.Llama4ForCausalLM._from_config(config).eval())
    assert_compact_matches_masked(model)
    assert_rowwise_decoding_matches_masked(randomize_gates(model))  # its MoE run whole returns tokens flattened


def test_compact_follows_the_mask_an_attention_is_handed():
    """CPM-Ant hands its attention the mask of every (query, key) pair, by position with the cache: its prompt and
    input attend bidirectionally, so in a cached forward a kept query reads later skipped tokens, whose K/V compact
    execution computes rather than copies forward (a causal mask would need only the kept ones); a query reading no
    key (CPM-Ant pads by token id 0, left) outputs zeros, as the module's own does."""
    keep = torch.tensor([[True, False, False]])
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None]
    assert handed_scores.needed_keys(keep, causal).tolist() == [[True, False, False]]
    assert handed_scores.needed_keys(keep, torch.ones_like(causal)).tolist() == [[True, True, True]]
    model = gated("cpmant")
    x = tokens()
    x[1, :3] = 0  # three padded queries in row 1 (row 0 has one)
    runs = {}
    for execution in ("masked", "compact"):
        with torch.no_grad(), skip.budget(model, 0.4, execution=execution, measure_flops=False):
            out = model(x, use_cache=True)
        runs[execution] = out.logits, kv_cache.output_cache(out)
    (masked, masked_cache), (compacted, compact_cache) = runs["masked"], runs["compact"]
    torch.testing.assert_close(compacted, masked, atol=1e-5, rtol=1e-5)
    for layer in range(2):  # the same cache: skipped tokens' K/V copied forward, as masked execution leaves them
        torch.testing.assert_close(kv_cache.layer_kv(compact_cache, layer, model),
                                   kv_cache.layer_kv(masked_cache, layer, model), atol=1e-4, rtol=1e-4)
    assert_compact_matches_masked(model)
    assert_rowwise_decoding_matches_masked(model)
    # its branches see the prompt's tokens too, so protect could not place the input's first ones: a clear error
    with pytest.raises(ValueError, match="protect=1: branch '0.attn' sees 41 tokens per row where the forward's "
                                         "input_ids hold 9"), skip.budget(model, 0.4, "sequence", protect=1):
        model(x)


def test_copy_forward_takes_the_nearest_layer_of_the_same_head_shape():
    """MiMo-V2-Flash's sliding layers cache twice the K/V heads of its full-attention ones: a token skipped at a layer
    takes the K/V of the nearest earlier layer of that layer's head shape (layer 2 from 0, 3 from 1); layer 1, with
    none before it, keeps its own. Compact decoding gives the masked tokens and scores."""
    torch.manual_seed(0)
    config = transformers.MiMoV2FlashConfig(**{
        **COMMON, "num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 8, "v_head_dim": 8,
        "sliding_window": 16, "layer_types": ["full_attention", "sliding_attention"] * 2,
        "mlp_layer_types": ["dense"] * 4})
    model = randomize_gates(gate.add_gates(transformers.MiMoV2FlashForCausalLM._from_config(config).eval()))
    model.generation_config.pad_token_id = PAD
    prompt = tokens(3, 4)
    with torch.no_grad(), skip.budget(model, 0.4, record=True, measure_flops=False) as stats:
        cache = kv_cache.output_cache(model(prompt, use_cache=True))
    assert [kv_cache.copy_source(cache, layer, model) for layer in (1, 2, 3)] == [None, 0, 1]
    for layer, source in ((2, 0), (3, 1)):
        skipped = ~stats.records[f"{layer}.attn"]["keep"]
        assert skipped.any()
        for copied, original in zip(kv_cache.layer_kv(cache, layer, model), kv_cache.layer_kv(cache, source, model),
                                    strict=True):
            assert torch.equal(copied.transpose(1, 2)[skipped], original.transpose(1, 2)[skipped])
    with torch.no_grad():
        runs = {execution: budget_generate(model, prompt, execution)[0] for execution in ("masked", "compact")}
    assert torch.equal(runs["masked"].sequences, runs["compact"].sequences)
    for masked_scores, compact_scores in zip(runs["masked"].scores, runs["compact"].scores, strict=True):
        torch.testing.assert_close(compact_scores, masked_scores, atol=1e-5, rtol=1e-5)


def test_the_shared_mlp_is_skipped_with_the_mlp_it_sits_beside():
    """Granite-MoE-shared's shared_mlp (a SiblingBranch) runs under its MLP's keep mask: a token the MLP skips gets
    nothing from either. Only a branch with such a sibling keeps its keep mask after its forward."""
    model = gated("granitemoeshared")
    layer = layout.decoder_layers(model)[0]
    outputs = []
    layer.shared_mlp.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.no_grad(), skip.budget(model, 0.5, measure_flops=False):
        model(tokens())
        keep = layer.block_sparse_moe.last_keep
    assert keep is not None and not keep.all() and keep.any()
    assert not outputs[0][~keep].any() and outputs[0][keep].abs().sum() > 0
    others = [b for b in gate.gated_branches(model) if b is not layer.block_sparse_moe and b.role == "attn"]
    assert others and all(b.last_keep is None for b in others)


def test_a_skipped_step_s_zeros_stay_zero_when_a_family_adds_into_the_mlp_output():
    """Falcon adds its attention output into the MLP output in place: where a decoding step skips every row's MLP
    (step scope, ungated random skipping) the reused zeros are made again, never read back as a sum."""
    torch.manual_seed(0)
    config = transformers.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    model = gate.add_gates(transformers.FalconForCausalLM._from_config(config).eval(), kind="none")
    with torch.no_grad(), skip.budget(model, 0.5, scope="step", execution="compact", ranking="random",
                                      measure_flops=False) as stats:
        model.generate(tokens(1, 4), max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=PAD)
        constants = gate.gated_branches(model)[0].policy.constants
    zeros = [tensor for key, (tensor, _) in constants.items() if key[0] == "zeros"]
    assert stats.skipped_fraction > 0 and zeros and all(not z.any() for z in zeros)


def test_gemma4_kv_shared_layers_skip_masked_with_a_cache_and_refuse_compact_clearly():
    """Gemma 4's KV-shared layers cache nothing of their own (placeholder layers): masked skipping copies forward
    between the layers that do; compact execution names what it cannot read."""
    config = transformers.Gemma4TextConfig(**{
        **COMMON, "num_hidden_layers": 4, "num_kv_shared_layers": 2, "num_key_value_heads": 2, "head_dim": 8,
        "global_head_dim": 16, "layer_types": ["sliding_attention", "full_attention"] * 2})
    model = randomize_gates(gate.add_gates(transformers.Gemma4ForCausalLM._from_config(config).eval()))
    with torch.no_grad(), skip.budget(model, 0.4, measure_flops=False) as stats:
        model(tokens(), use_cache=True)
    assert stats.skipped_fraction > 0.3
    with pytest.raises(ValueError, match="reuses an earlier layer's K/V.*execution='masked'"):
        with torch.no_grad(), skip.budget(model, 0.4, execution="compact", measure_flops=False):
            model(tokens(), use_cache=True)


@pytest.mark.parametrize("family", ["opt", "xglm"])
def test_inline_feed_forward_decodes_rowwise(family):
    """A decoding step that skips the inline feed-forward for every row returns fc1's width, not the hidden width."""
    assert_rowwise_decoding_matches_masked(gated(family))


def test_compact_refuses_inputs_its_adapters_do_not_apply():
    """A cache slot per recurrent cycle (HRM) may not show in the 3-token probe; compact execution names the input
    instead of computing without it."""
    model = build("llama")
    attn = layout.decoder_layers(model)[1].self_attn
    hidden, keep = torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="LlamaAttention: it takes 'cycle_offset' .*execution='masked'"):
        compact.compact_attention(attn, hidden, keep, {"cycle_offset": 0})


def test_compact_applies_the_query_scale_a_layer_is_handed():
    """Beam hands its full-attention layers a per-token query scale (``attention_scaling``, (B, 1, T, 1)) that the
    3-token probe may not show: compact attention scales each kept query by it, so a scale of 2 acts as a softmax
    scale twice as large."""
    model = build("llama")
    attn = layout.decoder_layers(model)[1].self_attn
    hidden, keep = torch.randn(2, 4, 32), torch.tensor([[True, False, True, True], [False, True, True, False]])
    with torch.no_grad():
        scaled, _ = compact.compact_attention(attn, hidden, keep, {"attention_scaling": torch.full((1, 1, 4, 1), 2.0)})
        attn.scaling *= 2
        torch.testing.assert_close(scaled, compact.compact_attention(attn, hidden, keep, {})[0])


SPARSE = {"index_n_heads": 2, "index_head_dim": 8, "index_topk": 4}  # each query reads 4 keys its indexer picks


SPARSE_FAMILIES = {  # config and model class prefix: what else the family needs
    "DeepseekV32": ("DeepseekV32", {}),
    "GlmMoeDsa": ("GlmMoeDsa", {"indexer_types": ["full", "shared"], "mlp_layer_types": ["dense", "sparse"]}),
    "AXK2": ("AXK2", {"mlp_layer_types": ["dense", "sparse"]}),
    "Dots3Note": ("Dots3NoteText", {"layer_types": ["indexed_attention", "sliding_attention"],
                                    "mlp_layer_types": ["dense", "sparse"], "sliding_window": 4}),
}


@pytest.mark.parametrize("family", SPARSE_FAMILIES)
def test_compact_applies_deepseek_sparse_attention(family):
    """DeepSeek-V3.2's indexer picks each query's top-k keys (4 of up to 9 here), which the 3-token probe cannot show:
    compact execution runs the indexer over every token (its key cache holds them all) and reads only the picked keys,
    so compact == masked on a left-padded batch and in cached greedy decoding. GLM-MoE-DSA's second layer is
    "shared": it reuses the first layer's top-k, which compact execution hands on as the module does; AXK2 gates its
    output by a half of its query projection; dots3 scales its latents, norms its rotary key, gates per head and
    slides a window on its second layer."""
    torch.manual_seed(0)
    prefix, extra = SPARSE_FAMILIES[family]
    config = getattr(transformers, f"{prefix}Config")(**{**COMMON, **MLA, **SPARSE, **extra})
    model = getattr(transformers, f"{family}ForCausalLM")._from_config(config).eval()
    model = randomize_gates(gate.add_gates(model))
    assert tokens().shape[1] > SPARSE["index_topk"]  # the indexer leaves keys out
    assert_compact_matches_masked(model)
    assert_rowwise_decoding_matches_masked(model)  # a step that skips every row still runs the indexer
    with torch.no_grad():
        runs = {execution: budget_generate(model, tokens(3, 6), execution)[0] for execution in ("masked", "compact")}
    assert torch.equal(runs["masked"].sequences, runs["compact"].sequences)
    for masked_scores, compact_scores in zip(runs["masked"].scores, runs["compact"].scores, strict=True):
        torch.testing.assert_close(compact_scores, masked_scores, atol=1e-5, rtol=1e-5)


def test_compact_refuses_an_indexer_that_is_not_deepseek_sparse_attention():
    """MiniMax-M3's sparse layers pick key blocks with an indexer of their own, on attention that is not latent:
    compact execution names it instead of calling it as DeepSeek's."""
    config = test_families.build("minimax_m3_vl_text").config
    config.layer_types, config.index_n_heads, config.index_head_dim = ["full_attention", "minimax_m3_sparse"], 2, 8
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = randomize_gates(gate.add_gates(transformers.MiniMaxM3VLForCausalLM._from_config(config).eval()))
    with pytest.raises(ValueError, match="MiniMaxM3VLAttention: its sparse attention .* indexer of its own"):
        with torch.no_grad(), skip.budget(model, 0.4, execution="compact", measure_flops=False):
            model(tokens())


def test_compact_scales_queries_by_position_as_llama4_scaling_does():
    """Ministral3 multiplies each query by 1 + 0.1 log(1 + floor(position / 16384)): 1 on the 3-token probe, so the
    probe cannot see it; far into a sequence compact execution must scale as the module does."""
    torch.manual_seed(0)
    config = transformers.Ministral3Config(**{**COMMON, "num_key_value_heads": 2, "head_dim": 8})
    model = randomize_gates(gate.add_gates(transformers.Ministral3ForCausalLM._from_config(config).eval()))
    x = tokens()
    positions = torch.arange(x.shape[1])[None] + 3 * config.rope_parameters["original_max_position_embeddings"]
    logits = {}
    for execution in ("masked", "compact"):
        with torch.no_grad(), skip.budget(model, 0.4, execution=execution, measure_flops=False):
            logits[execution] = model(x, position_ids=positions).logits
    torch.testing.assert_close(logits["compact"], logits["masked"], atol=1e-5, rtol=1e-5)


def test_compact_returns_the_output_bias_the_layer_adds():
    """GPT-NeoX-Japanese's last attention returns its output bias for the layer to add (zero at initialisation, not
    in a checkpoint): compact execution returns it too, so compact == masked with a nonzero bias; partial rotary on
    an attention module without a config."""
    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
    config = transformers.GPTNeoXJapaneseConfig(**{**COMMON, "rope_parameters": rope})
    model = transformers.GPTNeoXJapaneseForCausalLM._from_config(config).eval()
    bias = layout.decoder_layers(model)[1].attention.dense_bias
    with torch.no_grad():
        bias.normal_()
    model = randomize_gates(gate.add_gates(model))
    logits = {}
    for execution in ("masked", "compact"):
        with torch.no_grad(), skip.budget(model, 0.4, execution=execution, measure_flops=False):
            logits[execution] = model(tokens()).logits
    torch.testing.assert_close(logits["compact"], logits["masked"], atol=1e-5, rtol=1e-5)


def test_compact_is_verified_in_float32_for_a_bf16_model():
    """An attention whose output is scaled by 1 + 2^-9, which compact execution does not apply. In bf16 the model's
    rounding (eps 2^-8) would hide that mismatch; the check widens the branch to float32 and refuses."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**COMMON)).eval()
    model.model.layers[1].self_attn.register_forward_hook(lambda module, args, out: (out[0] * (1 + 2**-9), *out[1:]))
    model = gate.add_gates(model).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"does not reproduce LlamaAttention \(branch 1.attn\)"):
        with torch.no_grad(), skip.budget(model, 0.4, execution="compact", measure_flops=False):
            model(tokens())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # widened for the check only
