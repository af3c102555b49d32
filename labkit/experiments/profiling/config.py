"""The profiling tour's parameters: one Llama decoder block's size, the sequence lengths swept, and timing repeats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from labkit import config
from labkit.config import NON_EMPTY, Count, Device, Interval, NonNegative


@dataclass
class Config:
    hidden_size: Count = 256  # d: width of the block
    n_heads: Count = 4  # attention heads (KV heads equal: no grouped-query attention, so the closed form holds)
    intermediate_size: Count = 688  # m: gated-MLP width (about 8/3 d, as Llama)
    seq_lens: Annotated[tuple[int, ...], Interval("[1, inf)"), NON_EMPTY] = (64, 128, 256, 512)  # lengths to sweep
    batch_size: Count = 4  # sequences per forward pass
    warmup: NonNegative = 2  # untimed calls before timing
    repeat: Count = 10  # timed calls per measurement
    threads: Count = 1  # torch intra-op threads: 1 is often fastest for small CPU models on 2 shared cores
    device: Device = "auto"  # "auto" picks CUDA when present
    seed: NonNegative = 0  # weights and inputs

    def __post_init__(self) -> None:
        config.check(self)
        config.require_divisible(self, "hidden_size", "n_heads")


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"hidden_size": 64, "n_heads": 2, "intermediate_size": 172, "seq_lens": (16, 32), "batch_size": 2,
              "warmup": 1, "repeat": 3},
    "cpu": {},
    "gpu": {"hidden_size": 2048, "n_heads": 16, "intermediate_size": 5632, "seq_lens": (512, 1024, 2048, 4096),
            "batch_size": 8, "warmup": 5, "repeat": 20, "threads": 8},
}
