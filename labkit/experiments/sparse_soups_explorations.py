"""Settings searched for the regime where Sparse Model Soups beat IMP (:mod:`labkit.experiments.sparse_soups`).

Each is the cpu preset + ``EXPLORE_BASE`` + its overrides; ``reports/sparse_soups/explore.py`` runs them by name.
"""

from __future__ import annotations

from typing import Any

# Settings searched for the regime where SMS beats IMP (cpu preset + these overrides); every one run is reported in
# reports/sparse_soups/explorations.md. EXPLORE_BASE drops the arms the search does not need, to save compute.
EXPLORE_BASE: dict[str, Any] = {"greedy_chain": False, "naive_runs": 0, "curve_points": 3}
EXPLORATIONS: dict[str, dict[str, Any]] = {
    "vary_seed": {"vary": "seed"},
    "vary_lr_wide": {"spread": (0.25, 2.0)},
    "extreme_sparsity": {"goal_sparsity": 0.995, "phases": 5},
    "moderate_sparsity": {"goal_sparsity": 0.9, "phases": 3},
    "augment": {"augment": 15.0},
    "short_retrain": {"retrain_epochs": 2},
    "mnist1d": {
        "data": "mnist1d",
        "n_train": 0,
        "width": 300,
        "pretrain_epochs": 40,
        "goal_sparsity": 0.95,
        "ood": "noise:0.5",
    },
    "mnist1d_cnn": {
        "data": "mnist1d",
        "n_train": 0,
        "arch": "cnn",
        "width": 16,
        "pretrain_epochs": 40,
        "goal_sparsity": 0.95,
        "ood": "noise:0.5",
    },
    "cnn": {
        "arch": "cnn",
        "width": 8,
        "n_train": 5000,
        "pretrain_epochs": 10,
        "retrain_epochs": 3,
        "goal_sparsity": 0.95,
        "phases": 3,
        "m": 3,
    },
}
