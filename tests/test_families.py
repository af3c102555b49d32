"""GateSkip on every decoder-only text causal LM of the installed transformers (labkit issue #27).

Enumerates transformers' causal-LM auto mapping (model type -> class) minus :data:`EXCLUDED` (each with its reason),
builds every remaining family as a tiny random model from its config class (:data:`TINY` for the config fields it
has, :data:`OVERRIDES` per family; nothing downloaded) and records ``supported`` when all four checks pass: gated
forward (open gates give the ungated logits), masked == compact skipping, generate with a KV cache under a budget,
save / ``gate.from_pretrained`` round trip. A labkit ValueError / NotImplementedError / CacheLayoutError is a
``refused`` family; any other error is ``FAILED``. The test fails on every FAILED family and prints the share
supported (goal: >= 90 %).

Marked ``families``: tests/conftest.py deselects it unless ``-m`` names the marker, so ``make test`` skips it
(its fixed list is tests/test_gate_families.py); ``make test-families`` and ``make test-latest`` run it.
``LABKIT_FAMILIES_TABLE=docs/FAMILIES.md make test-families`` rewrites the docs table.
"""

import dataclasses
import inspect
import os
import re
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

import labkit
from labkit import gate, layout, skip
from labkit.skip import adapters, kv_cache
from tests.gate_helpers import BOS, EOS, PAD, V, budget_generate, check_round_trip, randomize_gates, tokens

MULTIMODAL = "multimodal"
RECURRENT = "state-space / hybrid-recurrent"


def decoder_half(model: str) -> str:
    return f"encoder-decoder: the decoder half of {model}, which cross-attends to the encoder"


def encoder_only(model: str) -> str:
    return f"encoder-only: {model}, a bidirectional encoder with an LM head (a decoder only inside an encoder-decoder)"


