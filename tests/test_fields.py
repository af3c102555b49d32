"""Tests for labkit.data.fields: shapes, determinism, caching, coupling between variables, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data import fields
from labkit.data.fields import FieldPhysics, Normalizer, check_fields, generate

SMALL = FieldPhysics(spinup_frames=10, substeps=4)


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
