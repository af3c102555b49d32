"""The C-Mixup experiment's verdict helpers: paired differences, interval outcomes and the "held" line."""

import numpy as np
import pandas as pd

from labkit.experiments import cmixup


def _selected() -> pd.DataFrame:
    rows = []
    for seed in range(4):
        for arm, rmse in {"erm": 1.0, "mixup": 1.2, "cmixup": 0.8}.items():
            noise = 0.01 * seed
            rows.append({"dataset": "toy", "arm": arm, "seed": seed, "test_rmse": rmse + noise, "worst_rmse": np.nan})
            rows.append(
                {"dataset": "even", "arm": arm, "seed": seed, "test_rmse": 1.0 + (-1) ** seed * 0.1, "worst_rmse": 2.0}
            )
    return pd.DataFrame(rows)


def test_outcomes_and_verdict_follow_the_intervals():
    diffs, vs_mixup = cmixup.paired_differences(_selected(), ood={"even"})
    assert set(diffs["dataset"]) == {"toy", "even", "even (worst)"}
    vs_erm = cmixup.outcomes(diffs).set_index("dataset")["outcome"]
    assert vs_erm["toy"] == "better"  # 0.2 lower on every seed
    assert vs_erm["even"] == "tied"  # identical paired values: interval [0, 0] spans 0
    assert cmixup.outcomes(vs_mixup).set_index("dataset").loc["toy", "outcome"] == "better"
    rel = cmixup.relative_improvement(_selected())
    held = cmixup.verdict(diffs, vs_mixup, rel)
    assert "vs ERM (paired test RMSE, 95% CI): better on 1/2, tied on 1, worse on 0" in held
    assert "+6.56% in-distribution" in held  # paper numbers appear only as labelled references


def test_outcomes_of_an_empty_comparison_is_empty():
    assert cmixup.outcomes(pd.DataFrame()).empty