EXCLUDED = {  # model type -> why it is not a decoder-only text causal LM tested here
    "bailing_hybrid": f"{RECURRENT}: linear (delta-rule) attention layers between MLA layers",
    "bamba": f"{RECURRENT}: Mamba-2 layers with attention",
    "bart": decoder_half("BART"),
    "bert": encoder_only("BERT"),
    "bert-generation": decoder_half("BertGeneration"),
    "big_bird": encoder_only("BigBird"),
    "bigbird_pegasus": decoder_half("BigBird-Pegasus"),
    "blenderbot": decoder_half("Blenderbot"),
    "blenderbot-small": decoder_half("Blenderbot-small"),
    "blt": "byte latent transformer: local byte encoder and decoder joined to a global patch transformer by "
    "cross-attention, with an entropy-model patcher (no single stack of decoder layers)",
    "camembert": encoder_only("CamemBERT"),
    "data2vec-text": encoder_only("data2vec-text"),
    "dots3_note": f"{MULTIMODAL}: the vision-language config; its causal LM class is tested as dots3_note_text",
    "electra": encoder_only("ELECTRA"),
    "ernie": encoder_only("ERNIE 1-3"),
    "falcon_h1": f"{RECURRENT}: parallel Mamba-2 and attention mixers in every layer",
    "falcon_mamba": f"{RECURRENT}: Mamba layers only",
    "fuyu": f"{MULTIMODAL}: image patches fed into the decoder",
    "gemma3": f"{MULTIMODAL}: Gemma3ForConditionalGeneration (text-only Gemma 3 is gemma3_text)",
    "gemma3n": f"{MULTIMODAL}: Gemma3nForConditionalGeneration (text-only Gemma 3n is gemma3n_text)",
    "gemma4": f"{MULTIMODAL}: Gemma4ForConditionalGeneration (text-only Gemma 4 is gemma4_text)",
    "gemma4_assistant": "a multi-token-prediction drafter for assisted decoding: reads the target Gemma 4's KV "
    "states (shared_kv_states), not a standalone LM",
    "gemma4_unified": f"{MULTIMODAL}: Gemma4UnifiedForConditionalGeneration (text-only is gemma4_unified_text)",
    "gemma4_unified_assistant": "a multi-token-prediction drafter for assisted decoding: reads the target model's "
    "KV states (shared_kv_states), not a standalone LM",
    "git": f"{MULTIMODAL}: image-captioning decoder over image features",
    "got_ocr2": f"{MULTIMODAL}: OCR vision-language model",
    "gpt-sw3": "alias of gpt2: the same config class (GPT2Config) and model class; only the tokenizer differs",
    "granitemoehybrid": f"{RECURRENT}: Mamba-2 layers with attention",
    "jamba": f"{RECURRENT}: Mamba layers with attention",
    "kimi_linear": f"{RECURRENT}: Kimi delta attention (linear, recurrent) layers with MLA",
    "lara_mini": f"{RECURRENT}: gated delta net (linear attention) layers with attention",
    "lfm2": f"{RECURRENT}: gated short-convolution layers (with a conv state in the cache) with attention",
    "lfm2_moe": f"{RECURRENT}: gated short-convolution layers (with a conv state in the cache) with attention",
    "lfm3": f"{RECURRENT}: gated short-convolution layers (with a conv state in the cache) with attention",
    "llama4": f"{MULTIMODAL}: the vision-language Llama4Config; its text causal LM is tested as llama4_text",
    "mamba": f"{RECURRENT}: Mamba layers only",
    "mamba2": f"{RECURRENT}: Mamba-2 layers only",
    "marian": decoder_half("MarianMT"),
    "mbart": decoder_half("mBART"),
    "megatron-bert": encoder_only("Megatron-BERT"),
    "minimax": f"{RECURRENT}: lightning (linear) attention layers with softmax attention",
    "mllama": f"{MULTIMODAL}: Llama 3.2 Vision's text decoder, with cross-attention layers to image features",
    "moss_transcribe_diarize": f"{MULTIMODAL}: speech transcription and diarization",
    "musicgen": f"{MULTIMODAL}: a decoder over parallel audio codebooks (text-to-music)",
    "musicgen_melody": f"{MULTIMODAL}: a decoder over parallel audio codebooks (text-to-music)",
    "mvp": decoder_half("MVP"),
    "nemotron_h": f"{RECURRENT}: Mamba-2 layers with attention and MLP layers",
    "olmo_hybrid": f"{RECURRENT}: gated delta net (linear attention) layers with attention",
    "pegasus": decoder_half("Pegasus"),
    "phi4_multimodal": f"{MULTIMODAL}: vision and speech adapters in the decoder",
    "plbart": decoder_half("PLBart"),
    "prophetnet": decoder_half("ProphetNet"),
    "qwen3_5": f"{RECURRENT}: gated delta net layers with attention (vision-language config)",
    "qwen3_5_moe": f"{RECURRENT}: gated delta net layers with attention (vision-language config)",
    "qwen3_5_moe_text": f"{RECURRENT}: gated delta net layers with attention",
    "qwen3_5_text": f"{RECURRENT}: gated delta net layers with attention",
    "qwen3_next": f"{RECURRENT}: gated delta net layers with attention",
    "qwen4_exp": f"{RECURRENT}: linear-attention layers with attention (vision-language config)",
    "qwen4_exp_text": f"{RECURRENT}: linear-attention layers with attention",
    "recurrent_gemma": f"{RECURRENT}: RG-LRU recurrent blocks with local attention",
    "rembert": encoder_only("RemBERT"),
    "roberta": encoder_only("RoBERTa"),
    "roberta-prelayernorm": encoder_only("RoBERTa-PreLayerNorm"),
    "roc_bert": encoder_only("RoCBert"),
    "roformer": encoder_only("RoFormer"),
    "rwkv": f"{RECURRENT}: RWKV time-mixing (linear recurrence) instead of attention",
    "trocr": decoder_half("TrOCR (image-to-text)"),
    "whisper": decoder_half("Whisper (speech-to-text)"),
    "xlm": encoder_only("XLM"),
    "xlm-roberta": encoder_only("XLM-RoBERTa"),
    "xlm-roberta-xl": encoder_only("XLM-RoBERTa-XL"),
    "xlnet": "a permutation LM with two-stream relative attention over a bidirectional encoder, not a causal decoder",
    "xlstm": f"{RECURRENT}: xLSTM blocks only",
    "xmod": encoder_only("X-MOD"),
    "zamba": f"{RECURRENT}: Mamba layers with a shared attention block",
    "zamba2": f"{RECURRENT}: Mamba-2 layers with shared attention blocks",
}
TINY = {  # config field -> tiny value, set wherever a family's config class has the field
    "vocab_size": V,
    "hidden_size": 32,
    "n_embd": 32,
    "d_model": 32,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "num_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "attention_heads": 4,
    "num_key_value_heads": 2,
    "num_kv_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "n_inner": 64,
    "ffn_dim": 64,
    "ffn_hidden_size": 64,
    "dff": 64,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 32,
    "shared_experts_intermediate_size": 32,
    "shared_intermediate_size": 32,  # Granite-MoE-shared's shared MLP (0, none, by default)
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,  # multi-head latent attention (DeepSeek V2/V3 and kin)
    "q_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "index_n_heads": 2,  # DeepSeek sparse attention's indexer; top 4 keys of the test's 9 (sparse for real)
    "index_head_dim": 8,
    "index_topk": 4,
    "vocab_size_per_layer_input": V,  # Gemma 3n / 4 per-layer inputs
    "hidden_size_per_layer_input": 8,
    "swa_num_attention_heads": 4,  # Inkling's sliding-window layers
    "swa_num_key_value_heads": 2,
    "swa_head_dim": 8,
    "rotary_dim": 4,
    "sliding_window": 5,  # shorter than the test's sequences (9 tokens), so that windows take effect
    "residual_multiplier": 0.22,  # muP branch scale: 0.22 in published Granite checkpoints, 1 (a no-op) by default
    "max_position_embeddings": 64,
    "n_positions": 64,
    "n_ctx": 64,
    "max_seq_len": 64,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "pad_token_id": PAD,
}
OVERRIDES = {  # model type -> config kwargs over TINY, where a family names a size its own way or needs consistency
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
    "afmoe": {"num_hidden_layers": 4},  # its fourth layer is a full-attention one (no rotary): 2 would test none
    "cohere2": {"num_hidden_layers": 4},  # likewise
    "cpmant": {"dim_head": 8, "dim_ff": 64, "position_bias_num_buckets": 32, "position_bias_max_distance": 64},
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0},  # its defaults do not build
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "dory": {"sliding_window": 16},  # its own forward fails on sequences longer than its window
    # its default experts build 2.1 M parameters; a global layer (no rotary) of every two, with its q/k scale
    "ergo": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "shared_intermediate_size": 16,
             "first_dense_intermediate_size": 64, "global_attention_every_n_layers": 2, "global_attention_scale": 4.0},
    "gemma3n_text": {"num_kv_shared_layers": 0, "laurel_rank": 4, "activation_sparsity_pattern": [0.0, 0.0]},
    "gemma4_text": {"global_head_dim": 16},
    "gemma4_unified_text": {"global_head_dim": 16},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 5},  # a local window that takes effect
    "inkling2_loop_text": {"unpadded_vocab_size": V, "rel_extent": 16},
    "inkling2_text": {"unpadded_vocab_size": V, "rel_extent": 16},
    "inkling_text": {"rel_extent": 16},
    # NVFP4 rounding of K/V needs a head_dim that 16 divides; no more index heads than a K/V group has query heads
    "kolibri1_1": {"head_dim": 16, "index_num_heads": 2},
    "longcat_flash": {"head_dim": 4, "expert_ffn_hidden_size": 16, "zero_expert_num": 2, "moe_topk": 2},
    "modernbert-decoder": {"local_attention": 10},  # its sliding window is half of this: 5, as TINY's elsewhere
    "reformer": {"is_decoder": True, "attn_layers": ["local", "lsh"], "attention_head_size": 8,
                 "feed_forward_size": 64, "axial_pos_shape": [8, 8], "axial_pos_embds_dim": [16, 16],
                 "local_attn_chunk_length": 8, "lsh_attn_chunk_length": 8},
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 16},
}
MAX_PARAMETERS = 1_000_000  # a "tiny" model larger than this means the shrinker missed a field
FAMILIES = sorted(t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t not in EXCLUDED)
LABKIT_DIR = Path(labkit.__file__).parent
REFUSALS = (ValueError, NotImplementedError, kv_cache.CacheLayoutError)


