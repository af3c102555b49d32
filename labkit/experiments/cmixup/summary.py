"""C-Mixup's judgement: from the computed tables (runs, longer reruns, the mean predictor) to the configurations
chosen on validation, the per-seed scores, the claims, sanity and budget tables, and the readings the notebook shows
(verdict text, headline metrics, RMSE summary). Trains nothing: a stored report is judged again in seconds."""

from __future__ import annotations

import pandas as pd

from labkit import protocol
from labkit.experiments import Computed, Results
from labkit.experiments.cmixup import claims
from labkit.experiments.cmixup.arms import pairing, select
from labkit.experiments.cmixup.config import Config

METRICS = ("val_rmse", "test_rmse", "worst_rmse", "iid_test_rmse")  # the RMSEs summarised per dataset and arm


def judge(cfg: Config, computed: Computed) -> Results:
    """Select each tuned arm's configuration on validation, score every arm per seed (with ``mean`` and
    ``best_prior``), judge the claims with their sanity and budget checks. Judged tables: ``validation``, ``chosen``,
    ``pairing`` (self-pair rate of every mixup setting, and whether selection could choose it), ``scores``, ``claims``,
    ``sanity``, ``budget`` and ``summary``, beside the computed ones."""
    tables = computed.tables
    validation, chosen, selected = select(tables["runs"], cfg)
    settings = pairing(tables["runs"])
    scores = claims.per_seed_scores(selected, tables["trivial"], validation)
    budget_runs = pd.concat([selected[selected["seed"] == 0].assign(budget=1.0), tables["reruns"]], ignore_index=True)
    claims_table, sanity, budget = claims.verdicts(scores, budget_runs)
    judged = {"validation": validation, "chosen": chosen, "pairing": settings, "scores": scores,
              "claims": claims_table, "sanity": sanity, "budget": budget, "summary": rmse_summary(scores)}
    return Results(cfg, {**tables, **judged}, computed)


def rmse_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean validation, test and worst-domain RMSE per dataset and arm with a Student-t 95 % interval over seeds."""
    parts = [protocol.t_summary(scores.dropna(subset=[m]), ["dataset", "arm"], m).assign(metric=m)
             for m in METRICS if scores[m].notna().any()]
    return pd.concat(parts, ignore_index=True)


def verdict_text(results: Results) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, every claim with its effect, interval, n
    and verdict, then sanity flags and the choices made on validation."""
    def setting(r: object) -> str:
        return ", ".join(f"{k}={getattr(r, k):g}" for k in ("sigma", "alpha") if pd.notna(getattr(r, k)))

    picks = [f"{r.dataset}/{r.arm} {setting(r)}" for r in results.chosen.itertuples()]
    notes = ["chosen on validation: " + ", ".join(picks)] if picks else []
    ok = (f"every trained arm converged (seed 0 at {results.budget['budget'].max():g}x the budget), every mixup arm "
          "mixed and every arm beat the mean predictor")
    return protocol.verdict_text(results.claims, results.sanity, ok, notes=notes)


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per dataset and arm test (and worst-domain) RMSE and the self-pair rate of
    mixup arms, each claim's effect."""
    out = {}
    means = results.scores.groupby(["dataset", "arm"], sort=False).mean(numeric_only=True)
    for (name, arm), row in means.iterrows():
        for col in ("test_rmse", "worst_rmse", "iid_test_rmse", "self_pair_rate"):
            if col in row and pd.notna(row[col]):
                out[f"{name}/{arm}/{col}"] = float(row[col])
    for r in results.claims.itertuples():
        out[f"claim/{r.claim.replace(' (ID)', '_id').replace(': ', '/')}_pct"] = float(r.mean)
    return out
