"""GateSkip summaries: compute saved at 90 % of quality (own and dense reference), quality at equal saving, verdict."""

import pandas as pd
import pytest

from labkit.experiments import gateskip_summary as summary


def _curves(metric: str = "seq_em") -> pd.DataFrame:
    """Two seeds: dense 1.0; GateSkip keeps quality longer than random-skip; ShortGPT one static point."""
    arms = {
        "gateskip λ=1": [(0.0, 0.95), (0.1, 0.9), (0.2, 0.5)],
        "gateskip λ=1 + random rank": [(0.0, 0.95), (0.1, 0.3)],
        "random_skip": [(0.0, 1.0), (0.1, 0.5)],
        "shortgpt": [(0.0, 1.0), (0.125, 0.6)],
    }
    rows = []
    for seed in (0, 1):
        rows.append({"task": "cumsum", "seed": seed, "arm": "dense", "skipped_fraction": 0.0, metric: 1.0})
        for arm, points in arms.items():
            rows += [{"task": "cumsum", "seed": seed, "arm": arm, "skipped_fraction": x, metric: y} for x, y in points]
    return pd.DataFrame(rows)


def test_saved_at_quality_interpolates_against_dense_and_own():
    saved = summary.saved_at_quality(_curves(), "seq_em", reference="dense").groupby("arm").saved.mean()
    assert saved["gateskip λ=1"] == pytest.approx(0.1)  # 0.9 = 90 % of dense, reached exactly at 10 %
    assert saved["random_skip"] == pytest.approx(0.02)  # 1.0 -> 0.5 over 10 %: crosses 0.9 at 2 %
    own = summary.saved_at_quality(_curves(), "seq_em", reference="own").groupby("arm").saved.mean()
    assert own["gateskip λ=1"] > saved["gateskip λ=1"]  # its own 0.95 start is the easier bar
    with pytest.raises(ValueError, match="reference must be"):
        summary.saved_at_quality(_curves(), "seq_em", reference="paper")


def test_bits_per_byte_counts_lower_as_better():
    curves = _curves("bpb")
    curves["bpb"] = 3.0 - curves["bpb"]  # dense 2.0; quality falling = bpb rising
    saved = summary.saved_at_quality(curves, "bpb", reference="dense").groupby("arm").saved.mean()
    assert 0 < saved["random_skip"] < saved["gateskip λ=1"]


def test_quality_at_equal_saving_and_the_verdict():
    at = summary.quality_at(_curves(), "seq_em", 0.05).groupby("arm").seq_em.mean()
    assert at["gateskip λ=1"] == pytest.approx(0.925) and at["random_skip"] == pytest.approx(0.75)
    result = summary.verdict(_curves(), "cumsum")
    assert result["head"] == "gateskip λ=1" and result["held"]
    assert result["statement"].startswith("HELD on cumsum") and "ahead on 2/2 seeds" in result["statement"]


def test_lambda_table_held_lines_and_the_bos_check():
    curves = _curves().assign(family="x", sparsity_weight=0.0, budget=lambda d: d.skipped_fraction)
    curves.loc[curves.arm == "gateskip λ=1", ["family", "sparsity_weight"]] = ["gateskip", 1.0]
    saved = pd.concat([summary.saved_at_quality(curves, "seq_em", reference=r) for r in ("own", "dense")])
    lambdas = summary.lambda_table(curves, saved)
    assert lambdas.to_dict("records")[0]["quality at r=0"] == pytest.approx(0.95)
    gates = pd.DataFrame({"task": "cumsum", "position": range(8), "importance": [0.9] + [0.5] * 5 + [0.2] * 2})
    anchor = summary.position_importance(gates, "cumsum", n_digits=4)  # prompt = positions 1..5
    assert anchor == pytest.approx({"bos": 0.9, "prompt": 0.5, "later": 0.2})
    lines = summary.held_lines(curves, ["cumsum"], lambdas, anchor)
    assert lines[0].startswith("HELD on cumsum")
    assert "full-compute seq_em: gateskip λ=1 0.950 vs dense 1.000" in lines
    assert "cumsum λ=1: seq_em at r=0 0.950, saved@90 vs dense 10.0%" in lines
    assert lines[-1] == "BOS anchor: mean gate 0.900 at BOS vs 0.500 other prompt positions"