def config_fields(config_class: type) -> set[str]:
    """The keyword arguments a config class takes."""
    if dataclasses.is_dataclass(config_class):
        return {f.name for f in dataclasses.fields(config_class)}
    return set(inspect.signature(config_class.__init__).parameters)


def build(model_type: str) -> torch.nn.Module:
    """The tiny random causal LM of ``model_type`` in eval mode."""
    model_class = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    config_class = CONFIG_MAPPING[model_type]
    if "text_config" in (getattr(config_class, "sub_configs", None) or {}):  # Emu3: the LM takes the text part
        config_class = model_class.config_class
    fields = config_fields(config_class)
    kwargs = {k: v for k, v in TINY.items() if k in fields}
    if "kv_lora_rank" in fields:  # latent attention (MLA) has one K/V head per query head
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    kwargs |= OVERRIDES.get(model_type, {})
    config = config_class(**kwargs)
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else None  # SDPA has no logit softcap
    torch.manual_seed(0)
    model = model_class._from_config(config, attn_implementation=attn).eval()
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise AssertionError(f"not tiny: {n:,} parameters")
    model.generation_config.pad_token_id = PAD
    return model


def set_gates(model: torch.nn.Module, bias: float) -> None:
    """Every gate at sigmoid(bias) for every token."""
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.weight.zero_()
            b.residual_gate.linear.bias.fill_(bias)


