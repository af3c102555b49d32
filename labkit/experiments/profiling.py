"""Profiling tour: one decoder block built from a ``transformers`` config, timed, counted and traced.

The FLOPs of a Llama block have a closed form, so the tour can check the counter against arithmetic:
per token 2·(4·d²) for the q/k/v/o projections (no grouped KV), 2·(3·d·m) for the gated MLP, and
2·2·s·d for the two attention matmuls (SDPA counts the full s×s square, causal or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from labkit import profile
from labkit.experiments import (
    check_types,
    require_device,
    require_divisible,
    require_non_empty,
    require_non_negative,
    require_positive,
)
from labkit.experiments import configure as _configure


@dataclass
class Config:
    hidden_size: int = 256  # d: width of the block
    n_heads: int = 4  # attention heads (KV heads equal: no grouped-query attention, so the closed form holds)
    intermediate_size: int = 688  # m: gated-MLP width (about 8/3 d, as Llama)
    seq_lens: tuple[int, ...] = (64, 128, 256, 512)  # sequence lengths to sweep
    batch_size: int = 4  # sequences per forward pass
    warmup: int = 2  # untimed calls before timing
    repeat: int = 10  # timed calls per measurement
    threads: int = 1  # torch intra-op threads: 1 is often fastest for small CPU models on 2 shared cores
    device: str = "auto"  # "auto" picks CUDA when present
    seed: int = 0  # weights and inputs

    def __post_init__(self) -> None:
        check_types(self)
        require_positive(self, "hidden_size", "n_heads", "intermediate_size", "seq_lens", "batch_size", "repeat",
                         "threads")
        require_non_negative(self, "warmup", "seed")
        require_non_empty(self, "seq_lens")
        require_divisible(self, "hidden_size", "n_heads")
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"hidden_size": 64, "n_heads": 2, "intermediate_size": 172, "seq_lens": (16, 32), "batch_size": 2,
              "warmup": 1, "repeat": 3},
    "cpu": {},
    "gpu": {"hidden_size": 2048, "n_heads": 16, "intermediate_size": 5632, "seq_lens": (512, 1024, 2048, 4096),
            "batch_size": 8, "warmup": 5, "repeat": 20, "threads": 8},
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


def build_block(cfg: Config) -> torch.nn.Module:
    """A one-layer Llama model (rotary embedding, one decoder block, final norm) with random weights."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_heads, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=1, vocab_size=32, max_position_embeddings=max(cfg.seq_lens),
                         attn_implementation="sdpa")
    return LlamaModel(config).eval()


def analytic_flops(cfg: Config, seq_len: int) -> int:
    """Closed-form forward FLOPs of the block's matmuls (2 per multiply-add) for one batch."""
    d, m, b = cfg.hidden_size, cfg.intermediate_size, cfg.batch_size
    return b * seq_len * (8 * d * d + 6 * d * m) + 4 * b * seq_len * seq_len * d


def _component(module_name: str) -> str | None:
    for part in ("self_attn", "mlp"):
        if module_name.endswith(part):
            return "attention" if part == "self_attn" else "mlp"
    return None


@dataclass
class ProfileResults:
    """Deterministic counts (``flops``, ``breakdown``) apart from run-to-run measurements (``timings``)."""

    flops: pd.DataFrame  # seq_len, counted, analytic, plain_flop_counter
    breakdown: pd.DataFrame  # seq_len, component, flops, share
    timings: pd.DataFrame  # seq_len, median_seconds, iqr_seconds, tokens_per_second, peak/increase bytes
    trace_summary: pd.DataFrame  # top operators of one traced forward pass
    n_params: int
    device: dict[str, Any]


def run(cfg: Config, trace_path: str | Path | None = None) -> ProfileResults:
    """Count, time and (optionally) trace the block at every sequence length of ``cfg``."""
    profile.seed_everything(cfg.seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    block = build_block(cfg).to(device)
    flop_rows, breakdown_rows, timing_rows = [], [], []
    for seq_len in cfg.seq_lens:
        x = torch.randn(cfg.batch_size, seq_len, cfg.hidden_size, device=device,
                        generator=torch.Generator(device).manual_seed(cfg.seed))

        @torch.no_grad()
        def forward(x: torch.Tensor = x) -> torch.Tensor:
            return block(inputs_embeds=x).last_hidden_state

        with FlopCounterMode(display=False) as plain:  # torch's counter as it comes, for comparison
            forward()
        counted = profile.count_flops(forward)
        flop_rows.append({"seq_len": seq_len, "counted": counted, "analytic": analytic_flops(cfg, seq_len),
                          "plain_flop_counter": int(plain.get_total_flops())})
        for name, total in profile.flops_by_module(forward).items():
            component = _component(name)
            if component:
                breakdown_rows.append({"seq_len": seq_len, "component": component, "flops": total,
                                       "share": total / counted})
        with profile.peak_memory(device) as memory:
            timing = profile.measure(forward, warmup=cfg.warmup, repeat=cfg.repeat, device=device)
        timing_rows.append({"seq_len": seq_len, "median_seconds": timing.median, "iqr_seconds": timing.iqr,
                            "tokens_per_second": cfg.batch_size * seq_len / timing.median,
                            "peak_bytes": memory.peak_bytes, "increase_bytes": memory.increase_bytes,
                            "device": timing.device, "threads": timing.threads})
    x = torch.randn(cfg.batch_size, cfg.seq_lens[0], cfg.hidden_size, device=device)
    with profile.trace(trace_path or "trace.json", enabled=trace_path is not None) as traced, torch.no_grad():
        block(inputs_embeds=x)
    return ProfileResults(pd.DataFrame(flop_rows), pd.DataFrame(breakdown_rows), pd.DataFrame(timing_rows),
                          traced.summary(), sum(p.numel() for p in block.parameters()), profile.device_info())
