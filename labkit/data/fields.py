"""A coupled multi-variable weather-like system (u, v, z, T, RH) generated locally, for Met²Net-style forecasting.

WeatherBench cannot be downloaded here, so this generates fields with the same character on a doubly periodic
grid: a flow from a few random linear Rossby waves plus a zonal jet (u, v and a geopotential-like stream function
z, analytic), temperature advected semi-Lagrangian and relaxed toward a latitude profile, and humidity advected
with an evaporation source, a linear sink and rain-out at a temperature-dependent saturation, reported as relative
humidity. T and RH cannot be forecast without u and v; RH depends on T through saturation.
Outputs are in made-up physical units (m/s, m, K, %) so the five variables have heterogeneous statistics.
Results are cached under ``cache_dir() / "fields"`` (written atomically) and are deterministic for a seed;
trajectory ``i`` depends only on ``(seed, i)``, so a larger set extends a smaller one.
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
from tqdm.auto import tqdm

from labkit.data.cache import cache_dir

if TYPE_CHECKING:
    import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, "torch.Tensor")

VARIABLES = ("u", "v", "z", "T", "RH")
UNITS = ("m/s", "m/s", "m", "K", "%")
_VERSION = 1  # bump when the physics changes, so stale caches are not reused


@dataclass(frozen=True)
class FieldPhysics:
    """Knobs of the generator (nondimensional; one frame = ``frame_interval`` time units)."""

    n_waves: int = 6  # random linear Rossby waves per trajectory
    wave_amplitude: float = 0.35  # stream-function amplitude scale of each wave (divided by |k|)
    beta: float = 1.0  # Rossby dispersion omega = -beta kx / (k^2 + 1)
    jet_speed: tuple[float, float] = (0.3, 0.7)  # zonal jet U0 cos(y), U0 drawn uniformly from this range
    frame_interval: float = 1.0  # time between saved frames (0.2 made the task nearly trivial in the trial)
    substeps: int = 8  # semi-Lagrangian steps per frame
    spinup_frames: int = 60  # frames discarded so T and q forget their initial state
    t_relax: float = 2.0  # temperature relaxation time toward T_eq(y) = -cos(y)
    diffusion: float = 0.01  # weak diffusion of T and q
    evaporation: float = 0.3  # humidity source E (1 - cos y) / 2
    q_sink: float = 4.0  # linear humidity decay time
    q_sat_scale: float = 0.6  # q_sat(T) = q_sat_scale * exp(q_sat_rate * T)
    q_sat_rate: float = 1.5  # Clausius-Clapeyron-like rate


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


def _advect(
    f: np.ndarray, u: np.ndarray, v: np.ndarray, dt: float, dx: float, dy: float, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Semi-Lagrangian step: ``f`` at the departure points ``(x - u dt, y - v dt)``, bilinear and periodic."""
    n, h, w = f.shape
    ri = (rows - v * dt / dy) % h
    ci = (cols - u * dt / dx) % w
    r0, c0 = np.floor(ri).astype(np.int64), np.floor(ci).astype(np.int64)
    fr, fc = ri - r0, ci - c0
    r1, c1 = (r0 + 1) % h, (c0 + 1) % w
    flat = f.reshape(n, h * w)

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.take_along_axis(flat, (r * w + c).reshape(n, -1), axis=1).reshape(n, h, w)

    return (1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c1)) + fr * ((1 - fc) * at(r1, c0) + fc * at(r1, c1))


