"""Choosing a configuration on validation rows only: the one selection rule every paper's training uses.

A leaf (pandas only): selection feeds later training (the chosen configuration runs on fresh seeds and at twice the
budget), so it belongs to an experiment's compute, apart from :mod:`labkit.protocol`, which judges the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

VALIDATION = "val"  # the one split name :func:`select_best` accepts


def select_best(
    validation: pd.DataFrame, by: str | Sequence[str], metric: str, lower_is_better: bool = True
) -> dict[str, object]:
    """The configuration (values of ``by``) with the best mean ``metric`` on a validation table.

    The table must carry a ``split`` column whose every value is ``"val"``: selection never sees test data.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, metric, "split"] if c not in validation.columns]
    if missing:
        raise KeyError(f"select_best: columns {missing} not in table; it has {list(validation.columns)}")
    splits = set(validation["split"])
    if splits != {VALIDATION}:
        raise ValueError(
            f"select_best takes validation rows only (split == {VALIDATION!r}); got splits {sorted(splits)}"
        )
    means = validation.groupby(by, sort=False)[metric].mean()
    key = means.idxmin() if lower_is_better else means.idxmax()
    key = key if isinstance(key, tuple) else (key,)
    return dict(zip(by, key, strict=True))
