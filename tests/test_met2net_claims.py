"""Met²Net's claims, per-seed scores and verdicts on hand-made tables (no training)."""

import numpy as np
import pandas as pd
import pytest

from labkit.experiments import met2net, met2net_claims
from labkit.views.met2net import squared_unit

ARM_MSE = {"persistence": 1.0, "climatology": 1.2, "stacked": 0.5, "stacked_wide": 0.4, "pervar_e2e": 0.3,
           "pervar_explicit": 0.6, "met2net": 0.35, "met2net_noattn": 0.35}


def _tables(seeds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    metrics, history = [], []
    for seed in range(seeds):
        shift = rng.normal(0, 0.05)  # a seed effect shared by all arms: pairing removes it
        for arm, mse in ARM_MSE.items():
            for var, scale in (("T", 4.0), ("RH", 25.0)):
                value = mse + shift + rng.normal(0, 0.002)
                for units, factor, unit in (("normalised", 1.0, "z"), ("physical", scale, "K" if var == "T" else "%")):
                    metrics.append({"seed": seed, "arm": arm, "variable": var, "units": units, "unit": unit,
                                    "mse": value * factor})
            curve = [1.0, 0.5, 0.4, 0.41, 0.42, 0.43] if arm not in ("persistence", "climatology") else [mse]
            history += [{"seed": seed, "arm": arm, "epoch": e, "val_mse_z": v} for e, v in enumerate(curve)]
    return pd.DataFrame(metrics), pd.DataFrame(history)


def test_per_seed_scores_have_skill_and_physical_columns():
    scores = met2net_claims.per_seed_scores(*_tables())
    assert {"mse_z", "mse_T", "mse_RH", "skill_vs_persistence", "val_mse_z"} <= set(scores.columns)
    row = scores[(scores.arm == "persistence")]
    assert np.allclose(row["skill_vs_persistence"], 0)
    assert len(scores) == 5 * len(ARM_MSE)


def test_verdicts_judge_every_claim_paired_with_student_t():
    metrics, history = _tables()
    scores = met2net_claims.per_seed_scores(metrics, history)
    claims, sanity = met2net_claims.verdicts(scores, history)
    verdict = dict(zip(claims["claim"], claims["verdict"], strict=True))
    assert set(verdict) == {c.name for c in met2net_claims.CLAIMS}
    assert verdict["architecture"] == "held"  # 0.3 vs 0.5
    assert verdict["implicit_vs_end_to_end"] == "not held"  # 0.35 vs 0.3
    assert verdict["variable_attention"] == "not held"  # equal: below the 1 % tolerance
    assert verdict["temperature"] == "held" and verdict["humidity"] == "held"  # 0.35 vs 0.4
    assert (claims["n"] == 5).all() and claims["rule"].str.contains("Student-t").all()
    flags = dict(zip(sanity["arm"], sanity["flags"], strict=True))
    assert flags["climatology"] == "climatology does not beat persistence" and flags["met2net"] == ""


def test_an_unconverged_arm_makes_its_claims_inconclusive():
    metrics, history = _tables()
    still_improving = (history.arm == "stacked")
    history.loc[still_improving, "val_mse_z"] = 1.0 / (1 + history.loc[still_improving, "epoch"])
    claims, sanity = met2net_claims.verdicts(met2net_claims.per_seed_scores(metrics, history), history)
    verdict = dict(zip(claims["claim"], claims["verdict"], strict=True))
    assert verdict["architecture"] == "inconclusive" and verdict["implicit_vs_end_to_end"] == "not held"
    assert "stacked not converged in 5/5 seeds" in set(sanity["flags"])


def test_relative_change_is_paired_per_variable_with_the_paper_reference():
    scores = met2net_claims.per_seed_scores(*_tables())
    rel = met2net.relative_change(scores).set_index("variable")
    assert rel.loc["T", "paper_pct"] == -28.82 and rel.loc["T", "n"] == 5
    assert rel.loc["T", "low"] < rel.loc["T", "relative_change_pct"] < rel.loc["T", "high"] < 0
    with pytest.raises(ValueError, match="need arms 'met2net' and 'unet'"):
        met2net.relative_change(scores, baseline="unet")


def test_squared_units_are_labelled_like_physics():
    assert squared_unit("m/s") == "(m/s)²" and squared_unit("K") == "K²" and squared_unit("1") == "1"
