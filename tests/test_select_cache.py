"""labkit.select.cache: DSIR's on-disk feature cache (featurize once, mmap after, resumable, corrupt shards rebuilt)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from labkit.select import DSIR, FeatureCacheError, FeatureCacheWarning, ShardedFeatures, cached_features, kl_reduction
from labkit.select import cache as select_cache
from labkit.select.features import NgramHasher, featurize
from tests.test_select import make_corpus, write_jsonl


@pytest.fixture
def featurized(monkeypatch):
    """Counts the documents that go through NgramHasher.featurize (in this process)."""
    seen = []
    original = NgramHasher.featurize

    def counting(self, texts):
        seen.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(NgramHasher, "featurize", counting)
    return seen


def test_second_fit_reads_the_cache_and_matches_uncached_weights(tmp_path, featurized):
    raw, target = make_corpus(100)
    plain = DSIR().fit(raw, target)
    featurized.clear()
    first = DSIR(cache_dir=tmp_path, batch_size=16).fit(raw, target)
    assert sum(featurized) == 100 + len(target)
    assert isinstance(first.raw_features, ShardedFeatures) and len(first.raw_features.shards) == 7
    featurized.clear()
    second = DSIR(cache_dir=tmp_path, batch_size=16).fit(list(raw), target)  # same content, another list
    assert sum(featurized) == len(target)  # only the target was featurized
    assert isinstance(second.raw_features.shards[0].buckets, np.memmap)
    np.testing.assert_array_equal(second.log_weights(), plain.log_weights())
    assert second.resample(30, seed=4).tolist() == plain.resample(30, seed=4).tolist()
    assert second.resample(30, top_k=True).tolist() == plain.resample(30, top_k=True).tolist()
    assert len(list(tmp_path.iterdir())) == 1


def test_cached_features_equal_in_memory_features_everywhere(tmp_path):
    raw, target = make_corpus(90, seed=2)
    feats = featurize(raw)
    sharded = cached_features(raw, tmp_path, shard_docs=13)
    np.testing.assert_array_equal(sharded.lengths, feats.lengths)
    np.testing.assert_array_equal(sharded.ngram_counts(), feats.ngram_counts())
    np.testing.assert_array_equal(sharded.total_counts(), feats.total_counts())
    idx = np.array([80, 3, 14, 13, 3, 55])
    np.testing.assert_array_equal(sharded.total_counts(idx), feats.total_counts(idx))
    sub, ref = sharded.subset(idx), feats.subset(idx)
    np.testing.assert_array_equal(sub.buckets, ref.buckets)
    np.testing.assert_array_equal(sub.offsets, ref.offsets)
    np.testing.assert_array_equal(sharded.to_csr().toarray(), feats.to_csr().toarray())
    vec = np.random.default_rng(0).normal(size=(10000, 2))
    np.testing.assert_array_equal(sharded.dot(vec), feats.dot(vec))
    assert kl_reduction(sharded.subset(np.arange(10)), target, sharded) == pytest.approx(
        kl_reduction(raw[:10], target, raw), abs=1e-12
    )
    # exclude, several targets and the raw-token cap stream shard by shard too
    drop = np.arange(0, 90, 5)
    for kwargs in ({"exclude": drop}, {}):
        a = DSIR(min_length=3).fit(sharded, {"a": target, "b": raw[:5]}, **kwargs)
        b = DSIR(min_length=3).fit(feats, {"a": target, "b": raw[:5]}, **kwargs)
        np.testing.assert_array_equal(a.log_weights(), b.log_weights())
        assert a.resample(20, seed=1).tolist() == b.resample(20, seed=1).tolist()
    capped = DSIR(max_raw_tokens=500, cache_dir=tmp_path, batch_size=13).fit(raw, target).log_weights()
    np.testing.assert_array_equal(capped, DSIR(max_raw_tokens=500).fit(raw, target).log_weights())
    many = cached_features(raw, tmp_path / "w", shard_docs=13, workers=2)
    np.testing.assert_array_equal(many.dot(vec), feats.dot(vec))


def test_jsonl_and_series_inputs_are_keyed_by_file_and_content(tmp_path, featurized):
    raw, target = make_corpus(40)
    path = tmp_path / "raw.jsonl"
    write_jsonl(path, raw)
    cache = tmp_path / "cache"
    w = DSIR(cache_dir=cache).fit(str(path), target).log_weights()
    featurized.clear()
    np.testing.assert_array_equal(DSIR(cache_dir=cache).fit(path, target).log_weights(), w)
    np.testing.assert_array_equal(DSIR(cache_dir=cache).fit(pd.Series(raw), target).log_weights(), w)
    assert sum(featurized) == 2 * len(target) + 40  # the Series is new content for the cache, the path is not
    write_jsonl(path, raw[:-1] + ["a changed last document"])  # new size/mtime: a new entry
    featurized.clear()
    DSIR(cache_dir=cache).fit(path, target)
    assert sum(featurized) == 40 + len(target)
    assert len(list(cache.iterdir())) == 3
    with pytest.raises(TypeError, match="one-shot iterator"):
        DSIR(cache_dir=cache).fit((d for d in raw), target)


def test_interrupted_write_leaves_only_finished_shards_and_resumes(tmp_path, monkeypatch, featurized):
    raw, target = make_corpus(50)
    original = select_cache._write_array
    calls = []

    def killed_on_sixth(path, array):  # shard 0: 3 arrays (+ record); shard 1: buckets, lengths, killed inside offsets
        calls.append(path)
        if len(calls) == 6:
            path.with_name(path.name + ".999.tmp").write_bytes(b"\x93NUMPY half a file")
            raise KeyboardInterrupt
        return original(path, array)

    monkeypatch.setattr(select_cache, "_write_array", killed_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        DSIR(cache_dir=tmp_path, batch_size=20).fit(raw, target)
    (folder,) = tmp_path.iterdir()
    names = sorted(p.name for p in folder.iterdir())
    assert "done.json" not in names and "shard-00000.json" in names
    assert "shard-00001.json" not in names and "shard-00001.offsets.npy" not in names  # shard 1 is not visible
    with pytest.raises(FeatureCacheError, match="not a complete DSIR feature cache"):
        select_cache.open_cache(folder)
    monkeypatch.setattr(select_cache, "_write_array", original)
    featurized.clear()
    resumed = DSIR(cache_dir=tmp_path, batch_size=999).fit(raw, target)  # the entry's shard size (20) wins
    assert sum(featurized) == 30 + len(target)  # shards 1 and 2 only
    assert [len(s) for s in resumed.raw_features.shards] == [20, 20, 10]
    np.testing.assert_array_equal(resumed.log_weights(), DSIR().fit(raw, target).log_weights())


def _corrupt(path, how):
    """Damage a shard file on disk the way a bad disk, a copy or a stray script would."""
    data = path.read_bytes()
    if how == "flipped bytes":  # inside the array, past the .npy header: bucket ids far out of range
        path.write_bytes(data[:200] + bytes(b ^ 0xFF for b in data[200:240]) + data[240:])
    elif how == "ids changed within range":  # a valid .npy of the same shape and dtype, other bucket ids
        ids = np.load(path)
        np.save(path, ((ids.astype(np.int64) + 1) % 10000).astype(ids.dtype))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif how == "deleted":
        path.unlink()


@pytest.mark.parametrize(
    "part, how, problem",
    [
        ("buckets.npy", "flipped bytes", "sha256 .* differs from .* recorded when written"),
        ("buckets.npy", "ids changed within range", "sha256 .* differs from .* recorded when written"),
        ("offsets.npy", "truncated", r"\d+ bytes, \d+ when written \(truncated or replaced\)"),
        ("lengths.npy", "zeroed", "sha256 .* differs from .* recorded when written"),
        ("buckets.npy", "deleted", r"missing or unreadable \(No such file or directory\)"),
        ("json", "zeroed", r"missing or unreadable shard record \(JSONDecodeError.*\)"),
    ],
)
def test_a_corrupt_shard_is_refeaturized_with_a_warning_never_used(tmp_path, featurized, part, how, problem):
    raw, target = make_corpus(30)
    fresh = DSIR(batch_size=10, cache_dir=tmp_path / "fresh").fit(raw, target)
    DSIR(batch_size=10, cache_dir=tmp_path / "cache").fit(raw, target)
    (folder,) = (tmp_path / "cache").iterdir()
    _corrupt(folder / f"shard-00001.{part}", how)
    featurized.clear()
    with pytest.warns(FeatureCacheWarning, match=rf"shard-00001\.{part}: {problem}; re-featurizing shard 1 of "):
        repaired = DSIR(batch_size=10, cache_dir=tmp_path / "cache").fit(raw, target)
    assert sum(featurized) == 10 + len(target)  # only the corrupt shard (and the target) featurized again
    np.testing.assert_array_equal(repaired.log_weights(), fresh.log_weights())
    assert repaired.resample(12, seed=3).tolist() == fresh.resample(12, seed=3).tolist()
    feats = featurize(raw)
    np.testing.assert_array_equal(repaired.raw_features.to_csr().toarray(), feats.to_csr().toarray())
    featurized.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureCacheWarning)
        again = DSIR(batch_size=10, cache_dir=tmp_path / "cache").fit(raw, target)  # repaired for good
    assert sum(featurized) == len(target)
    np.testing.assert_array_equal(again.log_weights(), fresh.log_weights())


def test_a_corrupt_shard_left_by_an_interrupted_run_is_refeaturized_too(tmp_path, featurized):
    raw, _ = make_corpus(30)
    cached_features(raw, tmp_path, shard_docs=10)
    (folder,) = tmp_path.iterdir()
    (folder / "done.json").unlink()  # as if killed before the entry was complete
    _corrupt(folder / "shard-00000.buckets.npy", "ids changed within range")
    featurized.clear()
    with pytest.warns(FeatureCacheWarning, match=r"shard-00000\.buckets\.npy: sha256 .*re-featurizing shard 0"):
        resumed = cached_features(raw, tmp_path, shard_docs=10)
    assert featurized == [10]
    np.testing.assert_array_equal(resumed.to_csr().toarray(), featurize(raw).to_csr().toarray())


def test_a_shard_that_no_longer_fits_its_input_is_refeaturized(tmp_path, featurized):
    """A jsonl rewritten with the same size and mtime keeps its key; a shard whose document count no longer fits
    the input found by a resumed run is re-featurized, not used."""
    raw = [f"document number {i:02d}" for i in range(30)]
    path = tmp_path / "raw.jsonl"
    write_jsonl(path, raw)
    size, mtime_ns = path.stat().st_size, path.stat().st_mtime_ns
    cached_features(path, tmp_path / "cache", shard_docs=10)
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / "done.json").unlink()  # as if killed before the entry was complete
    write_jsonl(path, raw[:-2])
    pad = size - path.stat().st_size - len(json.dumps({"text": ""})) - 1
    write_jsonl(path, raw[:-2] + ["x" * pad])  # 29 documents, the same bytes on disk
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert path.stat().st_size == size
    featurized.clear()
    with pytest.warns(FeatureCacheWarning, match=r"shard-00002\.json: holds 10 documents, the input has 9; re-feat"):
        resumed = cached_features(path, tmp_path / "cache", shard_docs=10)
    assert featurized == [9] and len(resumed) == 29


def test_an_unreadable_meta_or_done_file_rebuilds_with_a_warning(tmp_path, featurized):
    raw, _ = make_corpus(30)
    cached_features(raw, tmp_path, shard_docs=10)
    (folder,) = tmp_path.iterdir()
    (folder / "done.json").write_bytes(bytes(20))
    featurized.clear()
    with pytest.warns(FeatureCacheWarning, match=r"done\.json: unreadable .*checking every shard"):
        cached_features(raw, tmp_path, shard_docs=10)
    assert featurized == []  # every shard checked out: nothing featurized again
    (folder / "meta.json").write_text('{"num_buckets": 10')
    with pytest.warns(FeatureCacheWarning, match=r"meta\.json: unreadable .*rebuilding"):
        rebuilt = cached_features(raw, tmp_path, shard_docs=10)
    assert sum(featurized) == 30
    np.testing.assert_array_equal(rebuilt.to_csr().toarray(), featurize(raw).to_csr().toarray())


def test_what_cannot_be_repaired_raises_a_clear_error(tmp_path):
    raw, target = make_corpus(30)
    DSIR(cache_dir=tmp_path, batch_size=10).fit(raw, target)
    (folder,) = tmp_path.iterdir()
    _corrupt(folder / "shard-00002.buckets.npy", "flipped bytes")
    with pytest.raises(FeatureCacheError, match=r"corrupt DSIR feature shard, .*shard-00002\.buckets\.npy: sha256 .*"
                       r"delete .*or call cached_features with the input"):
        select_cache.open_cache(folder)  # no input to re-featurize from
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "num_buckets": 7}))
    with pytest.raises(FeatureCacheError, match=r"meta.json: made for .*'num_buckets': 7.*delete"):
        DSIR(cache_dir=tmp_path).fit(raw, target)
    with pytest.raises(ValueError, match="raw: expected at least one document"):
        DSIR(cache_dir=tmp_path).fit([], target)
    with pytest.raises(TypeError, match="raw: document 1 is int"):
        DSIR(cache_dir=tmp_path).fit(["a", 1], target)
