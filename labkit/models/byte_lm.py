"""A byte-level (256-token) causal transformer: train on raw UTF-8 text, score held-out text in bits per byte.

Used by the DSIR downstream tracks (Xie et al., NeurIPS 2023) as the small language model trained on each selection;
any text works, no tokenizer needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from labkit.models.decoder_lm import build_causal_lm
from labkit.train import train_causal_lm


def byte_tensor(texts: list[str]) -> torch.Tensor:
    """The UTF-8 bytes of ``texts`` joined by newlines, as a long tensor (the byte LM's token ids)."""
    return torch.frombuffer(bytearray("\n".join(texts).encode("utf-8")), dtype=torch.uint8).long()


def build_byte_lm(hidden: int, layers: int, heads: int, context: int, seed: int) -> nn.Module:
    """A randomly initialised Llama-style causal LM over bytes with room for ``context`` + 1 positions."""
    return build_causal_lm(
        "llama",
        vocab_size=256,
        hidden_size=hidden,
        n_layers=layers,
        n_heads=heads,
        max_positions=context + 1,
        seed=seed,
    )


def train_on_bytes(
    model: nn.Module, data: torch.Tensor, steps: int, lr: float, *, context: int, batch: int, seed: int
) -> None:
    """``steps`` AdamW steps on ``batch`` random ``context``-byte windows of ``data`` (warm-up 10 %, cosine decay)."""
    window = context + 1
    if len(data) <= window:
        raise ValueError(f"need more than {window} bytes of training text, got {len(data)}")
    generator = torch.Generator().manual_seed(seed)

    def windows(step: int) -> torch.Tensor:
        starts = torch.randint(0, len(data) - window, (batch,), generator=generator)
        return torch.stack([data[s : s + window] for s in starts.tolist()])

    train_causal_lm(model, windows, steps, lr, warmup_steps=max(1, steps // 10), progress=False)


def bits_per_byte(model: nn.Module, held: torch.Tensor, context: int, batch: int = 64) -> float:
    """Held-out bits per byte of a byte LM over consecutive ``context``-byte windows of ``held``."""
    if len(held) <= context + 1:
        raise ValueError(f"need more than {context + 1} bytes of held-out text, got {len(held)}")
    device = next(model.parameters()).device
    n = (len(held) - 1) // context
    inputs = held[: n * context].view(n, context)
    targets = held[1 : n * context + 1].view(n, context)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            x, y = inputs[i : i + batch].to(device), targets[i : i + batch].to(device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), reduction="sum"))
            count += y.numel()
    return total / count / math.log(2)
