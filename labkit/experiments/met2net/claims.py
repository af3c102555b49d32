"""Met²Net's claims as data, judged by :mod:`labkit.protocol` on the per-seed scores of the computed tables
(:func:`labkit.experiments.met2net.arms.compute`, selected by :func:`labkit.experiments.met2net.summary.judge`).

Every claim compares mean test MSE over seeds (paired by seed, Student-t 95 % interval) as a % reduction; the
comparison arm is fixed in advance (never the best baseline picked on test). The FLOPs-matched stacked model is the
baseline for the headline temperature and humidity numbers, whose setting in the paper (WeatherBench 5.625°, baseline
not stated in the abstract) this synthetic task does not reproduce: they are labelled references.

The premise, judged first: attention across variables beats no attention (the paper's design rests on inter-variable
dependence that attention exploits). When it is not held, every other claim reads "premise not met". No claim's score
rests on an arm beyond the two it compares (``met2net_noattn`` reuses the momentum chosen for ``met2net``, an arm of
the one claim it is in), so ``rests_on`` is empty throughout. Health against a reference model is not checked: no arm
has a pre-training or dense counterpart; beating persistence is the floor every arm must clear.
"""

from __future__ import annotations

import pandas as pd

from labkit import protocol
from labkit.protocol import Claim

TOLERANCE_PCT = 1.0  # a reduction below 1 % of MSE is not an improvement worth the name
BUDGET_TOLERANCE_PCT = TOLERANCE_PCT  # converged if 2x the budget lowers validation MSE by at most this %: a smaller
# gain could not move a claim, a larger one could (it is also the 1 % gain early stopping counts as real)
_COMPUTE = "same data, optimiser, max epochs and early-stopping rule on validation"


def _claim(name: str, text: str, metric: str, arm: str, baseline: str, paper: str, kind: str = "claim") -> Claim:
    """A claim judged as the % MSE reduction of ``arm`` vs ``baseline`` (lower MSE is better)."""
    compute = _COMPUTE + ("; forward FLOPs matched" if baseline == "stacked_wide" else "")
    return Claim(name, text, metric, arm, baseline, relative=True, tolerance=TOLERANCE_PCT, compute=compute,
                 paper=paper, kind=kind, rests_on=())


CLAIMS = (
    _claim("variable_attention", "attention beats no attention: self-attention across variables in latent space "
           "beats the same model without cross-variable mixing", "mse_z", "met2net", "met2net_noattn",
           "inter-variable dependence (abstract)", kind="premise"),
    _claim("architecture", "per-variable encoders/decoders with variable attention beat stacking variables as "
           "channels", "mse_z", "pervar_e2e", "stacked", "per-variable design (abstract)"),
    _claim("flops_matched", "Met²Net beats a stacked model of equal forward FLOPs", "mse_z", "met2net", "stacked_wide",
           "beats SimVP/TAU-style baselines"),
    _claim("implicit_vs_end_to_end", "implicit two-stage training beats end-to-end training of the same network",
           "mse_z", "met2net", "pervar_e2e", "implicit two-stage (method)"),
    _claim("implicit_vs_explicit", "implicit two-stage training beats explicit two-stage training (autoencoder, then "
           "latent translator)", "mse_z", "met2net", "pervar_explicit",
           "task inconformity of explicit two-stage (abstract)"),
    _claim("temperature", "Met²Net lowers temperature MSE", "mse_T", "met2net", "stacked_wide",
           "-28.82 % MSE (WeatherBench)"),
    _claim("humidity", "Met²Net lowers relative-humidity MSE", "mse_RH", "met2net", "stacked_wide",
           "-23.39 % MSE (WeatherBench)"),
)


def per_seed_scores(metrics: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, seed): mean test MSE in z-units (``mse_z``), each variable's physical MSE (``mse_<var>``),
    the skill vs persistence (1 − MSE / persistence MSE) and the selected validation MSE."""
    norm = metrics[metrics["units"] == "normalised"].groupby(["arm", "seed"], sort=False)["mse"].mean().rename("mse_z")
    phys = metrics[metrics["units"] == "physical"].pivot_table(index=["arm", "seed"], columns="variable", values="mse")
    phys.columns = [f"mse_{c}" for c in phys.columns]
    table = pd.concat([norm, phys], axis=1).reset_index()
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


def verdicts(scores: pd.DataFrame, budget_runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The claims table (premise first; every claim whose arms ran), the per-arm sanity table (converged at the
    longer budget, beats persistence) and the budget check of ``budget_runs`` (see :func:`budget`)."""
    converged = budget(budget_runs)
    checks = protocol.sanity(scores, "mse_z", trivial="persistence", budget=converged)
    arms = set(scores["arm"])
    ran = [c for c in CLAIMS if {c.arm, c.baseline, *c.rests_on} <= arms and c.metric in scores.columns]
    return protocol.claims_table([protocol.judge(c, scores, checks) for c in ran]), checks, converged
