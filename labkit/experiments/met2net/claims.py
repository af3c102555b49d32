"""Met²Net's claims as data, judged by :mod:`labkit.protocol` on the per-seed scores of the computed tables
(:func:`labkit.experiments.met2net.arms.compute`, selected by :func:`labkit.experiments.met2net.summary.judge`).

Every claim compares mean test MSE over seeds (paired by seed, Student-t 95 % interval) as a % reduction; the
comparison arm is fixed in advance (never the best baseline picked on test). The FLOPs-matched stacked model is the
baseline for the headline temperature and humidity numbers, whose setting in the paper (WeatherBench 5.625°, baseline
not stated in the abstract) this synthetic task does not reproduce: they are labelled references.

The premise, judged first: attention across variables beats no attention on the variables that depend on others
(:func:`labkit.data.fields.dependent_variables`: their mean z-MSE, ``mse_z_dependent``; the paper's design rests on
inter-variable dependence that attention exploits). It governs the claims about the per-variable design and its
numbers (group ``variables``): when it is not held, those read "premise not met" ("premise unconfirmed" when it is
inconclusive). The training-scheme claims (implicit vs end-to-end and vs explicit) do not rest on inter-variable
dependence and are not governed by it (group ``training``). Secondary claims repeat the premise per dependent
variable. No claim's score rests on an arm beyond the two it compares (``met2net_noattn`` reuses the momentum chosen
for ``met2net``, an arm of the one claim it is in), so ``rests_on`` is empty throughout. Health against a reference
model is not checked: no arm has a pre-training or dense counterpart.

Persistence is the floor every arm must clear, twice, by the same rule (the paired interval of its gain lies above
0): on the mean over leads and variables (:func:`labkit.protocol.sanity`), and per lead and variable
(:func:`lead_skill`): a claim about one variable (metric ``mse_<variable>``) is flagged, so inconclusive, where an arm
it compares does not beat persistence at lead 1 on that variable.

Implicit vs end-to-end is judged twice: at the report's budget, and at ``budget_factor`` x the budget on the seeds
rerun there (:data:`LONG_CLAIMS`, secondary; judged on test MSE of the longer runs, with both arms checked against
persistence on the same seeds; no further rerun exists to check their convergence, which the claim's compute says).
"""

from __future__ import annotations

import pandas as pd

from labkit import protocol
from labkit.data.fields import ALL_VARIABLES, FORCED_BY
from labkit.experiments.met2net.config import LONG_ARMS, TRIVIAL
from labkit.protocol import Claim

TOLERANCE_PCT = 1.0  # a reduction below 1 % of MSE is not an improvement worth the name
BUDGET_TOLERANCE_PCT = TOLERANCE_PCT  # converged if 2x the budget lowers validation MSE by at most this %: a smaller
# gain could not move a claim, a larger one could (it is also the 1 % gain early stopping counts as real)
_COMPUTE = "same data, optimiser and cosine schedule over the same epochs; weights chosen on validation"


def _claim(name: str, text: str, metric: str, arm: str, baseline: str, paper: str, kind: str = "claim",
           compute: str = _COMPUTE, group: str = "variables") -> Claim:
    """A claim judged as the % MSE reduction of ``arm`` vs ``baseline`` (lower MSE is better)."""
    compute = compute + ("; forward FLOPs matched" if baseline == "stacked_wide" else "")
    return Claim(name, text, metric, arm, baseline, relative=True, tolerance=TOLERANCE_PCT, compute=compute,
                 paper=paper, kind=kind, rests_on=(), group=group)


