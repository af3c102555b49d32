"""Tests for labkit.data.fields: shapes, determinism, caching, coupling between variables, the variable menu (subset
selection, bounds, intermittent precipitation, an advected fine-scale tracer, a slab forced by a flux it cannot see in
its own history), bad input."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data import fields
from labkit.data.fields import ALL_VARIABLES, VARIABLE_UNITS, FieldPhysics, Normalizer, check_fields, generate

SMALL = FieldPhysics(spinup_frames=10, substeps=4)
CALM = FieldPhysics(spinup_frames=10, substeps=4, wave_amplitude=0.0, jet_speed=(0.0, 0.0))


def _all(n_traj: int = 3, height: int = 8, width: int = 16, seed: int = 0, physics: FieldPhysics = SMALL):
    return generate(
        n_traj, 12, height, width, seed, physics=physics, variables=ALL_VARIABLES, cache=False, progress=False
    )


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))


def test_shapes_finite_and_names():
    f = generate(3, 12, 8, 16, seed=0, physics=SMALL, progress=False)
    assert f.data.shape == (3, 12, 5, 8, 16) and f.data.dtype == np.float32
    assert f.variables == ("u", "v", "z", "T", "RH") and len(f.units) == 5
    assert np.isfinite(f.data).all()
    rh = f.data[:, :, 4]
    assert rh.min() >= 0 and rh.max() <= 100 + 1e-3
    stds = f.data.std(axis=(0, 1, 3, 4))
    assert stds.max() / stds.min() > 3  # heterogeneous statistics across variables


def test_deterministic_per_seed_and_prefix_stable():
    a = generate(3, 10, 8, 16, seed=1, physics=SMALL, cache=False, progress=False).data
    b = generate(3, 10, 8, 16, seed=1, physics=SMALL, cache=False, progress=False).data
    c = generate(3, 10, 8, 16, seed=2, physics=SMALL, cache=False, progress=False).data
    d = generate(2, 10, 8, 16, seed=1, physics=SMALL, cache=False, progress=False).data
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(a[:2], d, rtol=1e-6, atol=1e-5)  # trajectory i depends only on (seed, i)


def test_cache_is_written_atomically_and_reused(tmp_path):
    a = generate(2, 8, 8, 16, seed=0, physics=SMALL, progress=False)
    files = list((tmp_path / "fields").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    b = generate(2, 8, 8, 16, seed=0, physics=SMALL, progress=False)
    np.testing.assert_array_equal(a.data, b.data)


def test_temperature_and_humidity_depend_on_the_flow():
    base = generate(2, 8, 8, 16, seed=0, physics=SMALL, cache=False, progress=False).data
    calm = FieldPhysics(spinup_frames=10, substeps=4, wave_amplitude=0.0, jet_speed=(0.0, 0.0))
    still = generate(2, 8, 8, 16, seed=0, physics=calm, cache=False, progress=False).data
    assert np.abs(base[:, :, 3] - still[:, :, 3]).mean() > 0.5  # K: advection moves T
    assert np.abs(base[:, :, 4] - still[:, :, 4]).mean() > 1.0  # %: and RH
    t, rh = base[:, :, 3].ravel(), base[:, :, 4].ravel()
    assert np.corrcoef(t, rh)[0, 1] < -0.3  # RH depends on T through saturation


def test_split_and_normalizer_use_train_only():
    f = generate(5, 8, 8, 16, seed=0, physics=SMALL, progress=False)
    parts = f.split(n_val=1, n_test=2)
    assert [parts[k].shape[0] for k in ("train", "val", "test")] == [2, 1, 2]
    norm = Normalizer.fit(parts["train"])
    z = norm.normalize(parts["train"])
    np.testing.assert_allclose(z.mean(axis=(0, 1, 3, 4)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1, 3, 4)), 1, atol=1e-3)
    np.testing.assert_allclose(norm.denormalize(norm.normalize(parts["test"])), parts["test"], rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="cannot split 5 trajectories"):
        f.split(n_val=2, n_test=3)


def test_menu_is_deterministic_and_a_subset_is_the_same_fields_in_canonical_order():
    full = _all()
    assert full.variables == ALL_VARIABLES and full.units == tuple(VARIABLE_UNITS[n] for n in ALL_VARIABLES)
    assert 7 <= len(ALL_VARIABLES) <= 11 and np.isfinite(full.data).all()
    np.testing.assert_array_equal(full.data, _all().data)
    assert not np.allclose(full.data, _all(seed=1).data)
    np.testing.assert_array_equal(full.data[:2], _all(n_traj=2).data)  # trajectory i depends only on (seed, i)
    pick = ("tracer", "RH", "precip", "u", "cloud", "v", "T")  # any order in, canonical order out
    sub = generate(3, 12, 8, 16, 0, physics=SMALL, variables=pick, cache=False, progress=False)
    assert sub.variables == ("u", "v", "T", "RH", "precip", "cloud", "tracer")
    assert sub.units == ("m/s", "m/s", "K", "%", "mm/h", "1", "ppb")
    cols = [ALL_VARIABLES.index(n) for n in sub.variables]
    np.testing.assert_array_equal(sub.data, full.data[:, :, cols])  # no new variable feeds back on the others
    default = generate(3, 12, 8, 16, 0, physics=SMALL, cache=False, progress=False)
    np.testing.assert_array_equal(default.data, full.data[:, :, :5])


def test_cache_key_covers_the_selection(tmp_path):
    a = generate(2, 8, 8, 16, seed=0, physics=SMALL, progress=False)
    b = generate(2, 8, 8, 16, seed=0, physics=SMALL, variables=("u", "v", "T", "RH", "tracer"), progress=False)
    assert len(list((tmp_path / "fields").iterdir())) == 2 and b.data.shape[2] == 5
    assert b.variables[-1] == "tracer" and not np.array_equal(a.data, b.data)


def test_bounds_and_intermittent_heavy_tailed_precipitation():
    f = _all(n_traj=4, height=16, width=32)
    get = dict(zip(f.variables, np.moveaxis(f.data, 2, 0), strict=True))
    assert get["RH"].min() >= 0 and get["RH"].max() <= 100 + 1e-3
    assert get["cloud"].min() >= 0 and get["cloud"].max() <= 1
    assert get["cloud"].std() > 0.3  # saturating: mostly near 0 or near 1
    precip = get["precip"]
    assert precip.min() == 0  # exactly 0 where dry, never negative
    assert 0.5 <= (precip == 0).mean() <= 0.95
    wet = precip[precip > 0]
    assert np.quantile(wet, 0.99) > 5 * np.median(wet)  # heavy right tail
    stds = f.data.std(axis=(0, 1, 3, 4))
    assert stds.max() / stds.min() > 100  # heterogeneous scales across the menu


def _fine_power(x: np.ndarray) -> float:
    """Share of the spatial variance at total wavenumber |k| >= 4 (the Rossby waves have |k| <= 3.6)."""
    h, w = x.shape[-2:]
    power = np.abs(np.fft.fft2(x - x.mean(axis=(-2, -1), keepdims=True))) ** 2
    k = np.hypot(np.fft.fftfreq(h, 1 / h)[:, None], np.fft.fftfreq(w, 1 / w)[None])
    return float(power[..., k >= 4].sum() / power.sum())


def test_tracer_is_fine_scale_and_carried_downwind():
    wind, calm = _all(height=16, width=32), _all(height=16, width=32, physics=CALM)
    tracer, z, ps = (ALL_VARIABLES.index(n) for n in ("tracer", "z", "ps"))
    assert _fine_power(wind.data[:, :, tracer]) > 0.5 > 0.05 > _fine_power(wind.data[:, :, z])
    assert _fine_power(wind.data[:, :, ps]) < 1e-6  # ps: the large-scale part only
    moving, still = wind.data[:, :, tracer].astype(np.float64), calm.data[:, :, tracer].astype(np.float64)
    assert np.abs(np.diff(still, axis=1)).max() < 1e-3  # no wind: the tracer sits at equilibrium with its sources
    assert np.abs(np.diff(moving, axis=1)).mean() > 1.0  # ppb per frame: with wind it changes, so it needs u and v
    # the jet U0 cos(y) blows east in rows with cos(y) > 0.5 and west where cos(y) < -0.5; the time-mean plumes
    # match the windless source pattern shifted one cell downwind better than shifted one cell upwind
    mean, source = moving.mean(axis=1), still.mean(axis=1)
    cos_y = np.cos(np.arange(16) * 2 * np.pi / 16)
    for rows, downwind in ((cos_y > 0.5, 1), (cos_y < -0.5, -1)):
        corr = {s: np.corrcoef(mean[:, rows].ravel(), np.roll(source, s, -1)[:, rows].ravel())[0, 1] for s in (1, -1)}
        assert corr[downwind] > corr[-downwind] + 0.2


def _lead_one_residual(target: np.ndarray, predictors: list[np.ndarray], history: int = 4) -> float:
    """Least-squares forecast of ``target`` one frame ahead, per pixel and pooled, from its last ``history`` frames
    and the current frame of each of ``predictors``: residual MSE / variance of the target."""
    xs, ys = [], []
    for t in range(history - 1, target.shape[1] - 1):
        own = [target[:, t - k] for k in range(history)]
        columns = [*own, *(p[:, t] for p in predictors), np.ones_like(own[0])]
        xs.append(np.stack(columns, -1).reshape(-1, len(columns)))
        ys.append(target[:, t + 1].ravel())
    x, y = np.concatenate(xs), np.concatenate(ys)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(((y - x @ coef) ** 2).mean() / y.var())


def test_sst_cannot_be_forecast_from_its_own_history_but_can_with_the_flux():
    f = generate(4, 40, 8, 16, 0, physics=SMALL, variables=("flux", "sst"), cache=False, progress=False)
    flux, sst = (f.data[:, :, i].astype(np.float64) for i in range(2))
    own, with_flux = _lead_one_residual(sst, []), _lead_one_residual(sst, [flux])
    persistence = float(((sst[:, 1:] - sst[:, :-1]) ** 2).mean() / sst.var())
    assert own > 0.03 and own > 0.5 * persistence  # four own frames leave most of persistence's error
    assert with_flux < 1e-6  # the flux of the current frame determines the next (exact integration)
    assert _lead_one_residual(flux, []) > 0.2  # the flux has a fresh innovation every frame
    assert np.abs(np.corrcoef(flux[:, :-1].ravel(), flux[:, 1:].ravel())[0, 1] - np.exp(-1 / 5)) < 0.1
    assert fields.dependent_variables(("sst", "u", "flux", "T")) == ("T", "sst")  # T reads u (and v), sst flux
    assert fields.dependent_variables(("sst", "T")) == ()  # nothing they read is in the selection


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_traj must be an integer >= 1"):
        generate(0, 8, 8, 16, seed=0)
    with pytest.raises(ValueError, match="height must be"):
        generate(1, 8, 2, 16, seed=0)
    data = np.zeros((2, 10, 5, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="expected 4 variables, got 5"):
        check_fields(data, n_vars=4)
    with pytest.raises(ValueError, match="exceed the trajectory length 10"):
        check_fields(data, n_vars=5, t_in=6, t_out=6)
    data[1, 3, 2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value .* \(1, 3, 2, 0, 1\)"):
        check_fields(data)
    with pytest.raises(ValueError, match="trajectory x frame x variable"):
        check_fields(np.zeros((3, 4)))
    assert fields.VARIABLES == ("u", "v", "z", "T", "RH")
    with pytest.raises(ValueError, match=r"unknown variable 'wind'; expected names from \('u', 'v', 'z'"):
        generate(1, 8, 8, 16, seed=0, variables=("u", "wind"))
    with pytest.raises(ValueError, match="without repeats"):
        generate(1, 8, 8, 16, seed=0, variables=("u", "u"))
    with pytest.raises(ValueError, match="sequence of names, got the string 'tracer'"):
        generate(1, 8, 8, 16, seed=0, variables="tracer")
    with pytest.raises(ValueError, match="slab_lifetime must be > 0"):
        generate(1, 8, 8, 16, seed=0, physics=FieldPhysics(slab_lifetime=0.0))
    with pytest.raises(ValueError, match="tracer_lifetime must be > 0"):
        generate(1, 8, 8, 16, seed=0, physics=FieldPhysics(tracer_lifetime=0.0))
