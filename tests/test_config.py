import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

import numpy as np
import pytest

from labkit.config import NON_EMPTY, Interval, check, number_in_range


def test_number_in_range_accepts_real_numbers_inside_the_interval():
    assert number_in_range("p", 0, 0.0, 1.0) == 0.0 and isinstance(number_in_range("p", 1, 0.0, 1.0), float)
    assert number_in_range("p", np.float32(0.5), 0.0, 1.0, "()") == 0.5
    assert number_in_range("lr", 3e9, 0.0, interval="()") == 3e9
    assert number_in_range("t", -2.5) == -2.5


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("p", 1.0, 0.0, 1.0, "[)"), ValueError, r"^p must be in \[0, 1\), got 1\.0$"),
        (("p", 0.0, 0.0, 1.0, "(]"), ValueError, r"^p must be in \(0, 1\], got 0\.0$"),
        (("p", -0.5, 0.0, 1.0), ValueError, r"^p must be in \[0, 1\], got -0\.5$"),
        (("eps", 0, 0.0, math.inf, "()"), ValueError, r"^eps must be > 0, got 0$"),
        (("count", -1, 0.0), ValueError, r"^count must be >= 0, got -1$"),
        (("x", 2, -math.inf, 1.0, "()"), ValueError, r"^x must be < 1, got 2$"),
        (("p", math.nan, 0.0, 1.0), ValueError, r"^p must be a finite number in \[0, 1\], got nan$"),
        (("t", math.inf), ValueError, r"^t must be a finite number, got inf$"),
        (("p", "0.5", 0.0, 1.0), TypeError, r"^p must be a finite number in \[0, 1\], got '0\.5' \(str\)$"),
        (("p", True, 0.0, 1.0), TypeError, r"^p must be .*got True \(bool\)$"),
        (("p", 0.5, 0.0, 1.0, "[0, 1]"), ValueError, r"interval must be two of"),
    ],
)
def test_number_in_range_names_the_parameter_the_interval_and_the_value(args, error, message):
    with pytest.raises(error, match=message):
        number_in_range(*args)


class _Setting(NamedTuple):
    alpha: Annotated[float, Interval("(0, inf)")]
    mode: Literal["raw", "log"]


@dataclass
class _Grid:
    grid: Annotated[list[_Setting], NON_EMPTY] = field(default_factory=lambda: [_Setting(1.0, "raw")])

    def __post_init__(self) -> None:
        check(self)


def test_named_tuple_records_are_accepted_from_lists_and_mappings_and_checked_by_field():
    grid = _Grid([[2, "log"], {"alpha": 0.5, "mode": "raw"}]).grid
    assert grid == [_Setting(2, "log"), _Setting(0.5, "raw")] and all(isinstance(s, _Setting) for s in grid)
    with pytest.raises(ValueError, match=r"'grid\[1\]\.alpha' must be > 0, got -1"):
        _Grid([[2.0, "log"], [-1.0, "raw"]])
    with pytest.raises(TypeError, match=r"grid.*'cubic'"):
        _Grid([[2.0, "cubic"]])
    with pytest.raises(TypeError, match=r"grid.*_Setting"):
        _Grid([[2.0]])  # a field missing
    with pytest.raises(TypeError, match=r"grid.*_Setting"):
        _Grid([{"alpha": 1.0, "mode": "raw", "beta": 2}])  # an unknown field