CLAIMS = (
    _claim("variable_attention", "attention beats no attention on the variables that depend on others: "
           "self-attention across variables in latent space beats the same model without cross-variable mixing",
           "mse_z_dependent", "met2net", "met2net_noattn", "inter-variable dependence (abstract)", kind="premise"),
    _claim("architecture", "per-variable encoders/decoders with variable attention beat stacking variables as "
           "channels", "mse_z", "pervar_e2e", "stacked", "per-variable design (abstract)"),
    _claim("flops_matched", "Met²Net beats a stacked model of equal forward FLOPs", "mse_z", "met2net", "stacked_wide",
           "beats SimVP/TAU-style baselines"),
    _claim("implicit_vs_end_to_end", "implicit two-stage training beats end-to-end training of the same network",
           "mse_z", "met2net", "pervar_e2e", "implicit two-stage (method)", group="training"),
    _claim("implicit_vs_explicit", "implicit two-stage training beats explicit two-stage training (autoencoder, then "
           "latent translator)", "mse_z", "met2net", "pervar_explicit",
           "task inconformity of explicit two-stage (abstract)", group="training"),
    _claim("temperature", "Met²Net lowers temperature MSE", "mse_T", "met2net", "stacked_wide",
           "-28.82 % MSE (WeatherBench)"),
    _claim("humidity", "Met²Net lowers relative-humidity MSE", "mse_RH", "met2net", "stacked_wide",
           "-23.39 % MSE (WeatherBench)"),
)
LONG_CLAIMS = (
    _claim("implicit_vs_end_to_end_long", "implicit two-stage training beats end-to-end training of the same network "
           "at budget_factor x the budget", "mse_z", *LONG_ARMS, "",
           compute="the runs at budget_factor x the budget (cosine stretched), first long_seeds seeds; their "
           "convergence is not checked (no rerun beyond them)", group="training"),
)


def attention_claims(dependent: tuple[str, ...]) -> tuple[Claim, ...]:
    """The premise per variable (secondary): attention beats no attention on each ``dependent`` variable."""
    return tuple(_claim(f"variable_attention_{var}", f"attention beats no attention on {var} (forced by "
                        f"{', '.join(FORCED_BY[var])})", f"mse_{var}", "met2net", "met2net_noattn", "")
                 for var in dependent)


def variable_of(metric: str) -> str | None:
    """The variable a score column is about (``mse_<variable>``, physical units), None for the means over several
    variables (``mse_z`` is the mean z-MSE over every variable, not geopotential's; ``mse_z_dependent``)."""
    name = metric.removeprefix("mse_")
    return name if metric != "mse_z" and name in ALL_VARIABLES else None


def per_seed_scores(metrics: pd.DataFrame, history: pd.DataFrame, dependent: tuple[str, ...]) -> pd.DataFrame:
    """One row per (arm, seed): mean test MSE in z-units (``mse_z``), the same over the ``dependent`` variables
    (``mse_z_dependent``, absent when there are none), each variable's physical MSE (``mse_<var>``), the skill vs
    persistence (1 − MSE / persistence MSE) and the selected validation MSE."""
    normalised = metrics[metrics["units"] == "normalised"]
    norm = normalised.groupby(["arm", "seed"], sort=False)["mse"].mean().rename("mse_z")
    parts = [norm]
    if dependent:
        forced = normalised[normalised["variable"].isin(dependent)]
        parts.append(forced.groupby(["arm", "seed"], sort=False)["mse"].mean().rename("mse_z_dependent"))
    phys = metrics[metrics["units"] == "physical"].pivot_table(index=["arm", "seed"], columns="variable", values="mse")
    phys.columns = [f"mse_{c}" for c in phys.columns]
    table = pd.concat([*parts, phys], axis=1).reset_index()
    if "persistence" in set(table["arm"]):
        ref = table[table["arm"] == "persistence"].set_index("seed")["mse_z"]
        table["skill_vs_persistence"] = 1 - table["mse_z"] / table["seed"].map(ref)
    val = history.dropna(subset=["val_mse_z"]).groupby(["arm", "seed"])["val_mse_z"].min().rename("val_mse_z")
    return table.merge(val.reset_index(), on=["arm", "seed"], how="left")


