"""Grouped-convolution vs ModuleList per-variable encoder+decoder: forward+backward time at V=5 and V=20.

Both layouts compute the same function (tests/test_stage.py); this measures what one grouped kernel call per layer
saves over V separate modules. Run: ``.venv/bin/python benchmarks/stage_layout.py``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

import torch

from labkit import seed_everything
from labkit.models.forecaster import PerVariableForecaster
from labkit.profile import device_info, measure_many, resolve_device
from labkit.stage import PerVariableDecoder, PerVariableEncoder, to_layout

THREADS = 1
BATCH = 16 * 6  # 16 windows x 6 frames, as in the cpu preset
HEIGHT, WIDTH, HID, N_LAYERS = 16, 32, 8, 2


def main() -> None:
    seed_everything(0, threads=THREADS)
    device = resolve_device("auto")
    info = device_info()
    print(
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; device {info['device']} "
        f"({info['device_name']}); torch {info['torch']}; threads {torch.get_num_threads()}; "
        f"cpu_count {info['cpu_count']}"
    )
    print(
        f"input {BATCH} frames x V x {HEIGHT} x {WIDTH}, hid {HID}, {N_LAYERS} layers; encoder + decoder, "
        "forward + backward; median and IQR of 10 repeats after 3 warm-ups"
    )
    print(f"{'V':>3} {'modulelist ms':>14} {'grouped ms':>11} {'ratio list/grouped':>19} {'max |diff|':>11}")
    for n_vars in (5, 20):
        enc_l = PerVariableEncoder(n_vars, HID, N_LAYERS, layout="modulelist").to(device)
        dec_l = PerVariableDecoder(n_vars, HID, N_LAYERS, layout="modulelist").to(device)
        enc_g, dec_g = to_layout(enc_l, "grouped"), to_layout(dec_l, "grouped")
        x = torch.randn(BATCH, n_vars, HEIGHT, WIDTH, device=device)

        def step(
            enc: PerVariableEncoder | PerVariableDecoder,
            dec: PerVariableEncoder | PerVariableDecoder,
            x: torch.Tensor = x,
        ) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                out = dec(enc(x))
                out.pow(2).mean().backward()
                return out

            return run

        with torch.no_grad():
            diff = (dec_g(enc_g(x)) - dec_l(enc_l(x))).abs().max().item()
        t = measure_many({"list": step(enc_l, dec_l), "grouped": step(enc_g, dec_g)}, warmup=3, repeat=10)
        t_list, t_group = t["list"], t["grouped"]
        print(
            f"{n_vars:>3} {1e3 * t_list.median:>9.1f} ±{1e3 * t_list.iqr:<4.1f} {1e3 * t_group.median:>6.1f} "
            f"±{1e3 * t_group.iqr:<4.1f} {t_list.median / t_group.median:>19.2f} {diff:>11.1e}"
        )
    print("full PerVariableForecaster training step (6 -> 6 frames, batch 16, d_model 32, 2 blocks, AdamW):")
    for n_vars in (5, 20):
        steps = {}
        for layout in ("modulelist", "grouped"):
            seed_everything(0, threads=THREADS)
            model = PerVariableForecaster(n_vars, 6, 6, HID, N_LAYERS, 32, 4, 2, layout=layout).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randn(16, 6, n_vars, HEIGHT, WIDTH, device=device)

            def train_step(
                model: PerVariableForecaster = model, opt: torch.optim.Optimizer = opt, x: torch.Tensor = x
            ) -> None:
                opt.zero_grad()
                model(x)[0].pow(2).mean().backward()
                opt.step()

            steps[layout] = train_step
        times = measure_many(steps, warmup=2, repeat=5)  # round-robin: load changes hit both layouts alike
        ratio = times["modulelist"].median / times["grouped"].median
        print(
            f"{n_vars:>3} {1e3 * times['modulelist'].median:>9.1f} ms (modulelist) "
            f"{1e3 * times['grouped'].median:>9.1f} ms (grouped)  ratio list/grouped {ratio:.2f}"
        )
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print("caveat: shared 2-core machine with other jobs running; absolute times vary, the ratio is the result")


if __name__ == "__main__":
    main()
