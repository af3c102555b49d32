"""One training step of the Met²Net forecasters at the cpu preset's sizes: layouts, translator blocks, side by side.

A step is forward + backward + ``AdamW.step`` on a batch of 16 windows, 6 -> 6 frames, 7 variables on a 16 x 32 grid
(hid 8, 2 encoder layers, d_model 32, 4 heads, 2 blocks); the stacked SimVP-like model uses hid 16 and hid_t 64.
Variants run round-robin (:func:`labkit.profile.measure_many`), so a change in machine load hits all of them alike.
This is the measurement behind ``resolve_layout("auto")`` in :mod:`labkit.stage`.
Run: ``.venv/bin/python benchmarks/met2net_step.py [--threads N] [--repeat R] [--device auto|cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable

import torch
from torch import nn

from labkit import seed_everything
from labkit.models.forecaster import PerVariableForecaster, StackedForecaster
from labkit.profile import device_info, measure_many, resolve_device

BATCH, T_IN, T_OUT, N_VARS, HEIGHT, WIDTH = 16, 6, 6, 7, 16, 32
HID, N_LAYERS, D_MODEL, HEADS, N_BLOCKS = 8, 2, 32, 4, 2  # per-variable arms (met2net cpu preset)
STACKED_HID, STACKED_HID_T = 16, 64  # stacked arm (met2net cpu preset)


def build(name: str) -> nn.Module:
    """``pervar-<layout>-<ffn>`` or ``stacked-<block>``."""
    kind, *rest = name.split("-")
    if kind == "stacked":
        return StackedForecaster(N_VARS, T_IN, T_OUT, STACKED_HID, N_LAYERS, STACKED_HID_T, N_BLOCKS, block=rest[0])
    layout, ffn = rest
    return PerVariableForecaster(N_VARS, T_IN, T_OUT, HID, N_LAYERS, D_MODEL, HEADS, N_BLOCKS, layout=layout, ffn=ffn)


def training_step(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """A closure running one forward + backward + AdamW step of ``model`` on a fixed random batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, T_IN, N_VARS, HEIGHT, WIDTH, device=device)
    y = torch.randn(BATCH, T_OUT, N_VARS, HEIGHT, WIDTH, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x)[0], y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeat", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    args = parser.parse_args()
    seed_everything(0, threads=args.threads)
    device = resolve_device(args.device)
    info = device_info()
    print(
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; device {device} "
        f"({info['device_name']}); torch {info['torch']}; "
        f"threads {torch.get_num_threads()}; cpu_count {info['cpu_count']}; load average {os.getloadavg()}"
    )
    print(
        f"training step: batch {BATCH}, {T_IN} -> {T_OUT} frames, {N_VARS} variables, {HEIGHT} x {WIDTH}; per-variable "
        f"hid {HID}, {N_LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, {N_BLOCKS} blocks; stacked hid "
        f"{STACKED_HID}, hid_t {STACKED_HID_T}; median and IQR of {args.repeat} steps after 2 warm-ups, round-robin"
    )
    names = [f"pervar-{lay}-{ffn}" for ffn in ("conv", "tau") for lay in ("grouped", "modulelist")]
    names += ["stacked-conv", "stacked-tau"]
    steps, params = {}, {}
    for name in names:
        seed_everything(0)
        model = build(name).to(device).train()
        params[name] = sum(p.numel() for p in model.parameters())
        steps[name] = training_step(model, device)
    times = measure_many(steps, warmup=2, repeat=args.repeat, device=device)
    base = times["stacked-conv"].median
    print(f"{'variant':<24} {'params':>8} {'step ms':>9} {'IQR ms':>8} {'x stacked-conv':>15}")
    for name in names:
        t = times[name]
        print(f"{name:<24} {params[name]:>8} {1e3 * t.median:>9.1f} {1e3 * t.iqr:>8.1f} {t.median / base:>15.2f}")
    for ffn in ("conv", "tau"):
        ratio = times[f"pervar-grouped-{ffn}"].median / times[f"pervar-modulelist-{ffn}"].median
        print(f"ratio grouped / modulelist (ffn {ffn}): {ratio:.2f}  (> 1: modulelist is faster here)")
    for layout in ("grouped", "modulelist"):
        ratio = times[f"pervar-{layout}-tau"].median / times[f"pervar-{layout}-conv"].median
        print(f"ratio tau / conv (layout {layout}): {ratio:.2f}")
    print(f"ratio tau / conv (stacked): {times['stacked-tau'].median / base:.2f}")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
