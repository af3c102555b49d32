"""CUDA-aware timing, memory and FLOPs that degrade cleanly on a CPU-only torch build.

One small facade over torch's own tools (``torch.cuda.Event``, the caching allocator's peak,
``torch.utils.flop_counter.FlopCounterMode``, ``torch.profiler``). Every result records the device and the
thread count it was measured with, because on a small shared CPU the thread count can change a time by 5-37x.
This module imports nothing else from labkit, so anything that measures can import it.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

if TYPE_CHECKING:
    import pandas as pd

Shape = tuple[int, ...]  # a tensor shape as torch's FLOP formulas receive it


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when this torch build has a usable GPU, else CPU.

    An explicit device must exist here: ``"cuda"`` on a CPU-only build (or ``"cuda:3"`` on a one-GPU machine) raises
    RuntimeError naming it and what is available, instead of torch's assertion deep inside the first CUDA call.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; expected 'auto', 'cpu', 'cuda' or "
                         "'cuda:<index>'") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            have = f"{count} CUDA device(s)" if count else f"no usable CUDA GPU (torch {torch.__version__}, " \
                f"built with CUDA {torch.version.cuda})"
            raise RuntimeError(f"device {str(device)!r} is not available: this machine has {have}; "
                               f"use 'cpu' or 'auto'{', or cuda:0..cuda:' + str(count - 1) if count else ''}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(device)!r} is not available on this machine; use 'cpu' or 'auto'")
    return dev


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable taking no arguments, got {type(fn).__name__} {fn!r}")


def device_info() -> dict[str, Any]:
    """A one-call summary of where code runs: device name, torch build, thread counts, CPU count."""
    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device_memory_bytes"] = props.total_memory
        info["device_count"] = torch.cuda.device_count()
    return info


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, numpy and torch (all devices) and optionally pin torch's intra-op thread count.

    On these 2-core machines one thread is often fastest for small models (OpenMP spin-waiting): measure.
    """
    seed = _check_int("seed", seed, 0)
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls: median and inter-quartile range, with where it was measured."""

    median: float  # seconds per call
    iqr: float  # inter-quartile range of the per-call times, seconds
    times: list[float]  # every timed call, seconds
    device: str  # "cpu" or "cuda:<name>"
    threads: int  # torch intra-op threads during the measurement

    def __str__(self) -> str:
        return f"{self.median * 1e3:.3f} ms ± {self.iqr * 1e3:.3f} (IQR, n={len(self.times)}, {self.device}, " \
               f"{self.threads} threads)"


def _time_call(fn: Callable[[], Any], dev: torch.device) -> float:
    """Seconds of one ``fn()``: CUDA events bracketing the call (then one synchronise) on GPU, perf_counter on CPU."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(dev)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timing(times: list[float], dev: torch.device) -> Timing:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    name = f"cuda:{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "cpu"
    return Timing(statistics.median(times), q[2] - q[0], times, name, torch.get_num_threads())


def measure(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 10,
            device: str | torch.device = "auto") -> Timing:
    """Time ``fn()`` after ``warmup`` untimed calls: CUDA events on GPU, ``perf_counter`` on CPU.

    On CUDA each call is bracketed by events and the stream is synchronised once per call, so queued
    kernels are not mistaken for finished work (cf. timm's ``benchmark.py``).
    """
    _check_callable("fn", fn)
    return measure_many({"fn": fn}, warmup=warmup, repeat=repeat, device=device)["fn"]


def measure_many(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 3, repeat: int = 10,
                 device: str | torch.device = "auto") -> dict[str, Timing]:
    """Time several functions round-robin (call 1 of each, then call 2 of each, ...), one ``Timing`` per name.

    Interleaving makes a change in machine load (a shared CPU, a GPU clocking down) hit every variant alike, so the
    ratios of the medians stay comparable; timing the variants one after another does not.
    """
    repeat, warmup = _check_int("repeat", repeat, 1), _check_int("warmup", warmup, 0)
    if not fns:
        raise ValueError("fns: expected at least one named function to time, got none")
    for name, fn in fns.items():
        _check_callable(f"fns[{name!r}]", fn)
    dev = resolve_device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _synchronize(dev)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(_time_call(fn, dev))
    return {name: _timing(t, dev) for name, t in times.items()}


def _sdpa_cpu_flops(query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(
    grad_out_shape: Shape, query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_attention_formulas() -> dict:
    """FlopCounterMode has no formula for the CPU flash-attention kernels (it counts 0); add torch's own SDPA one."""
    ops = torch.ops.aten
    mapping = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``fn()`` actually executes, 2 per multiply-add (fvcore/ptflops count 1, i.e. MACs).

    Counts only what ran, so data-dependent skipping shows up. ``scaled_dot_product_attention`` is counted on
    CPU as well (plain torch counts its CPU kernel as 0).
    """
    _check_callable("fn", fn)
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_by_module(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn()`` per module path (``"LlamaModel.layers.0.mlp"``), same convention as ``count_flops``.

    A parent's count includes its children's; ``"Global"`` is the total.
    """
    _check_callable("fn", fn)
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class MemoryPeak:
    """Peak memory of a block: CUDA allocator peak on GPU, process RSS peak on CPU; ``None`` where unknown."""

    device: str  # "cuda" or "cpu"
    peak_bytes: int | None = None  # CUDA: allocator peak; CPU: peak resident set size of the process
    increase_bytes: int | None = None  # peak minus what was in use when the block started
    method: str = ""  # how it was measured
    _samples: list[int] = field(default_factory=list, repr=False)


@contextlib.contextmanager
def peak_memory(device: str | torch.device = "auto", interval_seconds: float = 0.001) -> Iterator[MemoryPeak]:
    """Measure peak memory of the ``with`` block.

    CUDA: ``max_memory_allocated`` after resetting the peak. CPU: process RSS sampled by a background thread
    (tracemalloc does not see tensor memory, and ``torch.cuda.max_memory_allocated`` silently says 0 there).
    Without ``/proc`` the result stays ``None`` rather than a misleading number.
    """
    if not (isinstance(interval_seconds, (int, float)) and math.isfinite(interval_seconds) and interval_seconds > 0):
        raise ValueError(f"interval_seconds must be a finite number > 0, got {interval_seconds!r}")
    dev = resolve_device(device)
    result = MemoryPeak(device=dev.type)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        yield result
        torch.cuda.synchronize(dev)
        result.peak_bytes = torch.cuda.max_memory_allocated(dev)
        result.increase_bytes = result.peak_bytes - start
        result.method = "torch.cuda.max_memory_allocated"
        return
    if not os.path.exists("/proc/self/statm"):
        result.method = "unavailable (no /proc)"
        yield result
        return
    start = _rss_bytes()
    stop = threading.Event()
    samples = result._samples
    samples.append(start)

    def sample() -> None:
        while not stop.wait(interval_seconds):
            samples.append(_rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        samples.append(_rss_bytes())
        result.peak_bytes = max(samples)
        result.increase_bytes = result.peak_bytes - start
        result.method = f"process RSS sampled every {interval_seconds * 1e3:g} ms"


class Trace:
    """What ``trace`` yields: the profiler (or nothing, when disabled) and a summary of its key averages."""

    def __init__(self, profiler: torch.profiler.profile | None, path: Path | None) -> None:
        self.profiler = profiler
        self.path = path

    def table(self, sort_by: str = "self_cpu_time_total", row_limit: int = 15) -> str:
        """torch.profiler's text table, or an empty string when tracing was disabled."""
        if self.profiler is None:
            return ""
        return self.profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit)

    def summary(self, row_limit: int = 15) -> pd.DataFrame:
        """Key averages as a pandas DataFrame (operator, calls, self CPU/device microseconds), largest first."""
        import pandas as pd

        columns = ["name", "calls", "self_cpu_us", "cpu_total_us", "self_device_us"]
        if self.profiler is None:
            return pd.DataFrame(columns=columns)
        rows = [(e.key, e.count, e.self_cpu_time_total, e.cpu_time_total,
                 getattr(e, "self_device_time_total", 0.0)) for e in self.profiler.key_averages()]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.sort_values("self_cpu_us", ascending=False).head(row_limit).reset_index(drop=True)


@contextlib.contextmanager
def trace(path: str | Path, enabled: bool = True, record_shapes: bool = True) -> Iterator[Trace]:
    """Profile the block with ``torch.profiler`` and export a Chrome/Perfetto trace to ``path``.

    Activities are what this machine supports (CPU, plus CUDA where present); disabled, it is a no-op with
    the same interface, so measured code stays identical either way (cf. torchtune's ``DummyProfiler``).
    """
    if not enabled:
        yield Trace(None, None)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    activities = sorted(torch.profiler.supported_activities(), key=str)
    with torch.profiler.profile(activities=activities, record_shapes=record_shapes) as prof:
        result = Trace(prof, path)
        yield result
    prof.export_chrome_trace(str(path))
