"""The physics of :mod:`labkit.data.fields`: Rossby-wave flow, semi-Lagrangian transport, moisture and diagnostics.

Everything is nondimensional on a doubly periodic ``2 pi x 2 pi`` grid; :func:`simulate` converts to the made-up
physical units listed in ``VARIABLE_UNITS`` only when a frame is saved. See :mod:`labkit.data.fields` for the story
of each variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

# canonical order of the variable axis; a selection is always returned in this order
VARIABLE_UNITS = {
    "u": "m/s",
    "v": "m/s",
    "z": "m",
    "T": "K",
    "RH": "%",
    "precip": "mm/h",
    "cloud": "1",
    "tracer": "ppb",
    "ps": "hPa",
    "flux": "W/m2",
    "sst": "K",
}
ALL_VARIABLES = tuple(VARIABLE_UNITS)
# what each variable's evolution reads besides its own history (the generator's couplings); a variable with a
# non-empty entry "depends on others". sst reads flux over the frame *after* the one it shows, so no sst frame
# reveals the flux that drives its next frame: its own history cannot forecast it (see simulate)
FORCED_BY: dict[str, tuple[str, ...]] = {
    "u": (),
    "v": (),
    "z": (),
    "T": ("u", "v"),
    "RH": ("u", "v", "T"),
    "precip": ("u", "v", "T", "RH"),
    "cloud": ("u", "v", "T", "RH"),
    "tracer": ("u", "v"),
    "ps": ("z", "T"),
    "flux": (),
    "sst": ("flux",),
}


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
    precip_scale: float = 60.0  # mm/h per unit of cloud water falling per time unit (wet median ~0.5 mm/h)
    autoconversion_threshold: float = 0.01  # cloud water above this falls out as rain (Kessler 1969) ...
    autoconversion_rate: float = 1.0  # ... at rate * excess^2 / threshold per time unit (p99/p50 of wet ~13)
    cloud_water_lifetime: float = 0.5  # cloud water that does not rain evaporates over this time (~85 % dry)
    cloud_rh: float = 0.8  # cloud = sigmoid((RH - cloud_rh) / cloud_width), RH as a fraction
    cloud_width: float = 0.05  # sharpness of the cloud transition
    tracer_wavenumbers: tuple[int, int] = (4, 7)  # |k| range of the tracer sources (the waves have |k| <= 3.6)
    tracer_lifetime: float = 3.0  # tracer decay time (a few frames, so plumes trail downwind of the sources)
    ps_thermal: float = 6.0  # hPa of thermal low per unit of warm anomaly T - T_eq (large-scale part only)
    flux_memory: float = 5.0  # e-folding time of the surface heat flux's red noise (correlation per frame e^(-1/5))
    flux_wavenumber: int = 2  # the flux's random patterns have 1 <= |k| <= this (large scale)
    slab_lifetime: float = 2.0  # the slab (sst) relaxes to 0 over this time while the flux heats or cools it


class _Departure(NamedTuple):
    """Bilinear weights and flat indices of the semi-Lagrangian departure points, shared by all advected fields."""

    fr: np.ndarray
    fc: np.ndarray
    corners: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (r0, c0), (r0, c1), (r1, c0), (r1, c1)


def _departure(
    u: np.ndarray, v: np.ndarray, dt: float, dx: float, dy: float, rows: np.ndarray, cols: np.ndarray
) -> _Departure:
    """Where the air at each grid point was ``dt`` ago, ``(x - u dt, y - v dt)``, periodic."""
    n, h, w = u.shape
    ri = (rows - v * dt / dy) % h
    ci = (cols - u * dt / dx) % w
    r0, c0 = np.floor(ri).astype(np.int64), np.floor(ci).astype(np.int64)
    r1, c1 = (r0 + 1) % h, (c0 + 1) % w
    flat = [(r * w + c).reshape(n, 1, -1) for r, c in ((r0, c0), (r0, c1), (r1, c0), (r1, c1))]
    return _Departure(ri - r0, ci - c0, tuple(flat))


def _advect(f: np.ndarray, dep: _Departure) -> np.ndarray:
    """Semi-Lagrangian step of the ``n x fields x h x w`` array ``f``: bilinear interpolation at departure points."""
    n, k, h, w = f.shape
    flat = f.reshape(n, k, h * w)
    a, b, c, d = (np.take_along_axis(flat, i, axis=2).reshape(n, k, h, w) for i in dep.corners)
    fr, fc = dep.fr[:, None], dep.fc[:, None]
    return (1 - fr) * ((1 - fc) * a + fc * b) + fr * ((1 - fc) * c + fc * d)


def _laplacian(f: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return (np.roll(f, 1, -1) + np.roll(f, -1, -1) - 2 * f) / dx**2 + (
        np.roll(f, 1, -2) + np.roll(f, -1, -2) - 2 * f
    ) / dy**2


def _large_scale(f: np.ndarray) -> np.ndarray:
    """Keep only wavenumbers |kx| <= 1 and |ky| <= 1: a smooth, nonlocal view of ``f``."""
    spec = np.fft.rfft2(f)
    spec[..., 2:-1, :] = 0
    spec[..., :, 2:] = 0
    return np.fft.irfft2(spec, s=f.shape[-2:])


def _patchy(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, k_range: tuple[int, int]) -> np.ndarray:
    """Patchy non-negative emission, mean 1: the positive part of random waves with ``|k|`` in ``k_range``."""
    k_lo, k_hi = k_range
    kx, ky = np.meshgrid(np.arange(-k_hi, k_hi + 1), np.arange(0, k_hi + 1))
    keep = (kx**2 + ky**2 >= k_lo**2) & (kx**2 + ky**2 <= k_hi**2) & ((ky > 0) | (kx > 0))
    kx, ky = kx[keep], ky[keep]
    phase = rng.uniform(0, 2 * np.pi, kx.size)
    amp = rng.standard_normal(kx.size)
    g = (amp[:, None, None] * np.cos(kx[:, None, None] * xx + ky[:, None, None] * yy + phase[:, None, None])).sum(0)
    s = np.maximum(g / g.std(), 0)
    return s / s.mean()


def _smooth_noise(rngs: list[np.random.Generator], xx: np.ndarray, yy: np.ndarray, k_max: int) -> np.ndarray:
    """One unit-variance random field per generator (``len(rngs) x h x w``): Gaussian amplitudes and uniform phases
    on every wavevector with ``1 <= |k| <= k_max``."""
    kx, ky = np.meshgrid(np.arange(-k_max, k_max + 1), np.arange(0, k_max + 1))
    keep = (kx**2 + ky**2 >= 1) & (kx**2 + ky**2 <= k_max**2) & ((ky > 0) | (kx > 0))
    kx, ky = kx[keep][:, None, None], ky[keep][:, None, None]
    out = np.zeros((len(rngs), *xx.shape))
    for i, rng in enumerate(rngs):
        amp, phase = rng.standard_normal(kx.shape), rng.uniform(0, 2 * np.pi, kx.shape)
        out[i] = (amp * np.cos(kx * xx + ky * yy + phase)).sum(0)
    return out / np.sqrt(kx.size / 2)  # E[amp^2 cos^2] = 1/2 per mode


def _diagnose(
    variables: tuple[str, ...],
    phys: FieldPhysics,
    u: np.ndarray,
    v: np.ndarray,
    psi: np.ndarray,
    state: np.ndarray,
    rain: np.ndarray,
    t_eq: np.ndarray,
    channel: dict[str, int],
    flux: np.ndarray,
    slab: np.ndarray,
) -> list[np.ndarray]:
    """The saved ``variables`` in physical units, from the flow, the advected ``state`` and the rain."""
    temp, q = state[:, channel["T"]], state[:, channel["q"]]
    q_sat = phys.q_sat_scale * np.exp(phys.q_sat_rate * temp)
    units = {
        "u": lambda: 10 * u,
        "v": lambda: 10 * v,
        "z": lambda: 5500 + 300 * psi,
        "T": lambda: 273.15 + 15 * temp,
        "RH": lambda: 100 * q / q_sat,
        "precip": lambda: phys.precip_scale * rain / phys.frame_interval,
        "cloud": lambda: 1 / (1 + np.exp(-(q / q_sat - phys.cloud_rh) / phys.cloud_width)),
        "tracer": lambda: 20 + 10 * state[:, channel["tracer"]],
        "ps": lambda: 1013 + 12 * _large_scale(psi) - phys.ps_thermal * _large_scale(temp - t_eq),
        "flux": lambda: 100 * flux,
        "sst": lambda: 290 + 2 * slab,
    }
    return [units[name]() for name in variables]


def simulate(
    n_traj: int,
    n_frames: int,
    height: int,
    width: int,
    seed: int,
    phys: FieldPhysics,
    variables: tuple[str, ...],
    progress: bool,
) -> np.ndarray:
    """Float32 ``n_traj x n_frames x len(variables) x height x width`` in physical units (``variables`` canonical)."""
    y = np.arange(height) * (2 * np.pi / height)
    x = np.arange(width) * (2 * np.pi / width)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    dx, dy = 2 * np.pi / width, 2 * np.pi / height
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    # per-trajectory random waves, jet and initial perturbations; trajectory i depends only on (seed, i)
    kx = np.zeros((n_traj, phys.n_waves))
    ky, amp, phase, jet = np.zeros_like(kx), np.zeros_like(kx), np.zeros_like(kx), np.zeros(n_traj)
    t0 = np.zeros((n_traj, height, width))
    q0, tracer_source = np.zeros_like(t0), np.zeros_like(t0)
    for i in range(n_traj):
        rng = np.random.default_rng([seed, i])
        kx[i] = rng.integers(1, 4, phys.n_waves)
        ky[i] = rng.integers(-2, 3, phys.n_waves)
        amp[i] = phys.wave_amplitude * rng.uniform(0.5, 1.0, phys.n_waves) * rng.choice([-1, 1], phys.n_waves)
        phase[i] = rng.uniform(0, 2 * np.pi, phys.n_waves)
        jet[i] = rng.uniform(*phys.jet_speed)
        t0[i] = 0.3 * rng.standard_normal() * np.cos(xx + rng.uniform(0, 2 * np.pi))
        q0[i] = rng.uniform(0.2, 0.5)
        tracer_source[i] = _patchy(rng, xx, yy, phys.tracer_wavenumbers)  # drawn last: the rest is as in v1
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
    # advected state: T, q and, only when asked for (they do not feed back), cloud water and the tracer
    initial = {"T": t_eq + t0, "q": q0, "water": np.zeros_like(q0), "tracer": tracer_source * phys.tracer_lifetime}
    needed = {"T": True, "q": True, "water": "precip" in variables, "tracer": "tracer" in variables}
    channel = {name: i for i, name in enumerate(name for name in initial if needed[name])}
    state = np.stack([initial[name] for name in channel], axis=1)
    rain = np.zeros_like(q0)  # cloud water fallen out since the last saved frame
    # surface heat flux: red noise in time, held over each frame; the slab (sst) integrates it. Their own random
    # streams, so every other variable is the same with or without them
    slabbed = "flux" in variables or "sst" in variables
    flux_rngs = [np.random.default_rng([seed, i, 2]) for i in range(n_traj)] if slabbed else []
    flux = _smooth_noise(flux_rngs, xx, yy, phys.flux_wavenumber) if slabbed else np.zeros_like(q0)
    slab = np.zeros_like(q0)
    rho = np.exp(-phys.frame_interval / phys.flux_memory)
    decay = np.exp(-phys.frame_interval / phys.slab_lifetime)
    dt = phys.frame_interval / phys.substeps
    out = np.zeros((n_traj, n_frames, len(variables), height, width), dtype=np.float32)
    total = phys.spinup_frames + n_frames
    for frame in tqdm(range(total), desc="generating fields", disable=not progress, leave=False):
        if frame >= phys.spinup_frames:
            u, v, psi = flow(frame * phys.frame_interval)
            saved = _diagnose(variables, phys, u, v, psi, state, rain, t_eq, channel, flux, slab)
            for j, value in enumerate(saved):
                out[:, frame - phys.spinup_frames, j] = value
        if slabbed:  # the frame's flux (saved above) heats the slab over the frame after it, exactly integrated
            slab = decay * slab + phys.slab_lifetime * (1 - decay) * flux
            flux = rho * flux + np.sqrt(1 - rho**2) * _smooth_noise(flux_rngs, xx, yy, phys.flux_wavenumber)
        rain = np.zeros_like(q0)
        for s in range(phys.substeps):
            u, v, _ = flow(frame * phys.frame_interval + s * dt)
            state = _advect(state, _departure(u, v, dt, dx, dy, rows, cols))
            temp, q = state[:, 0], state[:, 1]
            temp = temp + dt * ((t_eq - temp) / phys.t_relax + phys.diffusion * _laplacian(temp, dx, dy))
            q = q + dt * (source - q / phys.q_sink + phys.diffusion * _laplacian(q, dx, dy))
            q_sat = phys.q_sat_scale * np.exp(phys.q_sat_rate * temp)
            condensed = np.maximum(q - q_sat, 0.0)  # rain-out above saturation
            q = np.minimum(np.maximum(q, 0.0), q_sat)
            state[:, 0], state[:, 1] = temp, q
            if "water" in channel:  # Kessler-like: cloud water above a threshold falls out, nonlinearly (bursty)
                water = state[:, channel["water"]] + condensed
                excess = np.maximum(water - phys.autoconversion_threshold, 0.0)
                fall = np.minimum(dt * phys.autoconversion_rate * excess**2 / phys.autoconversion_threshold, excess)
                rain += fall
                state[:, channel["water"]] = (water - fall) * np.exp(-dt / phys.cloud_water_lifetime)
            if "tracer" in channel:
                tracer = state[:, channel["tracer"]]
                state[:, channel["tracer"]] = tracer + dt * (tracer_source - tracer / phys.tracer_lifetime)
    return out
