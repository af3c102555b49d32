"""GateSkip throughput: ungated dense vs gated masked vs gated compact execution, prefill and KV-cache decoding.

Random-weight Llama built from a config (no download). Masked execution (the paper's default) computes every branch
and zeroes skipped tokens, so it cannot be faster than dense; compact execution gathers the kept tokens. Vector gates
add a d x d matmul per branch, scalar gates a d x 1 one. Decoding is greedy, one token per forward with the KV cache;
a skipped token's attention K/V are copied forward from the layer below (GateSkip §3.3, Laitenberger et al., arXiv
2510.13876). One-token steps skip by per-branch thresholds calibrated on held-out prompts (``scope="sequence"``),
since the paper's batch-scope budget skips nothing in a batch of one. Everything, prefill and decode, is timed
round-robin in one process.

    .venv/bin/python benchmarks/gateskip_speed.py                 # CPU-sized model
    .venv/bin/python benchmarks/gateskip_speed.py --size gpu      # Llama d=2048, 8 layers, batch 8 x 512, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

from labkit import gate, profile, skip
from labkit.models.decoder_lm import build_causal_lm
from labkit.skip.kv_cache import output_cache

SIZES = {  # hidden, layers, heads, prefill batch, tokens per sequence
    "cpu": (256, 4, 4, 4, 256),
    "gpu": (2048, 8, 16, 8, 512),
}
DECODE = {  # prompt tokens, new tokens per timed call
    "cpu": (128, 16),
    "gpu": (512, 64),
}
Context = Callable[[], contextlib.AbstractContextManager]


def _rewind(cache: Any, tokens: int) -> None:
    """Drop the newest ``tokens`` from a KV cache: a negative ``crop`` removes that many on every transformers
    release (4.x reads it as a negative max_length, 5.x as tokens to remove and rejects positive values)."""
    cache.crop(-tokens)


def _decoder(model: nn.Module, prompt: torch.Tensor, new_tokens: int, context: Context | None) -> Callable[[], Any]:
    """A call that greedily decodes ``new_tokens`` after ``prompt`` (prefilled once, here) and rewinds the cache.

    Returns the context's SkipStats (None for dense) so the achieved skipped fraction can be read afterwards.
    """
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad(), context() if context else contextlib.nullcontext():
        out = model(prompt, use_cache=True, logits_to_keep=1)
    cache, first = output_cache(out), out.logits[:, -1:].argmax(-1)

    def call() -> Any:
        token = first
        with torch.no_grad(), context() if context else contextlib.nullcontext() as stats:
            for _ in range(new_tokens):
                token = model(token, use_cache=True, **{cache_kwarg: cache}).logits[:, -1:].argmax(-1)
        _rewind(cache, new_tokens)
        return stats

    return call


def _rate(tokens: int, t: profile.Timing) -> str:
    """Tokens/s at the median time, with the IQR as a percentage of the median."""
    return f"{tokens / t.median:,.0f} ±{100 * t.iqr / t.median:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: gpu on CUDA, cpu otherwise")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.7], help="prefill")
    parser.add_argument("--decode-ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = profile.resolve_device("auto")
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    hidden, layers, heads, batch, length = SIZES[size]
    prompt_len, new_tokens = DECODE[size]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    load_start = os.getloadavg()[0]
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("device:", profile.device_info())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads={torch.get_num_threads()}")
    print(f"model: llama d={hidden} layers={layers} heads={heads}; {dtype}")
    print(f"prefill: batch {batch} x {length} tokens, no cache")
    print(
        f"decode: greedy, KV cache, prompt {prompt_len} tokens then {new_tokens} one-token forwards per timed call; "
        f"batches {args.decode_batches}; vector gates, scope='sequence' with calibrated thresholds"
    )
    x = torch.randint(0, 1000, (batch, length), device=device)
    tokens = batch * length

    def build() -> nn.Module:
        positions = max(length, prompt_len + new_tokens + 1)
        model = build_causal_lm("llama", 1000, hidden, layers, heads, max_positions=positions, seed=0)
        return model.to(device, dtype).eval()

    def forward(model: nn.Module, make_context: Context | None = None) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad(), make_context() if make_context else contextlib.nullcontext():
                model(x, use_cache=False)

        return call

    models = {"dense": build()}
    for kind in ("vector", "scalar"):
        models[kind] = gate.add_gates(build(), kind=kind)
        with torch.no_grad():  # spread the gates so the batch quantile is not a tie
            for b in gate.gated_branches(models[kind]):
                b.residual_gate.linear.weight.normal_(0.0, 0.05)
    calls: dict[Any, Callable[[], Any]] = {"dense": forward(models["dense"])}
    for kind in ("vector", "scalar"):
        m = models[kind]
        for r in args.ratios:
            for execution in ("masked", "compact"):
                calls[kind, r, execution] = forward(
                    m, lambda m=m, r=r, e=execution: skip.budget(m, r, execution=e, measure_flops=False)
                )

    # Decoding: thresholds that skip a fraction r of held-out prompt tokens in each branch.
    gated = models["vector"]
    held_out = [torch.randint(0, 1000, (8, prompt_len), device=device) for _ in range(2)]
    thresholds = {r: skip.calibrate_thresholds(gated, held_out, r) for r in args.decode_ratios if r > 0}
    for b in args.decode_batches:
        prompt = torch.randint(0, 1000, (b, prompt_len), device=device)
        calls["decode", b, "dense"] = _decoder(models["dense"], prompt, new_tokens, None)
        for r in args.decode_ratios:
            for execution in ("masked", "compact"):
                context = lambda r=r, e=execution: skip.budget(
                    gated, r, "sequence", e, thresholds=thresholds.get(r), measure_flops=False
                )
                calls["decode", b, r, execution] = _decoder(gated, prompt, new_tokens, context)

    # Round-robin over every variant, so load changes on a shared machine hit all of them alike.
    timings = profile.measure_many(calls, warmup=2, repeat=args.repeat, device=device)
    rate = {name: tokens / t.median for name, t in timings.items()}
    print(f"\n== prefill ==\nungated dense: {_rate(tokens, timings['dense'])} tok/s ({timings['dense']})")
    for kind in ("vector", "scalar"):
        print(f"\n{kind} gates")
        print(f"{'ratio':>6} {'masked tok/s':>14} {'compact tok/s':>14} {'compact/masked':>15} {'compact/dense':>14}")
        for r in args.ratios:
            masked, compact = rate[kind, r, "masked"], rate[kind, r, "compact"]
            ratios = f"{compact / masked:>14.2f}x {compact / rate['dense']:>13.2f}x"
            print(f"{r:>6.2f} {masked:>14,.0f} {compact:>14,.0f} {ratios}")

    print("\n== decode (vector gates; tok/s = batch x new tokens / median call time, ± IQR/median) ==")
    for b in args.decode_batches:
        n = b * new_tokens
        dense = timings["decode", b, "dense"]
        print(f"\nbatch {b}: ungated dense {_rate(n, dense)} tok/s ({dense})")
        header = f"{'ratio':>6} {'skipped':>8} {'masked tok/s':>16} {'compact tok/s':>16}"
        print(f"{header} {'masked/dense':>13} {'compact/dense':>14} {'compact/masked':>15}")
        for r in args.decode_ratios:
            masked, compact = timings["decode", b, r, "masked"], timings["decode", b, r, "compact"]
            skipped = calls["decode", b, r, "compact"]().skipped_fraction  # one more call, to read its stats
            ratios = [dense.median / masked.median, dense.median / compact.median, masked.median / compact.median]
            print(
                f"{r:>6.2f} {skipped:>8.2f} {_rate(n, masked):>16} {_rate(n, compact):>16} "
                f"{ratios[0]:>12.2f}x {ratios[1]:>13.2f}x {ratios[2]:>14.2f}x"
            )
    print(
        f"\nAll variants timed round-robin in one process ({args.repeat} rounds, medians); load average "
        f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. Absolute rates vary with machine load; "
        "compare the ratios. 'skipped' is the achieved fraction of (token, branch) pairs skipped while decoding."
    )


if __name__ == "__main__":
    main()
