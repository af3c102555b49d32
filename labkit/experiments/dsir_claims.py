"""DSIR's claims as data (Xie et al., NeurIPS 2023), judged by :mod:`labkit.protocol` on the tables of
:func:`labkit.experiments.dsir.run`.

The LM-track claims are paired **by target** (each target's mean over seeds is one pair: targets, not seeds, are the
independent units the paper averages over); the classification claim is paired by (target, seed) cell, since its
track runs few targets. The correlation claim (KL reduction tracks downstream quality) is judged by an interval rule
on a percentile bootstrap over targets, with every method counted once (DSIR top-k and heuristic classification on
words are variants, anti-DSIR a constructed control; all three are left out). The paper's numbers come from
BERT/RoBERTa on the Pile and are labelled references, never compared with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from labkit import protocol
from labkit.experiments.dsir_setup import VARIANTS
from labkit.protocol import Claim

LOSS = "bigram_nats_per_token"  # downstream quality of the LM track (lower is better)
EXCLUDED = (*VARIANTS, "anti-dsir")  # left out of the correlation: variants (each method once) and the control
CONVERGENCE_TOL = 0.01  # a continued-pretraining loss gain under 1 % in the last 10 % of steps counts as a plateau
N_BOOT = 2000  # bootstrap resamples of targets for the correlation interval
_LM = "same budget k of chunks, same fit sample, same bigram LM"
_CLS = "same budget k, same base LM, same continued-pretraining steps and probe"

CLAIMS = (
    Claim("kl_vs_random", "DSIR's selection is closer to the target than random selection (KL reduction)",
          "kl_reduction", "dsir", "random", lower_is_better=False, compute=_LM,
          paper="KL reduction is DSIR's target; random ≈ 0 by construction"),
    Claim("loss_vs_random", "DSIR beats random selection downstream (held-out target loss)", LOSS, "dsir", "random",
          compute=_LM, paper="GLUE avg 82.30 vs 80.25 (random), BERT-base from scratch"),
    Claim("loss_vs_heuristic", "DSIR beats heuristic classification (hashed n-gram features)", LOSS, "dsir",
          "heuristic", compute=_LM, paper="GLUE avg 82.30 vs 79.85 (heuristic classification, fastText)"),
    Claim("loss_vs_heuristic_words", "DSIR beats heuristic classification (word features, as fastText)", LOSS,
          "dsir", "heuristic-words", compute=_LM, paper="GLUE avg 82.30 vs 79.85 (heuristic classification)"),
    Claim("classify_vs_random", "classification after continued pretraining on DSIR's selection beats random "
          "selection", "accuracy", "dsir", "random", lower_is_better=False, compute=_CLS,
          paper="domain-specific continued pretraining: DSIR > random, ≈ expert curation (8 targets)"),
)
CORRELATION = {
    "claim": "kl_tracks_quality",
    "text": "KL reduction correlates with downstream quality across selection methods",
    "paper (reference)": "r = 0.82 (NeurIPS 2023; 0.89 in an earlier arXiv abstract), downstream accuracy",
    "compute": _LM,
}


def per_target(scores: pd.DataFrame, metrics: Sequence[str] = ("kl_reduction", LOSS)) -> pd.DataFrame:
    """One row per (method, target): the mean of ``metrics`` over seeds, as a protocol table (``arm``, and the
    target in ``seed``, the column :func:`labkit.protocol.judge` pairs on)."""
    metrics = [m for m in metrics if m in scores.columns]
    table = scores.groupby(["method", "target"], sort=False)[metrics].mean().reset_index()
    return table.rename(columns={"method": "arm", "target": "seed"})


def classify_cells(classify: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, target, seed) as a protocol table (``seed`` = "target/seed") plus a ``chance`` arm
    (1 / number of tags), the trivial baseline of the probe. ``error`` = 1 − accuracy, for :func:`protocol.sanity`,
    which reads the metric and the (loss) curves in one direction."""
    table = classify.assign(seed=classify.target + "/" + classify.seed.astype(str))[["method", "seed", "accuracy"]]
    cells = classify.drop_duplicates(["target", "seed"])
    chance = pd.DataFrame({"method": "chance", "seed": cells.target + "/" + cells.seed.astype(str),
                           "accuracy": 1.0 / cells.n_tags})
    table = pd.concat([table, chance], ignore_index=True).rename(columns={"method": "arm"})
    return table.assign(error=1.0 - table.accuracy)


