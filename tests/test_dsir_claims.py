"""DSIR claims judged on hand-made tables: pairing by target, the correlation as a protocol verdict, the premise, the
budget check and health of the trained tracks, and the summary's readings (gaps, headline metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit.experiments import Computed, dsir
from labkit.experiments.dsir import claims as dsir_claims

TARGETS = [f"t{i}" for i in range(6)]
# per method: (KL reduction, loss) offsets; quality (−loss) rises with KL reduction
METHODS = {"random": (0.0, 6.0), "dsir": (0.3, 5.0), "dsir-topk": (0.3, 5.0), "heuristic": (0.28, 5.05),
           "heuristic-words": (0.25, 5.1), "tfidf": (0.2, 5.3), "expert": (0.35, 4.8), "anti-dsir": (-0.8, 8.0)}


def scores(noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        for j, target in enumerate(TARGETS):
            for method, (kl, loss) in METHODS.items():
                rows.append({"seed": seed, "target": target, "method": method,
                             "kl_reduction": kl + noise * rng.normal(),
                             "bigram_nats_per_token": loss + 0.3 * j + noise * rng.normal()})
    return pd.DataFrame(rows)


def tiny_lm(target_bpb: float, cells: int = 4) -> pd.DataFrame:
    """Tiny-transformer rows over ``cells`` (target, seed) cells: random 3.6 bits/byte, DSIR 3.4, the premise arm
    ``target_bpb`` (+ a small per-cell spread)."""
    rows = []
    for j in range(cells):
        for method, bpb in (("random", 3.6), ("dsir", 3.4), ("target", target_bpb)):
            rows.append({"seed": 0, "target": f"t{j}", "method": method, "bits_per_byte": bpb + 0.01 * (j % 2),
                         "kl_reduction": 0.0})
    return pd.DataFrame(rows)


def budget(track: str, arms: tuple[str, ...], short: float, long: float, cell: str = "t0/0") -> pd.DataFrame:
    """Budget-table rows of one track: every arm at 1x (``short``) and 2x (``long``) validation bits per byte."""
    return pd.DataFrame([{"track": track, "arm": arm, "seed": cell, "budget": b, "steps": 10 * int(b),
                          "validation_bits_per_byte": v} for b, v in ((1.0, short), (2.0, long)) for arm in arms])


def classify_table(dsir_acc: float = 0.5) -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for target in ("a", "b"):
            for method, acc in (("random", 0.5), ("dsir", dsir_acc), ("base", 0.45)):
                rows.append({"seed": seed, "target": target, "method": method, "n_tags": 5,
                             "accuracy": acc + 0.01 * ((seed + len(target)) % 3)})
    return pd.DataFrame(rows)


def test_lm_claims_pair_by_target_and_hold_or_tie():
    claims, sanity, budget_table = dsir_claims.verdicts(scores(), n_boot=200)
    by = claims.set_index("claim")
    assert by.loc["kl_vs_random", "verdict"] == "held" and by.loc["loss_vs_random", "verdict"] == "held"
    assert by.loc["loss_vs_random", "n"] == len(TARGETS)  # one pair per target, not per (seed, target)
    assert "interval over targets" in by.loc["loss_vs_random", "rule"]
    assert by.loc["loss_vs_heuristic", "verdict"] == "held"  # 0.05 nats/token on every target
    text = dsir_claims.verdict_text(claims, sanity)
    assert "n=6" in text and text.startswith("rule:") and "kl_tracks_quality: held" in text
    assert by.loc["kl_tracks_quality", "verdict"] == "held" and by.loc["kl_tracks_quality", "n"] == len(TARGETS)
    assert "dsir-topk" not in by.loc["kl_tracks_quality", "rule"].split("(")[1].split(";")[0]  # counted once
    assert list(claims.columns[:3]) == ["claim", "role", "group"]
    assert sanity.empty and budget_table.empty  # the bigram LM is fit in closed form: nothing to check


def test_correlation_is_a_main_protocol_verdict_with_every_v2_column():
    claims, _, _ = dsir_claims.verdicts(scores(), n_boot=200)
    row = claims.set_index("claim").loc["kl_tracks_quality"]
    assert row.role == "main" and row.tolerance == "0" and row["raw verdict"] == "held"
    assert 0 < row.p < 0.01 and row["p (Holm)"] >= row.p  # every resample above 0: the add-one bootstrap p
    assert row.effect.startswith("r = +") and row.sanity == "ok" and row.rule.startswith("Pearson r")
    assert set(claims.role) == {"main"}  # no premise without the transformer track; all carry a paper reference


def test_correlation_counts_methods_once_and_goes_inconclusive_on_noise():
    c = dsir_claims.correlation_interval(scores(), n_boot=200)
    assert c["n_methods"] == 5 and "dsir-topk" not in c["methods"] and c["low"] <= c["r"] <= c["high"]
    flat = scores()
    flat["kl_reduction"] = np.random.default_rng(1).normal(size=len(flat))  # KL unrelated to loss
    verdict, _ = dsir_claims.correlation_verdict(flat, n_boot=200)
    assert verdict.verdict != "held" and verdict.p > 0.05
    few, _ = dsir_claims.correlation_verdict(scores()[scores().target.isin(TARGETS[:2])], n_boot=200)
    assert few.verdict == "inconclusive" and "too few" in few.flags[0] and np.isnan(few.p)


def test_premise_not_held_makes_the_downstream_claims_premise_not_met():
    # a model trained on target text is *worse* than random selection on held-out target text in every cell
    claims, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(target_bpb=3.9), n_boot=200)
    assert claims.claim.iloc[0] == "target_beats_random" and claims.role.iloc[0] == "premise"
    by = claims.set_index("claim")
    assert by.loc["target_beats_random", "verdict"] == "not held"
    for name in ("loss_vs_random", "loss_vs_heuristic", "loss_vs_heuristic_words", "kl_tracks_quality"):
        assert by.loc[name, "verdict"] == "premise not met" and by.loc[name, "raw verdict"] == "held", name
    assert by.loc["kl_vs_random", "verdict"] == "held"  # KL reduction involves no model: not governed
    assert "interval over (target, seed) cells" in by.loc["target_beats_random", "rule"]
    held, _, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(target_bpb=3.0), n_boot=200)
    by = held.set_index("claim")
    assert by.loc["target_beats_random", "verdict"] == "held" and by.loc["loss_vs_random", "verdict"] == "held"
    text = dsir_claims.verdict_text(claims, sanity)
    assert "target_beats_random: not held" in text and "loss_vs_random: premise not met" in text


def test_tiny_budget_check_fires_while_improving_and_not_on_a_plateau():
    arms = ("random", "dsir", "target")
    still = budget("tiny transformer", arms, 3.6, 3.3)  # 2x steps: 8 % lower validation bits per byte
    claims, sanity, checks = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0), budget=still, n_boot=100)
    row = claims.set_index("claim").loc["target_beats_random"]
    assert row["raw verdict"] == "inconclusive" and "target not converged" in row.sanity
    assert (claims.set_index("claim").loc["loss_vs_random", "verdict"]) == "premise unconfirmed"
    assert not checks.converged.any() and set(checks.track) == {"tiny transformer"}
    assert checks.improvement.iloc[0] == pytest.approx(100 * 0.3 / 3.6)  # percent of the 1x value
    plateau = budget("tiny transformer", arms, 3.6, 3.59)  # 0.3 % < BUDGET_TOLERANCE
    claims, sanity, checks = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0), budget=plateau, n_boot=100)
    assert claims.set_index("claim").loc["target_beats_random", "verdict"] == "held" and checks.converged.all()
    tiny = sanity.set_index("arm")
    assert tiny.loc["dsir", "converged"] == True and tiny.loc["dsir", "budget_long"] == 3.59  # noqa: E712


def test_tiny_track_with_two_cells_reports_not_enough_units_instead_of_a_false_alarm():
    # v1 ran a t interval on n = 2 cells and read "dsir does not beat random" with DSIR lower in both
    _, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=2), n_boot=100)
    assert (sanity.set_index("arm").beats_trivial.drop("uniform") == "not enough units").all()
    assert (sanity["flags"] == "").all()
    _, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=4), n_boot=100)
    assert (sanity.set_index("arm").beats_trivial == True).all()  # noqa: E712  (every arm beats 8 bits/byte)


def test_classification_budget_and_health_flags():
    arms = ("random", "dsir")
    track = "continued pretraining"
    claims, sanity, checks = dsir_claims.verdicts(scores(), classify_table(), budget=budget(track, arms, 3.3, 3.0),
                                                  n_boot=100)
    row = claims.set_index("claim").loc["classify_vs_random"]
    assert row.verdict == "inconclusive" and "not converged" in row.sanity and len(checks) == 2
    claims, sanity, _ = dsir_claims.verdicts(scores(), classify_table(), budget=budget(track, arms, 3.3, 3.29),
                                             n_boot=100)
    row = claims.set_index("claim").loc["classify_vs_random"]
    assert row["raw verdict"] == "inconclusive" and row.sanity == "ok" and row.n == 6  # a tie: interval spans 0
    cls = sanity[sanity.track.str.startswith("classification")].set_index("arm")
    assert cls.beats_trivial.drop("chance").all() and cls.loc["dsir", "healthy"] == True  # noqa: E712
    # continued pretraining that loses 0.2 accuracy against its own base model is unhealthy, with the seed named
    claims, sanity, _ = dsir_claims.verdicts(scores(), classify_table(dsir_acc=0.25), n_boot=100)
    row = claims.set_index("claim").loc["classify_vs_random"]
    assert row.verdict == "inconclusive" and "dsir unhealthy (seed a/0" in row.sanity


def test_headline_metrics_gaps_and_targets_below():
    table = scores().assign(label_precision=0.5)
    gaps = dsir.dsir_gaps(table)
    assert set(gaps.comparison) == {"dsir − random", "dsir − heuristic", "dsir − heuristic-words"}
    assert dsir.targets_below(gaps, "random") == (len(TARGETS), len(TARGETS))  # 1 nat/token lower on every target
    classify = pd.DataFrame({"seed": [0], "target": ["t0"], "method": ["dsir"], "accuracy": [0.7],
                             "macro_f1": [0.6], "bits_per_byte": [3.0], "n_tags": [4]})
    sweep = pd.DataFrame({"seed": 0, "target": "t0", "target_pseudocount": [0.1, 1.0], "split": "val",
                          "bigram_nats_per_token": [5.0, 6.0], "kl_reduction": np.nan})
    computed = Computed({"scores": table, "picks": pd.DataFrame(), "sweep": sweep, "tiny_lm": pd.DataFrame(),
                         "classify": classify, "budget_runs": pd.DataFrame(), "budget_curves": pd.DataFrame(),
                         "skipped": pd.DataFrame(columns=["track", "target", "reason"])})
    results = dsir.EXPERIMENT.judge(dsir.configure("smoke", {"target_pseudocounts": [0.1, 1.0]}), computed)
    claims = results.claims
    metrics = dsir.headline_metrics(results)
    assert metrics["dsir/bigram_nats_per_token"] == table[table.method == "dsir"].bigram_nats_per_token.mean()
    assert metrics["dsir − random/all/mean_diff"] < 0 and metrics["dsir_beats_random_targets"] == len(TARGETS)
    assert metrics["claim/loss_vs_random/effect"] == claims.set_index("claim").loc["loss_vs_random", "mean"]
    assert metrics["classify/t0/dsir/macro_f1"] == 0.6 and metrics["dsir_target_pseudocount"] == 0.1
    assert 0 < metrics["pearson_r/all methods"] <= 1
    with pytest.raises(ValueError, match="dsir_gaps needs DSIR"):
        dsir.dsir_gaps(table[table.method != "dsir"])


