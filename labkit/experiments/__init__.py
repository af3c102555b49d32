"""One module per paper: its arms and training loops, parameterized by a dataclass and presets.

Each module defines ``Config`` (a dataclass), ``PRESETS`` (preset name -> field overrides) and
``configure(preset, overrides)``. Nothing here draws or prints; results come back as pandas tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")

PRESET_NAMES = ("smoke", "cpu", "gpu")


def configure(config_cls: type[C], presets: Mapping[str, Mapping[str, Any]], preset: str,
              overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``config_cls`` from a preset's values, then explicit ``overrides`` (which win).

    Raises ValueError naming an unknown preset or unknown parameter names, with the accepted ones.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    overrides = dict(overrides or {})
    for source, values in (("preset " + repr(preset), presets[preset]), ("overrides", overrides)):
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} in {source} for {config_cls.__name__}; "
                             f"accepted: {sorted(fields)}")
    tuples = {f.name for f in dataclasses.fields(config_cls) if isinstance(f.default, tuple)}
    overrides = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in overrides.items()}
    return config_cls(**{**presets[preset], **overrides})


def require_subset(name: str, values: Iterable[Any], allowed: Iterable[Any]) -> None:
    """Raise ValueError naming the entries of a config field (``arms``, ``datasets``, ...) that are not ``allowed``."""
    allowed = list(allowed)
    unknown = sorted(set(values) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; expected a subset of {allowed}")
