"""labkit.select: exactness against data-selection 1.0.3, the resampling math, baselines and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labkit.data.sources import DATA_DIR
from labkit.select import (
    DSIR,
    gumbel_top_k,
    heuristic_select,
    kl_reduction,
    random_select,
    target_likelihood_select,
    tfidf_select,
)
from labkit.select.features import HashedFeatures, featurize, tokenize

TINY_CORPUS = DATA_DIR / "fixtures" / "tiny_corpus.jsonl"  # 36 hand-written sentences: networking, botany, cooking
WORDS_A = "socket packet router protocol tcp ip address network bandwidth latency ethernet frame".split()
WORDS_B = "leaf stem flower petal root seed plant genus species botany bloom tree".split()
WORDS_C = "the a of and to in is it that was for on with as".split()


def make_corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Raw documents mixing three vocabularies (lengths 0..60, some punctuation); the target is network text."""
    rng = np.random.default_rng(seed)
    raw = []
    for i in range(n):
        vocab = [WORDS_A, WORDS_B, WORDS_C][i % 3] + WORDS_C
        length = int(rng.integers(0, 60))
        words = [vocab[j] for j in rng.integers(0, len(vocab), length)]
        raw.append(" ".join(words).capitalize() + (". It's done!" if i % 5 == 0 else ""))
    target = [" ".join(WORDS_A[j] for j in rng.integers(0, len(WORDS_A), 40)) + ", the TCP/IP." for _ in range(20)]
    return raw, target


def write_jsonl(path, docs):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")


def reference_weights(tmp_path, raw, target, **kwargs):
    """Log weights from data-selection 1.0.3 (wordpunct tokenizer: no NLTK data needed)."""
    from data_selection import HashedNgramDSIR

    write_jsonl(tmp_path / "raw.jsonl", raw)
    paths = []
    targets = target if isinstance(target, dict) else {"t": target}
    for name, docs in targets.items():
        write_jsonl(tmp_path / f"target_{name}.jsonl", docs)
        paths.append(str(tmp_path / f"target_{name}.jsonl"))
    ref = HashedNgramDSIR(
        [str(tmp_path / "raw.jsonl")],
        paths,
        cache_dir=str(tmp_path / "cache"),
        num_proc=1,
        min_example_length=0,
        separate_targets=isinstance(target, dict),
        **kwargs,
    )
    ref.fit_importance_estimator(num_tokens_to_fit="auto")
    ref.compute_importance_weights()
    return ref, np.load(tmp_path / "cache" / "log_importance_weights" / "0.npy")


def test_tokenize_matches_nltk_wordpunct():
    from nltk.tokenize import WordPunctTokenizer

    text = "Hello, World!! It's 3.14 -- naïve_café ok? İstanbul x²½ zw\u200dj a\x1cb ‿"
    assert tokenize(text) == WordPunctTokenizer().tokenize(text.lower())


def test_features_match_reference_on_unicode_edge_cases():
    """Combining marks, numeric superscripts, joiners and the separators that str.split() but not \\s splits on."""
    from data_selection.hashed_ngram_dsir import get_ngram_counts

    docs = ["İSTANBUL i̇ dot", "x²½ and ½x", "zw\u200dj ‿ a\x1cb\x1dc", "tab\tnew\nline\u2028sep\xa0nbsp", "ǅ ﬁ ß"]
    np.testing.assert_array_equal(featurize(docs).to_csr().toarray(), np.stack([get_ngram_counts(t) for t in docs]))


def test_features_match_reference_counts():
    from data_selection.hashed_ngram_dsir import get_ngram_counts

    raw, _ = make_corpus(30)
    for n in (1, 2, 3):
        ours = featurize(raw, ngrams=n).to_csr().toarray()
        ref = np.stack([get_ngram_counts(t, n=n) for t in raw])
        np.testing.assert_array_equal(ours, ref)