def _laplacian(f: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return (np.roll(f, 1, -1) + np.roll(f, -1, -1) - 2 * f) / dx**2 + (
        np.roll(f, 1, -2) + np.roll(f, -1, -2) - 2 * f
    ) / dy**2


def _simulate(
    n_traj: int, n_frames: int, height: int, width: int, seed: int, phys: FieldPhysics, progress: bool
) -> np.ndarray:
    y = np.arange(height) * (2 * np.pi / height)
    x = np.arange(width) * (2 * np.pi / width)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    dx, dy = 2 * np.pi / width, 2 * np.pi / height
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    # per-trajectory random waves, jet and initial perturbations; trajectory i depends only on (seed, i)
    kx = np.zeros((n_traj, phys.n_waves))
    ky, amp, phase, jet = np.zeros_like(kx), np.zeros_like(kx), np.zeros_like(kx), np.zeros(n_traj)
    t0 = np.zeros((n_traj, height, width))
    q0 = np.zeros_like(t0)
    for i in range(n_traj):
        rng = np.random.default_rng([seed, i])
        kx[i] = rng.integers(1, 4, phys.n_waves)
        ky[i] = rng.integers(-2, 3, phys.n_waves)
        amp[i] = phys.wave_amplitude * rng.uniform(0.5, 1.0, phys.n_waves) * rng.choice([-1, 1], phys.n_waves)
        phase[i] = rng.uniform(0, 2 * np.pi, phys.n_waves)
        jet[i] = rng.uniform(*phys.jet_speed)
        t0[i] = 0.3 * rng.standard_normal() * np.cos(xx + rng.uniform(0, 2 * np.pi))
        q0[i] = rng.uniform(0.2, 0.5)
    k2 = kx**2 + ky**2
    amp = amp / np.sqrt(k2)
    omega = -phys.beta * kx / (k2 + 1)

    def flow(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = (
            kx[:, :, None, None] * xx
            + ky[:, :, None, None] * yy
            - omega[:, :, None, None] * t
            + phase[:, :, None, None]
        )
        a = amp[:, :, None, None]
        psi = (a * np.cos(theta)).sum(1) - jet[:, None, None] * np.sin(yy)
        u = (a * ky[:, :, None, None] * np.sin(theta)).sum(1) + jet[:, None, None] * np.cos(yy)
        v = -(a * kx[:, :, None, None] * np.sin(theta)).sum(1)
        return u, v, psi

    t_eq = -np.cos(yy)
    source = phys.evaporation * (1 - np.cos(yy)) / 2
    temp, q = t_eq + t0, q0.copy()
    dt = phys.frame_interval / phys.substeps
    out = np.zeros((n_traj, n_frames, len(VARIABLES), height, width), dtype=np.float32)
    total = phys.spinup_frames + n_frames
    for frame in tqdm(range(total), desc="generating fields", disable=not progress, leave=False):
        if frame >= phys.spinup_frames:
            u, v, psi = flow(frame * phys.frame_interval)
            q_sat = phys.q_sat_scale * np.exp(phys.q_sat_rate * temp)
            out[:, frame - phys.spinup_frames] = np.stack(
                [10 * u, 10 * v, 5500 + 300 * psi, 273.15 + 15 * temp, 100 * q / q_sat], axis=1
            )
        for s in range(phys.substeps):
            u, v, _ = flow(frame * phys.frame_interval + s * dt)
            temp = _advect(temp, u, v, dt, dx, dy, rows, cols)
            temp = temp + dt * ((t_eq - temp) / phys.t_relax + phys.diffusion * _laplacian(temp, dx, dy))
            q = _advect(q, u, v, dt, dx, dy, rows, cols)
            q = q + dt * (source - q / phys.q_sink + phys.diffusion * _laplacian(q, dx, dy))
            q = np.minimum(np.maximum(q, 0.0), phys.q_sat_scale * np.exp(phys.q_sat_rate * temp))  # rain-out
    return out


def generate(
    n_traj: int,
    n_frames: int,
    height: int,
    width: int,
    seed: int,
    *,
    physics: FieldPhysics | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Fields:
    """Generate (or load from the cache) ``n_traj`` trajectories of ``n_frames`` frames of u, v, z, T, RH.

    Deterministic for ``seed``; the cache key covers every argument and the generator version.
    """
    phys = physics or FieldPhysics()
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
    key = json.dumps(
        {
            "v": _VERSION,
            "n_traj": n_traj,
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "seed": seed,
            "physics": asdict(phys),
        },
        sort_keys=True,
    )
    path = cache_dir() / "fields" / f"weather-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if cache and path.exists():
        data = np.load(path)
    else:
        data = _simulate(n_traj, n_frames, height, width, seed, phys, progress)
        if cache:
            _atomic_save(path, data)
    return Fields(data=data, seed=seed, physics=phys)


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
