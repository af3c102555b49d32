"""labkit.select.fast (``hash="fast"``): word-punct tokens on ASCII, batch-independent buckets, close to exact DSIR."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from labkit.select import DSIR, featurize
from labkit.select import fast as fast_module
from labkit.select.features import tokenize
from tests.test_select import make_corpus

ASCII_DOCS = ["Hello, world!! The cat's hat -- 3.14 e_mail", "", "  \n\t ", "a b a b", "tcp/ip...(x)", "one"]


def test_fast_tokens_equal_wordpunct_tokens_on_ascii():
    feats = featurize(ASCII_DOCS, 1000, hash="fast")
    assert feats.lengths.tolist() == [len(tokenize(d)) for d in ASCII_DOCS]
    assert feats.ngram_counts().tolist() == [n + max(n - 1, 0) for n in feats.lengths.tolist()]
    assert feats.buckets.dtype == np.uint16 and feats.buckets.max() < 1000 and feats.hash == "fast"


def test_fast_buckets_depend_on_the_ngram_only():
    feats = featurize(["a b a b", "b a", "A B", "a b"], 50000, hash="fast")
    counts = feats.to_csr().toarray()
    assert counts[0].sum() == 7 and sorted(counts[0][counts[0] > 0].tolist()) == [1, 2, 2, 2]  # a, b, ab twice; ba
    np.testing.assert_array_equal(counts[2], counts[3])  # lower-cased before hashing
    assert (counts[3] <= counts[0]).all()  # every n-gram of "a b" is one of "a b a b"
    assert not np.array_equal(counts[1], counts[3])  # "b a" vs "a b": same unigrams, another bigram


def test_fast_features_do_not_depend_on_batches_or_sub_batches(monkeypatch):
    raw, _ = make_corpus(120, seed=3)
    whole = featurize(raw, hash="fast", batch_size=1000)
    monkeypatch.setattr(fast_module, "SUB_BATCH_BYTES", 200)
    split = featurize(raw, hash="fast", batch_size=17)
    np.testing.assert_array_equal(whole.offsets, split.offsets)
    np.testing.assert_array_equal(whole.buckets, split.buckets)


def test_fast_dsir_agrees_with_exact_dsir():
    raw, target = make_corpus(300, seed=1)
    exact = DSIR().fit(raw, target)
    fast = DSIR(hash="fast").fit(raw, target)
    assert stats.spearmanr(exact.log_weights(), fast.log_weights())[0] > 0.99
    picked, top_exact = fast.resample(60, top_k=True), exact.resample(60, top_k=True)
    assert len(set(top_exact.tolist()) & set(picked.tolist())) >= 54  # top-k overlap >= 90 %
    random_share = np.mean(np.arange(300) % 3 == 0)  # every third raw document uses the target's vocabulary
    assert np.mean(picked % 3 == 0) > random_share


def test_fast_mode_refuses_unknown_hash():
    with pytest.raises(ValueError, match=r"unknown hash 'xx'.*fast"):
        featurize(["a"], hash="xx")
