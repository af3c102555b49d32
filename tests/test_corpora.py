"""labkit.data.corpora: dictd parsing, roff stripping, chunking, caching and errors (all on tiny local files)."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from labkit.data import corpora


def test_chunk_entries_keeps_one_label_per_chunk_and_drops_tails():
    entries = [("a", "w " * 5), ("b", "x " * 3), ("a", "w " * 4), ("b", "x " * 2)]
    texts, labels = corpora.chunk_entries(entries, chunk_words=4)
    assert labels == ["a", "a", "b"]
    assert all(len(t.split()) == 4 for t in texts)
    with pytest.raises(ValueError, match="chunk_words must be >= 1"):
        corpora.chunk_entries(entries, 0)


def test_dictd_entries_reads_index_offsets(tmp_path):
    body = b"first entry text\nsecond one here\n"
    folder = tmp_path / "usr" / "share" / "dictd"
    folder.mkdir(parents=True)
    with gzip.open(folder / "toy.dict.dz", "wb") as f:
        f.write(body)
    b64 = corpora._DICTD_B64
    # offsets 0 and 17 (= "R" in dictd base64), lengths 17 and 16; an alias and a database entry are skipped
    (folder / "toy.index").write_text(
        f"00-database-info\tA\tB\nfirst\tA\t{b64[17]}\nalias\tA\t{b64[17]}\nsecond\t{b64[17]}\t{b64[16]}\n"
    )
    assert list(corpora.dictd_entries(tmp_path, "toy")) == [
        ("first", "first entry text\n"),
        ("second", "second one here\n"),
    ]
    assert corpora._dictd_number("BA") == 64


def test_roff_to_text_and_man_entries_skip_vendor_pages(tmp_path):
    page = '.\\" a comment\n.TH OPEN 2\n.SH NAME\nopen \\- open a file\n.B open\n\\fBflags\\fP are \\(em bits\n'
    text = corpora.roff_to_text(page)
    assert "comment" not in text and "NAME" in text and "open - open a file" in text and "flags are" in text
    (tmp_path / "man2").mkdir()
    with gzip.open(tmp_path / "man2" / "open.2.gz", "wt") as f:
        f.write(page)
    with gzip.open(tmp_path / "man2" / "gcloud_compute.2.gz", "wt") as f:
        f.write(page)
    (tmp_path / "man2" / "link.2").write_text(".so man2/open.2\n")
    assert [label for label, _ in corpora.man_entries(tmp_path)] == ["man/2"]


def test_build_corpus_caps_caches_and_validates(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    calls = []

    def fake_python():
        calls.append(1)
        for i in range(40):
            yield ("python/api" if i % 2 else "python/topics"), f"doc {i} " * 8

    monkeypatch.setitem(corpora.READERS, "python", fake_python)
    first = corpora.build_corpus(["python"], chunk_words=8, max_chunks={"python": 10})
    assert list(first.columns) == ["text", "source", "label"] and len(first) == 10
    assert set(first.label) == {"python/api", "python/topics"} and (first.source == "python").all()
    again = corpora.build_corpus(["python"], chunk_words=8, max_chunks={"python": 10})
    pd.testing.assert_frame_equal(first, again)
    assert len(calls) == 1  # the second call read the cache
    assert len(list((tmp_path / "corpora").glob("*.tmp"))) == 0
    with pytest.raises(ValueError, match=r"unknown corpus source\(s\) \['wiki'\]"):
        corpora.build_corpus(["wiki"])


def test_missing_fetched_source_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make setup"):
        corpora.build_corpus(["devil"], cache=False)
    assert corpora.available_sources() == ["python", "man"]
