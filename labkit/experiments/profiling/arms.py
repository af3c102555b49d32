"""Profiling tour: one decoder block built from a ``transformers`` config, timed, counted and traced.

The FLOPs of a Llama block have a closed form, so the tour can check the counter against arithmetic:
per token 2·(4·d²) for the q/k/v/o projections (no grouped KV), 2·(3·d·m) for the gated MLP, and
2·2·s·d for the two attention matmuls (SDPA counts the full s×s square, causal or not).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from labkit import profile, report
from labkit.experiments import Computed
from labkit.experiments.profiling.config import Config


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


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Count, time and trace the block at every sequence length of ``cfg``: tables ``flops`` (counted, closed form,
    torch's plain counter), ``breakdown`` (share per component), ``throughput`` (medians of repeats: run-to-run),
    ``trace`` (top operators of one traced forward pass; the trace file goes to ``report.output_path``) and ``block``
    (parameters and device)."""
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
    with profile.trace(report.output_path("trace.json")) as traced, torch.no_grad():
        block(inputs_embeds=x)
    info = profile.device_info()
    block_row = {"n_params": sum(p.numel() for p in block.parameters()), "device": info["device"],
                 "device_name": info["device_name"], "threads": info["threads"]}
    return Computed({"flops": pd.DataFrame(flop_rows), "breakdown": pd.DataFrame(breakdown_rows),
                     "throughput": pd.DataFrame(timing_rows), "trace": traced.summary(),
                     "block": pd.DataFrame([block_row])})
