"""DSIR claims judged on hand-made tables: pairing by target, the correlation interval rule, sanity tracks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit.experiments import dsir, dsir_claims
from labkit.models.ngram_lm import build_vocabulary, encode
from tests.test_dsir_classify import tiny_config, tiny_prepared

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


def test_lm_claims_pair_by_target_and_hold_or_tie():
    claims, sanity = dsir_claims.verdicts(scores(), n_boot=200)
    by = claims.set_index("claim")
    assert by.loc["kl_vs_random", "verdict"] == "held" and by.loc["loss_vs_random", "verdict"] == "held"
    assert by.loc["loss_vs_random", "n"] == len(TARGETS)  # one pair per target, not per (seed, target)
    assert "interval over targets" in by.loc["loss_vs_random", "rule"]
    assert by.loc["loss_vs_heuristic", "verdict"] == "held"  # 0.05 nats/token on every target
    text = dsir_claims.verdict_text(claims, sanity)
    assert "n=6" in text and text.startswith("rule:") and "kl_tracks_quality: held" in text
    assert by.loc["kl_tracks_quality", "verdict"] == "held" and by.loc["kl_tracks_quality", "n"] == len(TARGETS)
    assert "dsir-topk" not in by.loc["kl_tracks_quality", "rule"].split("(")[1].split(";")[0]  # counted once
    assert list(claims.columns[:3]) == ["claim", "text", "paper (reference)"]
    assert sanity.empty  # no training curves in the bigram track: nothing to check


def test_correlation_counts_methods_once_and_goes_inconclusive_on_noise():
    c = dsir_claims.correlation_interval(scores(), n_boot=200)
    assert c["n_methods"] == 5 and "dsir-topk" not in c["methods"] and c["low"] <= c["r"] <= c["high"]
    flat = scores()
    flat["kl_reduction"] = np.random.default_rng(1).normal(size=len(flat))  # KL unrelated to loss
    assert dsir_claims.correlation_row(flat, n_boot=200)["verdict"] != "held"


def test_classification_claim_uses_chance_and_convergence_flags():
    rows = []
    for seed in range(3):
        for target in ("a", "b"):
            for method, acc in (("random", 0.5), ("dsir", 0.5), ("base", 0.45)):
                rows.append({"seed": seed, "target": target, "method": method, "n_tags": 5,
                             "accuracy": acc + 0.01 * ((seed + len(target)) % 3)})
    classify = pd.DataFrame(rows)
    rising = {(m, f"{t}/{s}"): list(np.linspace(3, 2, 10)) for m in ("dsir", "random") for t in "ab" for s in range(3)}
    claims, sanity = dsir_claims.verdicts(scores(), classify, rising, n_boot=100)
    row = claims.set_index("claim").loc["classify_vs_random"]
    assert row.verdict == "inconclusive" and "not converged" in row.sanity
    plateau = {k: [3.0, 2.0, *[2.0] * 8] for k in rising}
    claims, sanity = dsir_claims.verdicts(scores(), classify, plateau, n_boot=100)
    row = claims.set_index("claim").loc["classify_vs_random"]
    assert row.verdict == "inconclusive" and row.sanity == "ok" and row.n == 6  # a tie: interval spans 0
    assert (sanity[sanity.track.str.startswith("classification")].set_index("arm").beats_trivial.drop("chance")).all()


def test_run_sweeps_target_pseudocount_on_validation_and_workers_agree():
    prepared = tiny_prepared()
    vocab = build_vocabulary(prepared.corpus.text.tolist(), 100)
    prepared.encoded, prepared.vocab_size = encode(prepared.corpus.text.tolist(), vocab), len(vocab)
    cfg = tiny_config(methods=["random", "dsir", "heuristic", "heuristic-words"], n_val=6, classify=False,
                      downstream="bigram", seeds=[0, 1], target_pseudocounts=[0.0, 1.0])
    one = dsir.run(cfg, prepared, progress=False)
    two = dsir.run(tiny_config(**{**cfg.__dict__, "workers": 2}), prepared, progress=False)
    pd.testing.assert_frame_equal(one.scores, two.scores)
    assert set(one.sweep.split) == {"val", "test"} and set(one.sweep.target_pseudocount) == {0.0, 1.0}
    val = one.sweep[one.sweep.split == "val"].groupby("target_pseudocount").bigram_nats_per_token.mean()
    assert one.chosen_pseudocount == val.idxmin()
    assert (one.scores.groupby(["seed", "method"]).size() == 1).all()  # one DSIR row per cell: the chosen one
    split = dsir.split_target(prepared, "python-topics", 8, 8, 0, n_val=6)
    assert len(split.val) == 6 and not set(split.val) & set(split.pool) and not set(split.val) & set(split.eval)
    assert prepared.words().shape == (len(prepared.corpus), prepared.vocab_size - 1)


def test_headline_metrics_gaps_and_targets_below():
    table = scores().assign(label_precision=0.5)
    gaps = dsir.dsir_gaps(table)
    assert set(gaps.comparison) == {"dsir − random", "dsir − heuristic", "dsir − heuristic-words"}
    assert dsir.targets_below(gaps, "random") == (len(TARGETS), len(TARGETS))  # 1 nat/token lower on every target
    claims, _ = dsir_claims.verdicts(table, n_boot=200)
    results = dsir.Results(table, pd.DataFrame(), pd.DataFrame(), {}, chosen_pseudocount=0.1)
    classify = pd.DataFrame({"target": ["t0"], "method": ["dsir"], "accuracy": [0.7], "macro_f1": [0.6]})
    metrics = dsir.headline_metrics(results, claims, dsir.method_correlation(table), gaps, classify)
    assert metrics["dsir/bigram_nats_per_token"] == table[table.method == "dsir"].bigram_nats_per_token.mean()
    assert metrics["dsir − random/all/mean_diff"] < 0 and metrics["dsir_beats_random_targets"] == len(TARGETS)
    assert metrics["claim/loss_vs_random/effect"] == claims.set_index("claim").loc["loss_vs_random", "mean"]
    assert metrics["classify/t0/dsir/macro_f1"] == 0.6 and metrics["dsir_target_pseudocount"] == 0.1
    assert 0 < metrics["pearson_r/all methods"] <= 1
    with pytest.raises(ValueError, match="dsir_gaps needs DSIR"):
        dsir.dsir_gaps(table[table.method != "dsir"])
