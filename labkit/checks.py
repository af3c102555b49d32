"""Argument checks shared by the primitives; a leaf module (imports nothing from labkit)."""

from __future__ import annotations

import math
import numbers


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
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {finite}, got {value!r} ({type(value).__name__})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be {finite}, got {x}")
    above = x >= low if interval[0] == "[" else x > low
    below = x <= high if interval[1] == "]" else x < high
    if not (above and below):
        raise ValueError(f"{name} must be {accepted}, got {x}")
    return x
