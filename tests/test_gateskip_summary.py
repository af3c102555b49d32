"""GateSkip summaries and claims: compute saved at a quality level, validation-only choices, per-seed scores,
verdicts (hand-made tables, no training)."""

import pandas as pd
import pytest

from labkit.experiments import gateskip_claims as claims
from labkit.experiments import gateskip_summary as summary
from labkit.experiments.gateskip_arms import CONTROL


def _curves(metric: str = "seq_em", split: str = "test", seeds=(0, 1, 2)) -> pd.DataFrame:
    """Dense 1.0; GateSkip keeps quality longer than random skip and its random-rank control; ShortGPT one point."""
    arms = {
        "gateskip": [(0.0, 0.95), (0.1, 0.9), (0.2, 0.5)],
        CONTROL: [(0.0, 0.95), (0.1, 0.3)],
        "random_skip": [(0.0, 1.0), (0.1, 0.5)],
        "shortgpt": [(0.0, 1.0), (0.125, 0.6)],
        "uls": [(0.0, 1.0), (0.25, 0.4)],
    }
    rows = []
    for seed in seeds:
        base = {
            "task": "cumsum",
            "split": split,
            "seed": seed,
            "config": "c",
            "family": "dense",
            "finetune_lr": 1e-3,
            "gate_lr": 0.0,
            "sparsity_weight": 0.0,
            "train_skip_end": 0.0,
            "steps": 200,
        }
        rows.append({**base, "arm": "dense", "budget": 0.0, "skipped_fraction": 0.0, "flops_saved": 0.0, metric: 1.0})
        for arm, points in arms.items():
            rows += [
                {
                    **base,
                    "arm": arm,
                    "budget": x,
                    "skipped_fraction": x,
                    "flops_saved": x - 0.13 * (arm not in ("shortgpt", "uls")),
                    metric: y - 0.01 * seed,
                }
                for x, y in points
            ]
    return pd.DataFrame(rows)


def test_saved_at_quality_interpolates_against_dense_and_own():
    saved = summary.saved_at_quality(_curves(seeds=(0,)), "seq_em").groupby("arm").saved.mean()
    assert saved["gateskip"] == pytest.approx(0.1)  # 0.9 = 90 % of dense, reached exactly at 10 %
    assert saved["random_skip"] == pytest.approx(0.02)  # 1.0 -> 0.5 over 10 %: crosses 0.9 at 2 %
    own = summary.saved_at_quality(_curves(seeds=(0,)), "seq_em", reference="own").groupby("arm").saved.mean()
    assert own["gateskip"] > saved["gateskip"]  # its own 0.95 start is the easier bar
    with pytest.raises(ValueError, match="reference must be"):
        summary.saved_at_quality(_curves(), "seq_em", reference="paper")
    two_dense = pd.concat([_curves(), _curves()[lambda d: d.arm == "dense"]])
    with pytest.raises(ValueError, match="one dense row"):
        summary.saved_at_quality(two_dense, "seq_em")


def test_bits_per_byte_counts_lower_as_better():
    curves = _curves("bpb")
    curves["bpb"] = 3.0 - curves["bpb"]  # dense 2.0; quality falling = bpb rising
    saved = summary.saved_at_quality(curves, "bpb").groupby("arm").saved.mean()
    assert 0 < saved["random_skip"] < saved["gateskip"]


def test_choose_sees_validation_only_and_breaks_ties_by_quality():
    val = _curves(split="val", seeds=(0,))
    better = val[val.arm == "gateskip"].assign(config="better", seq_em=lambda d: d.seq_em + 0.04)
    dense2 = val[val.arm == "dense"].assign(config="worse", seq_em=0.5)
    val = pd.concat([val, better, dense2], ignore_index=True)
    chosen, table = summary.choose(val)
    chosen = chosen.set_index("role")
    assert chosen.loc["dense", "config"] == "c"  # higher exact match at full compute
    assert chosen.loc["gateskip", "config"] == "better"  # saves more at 90 % of the chosen dense quality
    spec = chosen.loc["gateskip", "spec"]
    assert (spec.family, spec.steps) == ("dense", 200)  # rebuilt from the row's spec columns, stopping step included
    with pytest.raises(ValueError, match="validation rows only"):
        summary.choose(_curves(split="test"))
    assert set(table[table.chosen == "yes"].config) == {"c", "better"}
    row = table.set_index(["arm", "config"]).loc[("gateskip", "better")]
    assert row["saved at 90% (%)"] == pytest.approx(100 * chosen.loc["gateskip", "val_score"])
    assert table.set_index(["arm", "config"]).loc[("dense", "worse"), "chosen"] == ""


def test_scores_claims_and_sanity():
    curves = _curves()
    generation = curves[curves.arm.isin(["dense", "gateskip", "random_skip", "shortgpt"])].assign(
        scope="batch", gen_em=lambda d: d.seq_em
    )[["task", "split", "seed", "arm", "config", "scope", "budget", "skipped_fraction", "gen_em"]]
    scores = summary.test_scores(curves, generation, (0.9,))
    head = scores.set_index(["arm", "seed"]).sort_index()
    assert head.loc[("gateskip", 0), "saved_90_tokens"] == pytest.approx(10.0)  # in percentage points
    assert head.loc[("dense", 1), "saved_90_tokens"] == 0.0
    assert head.loc[("gateskip", 0), "gen_saved_90_batch"] == pytest.approx(10.0)
    trivial = pd.DataFrame({"task": "cumsum", "seed": [0, 1, 2], "arm": "trivial", "seq_em": 0.0})
    history = pd.DataFrame(
        {
            "task": "cumsum",
            "split": "test",
            "seed": 0,
            "phase": "dense c",
            "step": range(50),
            "loss": [2.0 - 0.02 * min(s, 30) for s in range(50)],
        }
    )
    chosen = pd.DataFrame({"task": "cumsum", "role": ["dense", "shortgpt", "uls"], "config": "c"})
    table, sanity = claims.verdicts(scores, trivial, history, chosen, (0.9,))
    verdict = table.set_index("claim").verdict
    assert verdict["cumsum: saved_90_tokens vs random_skip"] == "held"  # +8 pp on every seed
    assert verdict["cumsum: saved_90_tokens vs dense"] == "held"
    assert "cumsum: gen_saved_90_batch vs shortgpt" in verdict.index
    assert "cumsum: gen_saved_90_sequence vs dense" not in verdict.index  # no sequence-scope rows: not judged
    checks = sanity.set_index("arm")
    assert checks.loc["dense", "converged"] == 1.0 and checks.loc["gateskip", "beats_trivial"]
    side = summary.side_by_side(scores).set_index("arm")
    assert side.loc["gateskip", "saved_90_tokens"] == "+8.0 [+3.0, +13.0]"  # seeds save 10, 8 and 6 %


def test_bos_check():
    gates = pd.DataFrame({"task": "cumsum", "position": range(8), "importance": [0.9] + [0.5] * 5 + [0.2] * 2})
    anchor = summary.position_importance(gates, "cumsum", n_digits=4)  # prompt = positions 1..5
    assert anchor == pytest.approx({"bos": 0.9, "prompt": 0.5, "later": 0.2})