def test_log_weights_and_top_k_match_reference(tmp_path):
    raw, target = make_corpus(300)
    ref, w_ref = reference_weights(tmp_path, raw, target)
    dsir = DSIR(num_buckets=10000, ngrams=2).fit(raw, target)
    w = dsir.log_weights()
    assert w.dtype == np.float64 and w.shape == (300,)
    assert np.max(np.abs(w - w_ref)) < 1e-9
    k = 40
    ref.resample(str(tmp_path / "out"), num_to_sample=k, top_k=True)
    chosen_ref = {json.loads(line)["text"] for line in open(tmp_path / "out" / "0.jsonl")}
    chosen = {raw[i] for i in dsir.resample(k, top_k=True)}
    assert chosen == chosen_ref


def test_multiple_targets_match_reference(tmp_path):
    raw, target = make_corpus(200, seed=1)
    targets = {"net": target, "plants": [" ".join(WORDS_B * 3)] * 5}
    ref, w_ref = reference_weights(tmp_path, raw, targets)
    dsir = DSIR().fit(raw, targets)
    w = dsir.log_weights()
    assert w.shape == (200, 2)
    assert np.max(np.abs(w - w_ref)) < 1e-9
    np.testing.assert_allclose(dsir.target_proportions, ref.target_proportions, rtol=1e-12)
    np.testing.assert_allclose(dsir.log_weights("plants"), w[:, 1])
    picked = dsir.resample(30, seed=3)
    assert len(set(picked.tolist())) == 30


def test_inputs_jsonl_series_and_features_agree(tmp_path):
    import pandas as pd

    raw, target = make_corpus(50)
    write_jsonl(tmp_path / "raw.jsonl", raw)
    a = DSIR().fit(raw, target).log_weights()
    b = DSIR().fit(str(tmp_path / "raw.jsonl"), pd.Series(target)).log_weights()
    feats = featurize(raw)
    c = DSIR().fit(feats, target).log_weights()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    feats.save(tmp_path / "f.npz")
    np.testing.assert_array_equal(HashedFeatures.load(tmp_path / "f.npz").buckets, feats.buckets)


def test_workers_and_batches_give_identical_features():
    raw, _ = make_corpus(120)
    one = featurize(raw, batch_size=1000)
    many = featurize(raw, batch_size=17, workers=2)
    np.testing.assert_array_equal(one.buckets, many.buckets)
    np.testing.assert_array_equal(one.offsets, many.offsets)


def test_gumbel_top_k_is_deterministic_and_samples_by_weight():
    w = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    assert gumbel_top_k(w, 2, seed=5).tolist() == gumbel_top_k(w, 2, seed=5).tolist()
    assert gumbel_top_k(w, 2, top_k=True).tolist() == [3, 2]
    firsts = np.array([gumbel_top_k(w, 1, seed=s)[0] for s in range(3000)])
    freq = np.bincount(firsts, minlength=4) / 3000
    np.testing.assert_allclose(freq, [1 / 15, 2 / 15, 4 / 15, 8 / 15], atol=0.03)
    hot = np.array([gumbel_top_k(w, 1, seed=s, temperature=100.0)[0] for s in range(3000)])
    np.testing.assert_allclose(np.bincount(hot, minlength=4) / 3000, 0.25, atol=0.04)


def test_resample_respects_length_filter_and_reports_it():
    raw, target = make_corpus(60)
    dsir = DSIR(min_length=30).fit(raw, target)
    report = dsir.length_filter()
    lengths = np.array([len(tokenize(t)) for t in raw])
    assert report.dropped == int((lengths < 30).sum()) and report.eligible == int((lengths >= 30).sum())
    picked = dsir.resample(report.eligible, seed=1)
    assert (lengths[picked] >= 30).all()
    with pytest.raises(ValueError, match=rf"k must be in 1..{report.eligible} .*{report.dropped} of 60"):
        dsir.resample(report.eligible + 1)


