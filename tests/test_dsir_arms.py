"""DSIR's arms on a tiny in-memory pool: task draws are reserved everywhere, the probe, the classification track and
the LM track end to end (target-pseudocount sweep on validation, the premise arm, the budget checks), the SmolLM2
track with a tiny Llama standing in, and forked workers agreeing with one process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit.experiments import dsir
from labkit.experiments.dsir import claims as dsir_claims
from labkit.experiments.dsir.arms import compute_on, pooled_features, probe, run_classification
from labkit.experiments.dsir.arms.llm import bits_per_byte, load_llm, separator_id, spread, trainable
from labkit.experiments.dsir.data import draw_task
from labkit.experiments.dsir.summary import classify_held, classify_summary, llm_pilot
from labkit.models import pretrained
from labkit.models.ngram_lm import build_vocabulary, encode
from labkit.select.features import featurize
from tests.llm_helpers import ByteTokenizer, tiny_llm

TAGS = dsir.CLASSIFY_TASKS["python-topics"]  # python/api, python/topics, man/2, man/3
VOCAB = {
    "python/api": "return value argument object method class instance module attribute",
    "python/topics": "statement expression grammar syntax keyword operator evaluation scope",
    "man/2": "syscall errno fd kernel signal process descriptor mmap",
    "man/3": "library function pointer buffer malloc struct string stdio",
    "man/1": "command option shell user file directory print usage",
}


def tiny_prepared(per_label: int = 40, encoded: bool = False) -> dsir.Prepared:
    """A pool of random word chunks, ``per_label`` per label of :data:`VOCAB`; with ``encoded`` also bigram-LM ids."""
    rng = np.random.default_rng(0)
    rows = []
    for label, words in VOCAB.items():
        vocab = words.split() + "the a of and to in".split()
        for _ in range(per_label):
            rows.append({"text": " ".join(rng.choice(vocab, 24)), "source": label.split("/")[0], "label": label})
    corpus = pd.DataFrame(rows)
    features = featurize(corpus.text.tolist())
    prepared = dsir.Prepared(corpus, features, features.to_csr(), None, 0, {})
    if encoded:
        vocab = build_vocabulary(corpus.text.tolist(), 100)
        prepared.encoded, prepared.vocab_size = encode(corpus.text.tolist(), vocab), len(vocab)
    return prepared


def tiny_config(**overrides) -> dsir.Config:
    values = dict(
        targets=["python-topics"],
        n_fit=8,
        n_eval=8,
        budget_k=30,
        classify=True,
        classify_targets=["python-topics"],
        classify_methods=["random", "dsir", "heuristic"],
        classify_seeds=2,
        classify_train=5,
        classify_eval=5,
        base_chunks=60,
        base_steps=2,
        continue_steps=2,
        lm_context=32,
        lm_batch=4,
        lm_hidden=16,
        lm_layers=1,
        lm_heads=2,
    )
    return dsir.configure("smoke", {**values, **overrides})


def test_task_is_deterministic_balanced_and_reserved_from_splits_and_selections():
    prepared = tiny_prepared()
    labels = prepared.corpus.label.to_numpy()
    train, train_y, held, held_y = draw_task(labels, TAGS, 5, 4)
    again = draw_task(labels, TAGS, 5, 4)
    np.testing.assert_array_equal(train, again[0])
    assert np.bincount(train_y).tolist() == [5] * 4 and np.bincount(held_y).tolist() == [4] * 4
    assert not set(train) & set(held)
    assert all(labels[i] == TAGS[y] for i, y in zip(train, train_y, strict=True))
    reserved = np.concatenate([train, held])
    cfg = tiny_config()
    for seed in (0, 1):
        split = dsir.split_target(prepared, "python-topics", 8, 8, seed, reserved=reserved)
        for part in (split.fit, split.eval, split.pool):
            assert not np.isin(part, reserved).any()
        assert len(split.pool) + 16 + len(reserved) == len(labels)
        for method in ("random", "dsir", "heuristic", "expert", "tfidf"):
            chosen = dsir.select(method, prepared, split, "python-topics", 30, seed, cfg)
            assert not np.isin(chosen, np.concatenate([reserved, split.fit, split.eval])).any(), method
    assert "has 40 chunks; the task needs 45" in draw_task(labels, TAGS, 40, 5)


def test_probe_and_pooled_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 5)) + 4.0 * np.eye(5)[y]
    scores = probe(x[::2], y[::2], x[1::2], y[1::2], c=1.0)
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0}
    cfg = tiny_config()
    model = dsir.byte_lm(cfg, seed=0)
    feats = pooled_features(model, ["abc", "a longer text than the context of the model", ""], context=8)
    assert feats.shape == (3, cfg.lm_hidden) and np.isfinite(feats).all()
    # right padding does not change a causal model's pooled features of the shorter text
    np.testing.assert_allclose(feats[0], pooled_features(model, ["abc"], context=8)[0], rtol=0, atol=1e-5)


def test_run_classification_end_to_end_and_summaries():
    cfg = tiny_config()
    track = run_classification(cfg, tiny_prepared(), progress=False)
    table, skipped = track.table, track.skipped
    assert skipped == {}
    assert len(table) == 2 * 4  # seeds × (base + 3 methods)
    assert set(table.method) == {"base", "random", "dsir", "heuristic"}
    assert table.accuracy.between(0, 1).all() and table.macro_f1.between(0, 1).all()
    assert (table.n_train == 20).all() and (table.n_eval == 20).all() and (table.n_tags == 4).all()
    base = table[table.method == "base"]
    assert base.accuracy.nunique() == 1 and base.kl_reduction.isna().all()
    again = run_classification(cfg, tiny_prepared(), progress=False)
    pd.testing.assert_frame_equal(table, again.table)  # deterministic for the seeds
    pd.testing.assert_frame_equal(track.budget, again.budget)
    summary = classify_summary(table)
    assert {"accuracy", "accuracy_low", "accuracy_high", "macro_f1"} <= set(summary.columns) and len(summary) == 4
    held = classify_held(table)
    assert held.startswith("classification after continued pretraining (linear probe, 1 targets × 2 seeds)")
    assert "DSIR − random accuracy" in held and "DSIR − heuristic accuracy" in held
    one_seed = classify_held(table[table.seed == 0])  # a single cell has no interval (smoke runs 1 seed)
    assert "from 1 paired cell(s): too few for an interval" in one_seed and "[+nan, +nan]" in one_seed
    # the budget check: the first seed × target of every method, at 1x and 2x continue_steps, on the fit sample
    budget = track.budget
    assert list(budget.columns) == ["track", "arm", "seed", "budget", "steps", "validation_bits_per_byte"]
    assert set(budget.arm) == {"random", "dsir", "heuristic"} and set(budget.seed) == {"python-topics/0"}
    assert sorted(budget.budget) == [1.0] * 3 + [2.0] * 3 and sorted(set(budget.steps)) == [2, 4]
    assert budget.validation_bits_per_byte.between(0, 9).all()
    assert set(track.budget_curves) == {("byte-LM continued pretraining", m, b) for m in ("random", "dsir", "heuristic")
                                        for b in (1.0, 2.0)}
    assert all(len(c) == 4 for (_, _, b), c in track.budget_curves.items() if b == 2.0)  # one point per step
    small = run_classification(tiny_config(classify_train=39), tiny_prepared(), progress=False)
    assert small.table.empty and "the task needs 44" in small.skipped["python-topics"]


def test_classification_in_two_forked_workers_matches_one_process():
    cfg = tiny_config(classify_seeds=1, classify_methods=["random", "dsir"])
    one = run_classification(cfg, tiny_prepared(), progress=False)
    two = run_classification(tiny_config(classify_seeds=1, classify_methods=["random", "dsir"], workers=2),
                             tiny_prepared(), progress=False)
    pd.testing.assert_frame_equal(one.table, two.table)
    pd.testing.assert_frame_equal(one.budget, two.budget)


def run(cfg: dsir.Config, prepared: dsir.Prepared) -> dict[str, pd.DataFrame]:
    """The computed tables of every track on ``prepared``."""
    return compute_on(cfg, prepared, progress=False).tables


def test_run_tunes_every_tuned_method_on_validation_and_dsir_keeps_the_papers_setting():
    prepared = tiny_prepared(encoded=True)
    grids = dict(target_pseudocounts=[0.1, 1.0], target_likelihood_pseudocounts=[0.0, 1.0],
                 tfidf_weightings=["raw", "binary"], heuristic_grid=[[9.0, 1.0, 5.0], [100.0, 0.1, 2.0]])
    methods = ["random", "dsir", "dsir-smoothed", "heuristic", "heuristic-words", "target-likelihood", "tfidf"]
    cfg = tiny_config(methods=methods, n_val=6, classify=False, downstream="bigram", seeds=2, **grids)
    one = run(cfg, prepared)
    two = run(tiny_config(**{**cfg.__dict__, "workers": 2}), prepared)
    pd.testing.assert_frame_equal(one["scores"], two["scores"])
    sweep = one["sweep"]
    tuned = ["dsir-smoothed", "heuristic", "heuristic-words", "target-likelihood", "tfidf"]
    assert list(dict.fromkeys(sweep.method)) == tuned and set(sweep.split) == {"val", "test"}
    assert (sweep.groupby("method").setting.nunique() == 2).all()  # every grid swept whole
    chosen = dsir.arms.choose_settings(cfg, sweep)
    for method in tuned:  # the lowest mean validation loss over every (seed, target) cell, never the test loss
        val = sweep[(sweep.method == method) & (sweep.split == "val")].groupby("setting").bigram_nats_per_token.mean()
        assert chosen[method] == val.idxmin(), method
    tuning = dsir.arms.tuning_table(cfg, sweep).set_index("method")
    assert list(tuning.index) == tuned and (tuning.grid_size == 2).all()
    assert tuning.loc["tfidf", "chosen"] == ["raw", "binary"][chosen["tfidf"]]
    assert (one["scores"].groupby(["seed", "method"]).size() == 1).all()  # one row per cell: the chosen setting
    assert sorted(set(one["scores"].seed)) == [0, 1]  # seeds = 2: seeds 0 and 1
    split = dsir.split_target(prepared, "python-topics", 8, 8, 0, n_val=6)
    assert len(split.val) == 6 and not set(split.val) & set(split.pool) and not set(split.val) & set(split.eval)
    assert prepared.words().shape == (len(prepared.corpus), prepared.vocab_size - 1)
    # "dsir" is the paper's setting whatever the smoothed arm chose; "dsir-smoothed" is DSIR at the given value
    paper = dsir.select("dsir", prepared, split, "python-topics", 20, 0, cfg, setting=1.0)
    zero = prepared.dsir(cfg, 0.0).fit(prepared.features, prepared.features.subset(split.fit), exclude=split.drawn())
    assert cfg.target_pseudocount == 0.0 and np.array_equal(paper, zero.resample(20, seed=0))
    smoothed = dsir.select("dsir-smoothed", prepared, split, "python-topics", 20, 0, cfg, setting=1.0)
    one_pc = prepared.dsir(cfg, 1.0).fit(prepared.features, prepared.features.subset(split.fit), exclude=split.drawn())
    assert np.array_equal(smoothed, one_pc.resample(20, seed=0))
    first = dsir.select("dsir-smoothed", prepared, split, "python-topics", 20, 0, cfg)  # default: the grid's first
    assert np.array_equal(first, dsir.select("dsir-smoothed", prepared, split, "python-topics", 20, 0, cfg,
                                             setting=0.1))


def test_run_trains_the_premise_arm_and_budget_checks_the_tiny_track_end_to_end():
    prepared = tiny_prepared(encoded=True)
    values = dict(methods=["random", "dsir"], n_val=6, classify=False, downstream="both", seeds=2,
                  tiny_lm_targets=["python-topics"], tiny_lm_methods=["random", "dsir"], tiny_lm_seeds=2, lm_steps=4)
    tables = run(tiny_config(**values), prepared)
    assert list(tables["tiny_lm"].method) == ["random", "dsir", "target"] * 2  # the premise arm in every cell
    budget = tables["budget_runs"]
    assert set(budget.seed) == {"python-topics/0"} and sorted(set(budget.steps)) == [4, 8]
    assert sorted(budget.budget) == [1.0] * 3 + [2.0] * 3
    curves = tables["budget_curves"]
    assert set(zip(curves.track, curves.arm, curves.budget, strict=True)) == {
        ("tiny transformer", a, b) for a in ("random", "dsir", "target") for b in (1.0, 2.0)}
    claims, sanity, checks = dsir_claims.verdicts(tables["scores"], tiny_lm=tables["tiny_lm"], budget=budget)
    assert claims.claim.iloc[0] == "target_beats_random" and len(checks) == 3
    assert not checks.converged.any()  # 4 steps of a fresh byte LM: twice as many still lower the loss a lot
    assert claims.set_index("claim").loc["target_beats_random", "verdict"] == "inconclusive"
    # a learning rate too small to move the weights: the 2x run ends where the 1x run did, and the check passes
    frozen = run(tiny_config(**values, lm_lr=1e-12), prepared)
    _, _, checks = dsir_claims.verdicts(frozen["scores"], tiny_lm=frozen["tiny_lm"], budget=frozen["budget_runs"])
    assert checks.converged.all() and (checks.improvement.abs() < 1e-6).all()
    two = run(tiny_config(**values, workers=2), prepared)
    pd.testing.assert_frame_equal(tables["tiny_lm"], two["tiny_lm"])
    pd.testing.assert_frame_equal(budget, two["budget_runs"])


def llm_config(**overrides) -> dsir.Config:
    """The SmolLM2 track alone on the tiny pool (the bigram LM for the selections; no transformer, no probe)."""
    values = dict(methods=["random", "dsir"], classify=False, downstream="bigram", seeds=2, n_val=6, llm=True,
                  llm_targets=["python-topics"], llm_methods=["random", "dsir"], llm_seeds=2, llm_steps=2,
                  llm_layers=1, llm_context=16, llm_batch=2, llm_eval_chunks=4)
    return tiny_config(**{**values, **overrides})


def test_llm_track_continues_the_pretrained_model_on_each_selection_and_budget_checks_it(monkeypatch):
    monkeypatch.setattr(pretrained, "load", tiny_llm)
    prepared = tiny_prepared(encoded=True)
    tables = run(llm_config(), prepared)
    llm = tables["llm"]
    assert sorted(llm.method) == ["base", "base", "dsir", "dsir", "random", "random"] and set(llm.seed) == {0, 1}
    assert np.isfinite(llm.bits_per_byte).all() and (llm.uniform_bits_per_byte == 8.0).all()  # log2 256 per byte
    assert llm[llm.method == "base"].kl_reduction.isna().all() and (llm[llm.method != "base"].k == 30).all()
    budget = tables["budget_runs"]
    assert set(budget.track) == {"SmolLM2 continued pretraining"} and set(budget.seed) == {"python-topics/0"}
    assert sorted(budget.budget) == [1.0, 1.0, 2.0, 2.0] and sorted(set(budget.steps)) == [2, 4]
    again = run(llm_config(workers=2), prepared)  # forked workers agree with one process
    pd.testing.assert_frame_equal(llm, again["llm"])
    pd.testing.assert_frame_equal(budget, again["budget_runs"])
    # a pilot (2 seeds < 5): checked, no claim; its comparisons with n stated
    claims, sanity, _ = dsir_claims.verdicts(tables["scores"], budget=budget, llm=llm)
    assert not claims.claim.str.startswith("llm_").any()
    assert sanity.track.str.startswith("SmolLM2 continued pretraining pilot").any()
    pilot = llm_pilot(llm)
    assert set(pilot.comparison) == {"dsir − random", "dsir − base", "random − base"}
    overall = pilot[pilot.target == "all"].set_index("comparison")
    assert (overall.n == 2).all() and overall.status.str.startswith("pilot: 2 seeds").all()
    gap = llm.pivot_table(index="seed", columns="method", values="bits_per_byte")
    assert np.isclose(overall.loc["dsir − random", "mean_diff"], (gap.dsir - gap.random).mean())


def test_llm_track_with_five_seeds_is_judged_as_claims():
    rng = np.random.default_rng(0)
    rows = [{"seed": s, "target": t, "method": m, "bits_per_byte": 2.0 - 0.1 * (m == "dsir") + 0.01 * rng.normal(),
             "uniform_bits_per_byte": 4.0, "kl_reduction": 0.0, "k": 30}
            for s in range(5) for t in ("a", "b") for m in ("base", "random", "dsir", "heuristic")]
    claims, sanity, _ = dsir_claims.verdicts(pd.DataFrame(columns=["method", "target", "seed"]), llm=pd.DataFrame(rows))
    judged = claims.set_index("claim")
    assert list(judged.index) == ["llm_vs_random", "llm_vs_heuristic"]
    assert (judged.n == 10).all() and (judged.verdict == "held").all()  # paired by (target, seed) cell
    assert "interval over (target, seed) cells" in judged.loc["llm_vs_random", "rule"]


def test_llm_bits_per_byte_scores_every_token_after_an_end_of_sequence_and_freezes_all_but_the_last_layers():
    import torch

    model, tokenizer = tiny_llm()
    texts = ["abc de", "xyz"]
    bits, uniform = bits_per_byte(model, tokenizer, texts, context=16, batch=1)
    nats = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[0, *text.encode()]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            nats -= float(logp.gather(-1, ids[0, 1:, None]).sum())
    assert np.isclose(bits, nats / np.log(2) / 9, rtol=1e-5) and uniform == 8.0
    assert np.isclose(bits_per_byte(model, tokenizer, texts, context=16, batch=2)[0], bits, rtol=1e-5)  # padding
    params = trainable(model, 1)
    assert {id(p) for p in params} == {id(p) for p in (*model.model.layers[-1].parameters(),
                                                       *model.model.norm.parameters())}
    assert sum(p.requires_grad for p in model.parameters()) == len(params)
    with pytest.raises(ValueError, match="'llm_layers' is 3; the model has 2 decoder layers"):
        trainable(model, 3)


def test_spread_keeps_a_subset_over_the_whole_corpus_order():
    ids = np.arange(100, 200, 2)
    assert list(spread(ids, 5)) == [100, 124, 148, 174, 198] and spread(ids, 80) is ids


def test_llm_track_errors_name_the_parameter_before_anything_trains(monkeypatch):
    with pytest.raises(ValueError, match="'n_val' is 0; the SmolLM2 track"):
        llm_config(n_val=0)
    monkeypatch.setattr(pretrained, "load", tiny_llm)
    with pytest.raises(ValueError, match="'llm_layers' is 3; smollm2 has 2 decoder layers"):
        load_llm(llm_config(llm_layers=3))

    class WithoutSeparator(ByteTokenizer):
        def convert_ids_to_tokens(self, token_id: int) -> str:
            return "<unk>"

    with pytest.raises(ValueError, match=r"the tokenizer has no '<\|endoftext\|>' token"):
        separator_id(WithoutSeparator())
