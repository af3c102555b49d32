import math

import numpy as np
import pytest

from labkit.config import number_in_range


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
