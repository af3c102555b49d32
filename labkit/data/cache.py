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


def clean() -> Path:
    """Empty the cache folder; returns its path."""
    path = cache_dir()
    shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
