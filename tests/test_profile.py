import time

import pytest
import torch
import torch.nn.functional as F

from labkit import profile, seed_everything
from tests.conftest import cuda


def test_count_flops_linear_is_two_per_multiply_add():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    assert profile.count_flops(lambda: layer(x)) == 2 * 4 * 16 * 8


def test_count_flops_counts_sdpa_on_cpu_like_the_matmul_form():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    sdpa = profile.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    manual = profile.count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v)
    assert sdpa == manual == 4 * 2 * 3 * 10 * 10 * 8


def test_flops_by_module_sums_children():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    counts = profile.flops_by_module(lambda: model(x))
    assert counts["Global"] == profile.count_flops(lambda: model(x)) == 2 * 3 * (16 + 8)


def test_measure_records_device_threads_and_spread():
    seed_everything(0, threads=1)
    timing = profile.measure(lambda: time.sleep(0.001), warmup=1, repeat=5)
    assert timing.device == "cpu" and timing.threads == 1
    assert len(timing.times) == 5 and timing.median >= 0.001 and timing.iqr >= 0
    with pytest.raises(ValueError, match="repeat"):
        profile.measure(lambda: None, repeat=0)


def test_measure_many_interleaves_the_calls():
    order = []
    timings = profile.measure_many(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=3, device="cpu"
    )
    assert order == ["a", "b"] * 4  # warm-up round, then three timed rounds, each variant once per round
    assert set(timings) == {"a", "b"} and all(len(t.times) == 3 for t in timings.values())
    with pytest.raises(ValueError, match="at least one"):
        profile.measure_many({})


def test_peak_memory_on_cpu_sees_tensor_allocation():
    with profile.peak_memory("cpu") as memory:
        block = torch.ones(25_000_000)  # 100 MB
        block.add_(1)
    assert memory.device == "cpu"
    assert memory.increase_bytes is not None and memory.increase_bytes > 50e6
    assert memory.peak_bytes >= memory.increase_bytes


def test_trace_exports_chrome_trace_and_summary(tmp_path):
    x = torch.randn(8, 8)
    with profile.trace(tmp_path / "t.json") as traced:
        x @ x
    assert (tmp_path / "t.json").stat().st_size > 0
    assert "aten::mm" in set(traced.summary().name)
    with profile.trace(tmp_path / "off.json", enabled=False) as off:
        x @ x
    assert not (tmp_path / "off.json").exists() and off.table() == "" and off.summary().empty


def test_device_info_and_seed_everything_are_deterministic():
    info = profile.device_info()
    assert {"device", "device_name", "torch", "threads", "cpu_count"} <= set(info)
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    torch.testing.assert_close(torch.rand(3), a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="threads"):
        seed_everything(0, threads=0)


def test_cpu_only_calls_do_not_crash():
    """The same calls a GPU run makes must degrade on a CPU build rather than raise."""
    assert profile.resolve_device("auto").type in ("cpu", "cuda")
    with profile.peak_memory() as memory:
        torch.zeros(10)
    assert memory.peak_bytes is None or memory.peak_bytes > 0


@cuda
def test_cuda_paths():
    x = torch.randn(256, 256, device="cuda")
    timing = profile.measure(lambda: x @ x, warmup=2, repeat=5, device="cuda")
    assert timing.device.startswith("cuda") and timing.median > 0
    with profile.peak_memory("cuda") as memory:
        torch.empty(1024, 1024, device="cuda")
    assert memory.increase_bytes >= 4 * 1024 * 1024