def test_kl_reduction_signs_and_pseudocount():
    raw, target = make_corpus(300)
    dsir = DSIR(min_length=20).fit(raw, target)  # empty documents have log weight 0, above most others
    good = [raw[i] for i in dsir.resample(50, top_k=True)]
    bad = [raw[i] for i in np.argsort(dsir.log_weights())[:50]]
    # 50 short documents hold ~3k n-grams: a pseudocount of 1 on 10k buckets would swamp them
    assert kl_reduction(good, target, raw, pseudocount=0.01) > 0.5
    assert kl_reduction(bad, target, raw, pseudocount=0.01) < 0
    assert abs(kl_reduction(raw, target, raw)) < 1e-12
    feats = featurize(raw)
    assert kl_reduction(feats.total_counts(np.arange(10)), {"a": target, "b": target}, feats) == pytest.approx(
        kl_reduction(raw[:10], target, raw)
    )
    with pytest.raises(ValueError, match="pseudocount must be > 0"):
        kl_reduction(good, target, raw, pseudocount=0)


def test_baselines_return_k_distinct_indices_and_prefer_target():
    raw, target = make_corpus(300)
    network = np.arange(300) % 3 == 0
    for picked in (
        heuristic_select(raw, target, 60, seed=0, pareto_alpha=1e4),  # little acceptance noise
        target_likelihood_select(raw, target, 60),
        tfidf_select(raw, target, 60),
        DSIR(min_length=20).fit(raw, target).resample(60),
    ):
        assert len(picked) == 60 and len(set(picked.tolist())) == 60
        assert network[picked].mean() > 0.6
    noisy = heuristic_select(raw, target, 60, seed=0)
    assert len(set(noisy.tolist())) == 60 and noisy.tolist() == heuristic_select(raw, target, 60, seed=0).tolist()
    r = random_select(300, 60, seed=2)
    assert len(set(r.tolist())) == 60 and r.tolist() == random_select(300, 60, seed=2).tolist()


def test_baseline_knobs_change_the_selection_and_keep_their_defaults():
    raw, target = make_corpus(300)
    network = np.arange(300) % 3 == 0
    feats = featurize(raw)
    assert tfidf_select(feats, target, 60, tf="raw").tolist() == tfidf_select(feats, target, 60).tolist()
    picks = {tf: tfidf_select(feats, target, 60, tf=tf) for tf in ("raw", "log", "binary")}
    assert all(network[p].mean() > 0.6 for p in picks.values()) and picks["raw"].tolist() != picks["binary"].tolist()
    smooth = target_likelihood_select(feats, target, 60, target_pseudocount=10.0)
    assert smooth.tolist() != target_likelihood_select(feats, target, 60).tolist()
    assert target_likelihood_select(feats, target, 60, target_pseudocount=0.0).tolist() == (
        target_likelihood_select(feats, target, 60).tolist())
    strong = heuristic_select(feats, target, 60, seed=0, pareto_alpha=1e4, c=1e-4)  # L2 drowns the signal
    assert strong.tolist() != heuristic_select(feats, target, 60, seed=0, pareto_alpha=1e4).tolist()
    assert heuristic_select(feats, target, 60, seed=0, c=1.0).tolist() == heuristic_select(feats, target, 60,
                                                                                            seed=0).tolist()
    with pytest.raises(ValueError, match=r"tf must be one of \['raw', 'log', 'binary'\], got 'sublinear'"):
        tfidf_select(feats, target, 60, tf="sublinear")
    with pytest.raises(ValueError, match=r"target_pseudocount must be >= 0, got -1"):
        target_likelihood_select(feats, target, 60, target_pseudocount=-1.0)
    with pytest.raises(ValueError, match=r"c must be > 0, got 0"):
        heuristic_select(feats, target, 60, c=0.0)


