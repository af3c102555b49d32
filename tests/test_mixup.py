"""Tests for labkit.mixup: C-Mixup samplers (dense vs truncated), λ sampling, mixers, hooks and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from labkit import mixup


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _labels(n=2000, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, d, generator=g, dtype=torch.float64)
    return y[:, 0] if d == 1 else y


def test_dense_rows_sum_to_one_and_favour_nearest_labels():
    y = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1], dtype=torch.float64)
    s = mixup.CMixupSampler(y, bandwidth=0.5, mode="dense")
    torch.testing.assert_close(s.probs.sum(1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert s.probs[0, :3].sum() > 0.999  # almost all mass on the close cluster
    assert s.probs[0].argmax() == 0  # self is a candidate and the most likely (official code)
    expected = torch.softmax(-((y[0] - y) ** 2) / (2 * 0.25), 0)
    torch.testing.assert_close(s.probs[0], expected, rtol=1e-10, atol=1e-12)


def test_exclude_self_removes_self_pairs_in_every_mode():
    y = _labels(300)
    idx = torch.arange(300).repeat(20)
    for mode in ("dense", "truncated"):
        s = mixup.CMixupSampler(y, bandwidth=0.05, mode=mode, exclude_self=True)
        assert mixup.self_pair_rate(idx, s.sample(idx, torch.Generator().manual_seed(0))) == 0.0
    s = mixup.CMixupSampler(_labels(300, d=2), bandwidth=0.5, mode="truncated", exclude_self=True)
    assert mixup.self_pair_rate(idx, s.sample(idx, torch.Generator().manual_seed(0))) == 0.0
    u = mixup.UniformSampler(10, exclude_self=True)
    idx = torch.arange(10).repeat(100)
    assert mixup.self_pair_rate(idx, u.sample(idx, torch.Generator().manual_seed(0))) == 0.0


def test_tiny_bandwidth_degrades_to_self_pairs():
    y = _labels(500)
    s = mixup.CMixupSampler(y, bandwidth=1e-6, mode="truncated")
    idx = torch.arange(500)
    assert mixup.self_pair_rate(idx, s.sample(idx, torch.Generator().manual_seed(0))) > 0.99


@pytest.mark.parametrize("d", [1, 2])
def test_truncated_probabilities_match_dense(d):
    y = _labels(2000, d=d)
    dense = mixup.CMixupSampler(y, bandwidth=0.2, mode="dense")
    trunc = mixup.CMixupSampler(y, bandwidth=0.2, mode="truncated")
    rows = torch.arange(0, 2000, 97)
    torch.testing.assert_close(trunc.probabilities(rows), dense.probabilities(rows), rtol=0, atol=1e-7)


def _offsets(sampler, y, rounds, seed):
    idx = torch.arange(len(y)).repeat(rounds)
    partners = sampler.sample(idx, torch.Generator().manual_seed(seed))
    return (y[partners] - y[idx]).numpy()


def test_truncated_sampler_agrees_with_dense_ks_at_n2000():
    """Two-sample KS on partner label offsets y_j − y_i (20k draws each), seeded; and a power check."""
    y = _labels(2000)
    dense = mixup.CMixupSampler(y, bandwidth=0.1, mode="dense")
    trunc = mixup.CMixupSampler(y, bandwidth=0.1, mode="truncated")
    a, b = _offsets(dense, y, 10, seed=1), _offsets(trunc, y, 10, seed=2)
    assert stats.ks_2samp(a, b).pvalue > 0.01
    wrong = mixup.CMixupSampler(y, bandwidth=0.12, mode="truncated")  # a 20 % wrong bandwidth must be detected
    assert stats.ks_2samp(a, _offsets(wrong, y, 10, seed=3)).pvalue < 1e-6


@pytest.mark.parametrize("d", [1, 2])
def test_truncated_sampler_chi_square_against_exact_probabilities(d):
    """χ² goodness of fit of truncated draws against the dense matrix, for a few anchors at N = 2,000."""
    y = _labels(2000, d=d)
    dense = mixup.CMixupSampler(y, bandwidth=0.15, mode="dense")
    trunc = mixup.CMixupSampler(y, bandwidth=0.15, mode="truncated")
    draws = 20000
    for anchor in (0, 777, 1999):
        p = dense.probs[anchor].numpy()
        got = trunc.sample(torch.full((draws,), anchor), torch.Generator().manual_seed(anchor)).numpy()
        order = np.argsort(-p)  # bin partners by probability rank into bins of ≈ equal expected mass
        bins = np.minimum((np.cumsum(p[order]) * 20).astype(int), 19)
        bin_of = np.empty(len(p), dtype=int)
        bin_of[order] = bins
        expected = np.bincount(bins, weights=p[order], minlength=20) * draws
        observed = np.bincount(bin_of[got], minlength=20)
        keep = expected > 5
        rest_o, rest_e = observed[~keep].sum(), expected[~keep].sum()
        obs, exp = np.append(observed[keep], rest_o), np.append(expected[keep], rest_e)
        if rest_e < 5:
            obs, exp = observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()
        assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_truncated_scales_to_large_n():
    y = torch.rand(200_000, dtype=torch.float64)
    s = mixup.CMixupSampler(y, bandwidth=0.001)
    assert s.mode == "truncated"
    idx = torch.arange(200_000)
    p = s.sample(idx, torch.Generator().manual_seed(0))
    assert (y[p] - y[idx]).abs().max() <= 6 * 0.001 + 1e-12


def test_batch_scope_equals_dataset_scope_when_batch_is_dataset():
    y = _labels(64)
    dense = mixup.CMixupSampler(y, bandwidth=0.3, mode="dense")
    batch_probs = mixup.kernel_probabilities(y[:, None], y[:, None], 0.3)
    torch.testing.assert_close(batch_probs, dense.probs, rtol=1e-10, atol=1e-12)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(mixup.within_batch_partners(y, 0.3, generator=g1), dense.sample(torch.arange(64), g2))


def test_within_batch_partners_with_candidate_pool():
    y = torch.tensor([0.0, 10.0])
    pool = torch.tensor([0.0, 10.0, 0.01, 10.01])
    part = mixup.within_batch_partners(y, 0.1, candidates=pool, generator=torch.Generator().manual_seed(0))
    assert part[0] in (0, 2) and part[1] in (1, 3)


def test_feature_similarity_variant_uses_inputs():
    x = torch.cat([torch.zeros(50, 3), torch.ones(50, 3) * 10])
    s = mixup.CMixupSampler(x, bandwidth=1.0, mode="truncated")
    idx = torch.arange(100)
    part = s.sample(idx, torch.Generator().manual_seed(0))
    assert ((part < 50) == (idx < 50)).all()


def test_beta_lambda_shapes_seeding_and_mean():
    assert mixup.beta_lambda(2.0).shape == ()
    assert mixup.beta_lambda(2.0, 7).shape == (7,)
    a = mixup.beta_lambda(0.5, 1000, torch.Generator().manual_seed(3))
    b = mixup.beta_lambda(0.5, 1000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert ((a >= 0) & (a <= 1)).all() and abs(float(a.mean()) - 0.5) < 0.05


def test_mix_per_batch_and_per_sample():
    x, x2 = torch.zeros(4, 3), torch.ones(4, 3)
    y, y2 = torch.zeros(4), torch.full((4,), 2.0)
    xm, ym = mixup.mix(x, y, x2, y2, 0.25)
    torch.testing.assert_close(xm, torch.full((4, 3), 0.75))
    torch.testing.assert_close(ym, torch.full((4,), 1.5))
    lam = torch.tensor([0.0, 0.5, 1.0, 0.25])
    xm, ym = mixup.mix(x, y[:, None], x2, y2[:, None], lam)
    torch.testing.assert_close(xm[:, 0], 1 - lam)
    torch.testing.assert_close(ym[:, 0], 2 * (1 - lam))


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.1))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.block1(x))


def test_manifold_mixup_mixes_hidden_states_at_the_layer():
    torch.manual_seed(0)
    model = _MLP()
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    with mixup.manifold_mixup(model, "block1") as mm:
        out = mm(x1, x2, 0.3)
        torch.testing.assert_close(model(x1), model.head(model.block1(x1)))  # plain calls untouched
    expected = model.head(0.3 * model.block1(x1) + 0.7 * model.block1(x2))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    lam = torch.linspace(0, 1, 5)
    mm = mixup.manifold_mixup(model, model.block1)
    expected = model.head(lam[:, None] * model.block1(x1) + (1 - lam[:, None]) * model.block1(x2))
    torch.testing.assert_close(mm(x1, x2, lam), expected, rtol=1e-6, atol=1e-6)
    mm.remove()
    assert not model.block1._forward_hooks


def test_cutmix_effective_lambda_is_kept_area():
    x, x2 = torch.zeros(2, 1, 10, 10), torch.ones(2, 1, 10, 10)
    for seed in range(5):
        out, lam = mixup.cutmix(x, x2, 0.6, torch.Generator().manual_seed(seed))
        assert math.isclose(1 - float(out.mean()), lam, abs_tol=1e-6)
        assert 0.6 <= lam <= 1.0


def test_mixup_transform_in_batch_and_collate():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8)
    xm, ym = mixup.MixupTransform(alpha=1.0, generator=g)(x, y)
    assert xm.shape == x.shape and ym.shape == y.shape
    xm, ym = mixup.MixupTransform(alpha=1.0, bandwidth=0.5, per="sample", generator=g)(x, y)
    assert ym.shape == (8,)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=4,
        collate_fn=lambda b: mixup.MixupTransform(2.0)(*torch.utils.data.default_collate(b)),
    )
    assert [tuple(b[0].shape) for b in loader] == [(4, 3), (4, 3)]


def test_bandwidth_helpers():
    y = torch.tensor([0.0, 2.0, 4.0, 6.0])
    assert math.isclose(mixup.bandwidth_from_std(y, 0.5), 0.5 * float(y.double().std(unbiased=False)))
    best, losses = mixup.bandwidth_sweep(lambda s: (s - 1.0) ** 2, [0.5, 1.0, 2.0])
    assert best == 1.0 and len(losses) == 3


def test_bad_input_errors():
    with pytest.raises(ValueError, match="finite"):
        mixup.CMixupSampler(torch.tensor([0.0, float("nan"), 1.0]), 1.0)
    with pytest.raises(ValueError, match="finite"):
        mixup.CMixupSampler(np.array([0.0, np.inf]), 1.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="bandwidth"):
            mixup.CMixupSampler(torch.tensor([0.0, 1.0]), bad)
    with pytest.raises(ValueError, match="mode"):
        mixup.CMixupSampler(torch.tensor([0.0, 1.0]), 1.0, mode="sparse")
    with pytest.raises(ValueError, match="same number of examples"):
        mixup.mix(torch.zeros(3, 2), torch.zeros(4), torch.zeros(3, 2), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="batch of 1"):
        mixup.MixupTransform()(torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="batch of 1"):
        mixup.within_batch_partners(torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="one_hot"):
        mixup.MixupTransform()(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            mixup.beta_lambda(alpha)
    with pytest.raises(ValueError, match="lam"):
        mixup.mix(torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1), torch.zeros(2), 1.5)
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        mixup.CMixupSampler(torch.tensor([0.0, 1.0]), 1.0).sample(torch.tensor([2]))
    with pytest.raises(ValueError, match="not found"):
        mixup.manifold_mixup(_MLP(), "block9")
    with pytest.raises(ValueError, match="N×C×H×W"):
        mixup.cutmix(torch.zeros(2, 4), torch.zeros(2, 4), 0.5)
