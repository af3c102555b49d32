"""Met²Net's arms: the longer budget of the convergence check stretches the cosine schedule and really trains longer;
every run trains its whole budget under a cosine decay (nothing stops it early)."""

import numpy as np
import pytest

from labkit.experiments import met2net
from labkit.experiments.met2net.arms import longer_budget


def test_the_longer_budget_stretches_every_duration_of_the_schedule():
    cfg = met2net.configure("cpu")
    long = longer_budget(cfg, cfg.budget_factor)
    assert (long.epochs, long.explicit_ae_epochs) == (2 * cfg.epochs, 2 * cfg.explicit_ae_epochs)
    assert (long.lr, long.min_lr_ratio, long.seeds) == (cfg.lr, cfg.min_lr_ratio, cfg.seeds)
    assert longer_budget(met2net.configure("smoke", {"max_steps": 3}), 2.0).max_steps == 6
    with pytest.raises(ValueError, match=r"budget_factor.*>= 2.*1\.5"):
        met2net.configure("smoke", {"budget_factor": 1.5})


def test_a_longer_budget_really_trains_longer(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cfg = met2net.configure("smoke", {"epochs": 2, "seeds": 1, "long_seeds": 1})
    data = met2net.load_data(cfg)
    short = met2net.train_arm("stacked", cfg, 0, data)
    long = met2net.train_arm("stacked", longer_budget(cfg, 2.0), 0, data)
    assert (short.epochs_run, long.epochs_run) == (2, 4)


def _cosine(lr: float, steps: int) -> np.ndarray:
    return lr * 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps))


def test_the_learning_rate_decays_by_cosine_over_each_stage_and_the_longer_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cfg = met2net.configure("smoke", {"epochs": 4, "seeds": 1, "long_seeds": 1, "explicit_ae_epochs": 2})
    data = met2net.load_data(cfg)
    lr = met2net.train_arm("stacked", cfg, 0, data).history["lr"].to_numpy()
    np.testing.assert_allclose(lr, _cosine(cfg.lr, len(lr)))
    long = met2net.train_arm("stacked", longer_budget(cfg, 2.0), 0, data).history["lr"].to_numpy()
    np.testing.assert_allclose(long, _cosine(cfg.lr, 2 * len(lr)))
    explicit = met2net.train_arm("pervar_explicit", cfg, 0, data).history["lr"].to_numpy()
    ae = cfg.explicit_ae_epochs * len(lr) // cfg.epochs  # the autoencoder stage, then the translator's own cosine
    np.testing.assert_allclose(explicit, np.concatenate([_cosine(cfg.lr, ae), _cosine(cfg.lr, len(lr))]))


def test_every_seed_draws_its_own_fields_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cfg = met2net.configure("smoke")
    a, b = met2net.load_data(cfg, seed=0), met2net.load_data(cfg, seed=1)
    assert not np.array_equal(a.splits["test"].numpy(), b.splits["test"].numpy())
    fixed = met2net.configure("smoke", {"vary_data": False})
    np.testing.assert_array_equal(met2net.load_data(fixed, seed=1).splits["test"].numpy(), a.splits["test"].numpy())
