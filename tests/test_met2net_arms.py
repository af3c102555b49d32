"""Met²Net's arms: the longer budget of the convergence check stretches every duration and really trains longer."""

import pytest

from labkit.experiments import met2net
from labkit.experiments.met2net.arms import longer_budget


def test_the_longer_budget_stretches_every_duration_of_the_schedule():
    cfg = met2net.configure("cpu")
    long = longer_budget(cfg, cfg.budget_factor)
    assert (long.epochs, long.patience, long.explicit_ae_epochs) == (100, 10, 20)
    assert long.lr_patience == 3  # the learning rate halves on the 4th epoch without a gain instead of the 2nd
    assert (long.min_improvement, long.lr, long.seeds) == (cfg.min_improvement, cfg.lr, cfg.seeds)
    assert longer_budget(met2net.configure("smoke", {"max_steps": 3}), 2.0).max_steps == 6
    with pytest.raises(ValueError, match=r"budget_factor.*>= 2.*1\.5"):
        met2net.configure("smoke", {"budget_factor": 1.5})


def test_a_longer_budget_really_trains_longer(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cfg = met2net.configure("smoke", {"epochs": 2, "patience": 2, "seeds": 1})  # early stopping cannot end 2 epochs
    data = met2net.load_data(cfg)
    short = met2net.train_arm("stacked", cfg, 0, data)
    long = met2net.train_arm("stacked", longer_budget(cfg, 2.0), 0, data)
    assert (short.epochs_run, long.epochs_run) == (2, 4)
