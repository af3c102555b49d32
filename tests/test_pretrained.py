"""labkit.models.pretrained: a catalogued GGUF loads (through a converted cache) to the model it was written from;
bad names, missing sources and a wrong file fail clearly. No real weights here (tests never fetch): a tiny Llama is
written as a GGUF with gguf's own writer, the way llama.cpp's converter lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.data import sources
from labkit.models import pretrained
from labkit.models.decoder_lm import build_causal_lm

gguf = pytest.importorskip("gguf")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head), which transformers undoes on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: torch.nn.Module, path: Path) -> None:
    """A float32 llama GGUF of ``model`` with a small BPE tokenizer (tokens, merges, scores, bos/eos)."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_vocab_size(cfg.vocab_size)
    tokens = ["<s>", "</s>", "a", "b", "ab", *[f"c{i}" for i in range(cfg.vocab_size - 5)]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], kv_heads))
        for hf, gg in names.items():
            writer.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{p}{hf}.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    """The smollm2 source in a temporary cache, holding a tiny GGUF; returns the model it was written from."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    model = build_causal_lm("llama", 16, 32, 2, 2, seed=0).eval()
    spec = pretrained.MODELS["smollm2"]
    folder = tmp_path / "cache" / "sources" / spec.source
    (folder / spec.gguf).parent.mkdir(parents=True)
    write_gguf(model, folder / spec.gguf)
    (folder / "PROVENANCE.json").write_text(json.dumps({"sha256": sources.SOURCES[spec.source].sha256}))
    (folder / ".complete").touch()
    monkeypatch.setitem(pretrained.MODELS, "smollm2", pretrained.Pretrained(
        spec.source, spec.gguf, sources.sha256_of(folder / spec.gguf)))
    return model


def test_every_pretrained_model_is_a_catalogued_source_read_here():
    for name, spec in pretrained.MODELS.items():
        assert spec.source in sources.SOURCES, name
        assert "labkit/models/pretrained.py" in sources.SOURCES[spec.source].used_by, name


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'gpt-5'.*smollm2"):
        pretrained.load("gpt-5")


def test_missing_source_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"labkit fetch smollm2"):
        pretrained.load("smollm2")


def test_a_gguf_loads_to_the_model_it_was_written_from_and_converts_once(tiny_source, tmp_path, monkeypatch):
    ids = torch.tensor([[2, 3, 4, 5, 9]])
    model, tokenizer = pretrained.load("smollm2")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_source(ids).logits, atol=1e-5, rtol=1e-5)
    assert not model.training and tokenizer.convert_ids_to_tokens([2, 3]) == ["a", "b"]
    assert not list((tmp_path / "cache" / "models").glob(".*"))  # no staging folder left behind
    monkeypatch.setattr(pretrained, "_from_gguf", lambda name: pytest.fail("converted twice"))
    again, _ = pretrained.load("smollm2")  # from the converted safetensors
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_gguf_that_is_not_the_pinned_file_is_refused(tiny_source, monkeypatch):
    spec = pretrained.MODELS["smollm2"]
    monkeypatch.setitem(pretrained.MODELS, "smollm2", pretrained.Pretrained(spec.source, spec.gguf, "0" * 64))
    with pytest.raises(sources.ChecksumError, match=r"expected .*SmolLM2-135M-Instruct.Q4_1.gguf with sha256 0000"):
        pretrained.load("smollm2")