def correlation_interval(
    scores: pd.DataFrame, loss: str = LOSS, exclude: Sequence[str] = EXCLUDED, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, float]:
    """Pearson r of KL reduction vs −loss over methods (each method's mean over targets and seeds), with a
    percentile 95 % interval from resampling **targets** with replacement and recomputing r."""
    frame = scores[~scores.method.isin(exclude)]
    cells = frame.groupby(["target", "method"], sort=False)[["kl_reduction", loss]].mean().unstack("method")
    cells = cells.dropna(axis=1)
    kl, quality = cells["kl_reduction"].to_numpy(), -cells[loss].to_numpy()  # targets × methods
    n_targets, n_methods = kl.shape

    def r_of(rows: np.ndarray) -> float:
        x, y = kl[rows].mean(axis=0), quality[rows].mean(axis=0)
        if n_methods < 3 or x.std() == 0 or y.std() == 0:
            return math.nan
        return float(np.corrcoef(x, y)[0, 1])

    r = r_of(np.arange(n_targets))
    rng = np.random.default_rng(seed)
    boots = np.array([r_of(rng.integers(0, n_targets, n_targets)) for _ in range(n_boot if n_targets >= 2 else 0)])
    boots = boots[np.isfinite(boots)]
    low, high = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (math.nan, math.nan))
    return {"r": r, "low": float(low), "high": float(high), "n_targets": n_targets, "n_methods": n_methods,
            "methods": ", ".join(map(str, cells["kl_reduction"].columns))}


def correlation_row(scores: pd.DataFrame, tolerance: float = 0.0, n_boot: int = N_BOOT) -> dict[str, object]:
    """The correlation claim as a row of the claims table: held if the whole bootstrap interval of r lies above
    ``tolerance``, not held if below, else inconclusive (and with fewer than 3 targets or methods)."""
    c = correlation_interval(scores, n_boot=n_boot)
    if math.isnan(c["low"]) or c["n_targets"] < 3 or c["n_methods"] < 3:
        verdict = "inconclusive"
    else:
        verdict = "held" if c["low"] > tolerance else "not held" if c["high"] < tolerance else "inconclusive"
    rule = (f"Pearson r of KL reduction vs −{LOSS} over {c['n_methods']} methods counted once ({c['methods']}; "
            f"left out: {', '.join(EXCLUDED)}), percentile 95 % bootstrap interval over {c['n_targets']} targets "
            f"({n_boot} resamples): held if it lies above {tolerance:g}, not held if below, else inconclusive")
    return {**CORRELATION, "effect": f"r = {c['r']:+.3g} [{c['low']:+.3g}, {c['high']:+.3g}]", "mean": c["r"],
            "low": c["low"], "high": c["high"], "n": c["n_targets"], "verdict": verdict, "sanity": "ok",
            "rule": rule}


def verdicts(
    scores: pd.DataFrame,
    classify: pd.DataFrame | None = None,
    classify_curves: Mapping[tuple[str, str], Sequence[float]] | None = None,
    tiny_lm: pd.DataFrame | None = None,
    tiny_curves: Mapping[tuple[str, str], Sequence[float]] | None = None,
    n_boot: int = N_BOOT,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (every claim whose arms ran, the correlation row included) and the sanity table.

    Sanity where there are training curves: classification (continued pretraining converged, probe beats chance) and
    the tiny transformer (converged, beats random selection). The bigram LM is fit in closed form (no curve), and its
    trivial baseline, random selection, is what the LM claims compare with, so its claims carry no sanity flag.
    """
    lm = per_target(scores)
    rows, checks = [], []
    verdict_list = [protocol.judge(c, lm) for c in CLAIMS
                    if c.metric in lm.columns and {c.arm, c.baseline} <= set(lm.arm)]
    if classify is not None and len(classify) and {"dsir", "random"} <= set(classify.method):
        cells = classify_cells(classify)
        cls_checks = protocol.sanity(cells, "error", trivial="chance", curves=classify_curves,
                                     rel_tol=CONVERGENCE_TOL)
        checks.append(cls_checks.assign(track="classification (per target × seed)"))
        verdict_list += [protocol.judge(c, cells, cls_checks) for c in CLAIMS if c.metric == "accuracy"]
    if tiny_lm is not None and len(tiny_lm) and "random" in set(tiny_lm.method):
        tiny = tiny_lm.assign(seed=tiny_lm.target + "/" + tiny_lm.seed.astype(str)).rename(columns={"method": "arm"})
        checks.append(protocol.sanity(tiny, "bits_per_byte", trivial="random", curves=tiny_curves,
                                      rel_tol=CONVERGENCE_TOL).assign(track="tiny transformer (per target × seed)"))
    table = protocol.claims_table(verdict_list)
    units = {c.name: "targets (each the mean over seeds)" if c.metric != "accuracy" else "(target, seed) cells"
             for c in CLAIMS}  # what protocol.judge paired on (its rule text says "seeds")
    table["rule"] = [r.replace("interval over seeds", f"interval over {units[c]}")
                     for c, r in zip(table.claim, table.rule, strict=True)] if len(table) else table.get("rule")
    if LOSS in scores.columns:
        rows.append(correlation_row(scores, n_boot=n_boot))
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table
    sanity = pd.concat(checks, ignore_index=True) if checks else pd.DataFrame()
    return table, sanity


def verdict_text(claims: pd.DataFrame, sanity: pd.DataFrame) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, every claim with its effect, interval,
    n and verdict, then the failed sanity checks (each claim's own rule is in the claims table)."""
    ok = "continued pretraining converged and beat chance; the tiny transformer converged and beat random selection"
    return protocol.verdict_text(claims, sanity, ok)