def test_bad_inputs(tmp_path):
    raw, target = make_corpus(20)
    with pytest.raises(ValueError, match="raw: expected at least one document"):
        DSIR().fit([], target)
    with pytest.raises(ValueError, match="target 'target': expected at least one document"):
        DSIR().fit(raw, [])
    with pytest.raises(TypeError, match="raw: document 1 is int, expected str"):
        DSIR().fit(["a", 3], target)
    with pytest.raises(ValueError, match="not a file"):
        DSIR().fit("just one string", target)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: corrupt jsonl line"):
        DSIR().fit(str(bad), target)
    dsir = DSIR().fit(raw, target)
    for k in (0, -1, 21):
        with pytest.raises(ValueError, match=r"k must be in 1..20"):
            dsir.resample(k)
    with pytest.raises(RuntimeError, match="not fitted"):
        DSIR().resample(3)
    with pytest.raises(ValueError, match="features were made with"):
        DSIR(num_buckets=100).fit(featurize(raw), target)
    with pytest.raises(ValueError, match="k must be in 1..20"):
        random_select(20, 0)


def test_exclude_leaves_documents_out_of_p_raw_and_resampling():
    raw, target = make_corpus(120)
    feats = featurize(raw)
    drop = np.arange(0, 120, 4)
    keep = np.setdiff1d(np.arange(120), drop)
    full = DSIR(min_length=5).fit(feats, target, exclude=drop)
    sub = DSIR(min_length=5).fit(feats.subset(keep), target)
    np.testing.assert_allclose(full.log_weights()[keep], sub.log_weights(), rtol=0, atol=1e-9)
    picked = full.resample(full.length_filter().eligible, seed=0)
    assert not np.isin(picked, drop).any()
    for fn in (tfidf_select, target_likelihood_select):
        assert not np.isin(fn(feats, target, 60, exclude=drop), drop).any()
    assert not np.isin(heuristic_select(feats, target, 60, exclude=drop), drop).any()
    with pytest.raises(ValueError, match=r"k must be in 1..90 \(the pool size less 30 excluded\)"):
        tfidf_select(feats, target, 91, exclude=drop)


def test_tfidf_weights_come_from_the_documents_it_may_pick():
    """Held-out documents (``exclude``) never shape the IDF: changing their text leaves the selection as it is."""
    raw, target = make_corpus(120)
    drop = np.arange(0, 120, 4)
    altered = [("zebra " * 30 if i in set(drop.tolist()) else doc) for i, doc in enumerate(raw)]
    picks = [tfidf_select(featurize(docs), target, 40, exclude=drop).tolist() for docs in (raw, altered)]
    assert picks[0] == picks[1]


def test_write_selected_is_atomic_and_replaces(tmp_path):
    from labkit.select import write_selected

    docs = [f"doc {i}" for i in range(5)]
    write_jsonl(tmp_path / "raw.jsonl", docs)
    out = tmp_path / "out" / "sel.jsonl"
    assert write_selected(tmp_path / "raw.jsonl", np.array([3, 1]), out) == 2
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["doc 1", "doc 3"]
    assert write_selected(tmp_path / "raw.jsonl", np.array([0]), out) == 1  # replaced, not nested
    with pytest.raises(ValueError, match="has 5 documents, but index 9 was selected"):
        write_selected(tmp_path / "raw.jsonl", np.array([9]), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["sel.jsonl"]


def test_dsir_selects_the_target_domain_of_the_tiny_corpus_fixture():
    rows = [json.loads(line) for line in TINY_CORPUS.read_text().splitlines()]
    texts, labels = [row["text"] for row in rows], np.array([row["label"] for row in rows])
    target_idx = np.nonzero(labels == "networking")[0][:4]
    target = [texts[i] for i in target_idx]
    chosen = DSIR().fit(TINY_CORPUS, target, exclude=target_idx).resample(6, seed=0)  # the pool read from jsonl
    assert labels[chosen].tolist() == ["networking"] * 6 and not np.isin(chosen, target_idx).any()
    pool = np.setdiff1d(np.arange(len(texts)), target_idx)
    randomly = pool[random_select(len(pool), 6, seed=0)]
    assert kl_reduction([texts[i] for i in chosen], target, texts) > kl_reduction(
        [texts[i] for i in randomly], target, texts
    )