def check_gated_forward(model: torch.nn.Module) -> None:
    """Open gates (g = 1 exactly) give the ungated logits; closed ones change them."""
    x = tokens()
    dense = model(x).logits
    gate.add_gates(model)
    set_gates(model, 40.0)
    torch.testing.assert_close(model(x).logits, dense, atol=1e-5, rtol=0.0)
    set_gates(model, -40.0)
    assert not torch.allclose(model(x).logits, dense, atol=1e-3), "closed gates leave the logits unchanged"
    randomize_gates(model)


def check_compact_equals_masked(model: torch.nn.Module) -> None:
    """Compact execution gives the masked logits at every real token of a left-padded batch."""
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    with skip.budget(model, 0.4, measure_flops=False) as masked_stats:
        masked = model(x, attention_mask=mask).logits
    with skip.budget(model, 0.4, execution="compact", measure_flops=False) as compact_stats:
        compacted = model(x, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(compacted[real], masked[real], atol=1e-5, rtol=1e-5)
    assert compact_stats.skipped_fraction == masked_stats.skipped_fraction > 0.3


def check_generate(model: torch.nn.Module) -> None:
    """KV copy-forward in a cached forward; greedy decoding under a budget, masked == compact, and compact
    decoding does not project the K/V of a token skipped at layer 1 (unless layer 1's heads differ from layer 0's:
    then there is nothing to copy and they are computed)."""
    prompt = tokens(3, 4)
    with skip.budget(model, 0.4, record=True, measure_flops=False) as stats:
        out = model(prompt, use_cache=True)
    cache = kv_cache.output_cache(out)
    skipped = ~stats.records["1.attn"]["keep"]
    assert skipped.any()
    source = kv_cache.copy_source(cache, 1, model)
    (k0, v0), (k1, v1) = (kv_cache.layer_kv(cache, layer, model) for layer in (0, 1))
    for b, t in skipped.nonzero().tolist() if source is not None else []:
        assert torch.equal(k1[b, :, t], k0[b, :, t]) and torch.equal(v1[b, :, t], v0[b, :, t]), "K/V not copied"
    projected = []  # tokens whose K/V compact execution computes, per attention call
    project_kv = adapters.project_kv
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapters, "project_kv", lambda attn, h: projected.append(h.shape[0]) or project_kv(attn, h))
        for execution in ("masked", "compact"):
            runs[execution], stats = budget_generate(model, prompt, execution)
            assert 0.3 < stats.skipped_fraction < 0.5
    assert torch.equal(runs["masked"].sequences, runs["compact"].sequences)
    for masked_scores, compact_scores in zip(runs["masked"].scores, runs["compact"].scores, strict=True):
        torch.testing.assert_close(compact_scores, masked_scores, atol=1e-5, rtol=1e-5)
    layers = len(layout.decoder_layers(model))  # layer 0 has no layer to copy from, nor has a layer of a new shape
    computed = [3] + [2 if kv_cache.copy_source(cache, layer, model) is not None else 3 for layer in range(1, layers)]
    assert projected[len(projected) - 4 * layers :] == computed * 4, "compact decoding computed a skipped token's K/V"