def budget(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`labkit.protocol.budget_check` on validation MSE: ``runs`` holds arm, seed, budget (1 = the report's run,
    > 1 = the same seed at the longer budget) and ``val_mse_z``; converged if the longer run gains at most
    :data:`BUDGET_TOLERANCE_PCT` %."""
    return protocol.budget_check(runs, "val_mse_z", BUDGET_TOLERANCE_PCT, lower_is_better=True, relative=True)


def lead_skill(lead: pd.DataFrame) -> pd.DataFrame:
    """Skill vs persistence for every arm, variable and lead: per seed the ratio of test MSE (z-units) to persistence's
    on the same seed, its mean over seeds, the skill 1 − ratio with a 95 % Student-t interval, n, and ``beats``: the
    interval lies above 0 (the rule of :func:`labkit.protocol.sanity`; persistence itself counts as beating).
    ``lead`` holds seed, arm, variable, lead and ``mse_z``; empty without a persistence arm."""
    columns = ["arm", "variable", "lead", "mse_ratio", "skill", "low", "high", "n", "beats"]
    reference = lead[lead["arm"] == "persistence"].set_index(["seed", "variable", "lead"])["mse_z"]
    if reference.empty:
        return pd.DataFrame(columns=columns)
    key = pd.MultiIndex.from_frame(lead[["seed", "variable", "lead"]])
    ratio = lead["mse_z"].to_numpy() / reference.reindex(key).to_numpy()
    ratios = lead.assign(mse_ratio=ratio, skill=1 - ratio)
    by = ["arm", "variable", "lead"]
    table = protocol.t_summary(ratios, by, "skill").rename(columns={"mean": "skill"})
    table["mse_ratio"] = ratios.groupby(by, sort=False)["mse_ratio"].mean().to_numpy()
    table["beats"] = (table["arm"] == "persistence") | (table["low"] > 0)
    return table[columns]


def _lead_one_losses(skill: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, variable) that does not beat persistence at lead 1, with its flag."""
    lost = skill[(skill["lead"] == 1) & ~skill["beats"].astype(bool)]
    flags = [f"{r.arm} does not beat persistence at lead 1 on {r.variable} (MSE ratio {r.mse_ratio:.3g}, skill "
             f"{r.skill:+.3g} [{r.low:+.3g}, {r.high:+.3g}])" for r in lost.itertuples()]
    return pd.DataFrame({"arm": lost["arm"].to_numpy(), "variable": lost["variable"].to_numpy(), "flags": flags})


def _checks_for(claim: Claim, checks: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """The sanity rows a claim is judged with: every arm's, plus the lead-1 failures on the variable it is about."""
    variable = variable_of(claim.metric)
    if variable is None:
        return checks
    return pd.concat([checks, losses.loc[losses["variable"] == variable, ["arm", "flags"]]], ignore_index=True)


def verdicts(
    scores: pd.DataFrame, budget_runs: pd.DataFrame, skill: pd.DataFrame, dependent: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The claims table (premise first; every claim whose arms ran, the premise per ``dependent`` variable, then
    :data:`LONG_CLAIMS` where the longer runs exist), the per-arm sanity table (converged at the longer budget, beats
    persistence on the mean, the variables on which it does not beat persistence at lead 1) and the budget check of
    ``budget_runs`` (see :func:`budget`; its ``test_mse_z`` at the longer budget is what the long claims compare).
    ``skill``: :func:`lead_skill`."""
    converged = budget(budget_runs)
    checks = protocol.sanity(scores, "mse_z", trivial="persistence", budget=converged)
    losses = _lead_one_losses(skill)
    lost_on = losses.groupby("arm")["variable"].agg(", ".join)
    checks = checks.assign(no_skill_at_lead_1=[lost_on.get(arm, "") for arm in checks["arm"]])
    arms = set(scores["arm"])
    ran = [c for c in (*CLAIMS, *attention_claims(dependent))
           if {c.arm, c.baseline, *c.rests_on} <= arms and c.metric in scores.columns]
    judged = [protocol.judge(c, scores, _checks_for(c, checks, losses)) for c in ran]
    long = budget_runs[budget_runs["budget"] > 1].rename(columns={"test_mse_z": "mse_z"})
    rerun = (scores["arm"] == "persistence") & scores["seed"].isin(long["seed"])
    persistence = scores.loc[rerun, ["arm", "seed", "mse_z"]]
    long_checks = protocol.sanity(pd.concat([long, persistence]), "mse_z", trivial="persistence")
    for claim in LONG_CLAIMS:
        if {claim.arm, claim.baseline} <= set(long["arm"]):
            judged.append(protocol.judge(claim, long, long_checks))
    return protocol.claims_table(judged), checks, converged


def lead_one_summary(sanity: pd.DataFrame) -> str:
    """The trained arms' lead-1 failures against persistence in one line ("" when every trained arm beats it at lead 1
    on every variable); the trivial arms are not expected to."""
    lost = [f"{r.arm}: {r.no_skill_at_lead_1}" for r in sanity.itertuples()
            if r.arm not in TRIVIAL and isinstance(r.no_skill_at_lead_1, str) and r.no_skill_at_lead_1]
    return "trained arms that do not beat persistence at lead 1: " + "; ".join(lost) if lost else ""
