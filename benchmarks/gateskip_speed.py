"""GateSkip throughput: ungated dense vs gated masked vs gated compact execution at several skip ratios.

Random-weight Llama built from a config (no download). Masked execution (the paper's default) computes every branch
and zeroes skipped tokens, so it cannot be faster than dense; compact execution gathers the kept tokens. Vector gates
add a d x d matmul per branch, scalar gates a d x 1 one. Everything is measured side by side in one process.

    .venv/bin/python benchmarks/gateskip_speed.py                 # CPU-sized model
    .venv/bin/python benchmarks/gateskip_speed.py --size gpu      # Llama d=2048, 8 layers, batch 8 x 512, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
from collections.abc import Callable

import torch
from torch import nn

from labkit import gate, profile, skip
from labkit.models.decoder_lm import build_causal_lm

SIZES = {  # hidden, layers, heads, batch, tokens per sequence
    "cpu": (256, 4, 4, 4, 256),
    "gpu": (2048, 8, 16, 8, 512),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: gpu on CUDA, cpu otherwise")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.7])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = profile.resolve_device("auto")
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    hidden, layers, heads, batch, length = SIZES[size]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("device:", profile.device_info())
    print(
        f"model: llama d={hidden} layers={layers} heads={heads}; batch {batch} x {length} tokens; {dtype}; "
        f"threads={torch.get_num_threads()}"
    )
    x = torch.randint(0, 1000, (batch, length), device=device)
    tokens = batch * length

    def build() -> nn.Module:
        return (
            build_causal_lm("llama", 1000, hidden, layers, heads, max_positions=length, seed=0).to(device, dtype).eval()
        )

    def forward(
        model: nn.Module, make_context: Callable[[], contextlib.AbstractContextManager] | None = None
    ) -> Callable[[], None]:
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
    calls = {"dense": forward(models["dense"])}
    for kind in ("vector", "scalar"):
        m = models[kind]
        for r in args.ratios:
            for execution in ("masked", "compact"):
                calls[kind, r, execution] = forward(
                    m, lambda m=m, r=r, e=execution: skip.budget(m, r, execution=e, measure_flops=False)
                )
    # Round-robin over every variant, so load changes on a shared machine hit all of them alike.
    timings = profile.measure_many(calls, warmup=2, repeat=args.repeat, device=device)
    rate = {name: tokens / t.median for name, t in timings.items()}
    print(f"\nungated dense: {rate['dense']:,.0f} tok/s ({timings['dense']})")
    for kind in ("vector", "scalar"):
        print(f"\n{kind} gates")
        print(f"{'ratio':>6} {'masked tok/s':>14} {'compact tok/s':>14} {'compact/masked':>15} {'compact/dense':>14}")
        for r in args.ratios:
            masked, compact = rate[kind, r, "masked"], rate[kind, r, "compact"]
            ratios = f"{compact / masked:>14.2f}x {compact / rate['dense']:>13.2f}x"
            print(f"{r:>6.2f} {masked:>14,.0f} {compact:>14,.0f} {ratios}")
    print(
        f"\nAll variants timed round-robin in one process ({args.repeat} rounds, medians); load average at the end "
        f"{os.getloadavg()[0]:.2f}. Absolute rates vary with machine load; compare the ratios."
    )


if __name__ == "__main__":
    main()