def check_save_and_load(model: torch.nn.Module) -> None:
    """The save / from_pretrained round trip (:func:`tests.gate_helpers.check_round_trip`) in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        check_round_trip(model, folder)


CHECKS = {
    "gated forward": check_gated_forward,
    "masked == compact": check_compact_equals_masked,
    "generate": check_generate,
    "round trip": check_save_and_load,
}


def _message(error: BaseException, limit: int = 300) -> str:
    """The error's message on one line, temporary paths elided, cut at ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s,;:'\"]+", "<tmp>", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refusal(error: BaseException) -> bool:
    """A labkit error type raised by labkit's own code, not a model's ValueError passing through, nor labkit
    wrapping a bare error (a probe forward that crashed where the plain forward works)."""
    raised_in = Path(traceback.extract_tb(error.__traceback__)[-1].filename).resolve()
    ours = isinstance(error, REFUSALS) and raised_in.is_relative_to(LABKIT_DIR.resolve())
    return ours and (error.__cause__ is None or _refusal(error.__cause__))


def family_status(model_type: str) -> str:
    """``supported``, ``refused: ...``, ``FAILED: ...`` or ``build failed: ...`` for one model type."""
    torch.set_num_threads(1)
    try:
        model = build(model_type)
        model(tokens())
    except Exception as error:
        return f"build failed: {type(error).__name__}: {_message(error)}"
    for name, check in CHECKS.items():
        try:
            with torch.no_grad():
                check(model)
        except Exception as error:
            if _refusal(error) and name != "round trip":  # labkit failing to load what it saved is never clear
                return f"refused: {name}: {_message(error)}"
            return f"FAILED: {name}: {type(error).__name__}: {_message(error)}"
    return "supported"


def tally(results: dict[str, str]) -> dict[str, int]:
    statuses = list(results.values())
    supported = statuses.count("supported")
    refused = sum(s.startswith("refused") for s in statuses)
    return {"supported": supported, "refused": refused, "failed": len(statuses) - supported - refused}


def summary(results: dict[str, str]) -> str:
    counts = tally(results)
    return (f"{counts['supported']} of {len(results)} families supported "
            f"({counts['supported'] / len(results):.0%}; goal >= 90 %), {counts['refused']} refused, "
            f"{counts['failed']} failed; {len(EXCLUDED)} model types excluded")


def table(results: dict[str, str]) -> str:
    """docs/FAMILIES.md: the tally, one row per tested model type, the excluded ones with their reasons."""
    lines = [
        "# GateSkip on every decoder family of transformers",
        "",
        "Generated by `tests/test_families.py` (labkit issue #27); regenerate with",
        "`LABKIT_FAMILIES_TABLE=docs/FAMILIES.md make test-families`. Each family is a tiny random model built from "
        "its config class; *supported* means gated forward, masked == compact skipping, generate with a KV cache "
        "under a budget and the save / `gate.from_pretrained` round trip all pass; *refused* is a clear labkit "
        "error; *FAILED* is any other error.",
        "",
        f"transformers {transformers.__version__}, torch {torch.__version__}: {summary(results)}.",
        "",
        "| model type | class | status | detail |",
        "|---|---|---|---|",
    ]
    for model_type, status in results.items():
        word, _, detail = status.partition(": ")
        lines.append(f"| {model_type} | {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]} | {word} | "
                     f"{detail.replace('|', '/')} |")
    lines += ["", "## Excluded", "", "| model type | class | reason |", "|---|---|---|"]
    for model_type, reason in sorted(EXCLUDED.items()):
        lines.append(f"| {model_type} | {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, '-')} | {reason} |")
    return "\n".join(lines) + "\n"


@pytest.mark.families
def test_every_decoder_family_is_supported_or_clearly_refused():
    """Fails listing every FAILED / build-failed family; prints the tally (and writes the docs table on request)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    try:
        results = {model_type: family_status(model_type) for model_type in FAMILIES}
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    if path := os.environ.get("LABKIT_FAMILIES_TABLE"):
        Path(path).write_text(table(results))
    print(f"{summary(results)}; {time.perf_counter() - start:.0f} s")
    failed = {t: s for t, s in results.items() if not s.startswith(("supported", "refused"))}
    if failed:
        pytest.fail(f"{len(failed)} families neither supported nor clearly refused:\n" + "\n".join(
            f"  {t} ({MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t]}): {s}" for t, s in failed.items()
        ), pytrace=False)
