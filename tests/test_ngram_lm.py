"""labkit.models.ngram_lm: the absolute-discounting bigram LM is a normalized distribution and learns."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.models.ngram_lm import UNK, BigramLM, EncodedCorpus, build_vocabulary, encode

TEXTS = ["The cat sat on the mat.", "The dog sat on the log!", "A cat and a dog.", ""]


def test_vocabulary_and_encoding():
    vocab = build_vocabulary(TEXTS, size=4)
    assert vocab[UNK] == 0 and len(vocab) == 5 and vocab["the"] == 1
    corpus = encode(["the zebra"], vocab)
    assert corpus.ids.tolist() == [1, 0] and corpus.offsets.tolist() == [0, 2]
    with pytest.raises(ValueError, match="vocabulary size must be >= 1"):
        build_vocabulary(TEXTS, size=0)


def test_conditional_distributions_sum_to_one():
    vocab = build_vocabulary(TEXTS, size=20)
    lm = BigramLM(len(vocab)).fit(encode(TEXTS, vocab))
    n = len(vocab)
    start = EncodedCorpus(np.arange(n), np.arange(n + 1))  # one-token documents: each word after <bos>
    np.testing.assert_allclose(np.exp(lm.log_prob(start)).sum(), 1.0, rtol=1e-12)
    for context in (vocab["the"], vocab["cat"], 0):
        # every word after `context`, each as a two-token document whose first token is `context`
        ids = np.stack([np.full(len(vocab), context), np.arange(len(vocab))], axis=1).ravel()
        docs = EncodedCorpus(ids, np.arange(0, 2 * len(vocab) + 1, 2))
        probs = np.exp(lm.log_prob(docs)[1::2])
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-12)


def test_in_domain_text_scores_better_and_bad_input():
    vocab = build_vocabulary(TEXTS, size=20)
    lm = BigramLM(len(vocab)).fit(encode(TEXTS, vocab))
    assert lm.cross_entropy(encode(["the cat sat on the mat ."], vocab)) < lm.cross_entropy(
        encode(["mat the on sat cat the"], vocab)
    )
    subset = encode(TEXTS, vocab).subset(np.array([2, 0]))
    assert subset.ids.tolist() == encode([TEXTS[2], TEXTS[0]], vocab).ids.tolist()
    with pytest.raises(ValueError, match="empty corpus"):
        BigramLM(len(vocab)).fit(encode([""], vocab))
    with pytest.raises(ValueError, match=r"discount must be in \(0, 1\)"):
        BigramLM(10, discount=1.5)
    with pytest.raises(ValueError, match="token ids must be in 0..2"):
        BigramLM(3).fit(encode(TEXTS, vocab))
