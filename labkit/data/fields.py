"""A coupled multi-variable weather-like system generated locally, for Met²Net-style forecasting.

WeatherBench cannot be downloaded here, so this generates fields with the same character on a doubly periodic
grid. Met²Net (Li et al., ICCV 2025) is built for variables whose representations are genuinely inconsistent, which a
per-variable z-score cannot equalise; so besides smooth Gaussian-like fields the menu has an intermittent
heavy-tailed one, a bounded saturating one, a fine-scale one and a nonlocal one. The physics
(:mod:`labkit.data.fields_physics`), variable by variable, in canonical order (``ALL_VARIABLES``):

========  =====  ==================================================================================================
name      unit   physical story
========  =====  ==================================================================================================
u, v      m/s    wind of a few random linear Rossby waves plus a zonal jet (analytic; |k| <= 3.6)
z         m      geopotential-like stream function of the same flow (smooth, the largest scales)
T         K      advected semi-Lagrangian by (u, v), relaxed toward a latitude profile, weakly diffused
RH        %      humidity q advected like T with an evaporation source and a linear sink, rained out above a
                 saturation q_sat(T) growing exponentially with T (Clausius-Clapeyron-like); 100 q / q_sat in [0, 100]
precip    mm/h   rain rate over the frame before: the q condensed above saturation feeds advected cloud water, which
                 falls out nonlinearly above a threshold (Kessler-like autoconversion) and otherwise evaporates;
                 non-negative, mostly exactly 0 (~85 %), heavy-tailed (wet p99 / wet median ~13), fine-scale
cloud     1      cloud fraction sigmoid((RH - 0.8) / 0.05) in [0, 1]: bounded, saturating, bimodal
tracer    ppb    passive tracer emitted by fixed patchy sources with |k| = 4..7 (finer than the waves), decaying over
                 a few frames and advected like T: fine-scale plumes that trail downwind, so its future needs u, v
ps        hPa    surface pressure: the |k| <= 1 part of the stream function plus a thermal low under warm
                 anomalies T - T_eq (smooth and nonlocal)
flux      W/m2   surface heat flux: large-scale (|k| <= 2) red noise in time (correlation e^(-1/5) per frame), held
                 constant over the frame after the one that shows it
sst       K      slab temperature, still (not advected): relaxes over 2 time units while the flux heats it. Its next
                 frame needs the flux of its current frame, which no frame of sst shows (sst's history reveals only
                 earlier fluxes, and the flux's innovation is new each frame): a field forced by another that it
                 cannot see in its own history
========  =====  ==================================================================================================

T, RH, precip, cloud and tracer cannot be forecast without u and v; RH, precip and cloud depend on T through
saturation; sst cannot be forecast without flux. ``FORCED_BY`` lists every coupling. T, RH and the tracer depend on
the wind, but their own recent frames already show where they move (removing the other variables cost the cpu
report's Met²Net only ~5 %), so sst is the variable that makes cross-variable dependence matter.
``generate(..., variables=...)`` selects a subset, always returned in canonical order; the default is
the original five (u, v, z, T, RH), bitwise the same as generator version 1 (nothing new feeds back on them), and
any variable is the same in every selection that contains it. Results are cached under ``cache_dir() / "fields"``
(written atomically) and are deterministic for a seed; trajectory ``i`` depends only on ``(seed, i)``, so a larger
set extends a smaller one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from labkit.data.cache import cache_dir
from labkit.data.fields_physics import ALL_VARIABLES, FORCED_BY, VARIABLE_UNITS, FieldPhysics, simulate

if TYPE_CHECKING:
    import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, "torch.Tensor")

__all__ = [
    "ALL_VARIABLES",
    "FORCED_BY",
    "UNITS",
    "VARIABLES",
    "VARIABLE_UNITS",
    "FieldPhysics",
    "Fields",
    "Normalizer",
    "check_fields",
    "dependent_variables",
    "generate",
    "select_variables",
]

VARIABLES = ("u", "v", "z", "T", "RH")  # the default selection (generator version 1)
UNITS = tuple(VARIABLE_UNITS[name] for name in VARIABLES)  # units of the default selection
_VERSION = 3  # bump when the physics changes, so stale caches are not reused (2: precip, cloud, tracer, ps; 3: sst)


@dataclass
class Fields:
    """Generated fields: ``data`` is float32 ``trajectory x frame x variable x height x width``."""

    data: np.ndarray  # physical units, see ``units``
    variables: tuple[str, ...] = VARIABLES  # names along the variable axis
    units: tuple[str, ...] = UNITS  # unit of each variable
    seed: int = 0  # the generator seed
    physics: FieldPhysics = field(default_factory=FieldPhysics)  # the knobs used

    def split(self, n_val: int, n_test: int) -> dict[str, np.ndarray]:
        """Split by trajectory: the last ``n_test`` are test, the ``n_val`` before them validation, the rest train."""
        n = self.data.shape[0]
        if n_val < 0 or n_test < 1 or n - n_val - n_test < 1:
            raise ValueError(f"cannot split {n} trajectories into train >= 1, val={n_val}, test={n_test}")
        return {
            "train": self.data[: n - n_val - n_test],
            "val": self.data[n - n_val - n_test : n - n_test],
            "test": self.data[n - n_test :],
        }


@dataclass(frozen=True)
class Normalizer:
    """Per-variable z-score whose statistics come from the training split only."""

    mean: np.ndarray  # shape V
    std: np.ndarray  # shape V

    @classmethod
    def fit(cls, train: np.ndarray) -> Normalizer:
        """Statistics over trajectories, frames and grid points of ``train`` (``traj x frame x V x H x W``)."""
        check_fields(train)
        axes = (0, 1, 3, 4)
        return cls(train.mean(axis=axes, dtype=np.float64), train.std(axis=axes, dtype=np.float64) + 1e-8)

    def _shape(self, x: np.ndarray | torch.Tensor, stat: np.ndarray) -> np.ndarray:
        if x.ndim < 3 or x.shape[-3] != stat.shape[0]:
            raise ValueError(f"expected ... x {stat.shape[0]} x H x W, got shape {tuple(x.shape)}")
        return stat.reshape(-1, 1, 1)

    def normalize(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """z-units; works on numpy arrays and torch tensors with the variable axis third from the end."""
        return (x - _like(self._shape(x, self.mean), x)) / _like(self._shape(x, self.std), x)

    def denormalize(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """Back to physical units."""
        return x * _like(self._shape(x, self.std), x) + _like(self._shape(x, self.mean), x)


def _like(stat: np.ndarray, x: ArrayOrTensor) -> ArrayOrTensor:
    if isinstance(x, np.ndarray):
        return stat.astype(x.dtype)
    import torch

    return torch.as_tensor(stat, dtype=x.dtype, device=x.device)


def check_fields(data: np.ndarray, n_vars: int | None = None, t_in: int = 0, t_out: int = 0) -> None:
    """Raise a clear ValueError for a wrong shape, a wrong number of variables, a non-finite field, or
    input + output horizons longer than a trajectory; call it before any training starts."""
    if not isinstance(data, np.ndarray) or data.ndim != 5:
        shape = getattr(data, "shape", None)
        raise ValueError(f"expected fields shaped trajectory x frame x variable x height x width, got {shape}")
    if n_vars is not None and data.shape[2] != n_vars:
        raise ValueError(f"expected {n_vars} variables, got {data.shape[2]} (shape {data.shape})")
    if t_in < 0 or t_out < 0 or t_in + t_out > data.shape[1]:
        raise ValueError(
            f"input + output horizons t_in={t_in} + t_out={t_out} exceed the trajectory length {data.shape[1]} frames"
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(f"non-finite value in fields at (trajectory, frame, variable, y, x) = {where}")


def select_variables(variables: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``variables`` in canonical order (``ALL_VARIABLES``); raise for an unknown, repeated or empty selection."""
    if isinstance(variables, str):
        raise ValueError(f"variables must be a sequence of names, got the string {variables!r}")
    names = tuple(variables)
    for name in names:
        if name not in VARIABLE_UNITS:
            raise ValueError(f"unknown variable {name!r}; expected names from {ALL_VARIABLES}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"variables must be a non-empty selection without repeats, got {names}")
    return tuple(name for name in ALL_VARIABLES if name in names)


def dependent_variables(variables: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The variables of ``variables`` whose evolution reads another variable of the same selection (``FORCED_BY``),
    in canonical order."""
    names = select_variables(variables)
    return tuple(name for name in names if set(FORCED_BY[name]) & set(names))


def generate(
    n_traj: int,
    n_frames: int,
    height: int,
    width: int,
    seed: int,
    *,
    physics: FieldPhysics | None = None,
    variables: tuple[str, ...] | list[str] = VARIABLES,
    cache: bool = True,
    progress: bool = True,
) -> Fields:
    """Generate (or load from the cache) ``n_traj`` trajectories of ``n_frames`` frames of ``variables``.

    ``variables`` are names from ``ALL_VARIABLES``, returned in that canonical order whatever the order given.
    Deterministic for ``seed``; the cache key covers every argument and the generator version.
    """
    phys = physics or FieldPhysics()
    names = select_variables(variables)
    for name, val, low in (
        ("n_traj", n_traj, 1),
        ("n_frames", n_frames, 1),
        ("height", height, 4),
        ("width", width, 4),
    ):
        if not isinstance(val, int | np.integer) or val < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {val!r}")
    if phys.substeps < 1 or phys.frame_interval <= 0:
        raise ValueError(f"expected substeps >= 1 and frame_interval > 0, got {phys.substeps}, {phys.frame_interval}")
    for knob in ("autoconversion_threshold", "cloud_water_lifetime", "cloud_width", "tracer_lifetime", "flux_memory",
                 "slab_lifetime", "flux_wavenumber"):
        if getattr(phys, knob) <= 0:
            raise ValueError(f"FieldPhysics.{knob} must be > 0, got {getattr(phys, knob)}")
    k_lo, k_hi = phys.tracer_wavenumbers
    if not 1 <= k_lo <= k_hi:
        raise ValueError(
            f"FieldPhysics.tracer_wavenumbers must be (low, high) with 1 <= low <= high, got {(k_lo, k_hi)}"
        )
    key = json.dumps(
        {
            "v": _VERSION,
            "n_traj": n_traj,
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "seed": seed,
            "variables": names,
            "physics": asdict(phys),
        },
        sort_keys=True,
    )
    path = cache_dir() / "fields" / f"weather-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if cache and path.exists():
        data = np.load(path)
    else:
        data = simulate(n_traj, n_frames, height, width, seed, phys, names, progress)
        if cache:
            _atomic_save(path, data)
    units = tuple(VARIABLE_UNITS[name] for name in names)
    return Fields(data=data, variables=names, units=units, seed=seed, physics=phys)


def _atomic_save(path: Path, data: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
