"""The claims figure every protocol report can open with (:mod:`labkit.protocol`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

VERDICT_COLOURS = {"held": "tab:green", "not held": "tab:red", "inconclusive": "tab:gray"}


def claims_forest(claims: pd.DataFrame, tolerance: float, xlabel: str) -> plt.Figure:
    """Every judged claim of a ``protocol.claims_table``: the improvement with its Student-t 95 % interval, coloured by
    verdict (green held, red not held, grey inconclusive); the dashed line is the ``tolerance`` a claim must clear."""
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(claims) + 1.2))
    pos = np.arange(len(claims))
    err = np.vstack([claims["mean"] - claims["low"], claims["high"] - claims["mean"]])
    ax.errorbar(claims["mean"], pos, xerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2)
    ax.scatter(claims["mean"], pos, c=[VERDICT_COLOURS[v] for v in claims["verdict"]], zorder=3, s=16)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(tolerance, color="grey", linestyle="--", linewidth=1, label="tolerance")
    ax.set_yticks(pos, claims["claim"], fontsize=7 if len(claims) > 20 else 8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
