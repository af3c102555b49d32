"""DSIR claims judged on hand-made tables: KL per target and the transformer per cell, the Fisher-z correlations with
their leave-one-method-out check, the premise and its tolerance, the budget check and health of the trained tracks, and
the summary's readings (gaps, headline metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit import protocol
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


# per method: held-out bits per byte of the tiny transformer; quality (−bits per byte) rises with KL reduction
BITS = {"random": 3.6, "dsir": 3.4, "dsir-topk": 3.4, "heuristic": 3.41, "heuristic-words": 3.42, "tfidf": 3.46,
        "expert": 3.36, "anti-dsir": 4.0}


def tiny_lm(target_bpb: float, cells: int = 4, bits: dict[str, float] | None = None) -> pd.DataFrame:
    """Tiny-transformer rows over ``cells`` (target, seed) cells: every method of ``bits`` (default :data:`BITS`,
    KL reduction as in :data:`METHODS`) and the premise arm at ``target_bpb``, each with a small per-cell spread."""
    rng = np.random.default_rng(1)
    rows = []
    for j in range(cells):
        for method, bpb in [*(bits or BITS).items(), ("target", target_bpb)]:
            rows.append({"seed": j % 2, "target": f"t{j // 2}", "method": method,
                         "bits_per_byte": bpb + 0.01 * (j % 2) + 0.002 * rng.normal(),
                         "kl_reduction": METHODS.get(method, (0.5, 0))[0] + 0.001 * rng.normal()})
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


def test_main_verdicts_use_the_transformer_per_cell_and_kl_per_target():
    claims, sanity, budget_table = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=6))
    by = claims.set_index("claim")
    assert by.loc["kl_vs_random", "verdict"] == "held" and by.loc["kl_vs_random", "n"] == len(TARGETS)
    assert "interval over targets" in by.loc["kl_vs_random", "rule"]
    for name in ("loss_vs_random", "loss_vs_heuristic", "loss_vs_heuristic_words"):
        assert "bits_per_byte" in by.loc[name, "rule"] and by.loc[name, "n"] == 6, name  # (target, seed) cells
        assert "interval over (target, seed) cells" in by.loc[name, "rule"], name
    assert by.loc["loss_vs_random", "verdict"] == "held" and by.loc["loss_vs_random", "mean"] == pytest.approx(0.2,
                                                                                                              abs=0.01)
    assert by.loc["loss_vs_heuristic", "verdict"] == "held"  # 0.01 bits/byte in every cell, tiny spread
    assert list(claims.columns[:3]) == ["claim", "role", "group"] and claims.claim.iloc[0] == "target_beats_random"
    text = dsir_claims.verdict_text(claims, sanity)
    assert text.startswith("rule:") and "kl_tracks_quality: held" in text and "kl_tracks_ngram_loss" in text
    assert len(sanity) and budget_table.empty  # the transformer is checked; no budget runs were given


def test_without_the_transformer_only_kl_and_the_ngram_correlation_are_judged():
    claims, sanity, _ = dsir_claims.verdicts(scores())
    assert set(claims.claim) == {"kl_vs_random", "kl_tracks_ngram_loss"} and sanity.empty
    row = claims.set_index("claim").loc["kl_tracks_ngram_loss"]
    assert row.role == "secondary" and row.group == "" and row.effect.startswith("r = +")  # shares DSIR's features


def test_smoothed_variant_is_its_own_secondary_claim():
    bits = {**BITS, "dsir-smoothed": 3.2}
    claims, _, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=6, bits=bits))
    by = claims.set_index("claim")
    assert by.loc["smoothed_vs_heuristic", "role"] == "secondary" and by.loc["loss_vs_heuristic", "role"] == "main"
    assert by.loc["smoothed_vs_heuristic", "mean"] == pytest.approx(0.21, abs=0.01)
    assert "dsir-smoothed" not in by.loc["kl_tracks_quality", "rule"].split("(")[1].split(";")[0]  # a variant


def test_correlation_interval_is_fisher_z_over_the_number_of_methods():
    table = tiny_lm(3.0, cells=6)
    half = 1.959964 / np.sqrt(5 - 3)
    for cells in (6, 40):  # more targets and seeds: n is still the 5 methods counted once
        c = dsir_claims.correlation_interval(tiny_lm(3.0, cells=cells))
        assert c["n_methods"] == 5 and "dsir-topk" not in c["methods"] and "target" not in c["methods"]
        assert c["low"] == pytest.approx(np.tanh(np.arctanh(c["r"]) - half), abs=1e-5)
        assert c["high"] == pytest.approx(np.tanh(np.arctanh(c["r"]) + half), abs=1e-5)
    verdict, rule = dsir_claims.correlation_verdict(table)
    assert verdict.n == 5 and verdict.verdict == "held" and "Fisher-z" in rule and 0 < verdict.p < 0.05
    few = dsir_claims.correlation_interval(tiny_lm(3.0, bits={m: BITS[m] for m in ("random", "dsir", "tfidf")}))
    assert few["n_methods"] == 3 and np.isnan(few["low"]) and np.isnan(few["p"])


def test_leave_one_method_out_catches_a_correlation_carried_by_one_method():
    # random far away, the other four flat or slightly the wrong way: r is high only because of random
    flat = {"random": 6.0, "dsir": 3.40, "heuristic": 3.43, "tfidf": 3.39, "expert": 3.42}
    table = tiny_lm(3.0, cells=6, bits=flat)
    c = dsir_claims.correlation_interval(table)
    assert c["r"] > 0.9 and c["low"] > 0 and c["loo_left_out"] == "random" and c["loo_min_r"] < 0
    verdict, _ = dsir_claims.correlation_verdict(table)
    assert verdict.verdict == "inconclusive" and "without random" in verdict.flags[0]
    loo = dsir_claims.leave_one_out(table, "bits_per_byte")
    assert set(loo.index) == set(flat) and loo.loc["random", "r_without"] == c["loo_min_r"]
    assert (loo.n_without == 4).all() and loo.loc["random", "low_without"] < 0
    # r without random stays positive, but far below the interval's low end: random still carries it
    leaning = {"random": 6.0, "dsir": 3.40, "heuristic": 3.45, "tfidf": 3.41, "expert": 3.41}  # r without random 0.08
    c = dsir_claims.correlation_interval(tiny_lm(3.0, cells=6, bits=leaning))
    assert c["low"] > 0 and c["loo_left_out"] == "random" and 0 < c["loo_min_r"] < c["low"]
    assert dsir_claims.correlation_verdict(tiny_lm(3.0, cells=6, bits=leaning))[0].verdict == "inconclusive"
    noise = tiny_lm(3.0, cells=6).assign(kl_reduction=np.random.default_rng(1).normal(size=6 * 9))
    assert dsir_claims.correlation_verdict(noise)[0].verdict != "held"


def test_premise_must_beat_random_by_more_than_its_tolerance():
    # a model trained on target text is *worse* than random selection on held-out target text in every cell
    claims, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(target_bpb=3.9))
    assert claims.claim.iloc[0] == "target_beats_random" and claims.role.iloc[0] == "premise"
    by = claims.set_index("claim")
    assert by.loc["target_beats_random", "verdict"] == "not held"
    for name in ("loss_vs_random", "loss_vs_heuristic", "loss_vs_heuristic_words", "kl_tracks_quality"):
        assert by.loc[name, "verdict"] == "premise not met" and by.loc[name, "raw verdict"] == "held", name
    assert by.loc["kl_vs_random", "verdict"] == "held"  # KL reduction involves no model: not governed
    assert "interval over (target, seed) cells" in by.loc["target_beats_random", "rule"]
    text = dsir_claims.verdict_text(claims, sanity)
    assert "target_beats_random: not held" in text and "loss_vs_random: premise not met" in text
    # 0.03 bits/byte better in every cell: real, but below the tolerance of 0.05
    small, _, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(target_bpb=3.57, cells=6))
    row = small.set_index("claim").loc["target_beats_random"]
    assert row.tolerance == f"{dsir_claims.PREMISE_TOLERANCE:g}" and row.high < dsir_claims.PREMISE_TOLERANCE
    assert row.verdict == "not held" and row.low > 0
    held, _, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(target_bpb=3.0))
    by = held.set_index("claim")
    assert by.loc["target_beats_random", "verdict"] == "held" and by.loc["loss_vs_random", "verdict"] == "held"


def test_tiny_budget_check_fires_while_improving_and_not_on_a_plateau():
    arms = ("random", "dsir", "target")
    still = budget("tiny transformer", arms, 3.6, 3.3)  # 2x steps: 8 % lower validation bits per byte
    claims, sanity, checks = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0), budget=still)
    row = claims.set_index("claim").loc["target_beats_random"]
    assert row["raw verdict"] == "inconclusive" and "target not converged" in row.sanity
    assert (claims.set_index("claim").loc["loss_vs_random", "verdict"]) == "premise unconfirmed"
    assert not checks.converged.any() and set(checks.track) == {"tiny transformer"}
    assert checks.improvement.iloc[0] == pytest.approx(100 * 0.3 / 3.6)  # percent of the 1x value
    plateau = budget("tiny transformer", arms, 3.6, 3.59)  # 0.3 % < BUDGET_TOLERANCE
    claims, sanity, checks = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0), budget=plateau)
    assert claims.set_index("claim").loc["target_beats_random", "verdict"] == "held" and checks.converged.all()
    tiny = sanity.set_index("arm")
    assert tiny.loc["dsir", "converged"] == True and tiny.loc["dsir", "budget_long"] == 3.59  # noqa: E712


def test_tiny_track_with_two_cells_reports_not_enough_units_instead_of_a_false_alarm():
    # v1 ran a t interval on n = 2 cells and read "dsir does not beat random" with DSIR lower in both
    _, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=2))
    assert (sanity.set_index("arm").beats_trivial.drop("uniform") == "not enough units").all()
    assert (sanity["flags"] == "").all()
    _, sanity, _ = dsir_claims.verdicts(scores(), tiny_lm=tiny_lm(3.0, cells=4))
    beats = sanity.set_index("arm").beats_trivial
    assert (beats.drop("uniform") == True).all() and beats["uniform"] == protocol.IS_TRIVIAL  # noqa: E712


def test_classification_is_a_secondary_claim_per_cell_flagged_by_its_checks():
    arms = ("random", "dsir")
    track = "byte-LM continued pretraining"
    claims, sanity, checks = dsir_claims.verdicts(scores(), classify_table(), budget=budget(track, arms, 3.3, 3.0))
    judged = claims.set_index("claim")
    assert judged.loc["classify_vs_random", "role"] == "secondary" and judged.loc["classify_vs_random", "n"] == 6
    assert "classify_vs_heuristic" not in judged.index and len(checks) == 2  # heuristic did not run
    assert "interval over (target, seed) cells" in judged.loc["classify_vs_random", "rule"]
    assert judged.loc["classify_vs_random", "verdict"] == "inconclusive"  # dsir flagged: not converged
    cls = sanity[sanity.track.str.startswith("classification")].set_index("arm")
    assert cls.loc["dsir", "flags"].startswith("classification: dsir not converged")  # each flag names its track
    _, sanity, _ = dsir_claims.verdicts(scores(), classify_table(), budget=budget(track, arms, 3.3, 3.29))
    cls = sanity[sanity.track.str.startswith("classification")].set_index("arm")
    assert cls.beats_trivial.drop("chance").all() and cls.loc["dsir", "healthy"] == True  # noqa: E712
    assert (cls["flags"] == "").all()
    # continued pretraining that loses 0.2 accuracy against its own base model is unhealthy, with the seed named
    _, sanity, _ = dsir_claims.verdicts(scores(), classify_table(dsir_acc=0.25))
    cls = sanity[sanity.track.str.startswith("classification")].set_index("arm")
    assert "dsir unhealthy (seed a/0" in cls.loc["dsir", "flags"]


def test_headline_metrics_gaps_and_targets_below():
    table = scores().assign(label_precision=0.5)
    gaps = dsir.dsir_gaps(table)
    assert set(gaps.comparison) == {"dsir − random", "dsir − heuristic", "dsir − heuristic-words"}
    assert dsir.targets_below(gaps, "random") == (len(TARGETS), len(TARGETS))  # 1 nat/token lower on every target
    classify = pd.DataFrame({"seed": [0], "target": ["t0"], "method": ["dsir"], "accuracy": [0.7],
                             "macro_f1": [0.6], "bits_per_byte": [3.0], "n_tags": [4]})
    sweep = pd.DataFrame({"seed": 0, "target": "t0", "method": "dsir-smoothed", "setting": [0, 1, 0, 1],
                          "split": ["val", "val", "test", "test"], "bigram_nats_per_token": [6.0, 5.0, 5.5, 5.6],
                          "chosen": [False, True, False, True]})  # as compute marks the validation choice
    computed = Computed({"scores": table, "picks": pd.DataFrame(), "sweep": sweep, "tiny_lm": pd.DataFrame(),
                         "llm": pd.DataFrame(),
                         "classify": classify, "budget_runs": pd.DataFrame(), "budget_curves": pd.DataFrame(),
                         "skipped": pd.DataFrame(columns=["track", "target", "reason"])})
    results = dsir.EXPERIMENT.judge(dsir.configure("smoke", {"target_pseudocounts": [0.1, 1.0]}), computed)
    claims = results.claims
    metrics = dsir.headline_metrics(results)
    assert metrics["dsir/bigram_nats_per_token"] == table[table.method == "dsir"].bigram_nats_per_token.mean()
    assert metrics["dsir − random/all/mean_diff"] < 0 and metrics["dsir_beats_random_targets"] == len(TARGETS)
    assert metrics["claim/kl_vs_random/effect"] == claims.set_index("claim").loc["kl_vs_random", "mean"]
    assert metrics["classify/t0/dsir/macro_f1"] == 0.6 and metrics["dsir-smoothed/validation_nats_per_token"] == 5.0
    assert results.tuning.set_index("method").loc["dsir-smoothed", "chosen"] == "1.0"  # the marked choice
    assert 0 < metrics["pearson_r/bigram LM/methods once (claim)"] <= 1
    assert {f"pearson_r/bigram LM/{v}/ci_low" for v in dsir.summary.CORRELATION_VARIANTS} <= set(metrics)
    with pytest.raises(ValueError, match="dsir_gaps needs DSIR"):
        dsir.dsir_gaps(table[table.method != "dsir"])




def test_the_correlation_is_flagged_by_every_method_it_counts():
    """A correlation built from under-trained arms is no verdict: an unconverged heuristic arm flags
    kl_tracks_quality, though the loss_vs_random pair it does not rest on stays judged."""
    table = tiny_lm(3.0, cells=6)
    track = "tiny transformer"
    converged = budget(track, ("random", "dsir", "target", "tfidf", "expert"), 3.3, 3.29)
    stalled = budget(track, ("heuristic",), 3.3, 3.0)
    claims, _, _ = dsir_claims.verdicts(scores(), tiny_lm=table, budget=pd.concat([converged, stalled]))
    by = claims.set_index("claim")
    assert by.loc["kl_tracks_quality", "raw verdict"] == "inconclusive"
    assert "heuristic not converged" in by.loc["kl_tracks_quality", "sanity"]
    assert by.loc["loss_vs_random", "verdict"] == "held" and by.loc["kl_tracks_quality", "interval verdict"] == "held"


def test_budget_effects_read_each_comparison_at_both_budgets():
    runs = pd.concat([budget("tiny transformer", ("random",), 3.6, 3.4), budget("tiny transformer", ("dsir",), 3.2,
                                                                                3.1)])
    effects = dsir.summary.budget_effects(runs).set_index("claim")
    row = effects.loc["loss_vs_random"]
    assert row.improvement_1x == pytest.approx(0.4) and row.improvement_2x == pytest.approx(0.3)
    assert row.change == pytest.approx(-0.1) and row.cell == "t0/0"
    assert dsir.summary.budget_effects(pd.DataFrame()).empty
