"""C-Mixup pair sampling for one epoch: labkit's truncated sampler vs the dense N×N matrix of the official code.

One epoch = build the sampler from N labels, then draw one partner for each of the N anchors. Dense mode is the
official construction (a float64 N×N probability matrix; here vectorised, the official code loops in Python), run
only where it fits in memory. Peak memory is the process RSS peak (labkit.profile.peak_memory) above the start.

Run: .venv/bin/python benchmarks/cmixup_sampler.py [--sizes 10000 20000 100000 1000000] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import gc

import torch

from labkit import mixup, profile


def one_epoch(labels: torch.Tensor, bandwidth: float, mode: str) -> torch.Tensor:
    sampler = mixup.CMixupSampler(labels, bandwidth, mode=mode)
    return sampler.sample(torch.arange(labels.shape[0]), torch.Generator().manual_seed(0))


def bench(labels: torch.Tensor, bandwidth: float, mode: str, repeat: int) -> tuple[float, float, int]:
    gc.collect()
    with profile.peak_memory(device="cpu") as mem:
        one_epoch(labels, bandwidth, mode)
    timing = profile.measure(lambda: one_epoch(labels, bandwidth, mode), warmup=0, repeat=repeat, device="cpu")
    gc.collect()
    return timing.median, timing.iqr, mem.increase_bytes or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 100_000, 1_000_000])
    parser.add_argument("--dense-max", type=int, default=20_000, help="largest N for the dense N×N matrix")
    parser.add_argument("--sigma", type=float, default=0.1, help="bandwidth in units of std(y)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = profile.device_info()
    print(f"# C-Mixup sampler benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# device={info['device']} ({info['device_name']}), torch {info['torch']}, threads={torch.get_num_threads()}"
        f", cpu_count={info['cpu_count']}"
    )
    print("# caveat: shared 2-core machine with other jobs running; absolute times vary, the ratios are the result")
    print(f"# labels y ~ N(0, 1) (1-D), σ = {args.sigma} std(y), truncated at 6σ; one epoch = build + N draws")
    print(f"{'N':>9} {'mode':>10} {'seconds':>9} {'iqr':>7} {'peak MB':>9} {'dense/trunc time':>17} {'mem ratio':>10}")
    for n in args.sizes:
        y = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        bw = mixup.bandwidth_from_std(y, args.sigma)
        t_trunc, iqr_t, mem_t = bench(y, bw, "truncated", repeat=5)
        print(f"{n:>9} {'truncated':>10} {t_trunc:>9.3f} {iqr_t:>7.3f} {mem_t / 2**20:>9.1f}", flush=True)
        if n <= args.dense_max:
            t_dense, iqr_d, mem_d = bench(y, bw, "dense", repeat=2 if n > 10_000 else 3)
            print(
                f"{n:>9} {'dense':>10} {t_dense:>9.3f} {iqr_d:>7.3f} {mem_d / 2**20:>9.1f} "
                f"{t_dense / t_trunc:>16.1f}x {mem_d / max(mem_t, 1):>9.0f}x",
                flush=True,
            )
        else:
            need = n * n * 8 / 2**30
            print(f"{n:>9} {'dense':>10} {'skipped':>9}: N×N float64 would need {need:,.0f} GiB", flush=True)
    y2 = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    bw2 = mixup.bandwidth_from_std(y2, 0.02)
    t2, iqr2, mem2 = bench(y2, bw2, "truncated", repeat=2)
    print(
        f"# 2-D labels, N=100000, σ = 0.02 std (radius-neighbour CSR index): {t2:.3f} s (iqr {iqr2:.3f}), "
        f"peak {mem2 / 2**20:.1f} MB"
    )


if __name__ == "__main__":
    main()
