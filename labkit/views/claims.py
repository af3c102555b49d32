"""The claims figure every protocol report opens with (:mod:`labkit.protocol`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

VERDICT_COLOURS = {"held": "tab:green", "not held": "tab:red", "inconclusive": "tab:gray",
                   "premise not met": "tab:orange", "premise unconfirmed": "tab:olive"}


def _tolerances(claims: pd.DataFrame) -> np.ndarray:
    """Each row's tolerance as a number (the claims table writes it with its unit, e.g. "5 %")."""
    return np.array([float(str(t).replace("%", "").strip()) for t in claims["tolerance"]])


def claims_forest(claims: pd.DataFrame, tolerance: float | None = None, xlabel: str = "improvement") -> plt.Figure:
    """Every judged claim of a ``protocol.claims_table``: the improvement with its 95 % interval, coloured by final
    verdict (green held, red not held, grey inconclusive, orange premise not met, olive premise unconfirmed); a
    premise is drawn as a square.
    The tolerance each claim must clear is a dashed line (``tolerance``) or, when None, a tick on each claim's row."""
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(claims) + 1.2))
    pos = np.arange(len(claims))
    err = np.vstack([claims["mean"] - claims["low"], claims["high"] - claims["mean"]])
    ax.errorbar(claims["mean"], pos, xerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2)
    premise = (claims["role"] == "premise").to_numpy() if "role" in claims else np.zeros(len(claims), bool)
    colours = np.array([VERDICT_COLOURS[v] for v in claims["verdict"]])
    for mask, marker in ((~premise, "o"), (premise, "s")):
        ax.scatter(claims["mean"][mask], pos[mask], c=colours[mask], marker=marker, zorder=3, s=18)
    ax.axvline(0, color="black", linewidth=0.8)
    if tolerance is not None:
        ax.axvline(tolerance, color="grey", linestyle="--", linewidth=1, label="tolerance")
    elif "tolerance" in claims:
        ax.scatter(_tolerances(claims), pos, marker="|", color="grey", s=120, label="tolerance", zorder=2)
    ax.set_yticks(pos, claims["claim"], fontsize=7 if len(claims) > 20 else 8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
