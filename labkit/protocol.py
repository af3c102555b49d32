"""The reproduction protocol every notebook follows: claims as data, Student-t intervals, validation-only selection.

A paper's claims are declared as :class:`Claim` records (metric, direction, compared arms, compute measure, the
smallest effect that counts). :func:`judge` turns per-seed results into a :class:`Verdict` with a Student-t interval
(paired by seed where both arms ran the same seeds) and one printed rule:

- **held**: the whole 95 % interval of the improvement lies above the claim's ``tolerance``;
- **not held**: the whole interval lies below it (the arm is not better by that much, or is worse);
- **inconclusive**: the interval contains it, fewer than two seeds, or a sanity check failed on an arm it rests on.

Sanity checks (:func:`sanity`) flag an arm that did not converge (its best validation epoch lies in the last 10 % of
the epochs it ran) or does not beat the trivial baseline (mean predictor, chance, persistence). Selection
(:func:`select_best`) accepts only a validation table, so no choice can see test data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

VERDICTS = ("held", "not held", "inconclusive")
VALIDATION = "val"  # the one split name :func:`select_best` accepts


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as data: which arm beats which on what metric, by how much, at what compute."""

    name: str  # short id used in tables and metric names, e.g. "pervar_beats_stacked"
    text: str  # the claim in the paper's words
    metric: str  # column of the per-seed table the claim is judged on
    arm: str  # the arm the paper says is better
    baseline: str  # the arm it is compared with
    lower_is_better: bool = True  # direction of ``metric`` (MSE: True, accuracy: False)
    relative: bool = False  # judge the % change vs the baseline instead of the raw difference
    tolerance: float = 0.0  # the improvement must exceed this (metric units, or % if relative); < 0: non-inferiority
    compute: str = "equal steps"  # what the two arms are matched on (steps, FLOPs, tuning budget)
    paper: str = ""  # the paper's number, shown as a labelled reference only

    def __post_init__(self) -> None:
        for name in ("name", "text", "metric", "arm", "baseline"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Claim field {name!r} must be a non-empty string, got {getattr(self, name)!r}")
        if self.arm == self.baseline:
            raise ValueError(f"claim {self.name!r} compares arm {self.arm!r} with itself")
        if not math.isfinite(self.tolerance):
            raise ValueError(f"claim {self.name!r}: tolerance must be finite, got {self.tolerance}")

    def rule(self) -> str:
        """The decision rule in words, printed with every verdict."""
        what = "% improvement" if self.relative else "improvement"
        unit = " %" if self.relative else ""
        direction = "lower" if self.lower_is_better else "higher"
        return (
            f"{what} of {self.arm} over {self.baseline} in {self.metric} ({direction} is better), 95 % Student-t "
            f"interval over seeds: held if it lies above {self.tolerance:g}{unit}, "
            f"not held if below, else inconclusive; inconclusive if a sanity check fails"
        )


@dataclass(frozen=True)
class Verdict:
    """A judged claim: the improvement (positive = the claimed direction), its interval, n and the verdict."""

    claim: Claim
    mean: float  # mean improvement
    low: float  # 95 % Student-t interval
    high: float
    n: int  # seeds (pairs when paired)
    paired: bool  # paired by seed
    verdict: str  # one of VERDICTS
    flags: tuple[str, ...] = field(default_factory=tuple)  # failed sanity checks behind an "inconclusive"

    def summary(self) -> str:
        """One line: claim, effect with interval and n, verdict, and flags."""
        unit = " %" if self.claim.relative else ""
        flags = f" [{'; '.join(self.flags)}]" if self.flags else ""
        pairing = "paired" if self.paired else "unpaired"
        return (
            f"{self.claim.name}: {self.verdict.upper()} — improvement {self.mean:+.3g}{unit} "
            f"[{self.low:+.3g}, {self.high:+.3g}] ({pairing}, n={self.n}){flags}"
        )


# -------------------------------------------------------------------------------------------------------- intervals
def student_t_ci(values: Sequence[float] | np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean: ``(mean, low, high)``; NaN bounds with a single value.

    With 3–10 seeds a percentile bootstrap is nearly the min–max range and too narrow; t with n−1 degrees of freedom
    is the textbook interval for a mean of few samples.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("student_t_ci needs at least one value, got none")
    if not np.isfinite(x).all():
        raise ValueError(f"student_t_ci got non-finite values: {x[~np.isfinite(x)][:5].tolist()}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = float(scipy_stats.t.ppf(0.5 + ci / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def welch_ci(a: np.ndarray, b: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean difference ``a − b`` of two independent samples with a Welch–Satterthwaite t interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return float(a.mean() - b.mean()), math.nan, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        d = float(a.mean() - b.mean())
        return d, d, d
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(scipy_stats.t.ppf(0.5 + ci / 2, dof) * se)
    d = float(a.mean() - b.mean())
    return d, d - half, d + half


def t_summary(df: pd.DataFrame, by: str | Sequence[str], value: str, ci: float = 0.95) -> pd.DataFrame:
    """Mean, Student-t interval and n of ``value`` per group (typically per arm over seeds)."""
    by = [by] if isinstance(by, str) else list(by)
    _require_columns(df, [*by, value], "t_summary")
    rows = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = student_t_ci(group[value].to_numpy(), ci)
        rows.append({**dict(zip(by, key, strict=True)), "mean": mean, "low": low, "high": high, "n": len(group)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------- sanity
def converged(
    curve: Sequence[float] | np.ndarray, lower_is_better: bool = True, tail: float = 0.1, rel_tol: float = 0.0
) -> bool:
    """True when a validation curve's last improvement comes before its last ``tail`` share of entries.

    A best epoch at the very end means the run was still improving when it stopped: not a plateau. An improvement is
    a value better than every earlier one by more than ``rel_tol`` (relative; the early-stopping threshold), so gains
    too small to count do not hide a plateau.
    """
    x = np.asarray(curve, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < 2:
        raise ValueError(f"a convergence check needs a validation curve of >= 2 points, got {x.size}")
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1), got {rel_tol}")
    x = x if lower_is_better else -x
    last, best = 0, x[0]
    for i, value in enumerate(x[1:], start=1):
        if value < best - rel_tol * abs(best):
            last = i
        best = min(best, value)
    return last < x.size - max(1, math.ceil(tail * x.size))


def sanity(
    table: pd.DataFrame,
    metric: str,
    trivial: str,
    curves: Mapping[tuple[str, int], Sequence[float]] | None = None,
    lower_is_better: bool = True,
    arm_col: str = "arm",
    rel_tol: float = 0.0,
) -> pd.DataFrame:
    """Per arm: the share of seeds that converged (:func:`converged` with ``rel_tol``), whether it beats ``trivial``
    (paired t interval), and flags.

    ``table`` has one row per (arm, seed) with ``metric``; ``curves`` maps (arm, seed) to its validation curve.
    An arm whose curve is missing is not flagged as unconverged (arms without training, such as baselines).
    """
    _require_columns(table, [arm_col, "seed", metric], "sanity")
    if trivial not in set(table[arm_col]):
        raise ValueError(f"trivial baseline {trivial!r} not among arms {sorted(set(table[arm_col]))}")
    ref = table[table[arm_col] == trivial].set_index("seed")[metric]
    rows = []
    for arm, group in table.groupby(arm_col, sort=False):
        seeds = list(group["seed"])
        runs = [curves[(arm, s)] for s in seeds if curves and (arm, s) in curves]
        share = float(np.mean([converged(c, lower_is_better, rel_tol=rel_tol) for c in runs])) if runs else math.nan
        flags = []
        if runs and share < 1:
            flags.append(f"{arm} not converged in {round((1 - share) * len(runs))}/{len(runs)} seeds")
        beats = True
        if arm != trivial:
            gain = _improvement(group.set_index("seed")[metric], ref, lower_is_better).dropna()
            mean, low, _ = student_t_ci(gain.to_numpy()) if len(gain) else (math.nan, math.nan, math.nan)
            beats = bool(low > 0) if not math.isnan(low) else bool(mean > 0)
            if not beats:
                flags.append(f"{arm} does not beat {trivial}")
        rows.append({arm_col: arm, "converged": share, "beats_trivial": beats, "flags": "; ".join(flags)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------ verdicts
def judge(claim: Claim, table: pd.DataFrame, checks: pd.DataFrame | None = None, arm_col: str = "arm") -> Verdict:
    """Judge ``claim`` on a per-seed ``table`` (one row per arm and seed); ``checks`` from :func:`sanity`.

    Paired by seed when both arms share their seeds, else a Welch interval.
    """
    _require_columns(table, [arm_col, "seed", claim.metric], f"claim {claim.name!r}")
    arms = set(table[arm_col])
    for arm in (claim.arm, claim.baseline):
        if arm not in arms:
            raise ValueError(f"claim {claim.name!r} needs arm {arm!r}; the table has {sorted(arms)}")
    a = table[table[arm_col] == claim.arm].set_index("seed")[claim.metric]
    b = table[table[arm_col] == claim.baseline].set_index("seed")[claim.metric]
    paired = set(a.index) == set(b.index)
    if paired:
        gain = _improvement(a, b.loc[a.index], claim.lower_is_better, claim.relative)
        mean, low, high = student_t_ci(gain.to_numpy())
        n = len(gain)
    else:
        sign = -1.0 if claim.lower_is_better else 1.0
        scale = 100 / abs(b.mean()) if claim.relative else 1.0
        mean, low, high = (sign * scale * v for v in welch_ci(a.to_numpy(), b.to_numpy()))
        low, high = min(low, high), max(low, high)
        n = min(len(a), len(b))
    flags = _flags(checks, (claim.arm, claim.baseline), arm_col)
    if flags or math.isnan(low):
        verdict = "inconclusive"
    elif low > claim.tolerance:
        verdict = "held"
    elif high < claim.tolerance:
        verdict = "not held"
    else:
        verdict = "inconclusive"
    if math.isnan(low) and not flags:
        flags = (f"n={n}: no interval",)
    return Verdict(claim, mean, low, high, n, paired, verdict, flags)


def claims_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """The table every report opens with: claim, paper reference, measured effect with interval and n, verdict, flags,
    compute measure and rule."""
    rows = []
    for v in verdicts:
        unit = " %" if v.claim.relative else ""
        rows.append(
            {
                "claim": v.claim.name,
                "text": v.claim.text,
                "paper (reference)": v.claim.paper,
                "effect": f"{v.mean:+.3g}{unit} [{v.low:+.3g}, {v.high:+.3g}]",
                "mean": v.mean,
                "low": v.low,
                "high": v.high,
                "n": v.n,
                "verdict": v.verdict,
                "sanity": "; ".join(v.flags) or "ok",
                "compute": v.claim.compute,
                "rule": v.claim.rule(),
            }
        )
    return pd.DataFrame(rows)


RULE = (
    "each claim: the improvement of its arm over its baseline with a 95 % interval (Student-t over seeds unless its "
    "rule in the claims table says otherwise): held if the interval lies above the claim's tolerance, not held if "
    "below, else inconclusive; inconclusive too when a sanity check fails on an arm it rests on"
)


def verdict_lines(
    claims: pd.DataFrame, sanity: pd.DataFrame, ok: str, units: str = "", notes: Iterable[str] = ()
) -> list[str]:
    """The recorded verdict, one line each: the rule, every claim of :func:`claims_table` with its effect (``units``
    appended), n, verdict and the paper's reference where it has one, the failed sanity checks (``ok`` when none),
    then ``notes`` (e.g. the configurations chosen on validation)."""
    _require_columns(claims, ["claim", "verdict", "effect", "n", "paper (reference)"], "verdict_lines")
    if len(sanity):
        _require_columns(sanity, ["flags"], "verdict_lines (sanity table)")
    lines = [f"rule: {RULE}"]
    for r in claims.to_dict("records"):
        paper = f"; paper {r['paper (reference)']}" if r["paper (reference)"] else ""
        lines.append(f"{r['claim']}: {r['verdict']} ({r['effect']}{units}, n={r['n']}{paper})")
    flags = [f for f in sanity["flags"] if f] if len(sanity) else []
    lines.append("sanity: " + ("; ".join(flags) if flags else ok))
    return lines + list(notes)


def verdict_text(
    claims: pd.DataFrame, sanity: pd.DataFrame, ok: str, units: str = "", notes: Iterable[str] = ()
) -> str:
    """:func:`verdict_lines` in one string (the ``held`` field of a report)."""
    return "; ".join(verdict_lines(claims, sanity, ok, units, notes))


# ------------------------------------------------------------------------------------------------------ selection
def select_best(
    validation: pd.DataFrame, by: str | Sequence[str], metric: str, lower_is_better: bool = True
) -> dict[str, object]:
    """The configuration (values of ``by``) with the best mean ``metric`` on a validation table.

    The table must carry a ``split`` column whose every value is ``"val"``: selection never sees test data.
    """
    by = [by] if isinstance(by, str) else list(by)
    _require_columns(validation, [*by, metric, "split"], "select_best")
    splits = set(validation["split"])
    if splits != {VALIDATION}:
        raise ValueError(
            f"select_best takes validation rows only (split == {VALIDATION!r}); got splits {sorted(splits)}"
        )
    means = validation.groupby(by, sort=False)[metric].mean()
    key = means.idxmin() if lower_is_better else means.idxmax()
    key = key if isinstance(key, tuple) else (key,)
    return dict(zip(by, key, strict=True))


# -------------------------------------------------------------------------------------------------------- helpers
def _improvement(a: pd.Series, b: pd.Series, lower_is_better: bool, relative: bool = False) -> pd.Series:
    """Per seed, how much ``a`` is better than ``b`` (positive = better), raw or in % of ``b``."""
    diff = (b - a) if lower_is_better else (a - b)
    return 100 * diff / b.abs() if relative else diff


def _flags(checks: pd.DataFrame | None, arms: Iterable[str], arm_col: str) -> tuple[str, ...]:
    if checks is None:
        return ()
    rows = checks[checks[arm_col].isin(list(arms))]
    return tuple(f for text in rows["flags"] for f in text.split("; ") if f)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: columns {missing} not in table; it has {list(df.columns)}")
