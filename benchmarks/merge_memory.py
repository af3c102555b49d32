"""Peak memory of merging 8 safetensors checkpoints: labkit's streaming merge vs loading every state dict.

Writes 8 random checkpoints of >= 200 MB to a temp folder (deleted afterwards), then measures each method in a
fresh subprocess so every one starts from the same clean baseline: the peak RSS increase over the process's
baseline (``labkit.profile.peak_memory``) and the wall time. Goal: streaming <= 1.5x one checkpoint; naive ~8x.

    .venv/bin/python benchmarks/merge_memory.py [--n 8] [--mb 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = {
    "labkit streaming (out=PATH)": "stream_file",
    "labkit in memory (returns state dict)": "stream_memory",
    "naive: load_file all, then average": "naive",
}


def make_checkpoints(folder: Path, n: int, mb: int, tensors: int = 24) -> list[Path]:
    """``n`` files of ``tensors`` fp32 tensors totalling ``mb`` MB each, written tensor by tensor."""
    from labkit.merge.io import SafetensorsWriter

    per = math.ceil(mb * 1e6 / 4 / tensors)
    cols = 1024
    rows = math.ceil(per / cols)
    plan = [(f"layers.{i}.weight", (rows, cols), torch.float32) for i in range(tensors)]
    paths = []
    for k in range(n):
        gen = torch.Generator().manual_seed(k)
        writer = SafetensorsWriter(folder / f"ckpt{k}.safetensors", plan)
        for key, shape, _ in plan:
            writer.write(key, torch.randn(shape, generator=gen))
        paths.append(writer.close())
    return paths


def measure(method: str, paths: list[Path], out: Path) -> dict:
    """Run one method in this process and return its peak RSS increase and wall seconds."""
    from labkit import merge
    from labkit.profile import peak_memory

    with peak_memory(device="cpu", interval_seconds=0.0005) as mem:
        start = time.perf_counter()
        if method == "stream_file":
            merge.average(paths, out=out)
        elif method == "stream_memory":
            result = merge.average(paths)
            del result
        else:
            from safetensors.torch import load_file, save_file

            sds = [load_file(str(p)) for p in paths]
            soup = {k: sum(sd[k] for sd in sds) / len(sds) for k in sds[0]}
            save_file(soup, str(out))
            del sds, soup
        seconds = time.perf_counter() - start
    return {
        "increase_bytes": mem.increase_bytes,
        "peak_bytes": mem.peak_bytes,
        "seconds": seconds,
        "method": mem.method,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        folder = Path(args.folder)
        paths = sorted(folder.glob("ckpt*.safetensors"))
        print(json.dumps(measure(args.child, paths, folder / f"out_{args.child}.safetensors")))
        return

    from labkit.merge.io import SafetensorsReader
    from labkit.profile import device_info

    info = device_info()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"device: {info['device']} ({info['device_name']}), torch {info['torch']}, threads {torch.get_num_threads()}, "
        f"cpu_count {info['cpu_count']}"
    )
    folder = Path(tempfile.mkdtemp(prefix="labkit_merge_memory_"))
    try:
        start = time.perf_counter()
        paths = make_checkpoints(folder, args.n, args.mb)
        size = paths[0].stat().st_size
        print(
            f"{args.n} checkpoints of {size / 1e6:.1f} MB each (fp32, 24 tensors of {size / 24e6:.1f} MB), "
            f"written in {time.perf_counter() - start:.1f} s"
        )
        results = {}
        for label, method in METHODS.items():
            cmd = [sys.executable, __file__, "--child", method, "--folder", str(folder), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"peak RSS increase over each fresh process's baseline ({results[label]['method']}):")
        naive = results["naive: load_file all, then average"]
        for label, r in results.items():
            print(
                f"  {label:40s} {r['increase_bytes'] / 1e6:8.1f} MB = {r['increase_bytes'] / size:5.2f}x one "
                f"checkpoint   {r['seconds']:6.2f} s   (memory {r['increase_bytes'] / naive['increase_bytes']:.2f}x "
                f"naive, time {r['seconds'] / naive['seconds']:.2f}x naive)"
            )
        a = SafetensorsReader(folder / "out_stream_file.safetensors")
        b = SafetensorsReader(folder / "out_naive.safetensors")
        diff = max(float((a.get(k) - b.get(k)).abs().max()) for k in a.keys())
        print(f"streamed file vs naive result: max |difference| = {diff:.2e} over {len(a.keys())} tensors")
        goal = results["labkit streaming (out=PATH)"]["increase_bytes"] / size
        print(f"goal (streaming <= 1.5x one checkpoint): {'met' if goal <= 1.5 else 'NOT met'} ({goal:.2f}x)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
