"""One module per paper: its arms and training loops, parameterized by a dataclass and presets.

Each module defines ``Config`` (a dataclass), ``PRESETS`` (preset name -> field overrides) and
``configure(preset, overrides)``. Nothing here draws or prints; results come back as pandas tables.

Every value is checked twice before anything runs: against its field's type hint (:func:`conform`, here in
:func:`configure` and in each Config's ``__post_init__``) and against its range (the ``require_*`` helpers, called
from each Config's ``__post_init__``, so direct construction and ``dataclasses.replace`` are checked too).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")

def configure(config_cls: type[C], presets: Mapping[str, Mapping[str, Any]], preset: str,
              overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``config_cls`` from a preset's values, then explicit ``overrides`` (which win).

    Raises ValueError naming an unknown preset or unknown parameter names, with the accepted ones, and TypeError
    naming a value that does not match its field's type hint (lists are accepted for tuples and vice versa).
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
    hints = _type_hints(config_cls)
    values = {name: conform(name, value, hints[name]) for name, value in {**presets[preset], **overrides}.items()}
    return config_cls(**values)


@functools.cache
def _type_hints(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def type_name(tp: Any) -> str:
    """A readable name of a type hint (``int``, ``tuple[int, ...]``, ``int | None``)."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


class _Mismatch(Exception):
    """Internal: ``value`` (a field's value or one of its elements) does not match ``expected``."""

    def __init__(self, value: Any, expected: Any) -> None:
        super().__init__()
        self.value, self.expected = value, expected


def _conform(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _conform(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(value, tp)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch(value, tp)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif tp is float:  # an int is a valid float (JSON and YAML write 1.0 as 1)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise _Mismatch(value, tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_conform(v, args[0]) for v in value] if args else list(value)
        else:
            if len(value) != len(args):
                raise _Mismatch(value, tp)
            items = [_conform(v, a) for v, a in zip(value, args, strict=True)]
        return tuple(items) if origin is tuple else items
    elif origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(value, tp)
        key_tp, value_tp = args or (Any, Any)
        return {_conform(k, key_tp): _conform(v, value_tp) for k, v in value.items()}
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:  # a hint this checker does not know (a Protocol, a TypeVar): accept
        return value
    if not ok:
        raise _Mismatch(value, tp)
    return value


def conform(name: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the type hint ``tp`` of parameter ``name``; lists become tuples for tuple fields
    (JSON and papermill have no tuples) and tuples lists for list fields. Raises TypeError naming the parameter,
    the expected type and the value (and the offending element of a container)."""
    try:
        return _conform(value, tp)
    except _Mismatch as err:
        detail = "" if err.value is value else f" ({err.value!r} is not {type_name(err.expected)})"
        raise TypeError(f"parameter {name!r} expects {type_name(tp)}, got {value!r}{detail}") from None


def check_types(cfg: Any) -> None:
    """Check every field of the dataclass instance ``cfg`` against its type hint, in place (see :func:`conform`)."""
    hints = _type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, conform(f.name, getattr(cfg, f.name), hints[f.name]))


def require_subset(name: str, values: Iterable[Any], allowed: Iterable[Any]) -> None:
    """Raise ValueError naming the entries of a config field (``arms``, ``datasets``, ...) that are not ``allowed``."""
    allowed = list(allowed)
    unknown = sorted(set(values) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; expected a subset of {allowed}")


def _elements(value: Any) -> list[Any]:
    """The numbers a field holds: a sequence's elements, a mapping's values, or the value itself."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _require(cfg: Any, names: tuple[str, ...], ok: Any, expected: str) -> None:
    """Each named field (each element of a sequence field, each value of a mapping; ``None`` skipped) must satisfy
    ``ok``."""
    for name in names:
        value = getattr(cfg, name)
        for item in _elements(value):
            if item is None:
                continue
            if not (isinstance(item, numbers.Real) and math.isfinite(item) and ok(item)):
                which = "" if item is value else f" ({item!r} is not)"
                raise ValueError(f"parameter {name!r} must be {expected}, got {value!r}{which}")


def require_positive(cfg: Any, *names: str) -> None:
    """Sizes, counts, steps, rates: each named field (or each of its elements) is a finite number > 0."""
    _require(cfg, names, lambda v: v > 0, "> 0")


def require_non_negative(cfg: Any, *names: str) -> None:
    """Each named field (or each of its elements) is a finite number >= 0."""
    _require(cfg, names, lambda v: v >= 0, ">= 0")


def require_within(cfg: Any, name: str, low: float, high: float, interval: str = "[]") -> None:
    """Field ``name`` (or each of its elements) lies in the interval from ``low`` to ``high``; ``interval`` says
    which ends are closed: ``"[]"``, ``"[)"``, ``"(]"`` or ``"()"``."""
    left = (lambda v: v >= low) if interval[0] == "[" else (lambda v: v > low)
    right = (lambda v: v <= high) if interval[1] == "]" else (lambda v: v < high)
    _require(cfg, (name,), lambda v: left(v) and right(v), f"in {interval[0]}{low:g}, {high:g}{interval[1]}")


def require_non_empty(cfg: Any, *names: str) -> None:
    """Each named sequence field holds at least one entry (seeds, arms, sizes to sweep)."""
    for name in names:
        if len(getattr(cfg, name)) == 0:
            raise ValueError(f"parameter {name!r} is empty; expected at least one entry")


def require_unique(cfg: Any, *names: str) -> None:
    """Each named sequence field has no repeated entry (a repeated seed would count one run twice)."""
    for name in names:
        values = list(getattr(cfg, name))
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"parameter {name!r} repeats {repeated}; expected distinct entries, got {values!r}")


def require_choice(cfg: Any, name: str, allowed: Iterable[Any]) -> None:
    """Field ``name`` is one of ``allowed``."""
    allowed = list(allowed)
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"parameter {name!r} must be one of {allowed}, got {getattr(cfg, name)!r}")


def require_divisible(cfg: Any, name: str, by: str) -> None:
    """Field ``name`` is a multiple of field ``by`` (a width split into attention heads)."""
    value, divisor = getattr(cfg, name), getattr(cfg, by)
    if value % divisor:
        raise ValueError(f"parameter {name!r} must be divisible by {by} ({divisor}), got {value}")


def require_device(cfg: Any, name: str = "device") -> None:
    """Field ``name`` is ``"auto"`` or a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); whether the
    device exists is checked when the run starts (a gpu preset may be configured on a CPU machine)."""
    import torch

    value = getattr(cfg, name)
    if value == "auto":
        return
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"parameter {name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {value!r}") from None
