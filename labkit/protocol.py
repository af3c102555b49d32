"""The reproduction protocol every notebook follows (v2): claims as data, Student-t intervals, checks that can fail,
the paper's premise judged first, multiplicity stated, validation-only selection.

A paper's claims are declared as :class:`Claim` records (metric, direction, compared arms, every other arm the score
rests on, compute measure, the smallest effect that counts). :func:`judge` turns per-seed results into a
:class:`Verdict` with a Student-t interval (paired by seed where both arms ran the same seeds) and one printed rule:

- **held**: the whole 95 % interval of the improvement lies above the claim's ``tolerance``;
- **not held**: the whole interval lies below it (the arm is not better by that much, or is worse);
- **inconclusive**: the interval contains it, fewer than two seeds, or a sanity check failed on an arm it rests on.

Then :func:`conclude` orders a report's verdicts: **premise** claims (``kind="premise"``: what the paper presupposes,
e.g. a soup beats its own ingredients) come first, and when one is not held the claims it governs read **premise not
met**; the **main** claims (those carrying the paper's reference) are adjusted for multiplicity with Holm–Bonferroni
(the raw verdict stays beside the adjusted one); the rest are **secondary** and say so.

Sanity checks (:func:`sanity`) can fail: an arm is *converged* only if one seed rerun at twice the budget
(:func:`budget_check`) does not improve its validation metric by more than a declared tolerance; *healthy* if its
full-compute quality is within a declared tolerance of a reference (:func:`health`); and it must beat the trivial
baseline (mean predictor, chance, persistence) — with fewer than 3 units that check reports "not enough units"
instead of running a t interval. Selection (:func:`labkit.selection.select_best`) accepts only a validation table, so
no choice can see test data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

VERDICTS = ("held", "not held", "inconclusive", "premise not met", "premise unconfirmed")
ROLES = ("premise", "main", "secondary")  # the order a report shows them in
KINDS = ("claim", "premise")
ALPHA = 0.05  # two-sided level of every interval (95 %) and of the Holm–Bonferroni family
MIN_UNITS = 3  # fewer units than this: no t-interval sanity check ("not enough units")
IS_TRIVIAL = "is the trivial arm"  # sanity's beats_trivial on the trivial arm's own row: not compared with itself
NOT_CHECKED = "not checked"  # a claim's sanity where it is judged on its own measurement (a premise)
REL_EPS = 1e-9  # a gain equal to its tolerance up to float rounding counts as equal (0.2 computed as 97.24 - 97.04)


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
    paper: str = ""  # the paper's number, shown as a labelled reference only; a claim with one is a *main* claim
    kind: str = "claim"  # "premise": what the paper presupposes, judged and shown first (see :func:`conclude`)
    rests_on: tuple[str, ...] = ()  # further arms the score depends on (e.g. the dense model that normalises it)
    group: str = ""  # a premise governs the claims of its group ("" governs every claim of the report)

    def __post_init__(self) -> None:
        for name in ("name", "text", "metric", "arm", "baseline"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Claim field {name!r} must be a non-empty string, got {getattr(self, name)!r}")
        if self.arm == self.baseline:
            raise ValueError(f"claim {self.name!r} compares arm {self.arm!r} with itself")
        if not math.isfinite(self.tolerance):
            raise ValueError(f"claim {self.name!r}: tolerance must be finite, got {self.tolerance}")
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.rests_on, str) or not all(isinstance(a, str) and a for a in self.rests_on):
            raise ValueError(f"claim {self.name!r}: rests_on must be a tuple of arm names, got {self.rests_on!r}")
        object.__setattr__(self, "rests_on", tuple(self.rests_on))

    @property
    def role(self) -> str:
        """``premise``, ``main`` (carries the paper's reference: adjusted for multiplicity) or ``secondary``."""
        return "premise" if self.kind == "premise" else "main" if self.paper else "secondary"

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm the claim's score rests on: a sanity flag on any of them makes it inconclusive."""
        return tuple(dict.fromkeys((self.arm, self.baseline, *self.rests_on)))

    def rule(self, checked: bool = True) -> str:
        """The decision rule in words, printed with every verdict; ``checked``: whether sanity checks were applied
        (a premise judged on its own measurement is not)."""
        what = "% improvement" if self.relative else "improvement"
        unit = " %" if self.relative else ""
        direction = "lower" if self.lower_is_better else "higher"
        checks = (f"inconclusive if a sanity check fails on {', '.join(self.arms)}" if checked
                  else "judged on its own measurement, without sanity checks")
        return (
            f"{what} of {self.arm} over {self.baseline} in {self.metric} ({direction} is better), 95 % Student-t "
            f"interval over seeds: held if it lies above {self.tolerance:g}{unit}, "
            f"not held if below, else inconclusive; {checks}"
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
    verdict: str  # one of VERDICTS: after :func:`conclude`, the adjusted verdict
    flags: tuple[str, ...] = field(default_factory=tuple)  # failed sanity checks behind an "inconclusive"
    p: float = math.nan  # two-sided p of "the improvement equals the tolerance" (same t statistic as the interval)
    raw: str = ""  # the verdict before premise and multiplicity (set by :func:`conclude`; "" until then)
    interval: str = ""  # what the interval alone says against the tolerance: before flags, premise and multiplicity
    p_holm: float = math.nan  # Holm-Bonferroni adjusted p over the report's main claims (set by :func:`conclude`)
    checked: bool = True  # sanity checks were applied (False: judged on its own measurement, e.g. a premise)

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


def welch_dof(a: np.ndarray, b: np.ndarray) -> float:
    """Welch–Satterthwaite degrees of freedom of ``a − b`` (two independent samples of >= 2 values each)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return float(len(a) + len(b) - 2)
    return float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))


def t_p_value(estimate: float, low: float, high: float, null: float, dof: float, ci: float = 0.95) -> float:
    """Two-sided p of ``estimate == null`` from a symmetric Student-t interval ``[low, high]`` at level ``ci`` with
    ``dof`` degrees of freedom: p < 1 − ci exactly when the interval excludes ``null`` (same statistic)."""
    if math.isnan(low) or not dof > 0:
        return math.nan
    crit = float(scipy_stats.t.ppf(0.5 + ci / 2, dof))
    se = (high - low) / (2 * crit)
    if se == 0:
        return 0.0 if estimate != null else 1.0
    return float(2 * scipy_stats.t.sf(abs(estimate - null) / se, dof))


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
def budget_check(
    table: pd.DataFrame,
    metric: str,
    tolerance: float,
    lower_is_better: bool = True,
    relative: bool = False,
    arm_col: str = "arm",
) -> pd.DataFrame:
    """Convergence that can fail: per (arm, seed) run at the report's budget (``budget == 1``) and again at a longer
    one (``budget >= 2``: epochs or steps, same schedule shape), the arm is *converged* only if the longer run does
    not improve the validation ``metric`` by more than ``tolerance`` (metric units, or % of the 1× value if
    ``relative``).

    ``table`` has columns ``arm_col``, ``seed``, ``budget`` and ``metric``. Returns one row per rerun arm and seed:
    the metric at 1× and at the longer budget, the improvement, ``converged`` and ``flags``.
    """
    _require_columns(table, [arm_col, "seed", "budget", metric], "budget_check")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"budget_check: tolerance must be a finite number >= 0, got {tolerance}")
    longer = table[table["budget"] > 1]
    rows = []
    for (arm, seed), group in longer.groupby([arm_col, "seed"], sort=False):
        base = table[(table[arm_col] == arm) & (table["seed"] == seed) & (table["budget"] == 1)]
        if base.empty:
            raise ValueError(f"budget_check: arm {arm!r} seed {seed} ran at budget {list(group['budget'])} but "
                             "not at budget 1; the check compares the same seed at both")
        short, budget = float(base[metric].iloc[0]), float(group["budget"].max())
        long = float(group.loc[group["budget"].idxmax(), metric])
        gain = float(_improvement(pd.Series([long]), pd.Series([short]), lower_is_better, relative).iloc[0])
        ok = _within(gain, tolerance)
        unit = " %" if relative else ""
        flag = "" if ok else (f"{arm} not converged (seed {seed}: {metric} {short:.4g} at 1x, {long:.4g} at "
                              f"{budget:g}x, improvement {gain:+.3g}{unit} > {tolerance:g}{unit})")
        rows.append({arm_col: arm, "seed": seed, "budget": budget, f"{metric}_1x": short, f"{metric}_long": long,
                     "improvement": gain, "converged": ok, "flags": flag})
    columns = [arm_col, "seed", "budget", f"{metric}_1x", f"{metric}_long", "improvement", "converged", "flags"]
    return pd.DataFrame(rows, columns=columns)


def health(
    table: pd.DataFrame,
    metric: str,
    reference: pd.Series | float,
    tolerance: float,
    lower_is_better: bool = True,
    relative: bool = False,
    what: str = "reference",
    arm_col: str = "arm",
) -> pd.DataFrame:
    """Every arm at its full-compute setting against a reference quality (its own pre-fine-tuning model, or the dense
    model): a row per (arm, seed) is *healthy* if it is worse than ``reference`` (a number, or a Series indexed by
    seed) by at most ``tolerance`` (metric units, or % if ``relative``). Failures are flagged with their seed."""
    _require_columns(table, [arm_col, "seed", metric], "health")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"health: tolerance must be a finite number >= 0, got {tolerance}")
    rows = []
    for r in table.to_dict("records"):
        ref = float(reference) if not isinstance(reference, pd.Series) else float(reference.get(r["seed"], math.nan))
        if math.isnan(ref):
            raise ValueError(f"health: no {what} for seed {r['seed']} (arm {r[arm_col]!r})")
        loss = -float(_improvement(pd.Series([r[metric]]), pd.Series([ref]), lower_is_better, relative).iloc[0])
        ok = _within(loss, tolerance)
        unit = " %" if relative else ""
        flag = "" if ok else (f"{r[arm_col]} unhealthy (seed {r['seed']}: {metric} {r[metric]:.4g} vs {what} "
                              f"{ref:.4g}, worse by {loss:.3g}{unit} > {tolerance:g}{unit})")
        rows.append({arm_col: r[arm_col], "seed": r["seed"], metric: r[metric], what: ref, "healthy": ok,
                     "flags": flag})
    return pd.DataFrame(rows, columns=[arm_col, "seed", metric, what, "healthy", "flags"])


def sanity(
    table: pd.DataFrame,
    metric: str,
    trivial: str,
    budget: pd.DataFrame | None = None,
    healthy: pd.DataFrame | None = None,
    lower_is_better: bool = True,
    arm_col: str = "arm",
) -> pd.DataFrame:
    """Per arm: converged (:func:`budget_check` rows; NaN for an arm not rerun, e.g. one without training), the
    metric at 1× and at the longer budget, healthy (:func:`health` rows; NaN where not checked), whether it beats
    ``trivial`` (paired t interval; "not enough units" below :data:`MIN_UNITS`; "no <trivial> run" when a run left
    the trivial arm out, so the check cannot be made; :data:`IS_TRIVIAL` on the trivial arm's own row, which is not
    compared with itself), and every failure as a flag.

    ``table`` has one row per (arm, seed) with ``metric`` (the measure the trivial baseline is compared on).
    """
    _require_columns(table, [arm_col, "seed", metric], "sanity")
    ran_trivial = trivial in set(table[arm_col])
    ref = table[table[arm_col] == trivial].set_index("seed")[metric]
    rows = []
    for arm, group in table.groupby(arm_col, sort=False):
        row: dict[str, object] = {arm_col: arm, "converged": math.nan, "budget_1x": math.nan,
                                  "budget_long": math.nan, "healthy": math.nan}
        flags = []
        if budget is not None and len(budget):
            mine = budget[budget[arm_col] == arm]
            if len(mine):
                row["converged"] = bool(mine["converged"].all())
                long_col = next(c for c in mine.columns if c.endswith("_long"))
                row["budget_1x"] = float(mine[long_col.removesuffix("_long") + "_1x"].mean())
                row["budget_long"] = float(mine[long_col].mean())
                flags += [f for f in mine["flags"] if f]
        if healthy is not None and len(healthy):
            mine = healthy[healthy[arm_col] == arm]
            if len(mine):
                row["healthy"] = bool(mine["healthy"].all())
                flags += [f for f in mine["flags"] if f]
        beats: object = IS_TRIVIAL if arm == trivial else True
        if not ran_trivial:
            beats = f"no {trivial} run"
        elif arm != trivial:
            gain = _improvement(group.set_index("seed")[metric], ref, lower_is_better).dropna()
            if len(gain) < MIN_UNITS:
                beats = "not enough units"
            else:
                beats = bool(student_t_ci(gain.to_numpy())[1] > 0)
                if not beats:
                    flags.append(f"{arm} does not beat {trivial}")
        rows.append({**row, "beats_trivial": beats, "flags": "; ".join(flags)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------ verdicts
def interval_verdict(low: float, high: float, tolerance: float) -> str:
    """What an interval alone says against a claim's tolerance: held above it, not held below it, else (or NaN)
    inconclusive; sanity flags, premises and multiplicity come on top (:func:`judge`, :func:`conclude`)."""
    return "held" if low > tolerance else "not held" if high < tolerance else "inconclusive"


def judge(claim: Claim, table: pd.DataFrame, checks: pd.DataFrame | None = None, arm_col: str = "arm") -> Verdict:
    """Judge ``claim`` on a per-seed ``table`` (one row per arm and seed); ``checks`` from :func:`sanity` (a flag on
    any arm of ``claim.arms`` makes it inconclusive). Paired by seed when both arms share their seeds, else Welch."""
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
        dof = float(n - 1)
    else:
        sign = -1.0 if claim.lower_is_better else 1.0
        scale = 100 / abs(b.mean()) if claim.relative else 1.0
        mean, low, high = (sign * scale * v for v in welch_ci(a.to_numpy(), b.to_numpy()))
        low, high = min(low, high), max(low, high)
        n = min(len(a), len(b))
        dof = welch_dof(a.to_numpy(), b.to_numpy()) if n >= 2 else math.nan
    flags = arm_flags(checks, claim.arms, arm_col)
    interval = interval_verdict(low, high, claim.tolerance)
    verdict = "inconclusive" if flags else interval
    if math.isnan(low) and not flags:
        flags = (f"n={n}: no interval",)
    p = t_p_value(mean, low, high, claim.tolerance, dof)
    return Verdict(claim, mean, low, high, n, paired, verdict, flags, p, interval=interval, checked=checks is not None)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    out = np.full(p.shape, math.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def conclude(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """A report's final verdicts, premises first: each keeps its interval verdict as ``raw``; the *main* claims (those
    with a paper reference) are adjusted with Holm–Bonferroni at :data:`ALPHA` (a held or not-held whose adjusted p
    is not below it becomes inconclusive); and every non-premise claim governed by a premise (same ``group``, or a
    premise of group "") that is not held reads "premise not met", and one governed by a premise left inconclusive
    reads "premise unconfirmed" (the premise was not refuted, only not shown)."""
    verdicts = list(verdicts)
    main = [i for i, v in enumerate(verdicts) if v.claim.role == "main"]
    adjusted = dict(zip(main, holm([verdicts[i].p for i in main]), strict=True))
    premises = [v for v in verdicts if v.claim.role == "premise"]
    unmet = {v.claim.group for v in premises if v.verdict == "not held"}
    unconfirmed = {v.claim.group for v in premises if v.verdict != "held"} - unmet
    out = []
    for i, v in enumerate(verdicts):
        final = v.verdict
        if i in adjusted and final in ("held", "not held") and not adjusted[i] < ALPHA:
            final = "inconclusive"
        governed = ("", v.claim.group) if v.claim.group else ("",)
        if v.claim.role != "premise" and unmet.intersection(governed):
            final = "premise not met"
        elif v.claim.role != "premise" and unconfirmed.intersection(governed):
            final = "premise unconfirmed"
        out.append(dataclasses.replace(v, verdict=final, raw=v.raw or v.verdict, p_holm=adjusted.get(i, math.nan)))
    order = {role: k for k, role in enumerate(ROLES)}
    return [v for _, v in sorted(enumerate(out), key=lambda kv: (order[kv[1].claim.role], kv[0]))]


def claims_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """The full claims table of a report, after :func:`conclude`: claim, role, group (the premises of its group and
    those of group "" govern it), paper reference, measured effect with
    interval and n, the tolerance it must clear, p (raw and Holm-adjusted for main claims), the interval verdict (the
    interval alone), the raw verdict (with the sanity flags) and the final one, flags, compute measure and rule."""
    verdicts = conclude(verdicts)
    rows = []
    for v in verdicts:
        unit = " %" if v.claim.relative else ""
        rows.append(
            {
                "claim": v.claim.name,
                "role": v.claim.role,
                "group": v.claim.group,
                "text": v.claim.text,
                "paper (reference)": v.claim.paper,
                "effect": f"{v.mean:+.3g}{unit} [{v.low:+.3g}, {v.high:+.3g}]",
                "mean": v.mean,
                "low": v.low,
                "high": v.high,
                "n": v.n,
                "tolerance": f"{v.claim.tolerance:g}{unit}",
                "p": v.p,
                "p (Holm)": v.p_holm,
                "interval verdict": v.interval,
                "raw verdict": v.raw,
                "verdict": v.verdict,
                "sanity": "; ".join(v.flags) or ("ok" if v.checked else NOT_CHECKED),
                "compute": v.claim.compute,
                "rule": v.claim.rule(v.checked),
            }
        )
    return pd.DataFrame(rows)


RULE = (
    "each claim: the improvement of its arm over its baseline with a 95 % interval (Student-t over seeds unless its "
    "rule in the claims table says otherwise): held if the interval lies above the claim's tolerance, not held if "
    "below, else inconclusive; inconclusive too when a sanity check (converged at 2x budget, healthy, beats trivial) "
    "fails on any arm it rests on, unless its rule says it is judged without them; premises are judged first: a "
    "premise not held makes the claims it governs 'premise not met', an inconclusive one 'premise unconfirmed'; main "
    "claims (those with a paper reference) are Holm-Bonferroni adjusted at 5 % (raw verdict beside the adjusted one), "
    "the others are secondary"
)


def multiplicity(claims: pd.DataFrame) -> str:
    """How many claims the Holm–Bonferroni family of :func:`conclude` held in ``claims`` (a :func:`claims_table`): the
    main claims with a p-value; premises and secondary claims are judged on their own intervals, unadjusted."""
    _require_columns(claims, ["role", "p"], "multiplicity")
    family = int(((claims["role"] == "main") & claims["p"].notna()).sum())
    return (f"multiplicity: Holm–Bonferroni at {ALPHA:g} over a family of {family} main claim"
            f"{'' if family == 1 else 's'}; premises and secondary claims are not adjusted")


def verdict_lines(
    claims: pd.DataFrame, sanity: pd.DataFrame, ok: str, units: str = "", notes: Iterable[str] = ()
) -> list[str]:
    """The recorded verdict, one line each: the rule, the multiplicity family (:func:`multiplicity`), every claim of
    :func:`claims_table` with its effect (``units`` appended), n, verdict and the paper's reference where it has one,
    the failed sanity checks (``ok`` when none), then ``notes`` (e.g. the configurations chosen on validation)."""
    _require_columns(claims, ["claim", "verdict", "effect", "n", "paper (reference)"], "verdict_lines")
    if len(sanity):
        _require_columns(sanity, ["flags"], "verdict_lines (sanity table)")
    lines = [f"rule: {RULE}", multiplicity(claims)]
    for r in claims.to_dict("records"):
        paper = f"; paper {r['paper (reference)']}" if r["paper (reference)"] else ""
        raw = r.get("raw verdict", r["verdict"])
        before = f", raw {raw}" if raw and raw != r["verdict"] else ""
        role = f", {r['role']}" if "role" in r else ""
        lines.append(f"{r['claim']}: {r['verdict']} ({r['effect']}{units}, n={r['n']}{paper}{before}{role})")
    flags = [f for f in sanity["flags"] if f] if len(sanity) else []
    lines.append("sanity: " + ("; ".join(flags) if flags else ok))
    return lines + list(notes)


def verdict_text(
    claims: pd.DataFrame, sanity: pd.DataFrame, ok: str, units: str = "", notes: Iterable[str] = ()
) -> str:
    """:func:`verdict_lines` in one string (the ``held`` field of a report)."""
    return "; ".join(verdict_lines(claims, sanity, ok, units, notes))


# -------------------------------------------------------------------------------------------------------- helpers
def _improvement(a: pd.Series, b: pd.Series, lower_is_better: bool, relative: bool = False) -> pd.Series:
    """Per seed, how much ``a`` is better than ``b`` (positive = better), raw or in % of ``b`` (0 where both are 0:
    nothing changed; ±inf where only ``b`` is 0, so a check on it fails visibly instead of reading NaN)."""
    diff = (b - a) if lower_is_better else (a - b)
    if not relative:
        return diff
    with np.errstate(divide="ignore", invalid="ignore"):
        return (100 * diff / b.abs()).where(diff != 0, 0.0)


def _within(gain: float, tolerance: float) -> bool:
    """``gain <= tolerance``, counting a gain equal to the tolerance up to float rounding as equal."""
    return bool(gain <= tolerance + REL_EPS * max(1.0, abs(tolerance)))


def arm_flags(checks: pd.DataFrame | None, arms: Iterable[str], arm_col: str = "arm") -> tuple[str, ...]:
    """Every sanity flag (:func:`sanity`'s ``flags``) of the ``arms`` a number rests on: a claim built another way
    than :func:`judge` (a correlation across arms, say) is flagged by the same checks."""
    if checks is None:
        return ()
    rows = checks[checks[arm_col].isin(list(arms))]
    return tuple(f for text in rows["flags"] for f in text.split("; ") if f)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: columns {missing} not in table; it has {list(df.columns)}")
