"""Parameters declared once: a type hint says a value's type, range and meaning; one checker reads it everywhere.

A paper's ``Config`` dataclass, a merge method's keyword arguments and a primitive's arguments all check values the
same way: the type (``conform``: a list is accepted for a tuple and back, an int for a float) and then every check in
the hint's ``Annotated`` metadata (``Interval``, ``Check``, ``NON_EMPTY``, ``UNIQUE``), applied to each element of a
sequence and each value of a mapping. ``configure`` builds a Config from a preset and overrides; ``labkit run -p``,
``labkit sweep`` points and ``labkit explore`` all go through it. A leaf: imports nothing from labkit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

C = TypeVar("C")


# ------------------------------------------------------------------------------------------------ numbers in range
def _accepted(low: float, high: float, interval: str) -> str:
    """The accepted values in words: "in [0, 1)", "> 0", "<= 1", or "" when any finite number is fine."""
    if math.isinf(low) and math.isinf(high):
        return ""
    if math.isinf(high):
        return f"{'>=' if interval[0] == '[' else '>'} {low:g}"
    if math.isinf(low):
        return f"{'<=' if interval[1] == ']' else '<'} {high:g}"
    return f"in {interval[0]}{low:g}, {high:g}{interval[1]}"


def number_in_range(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, interval: str = "[]"
) -> float:
    """``value`` as a float if it is a finite real number between ``low`` and ``high``; else an error naming ``name``.

    ``interval`` gives the two ends, ``"["``/``"("`` then ``"]"``/``")"`` (closed/open), e.g. ``"[)"`` for [0, 1).
    A bool or non-number raises TypeError; NaN, inf or a value outside raises ValueError. Each error names the
    parameter, the accepted values and the value found.
    """
    if len(interval) != 2 or interval[0] not in "[(" or interval[1] not in "])":
        raise ValueError(f"interval must be two of '[' or '(' then ']' or ')', e.g. '[)', got {interval!r}")
    accepted = _accepted(low, high, interval)
    finite = f"a finite number {accepted}" if accepted else "a finite number"
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or array
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {finite}, got {value!r} ({type(value).__name__})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be {finite}, got {x}")
    above = x >= low if interval[0] == "[" else x > low
    below = x <= high if interval[1] == "]" else x < high
    if not (above and below):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return x


# ------------------------------------------------------------------------------------------------ declared checks
@dataclass(frozen=True)
class Interval:
    """A number that must lie inside ``text``, e.g. ``"[0, 1)"`` or ``"(0, inf)"`` (brackets say which ends count).

    In a Config it applies to each element of a sequence field and each value of a mapping field (``None`` passes).
    """

    text: str

    def __post_init__(self) -> None:
        self.bounds()  # a malformed interval fails where it is declared

    def bounds(self) -> tuple[float, float, str]:
        ends = self.text[0] + self.text[-1]
        parts = self.text[1:-1].split(",")
        if len(parts) != 2 or ends[0] not in "[(" or ends[1] not in "])":
            raise ValueError(f"an interval looks like '[0, 1)' or '(0, inf)', got {self.text!r}")
        low, high = (float(p) for p in parts)
        return low, high, ends

    def __call__(self, name: str, value: Any) -> float:
        low, high, ends = self.bounds()
        number = number_in_range(name, value, low, high, ends)
        return value if isinstance(value, numbers.Integral) else number


@dataclass(frozen=True)
class Check:
    """A value checked by ``fn(name, value) -> value``, which raises naming the parameter and what it expected.

    ``whole=True`` checks the field as a whole (a list's length); otherwise each element, like :class:`Interval`.
    """

    fn: Callable[[str, Any], Any]
    whole: bool = False

    def __call__(self, name: str, value: Any) -> Any:
        return self.fn(name, value)


def _non_empty(name: str, value: Any) -> Any:
    if len(value) == 0:
        raise ValueError(f"parameter {name!r} is empty; expected at least one entry")
    return value


def _unique(name: str, value: Any) -> Any:
    values = list(value)
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"parameter {name!r} repeats {repeated}; expected distinct entries, got {values!r}")
    return value


def _device(name: str, value: Any) -> str:
    """``"auto"`` or a torch device string; whether the device exists is checked when a run starts (a gpu preset
    may be configured on a CPU machine)."""
    import re

    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"parameter {name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {value!r}")
    return value


NON_EMPTY = Check(_non_empty, whole=True)  # a sequence field holds at least one entry (seeds to run, arms, sizes)
UNIQUE = Check(_unique, whole=True)  # no repeated entry (a repeated grid value would count one run twice)

Count = Annotated[int, Interval("[1, inf)")]  # sizes, steps, seeds to run, workers
NonNegative = Annotated[int, Interval("[0, inf)")]  # offsets, indices, counts that may be zero
Positive = Annotated[float, Interval("(0, inf)")]  # rates, scales, temperatures
Fraction = Annotated[float, Interval("[0, 1]")]  # a share of something; its name says of what (see docs/GLOSSARY.md)
BudgetFactor = Annotated[float, Interval("[2, inf)")]  # the protocol's convergence rerun is >= 2x the budget
Device = Annotated[str, Check(_device)]  # "auto", "cpu", "cuda", "cuda:1"


# ------------------------------------------------------------------------------------------------ types
def type_name(tp: Any) -> str:
    """A readable name of a type hint (``int``, ``tuple[int, ...]``, ``int | None``), ``Annotated`` checks left out."""
    tp = strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if isinstance(tp, type) and not args:
        return tp.__name__
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(tp).replace("typing.", "")


def strip(tp: Any) -> Any:
    """The type of a hint without its ``Annotated`` metadata (``Annotated[int, ...]`` -> ``int``)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def checks_of(tp: Any) -> tuple[Callable[[str, Any], Any], ...]:
    """The checks a hint declares: its ``Annotated`` metadata that can be called (also of ``Count | None``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(tp) for c in checks_of(arg))
    if typing.get_origin(tp) is not Annotated:
        return ()
    return tuple(m for m in tp.__metadata__ if callable(m))


class _Mismatch(Exception):
    """Internal: ``value`` (a field's value or one of its elements) does not match ``expected``."""

    def __init__(self, value: Any, expected: Any) -> None:
        super().__init__()
        self.value, self.expected = value, expected


def _conform(value: Any, tp: Any) -> Any:
    tp = strip(tp)
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


def _elements(value: Any) -> list[Any]:
    """What an element-wise check sees: a sequence's elements, a mapping's values, or the value itself."""
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value) if isinstance(value, (tuple, list)) else [value]


def check_value(name: str, value: Any, tp: Any) -> Any:
    """``value`` conformed to the hint ``tp`` and passed through every check it declares (element-wise unless a
    :class:`Check` says ``whole``; ``None`` elements pass). Errors name the parameter, what it expects and the value."""
    value = conform(name, value, tp)
    for check in checks_of(tp):
        if getattr(check, "whole", False):
            check(name, value)
            continue
        for item in _elements(value):
            if item is None:
                continue
            try:
                check(f"parameter {name!r}" if isinstance(check, Interval) else name, item)
            except (TypeError, ValueError) as err:
                if item is value:
                    raise
                raise type(err)(f"{err} (in {name} = {value!r})") from None
    return value


@functools.cache
def hints(config_cls: type) -> dict[str, Any]:
    """Field name -> type hint (with its ``Annotated`` checks) of a dataclass."""
    return typing.get_type_hints(config_cls, include_extras=True)


def check(cfg: Any) -> None:
    """Check every field of the dataclass instance ``cfg`` against its hint, in place: the one range checker of a
    Config, called from its ``__post_init__`` (so direct construction and ``dataclasses.replace`` are checked)."""
    types_of = hints(type(cfg))
    for f in dataclasses.fields(cfg):
        object.__setattr__(cfg, f.name, check_value(f.name, getattr(cfg, f.name), types_of[f.name]))


def require_divisible(cfg: Any, name: str, by: str) -> None:
    """Field ``name`` is a multiple of field ``by`` (a width split into attention heads): a check across fields."""
    value, divisor = getattr(cfg, name), getattr(cfg, by)
    if value % divisor:
        raise ValueError(f"parameter {name!r} must be divisible by {by} ({divisor}), got {value}")


def configure(config_cls: type[C], presets: Mapping[str, Mapping[str, Any]], preset: str,
              overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``config_cls`` from a preset's values, then explicit ``overrides`` (which win).

    Raises ValueError naming an unknown preset or unknown parameter names, with the accepted ones, and TypeError /
    ValueError naming a value that does not match its field's hint (type, then declared range).
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
    types_of = hints(config_cls)
    values = {name: conform(name, value, types_of[name]) for name, value in {**presets[preset], **overrides}.items()}
    return config_cls(**values)


# ------------------------------------------------------------------------------------------------ renamed parameters
def renamed(**old_to_new: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keep old keyword names of a function working for one release, with a DeprecationWarning naming the new one
    (``@renamed(ratio="skip_fraction")``); passing both raises. docs/GLOSSARY.md lists every renamed name."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old!r} (its old name) and {new!r}; pass {new!r} only")
                import warnings

                warnings.warn(f"{fn.__name__}(): {old!r} is renamed {new!r} (docs/GLOSSARY.md); the old name goes "
                              "in the next release", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap
