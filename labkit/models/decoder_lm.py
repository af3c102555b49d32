"""Tiny decoder-only language models built from ``transformers`` configs (no hub download), saved and reloaded
with ``save_pretrained`` / ``from_pretrained``. Used by the GateSkip notebook and by tests of primitives that act
on Hugging Face models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCHS = ("llama", "qwen2", "gpt2")


def build_causal_lm(
    arch: str,
    vocab_size: int,
    hidden_size: int,
    n_layers: int,
    n_heads: int,
    *,
    n_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    tie_embeddings: bool = True,
    attn_implementation: str = "sdpa",
    seed: int | None = None,
    **config_kwargs: Any,
) -> nn.Module:
    """A randomly initialised causal LM of family ``arch`` ("llama", "qwen2", "gpt2") from its HF config.

    ``intermediate_size`` defaults to 4 d for GPT-2 and to 8/3 d rounded up to a multiple of 8 for the SwiGLU
    families (same parameter count). Extra ``config_kwargs`` go to the config unchanged.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by n_heads {n_heads}")
    if seed is not None:
        torch.manual_seed(seed)
    tokens = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=n_layers,
            n_head=n_heads,
            n_inner=intermediate_size or 4 * hidden_size,
            n_positions=max_positions,
            tie_word_embeddings=tie_embeddings,
            **tokens,
            **config_kwargs,
        )
        cls = GPT2LMHeadModel
    else:
        swiglu = intermediate_size or 8 * ((8 * hidden_size // 3 + 7) // 8)
        common = dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads or n_heads,
            intermediate_size=swiglu,
            max_position_embeddings=max_positions,
            tie_word_embeddings=tie_embeddings,
            **tokens,
            **config_kwargs,
        )
        if arch == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            config, cls = LlamaConfig(**common), LlamaForCausalLM
        else:
            from transformers import Qwen2Config, Qwen2ForCausalLM

            config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    config._attn_implementation = attn_implementation
    model = cls(config)
    model.generation_config.pad_token_id = pad_token_id
    return model


def n_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_lm(model: nn.Module, path: str | Path) -> Path:
    """``save_pretrained`` into ``path`` (safetensors); returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def load_lm(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` from a local folder (no network), optionally moved to ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(path), local_files_only=True)
    return model.to(device) if device is not None else model
