"""Met²Net's parameters: the generated fields, the forecasters' sizes, the arms and their shared training schedule.

Every field declares its type and range in its hint (:mod:`labkit.config`); ``__post_init__`` checks only what spans
fields (widths split into heads, a grid the encoder can halve, trajectories long enough for one window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from labkit import config
from labkit.config import NON_EMPTY, UNIQUE, BudgetFactor, Check, Count, Device, Interval, NonNegative, Positive
from labkit.data.fields import ALL_VARIABLES

# heterogeneous statistics and scales, and sst forced by a flux it cannot see in its own history: labkit.data.fields
VARIABLES = ("u", "v", "T", "RH", "precip", "tracer", "flux", "sst")
TRIVIAL = ("persistence", "climatology")  # forecasts without training
PER_VARIABLE = ("pervar_e2e", "pervar_explicit", "met2net", "met2net_noattn")  # Met²Net's network, four trainings
ARMS = (*TRIVIAL, "stacked", "stacked_wide", *PER_VARIABLE)
LONG_ARMS = ("met2net", "pervar_e2e")  # implicit vs end-to-end: both also rerun at 2x on the first long_seeds seeds


def _at_least_two(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    """Attention across variables needs two of them to attend to."""
    if len(value) < 2:
        raise ValueError(f"parameter {name!r} must name at least 2 variables, got {value!r}")
    return value


def _even(name: str, value: int) -> int:
    """A width split by ``GroupNorm(2, width)``."""
    if value % 2:
        raise ValueError(f"parameter {name!r} must be even (GroupNorm splits it in 2), got {value}")
    return value


EvenCount = Annotated[int, Interval("[2, inf)"), Check(_even)]  # a GroupNorm(2, .) width
NonNegativeFloat = Annotated[float, Interval("[0, inf)")]
Momentum = Annotated[float, Interval("[0, 1]")]  # EMA momentum: 0 = hard copy, 1 = never updated


@dataclass
class Config:
    height: Count = 16  # grid rows ("latitude"); the paper uses 32 (5.625 deg)
    width: Count = 16  # grid columns; the paper uses 64
    variables: Annotated[tuple[Literal[*ALL_VARIABLES], ...], UNIQUE, Check(_at_least_two, whole=True)] = VARIABLES
    t_in: Count = 4  # input frames (paper: 12)
    t_out: Count = 4  # forecast frames (paper: 12)
    frames: Count = 100  # frames per trajectory after spin-up
    n_train: Count = 12  # training trajectories
    n_val: Count = 3  # validation trajectories (checkpoints and the momentum are chosen here)
    n_test: Count = 16  # test trajectories (16 on cpu: the test error of one draw is itself noisy)
    stride: Count = 4  # frames between window starts
    frame_interval: Positive = 1.0  # generator time between frames (larger = harder, less persistent)
    data_seed: NonNegative = 0  # generator seed of model seed 0 (see vary_data)
    hid_s: EvenCount = 8  # encoder/decoder width per variable (paper: 32)
    n_layers: Count = 2  # encoder/decoder conv layers N_S (paper: 2 at 5.625 deg)
    d_model: Count = 32  # per-variable translator width hid_T (paper: 256)
    heads: Count = 4  # variable-attention heads (paper: 8)
    n_blocks: Count = 2  # translator blocks N_T (paper: 8)
    translator: Literal["conv", "tau"] = "conv"  # translator block: "conv" (light) or "tau" (the paper's TAU block)
    drop_path: Annotated[float, Interval("[0, 1)")] = 0.0  # stochastic depth in translator blocks (paper: 0.1)
    layout: Literal["auto", "grouped", "modulelist"] = "auto"  # per-variable conv layout ("auto": faster per device)
    stacked_hid_s: EvenCount = 16  # stacked encoder width (sees all variables at once)
    stacked_hid_t: Count = 64  # stacked translator width
    stacked_blocks: Count = 2  # stacked translator blocks
    wide_max_factor: Annotated[float, Interval("[1, inf)")] = 8.0  # stacked_wide: largest width multiplier tried
    momentum: Momentum = 0.9  # EMA momentum of the frozen translator copy when none is swept (paper config: 0.9)
    momentums: Annotated[tuple[float, ...], Interval("[0, 1]"), NON_EMPTY, UNIQUE] = (0.9,)  # met2net: best on val
    enc_momentum: Momentum = 0.0  # encoder/decoder copies: 0 = hard copy (official HEAD), >0 = EMA (first commit)
    latent_weight: NonNegativeFloat = 1.0  # weight of the latent loss (official: 1:1)
    explicit_ae_epochs: Count = 10  # pervar_explicit: epochs of autoencoder training before the translator stage
    arms: Annotated[tuple[Literal[*ARMS], ...], NON_EMPTY, UNIQUE] = ARMS  # see the module docstring of arms
    seeds: Count = 5  # model seeds per arm (0 .. seeds-1); with vary_data each seed also draws its own fields
    vary_data: bool = True  # seed s trains, validates and tests on fields of data_seed + s: intervals hold data noise
    budget_factor: BudgetFactor = 2.0  # convergence check: seed 0 of every trained arm (the first long_seeds
    # of LONG_ARMS) rerun at this x the budget
    long_seeds: Count = 3  # implicit vs end-to-end also judged at budget_factor x the budget on this many seeds
    epochs: Count = 50  # the fixed budget the cosine decays over (official recipe: 50 epochs; nothing stops early)
    batch_size: Count = 16  # windows per step (paper: 16)
    lr: Positive = 1e-3  # AdamW peak learning rate (official recipe: 1e-3, cosine, no warm-up)
    min_lr_ratio: Annotated[float, Interval("[0, 1)")] = 0.0  # the cosine ends at this x lr
    weight_decay: NonNegativeFloat = 0.0  # AdamW weight decay
    lat_weighted: bool = False  # weight metrics by cos(latitude), treating rows as -90..90 deg
    max_steps: Count | None = None  # cap on optimiser steps (smoke runs)
    device: Device = "auto"  # "auto": CUDA when present
    threads: Count = 1  # torch intra-op threads per worker (1 is fastest for small models on 2 shared cores)
    workers: Count = 1  # processes training (arm, seed) jobs in parallel (2 on a 2-core machine)

    def __post_init__(self) -> None:
        config.check(self)
        config.require_divisible(self, "d_model", "heads")
        scale = 2 ** (self.n_layers // 2)  # the encoder halves H and W at every second layer
        for name in ("height", "width"):
            if getattr(self, name) % scale:
                raise ValueError(f"parameter {name!r} must be divisible by {scale} (2^(n_layers // 2) with n_layers="
                                 f"{self.n_layers}), got {getattr(self, name)}")
        if self.long_seeds > self.seeds:
            raise ValueError(f"parameter 'long_seeds' must be <= seeds ({self.seeds}): the longer reruns repeat "
                             f"existing seeds, got {self.long_seeds}")
        if self.frames < self.t_in + self.t_out:
            raise ValueError(f"parameter 'frames' must be >= t_in + t_out ({self.t_in} + {self.t_out}) for one "
                             f"window, got {self.frames}")


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "height": 8,
        "width": 16,
        "variables": ("u", "v", "T", "RH", "flux", "sst"),
        "t_in": 3,
        "t_out": 3,
        "frames": 20,
        "n_train": 3,
        "n_val": 1,
        "n_test": 1,
        "stride": 4,
        "hid_s": 4,
        "d_model": 8,
        "heads": 2,
        "n_blocks": 1,
        "stacked_hid_s": 8,
        "stacked_hid_t": 16,
        "stacked_blocks": 1,
        "wide_max_factor": 3.0,
        "momentums": (0.5, 0.9),
        "explicit_ae_epochs": 1,
        "seeds": 2,
        "long_seeds": 2,
        "epochs": 3,
        "batch_size": 8,
    },
    # the default 50 epochs (the official recipe); its cost: README.md, table of report costs
    "cpu": {"momentums": (0.9, 0.99), "workers": 2},
    "gpu": {
        "height": 32,
        "width": 64,
        "t_in": 12,
        "t_out": 12,
        "frames": 200,
        "n_train": 128,
        "n_val": 16,
        "n_test": 16,
        "stride": 4,
        "hid_s": 32,
        "d_model": 256,
        "heads": 8,
        "n_blocks": 8,
        "translator": "tau",
        "drop_path": 0.1,
        "stacked_hid_s": 64,
        "stacked_hid_t": 256,
        "stacked_blocks": 8,
        "momentums": (0.5, 0.9, 0.99),
        "epochs": 50,
        "threads": 8,
    },
}
