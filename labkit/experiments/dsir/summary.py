"""DSIR's judgement: from the computed tables to the claims, sanity and budget tables and the readings the notebook
shows (per-method correlation, DSIR's paired gaps per target, the classification summary, the SmolLM2 pilot,
headline metrics).

Everything here is a function of the computed tables and the config: a report's stored tables are judged again by
:func:`judge` without training. Nothing here draws or prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from labkit.experiments import Computed, Results
from labkit.experiments.dsir.arms import tuning_table
from labkit.experiments.dsir.claims import (
    CLAIMS,
    EXCLUDED,
    LOSS,
    NGRAM_LOSS,
    PREMISE,
    VALIDATION,
    VERDICT_SEEDS,
    correlation_interval,
    leave_one_out,
    verdict_text,
    verdicts,
)
from labkit.experiments.dsir.config import PREMISE_ARM, TINY_TRACK, VARIANTS, Config
from labkit.experiments.dsir.data import Prepared, split_target
from labkit.protocol import student_t_ci
from labkit.stats import interval_sign

__all__ = ["CORRELATION_VARIANTS", "PAPER_R", "SCORE_COLUMNS", "budget_effects", "classify_held", "classify_summary",
           "dsir_gaps", "explorer_weights", "headline_metrics", "judge", "llm_pilot", "paired_gaps", "targets_below",
           "verdict_text"]
GAP_REFERENCES = ("random", "heuristic", "heuristic-words")  # DSIR's per-target detail is paired against these
# The SmolLM2 track's comparisons (arm, reference): DSIR against the other selections, and what continued
# pretraining on each selection does to the pretrained model (against "base", the model before it)
LLM_COMPARISONS = (("dsir", "random"), ("dsir", "heuristic"), ("dsir", "base"), ("random", "base"),
                   ("heuristic", "base"))
SCORE_COLUMNS = ("kl_reduction", "bigram_nats_per_token", "label_precision")  # per-method means in the headline
# KL reduction vs downstream accuracy across methods, as each version of the paper states it (reference only).
PAPER_R = {"NeurIPS 2023 (final)": 0.82, "arXiv abstract (earlier version)": 0.89}
# The correlations' Fisher-z intervals with different methods left out (the claims use the first; the headline and
# the figures read these rows, so every r a reader sees is one of them).
CORRELATION_VARIANTS = {"methods once (claim)": EXCLUDED, "methods once, without random": (*EXCLUDED, "random"),
                        "with the anti-DSIR control": (*VARIANTS, PREMISE_ARM)}


def judge(cfg: Config, computed: Computed) -> Results:
    """The claims, sanity and budget-check tables (:func:`labkit.experiments.dsir.claims.verdicts`) and every reading
    the notebook shows (the ``tuning`` table: each tuned method's grid and the setting chosen on validation), from the
    computed tables; artefacts: the skipped targets of each track (target -> reason)."""
    tables = computed.tables
    scores, classify, tiny, llm = tables["scores"], tables["classify"], tables["tiny_lm"], tables["llm"]
    claims, sanity, budget = verdicts(scores, classify, tiny, tables["budget_runs"], llm)
    downstreams = [(name, table, loss) for name, table, loss in ((TINY_TRACK, tiny, LOSS), ("bigram LM", scores,
                   NGRAM_LOSS)) if loss in table.columns]
    correlation_rows = [{"downstream": name, "variant": variant, **correlation_interval(table, loss, exclude)}
                        for name, table, loss in downstreams for variant, exclude in CORRELATION_VARIANTS.items()]
    loo = [leave_one_out(table, loss).rename_axis("left_out").reset_index().assign(downstream=name)
           for name, table, loss in downstreams]
    ngram_measured = NGRAM_LOSS in scores.columns  # the bigram LM ran (downstream "bigram" or "both")
    judged = {
        "claims": claims,
        "sanity": sanity,
        "budget": budget,
        "tuning": tuning_table(cfg, tables["sweep"]),
        "correlation_intervals": pd.DataFrame(correlation_rows),
        "correlation_loo": pd.concat(loo, ignore_index=True) if loo else pd.DataFrame(),
        "paired_gaps": dsir_gaps(scores) if ngram_measured else pd.DataFrame(),
        "classify_summary": classify_summary(classify) if len(classify) else pd.DataFrame(),
        "budget_effects": budget_effects(tables["budget_runs"]),
        "llm_pilot": llm_pilot(llm),
    }
    skipped = tables["skipped"]
    artefacts = {
        "skipped_targets": _reasons(skipped, "selection"),
        "classify_skipped": _reasons(skipped, "classification"),
    }
    return Results(cfg, {**tables, **judged}, computed, artefacts)


def _reasons(skipped: pd.DataFrame, track: str) -> dict[str, str]:
    """Target -> why ``track`` could not run it, from the computed ``skipped`` table."""
    rows = skipped[skipped.track == track] if len(skipped) else skipped
    return dict(zip(rows.get("target", []), rows.get("reason", []), strict=True))


def llm_pilot(llm: pd.DataFrame) -> pd.DataFrame:
    """The SmolLM2 track's comparisons (:data:`LLM_COMPARISONS`, :func:`paired_gaps` of held-out target bits per
    byte: arm − reference, negative = the arm predicts the target better) per target and over every (target, seed)
    cell, and whether the track has the seeds of a verdict (:data:`~labkit.experiments.dsir.claims.VERDICT_SEEDS`)
    or is a pilot."""
    columns = ["comparison", "target", "mean_diff", "low", "high", "n", "status"]
    if not len(llm):
        return pd.DataFrame(columns=columns)
    seeds = llm.seed.nunique()
    status = "verdict (claims table)" if seeds >= VERDICT_SEEDS else f"pilot: {seeds} seeds < {VERDICT_SEEDS}"
    gaps = [paired_gaps(llm, arm, reference, value="bits_per_byte") for arm, reference in LLM_COMPARISONS
            if {arm, reference} <= set(llm.method)]
    return pd.concat(gaps, ignore_index=True).assign(status=status)[columns]


def budget_effects(budget_runs: pd.DataFrame) -> pd.DataFrame:
    """Each transformer comparison (the premise and the ``loss_vs_*`` claims) in the budget check's cell: the
    improvement in validation bits per byte at 1x and at the longer budget, and its change. One cell, so a reading
    beside the verdicts (does training longer move the comparison?), not a check: the verdicts' flags come from each
    arm's own convergence."""
    rows = budget_runs[budget_runs.track == TINY_TRACK] if len(budget_runs) else budget_runs
    if not len(rows):
        return pd.DataFrame()
    bits = rows.pivot_table(index="arm", columns="budget", values=VALIDATION)
    short, long = bits.columns.min(), bits.columns.max()
    out = []
    for claim in (PREMISE, *CLAIMS):
        if claim.metric == LOSS and {claim.arm, claim.baseline} <= set(bits.index):
            at = {b: float(bits.loc[claim.baseline, b] - bits.loc[claim.arm, b]) for b in (short, long)}
            out.append({"claim": claim.name, "cell": rows.seed.iloc[0], "improvement_1x": at[short],
                        f"improvement_{long:g}x": at[long], "change": at[long] - at[short]})
    return pd.DataFrame(out)


def paired_gaps(
    scores: pd.DataFrame, method: str, reference: str, value: str = "bigram_nats_per_token"
) -> pd.DataFrame:
    """Per target and overall: mean of (method − reference) over seeds with a Student-t 95 % interval (NaN bounds
    from one value).

    Negative = ``method`` has the lower ``value``. The overall row pairs every (seed, target) cell.
    """
    a = scores[scores.method == method].set_index(["seed", "target"])[value]
    b = scores[scores.method == reference].set_index(["seed", "target"])[value]
    diff = (a - b).dropna().reset_index()
    rows = []
    for target, group in diff.groupby("target", sort=False):
        mean, low, high = student_t_ci(group[value].to_numpy())
        rows.append({"target": target, "mean_diff": mean, "low": low, "high": high, "n": len(group)})
    mean, low, high = student_t_ci(diff[value].to_numpy())
    rows.append({"target": "all", "mean_diff": mean, "low": low, "high": high, "n": len(diff)})
    out = pd.DataFrame(rows)
    out.insert(0, "comparison", f"{method} − {reference}")
    return out


def dsir_gaps(scores: pd.DataFrame) -> pd.DataFrame:
    """DSIR minus each of :data:`GAP_REFERENCES` that ran, per target and overall (:func:`paired_gaps`, bootstrap
    95 %): the per-target detail behind the verdicts (which use Student-t intervals over targets)."""
    refs = [ref for ref in GAP_REFERENCES if ref in set(scores.method)]
    if "dsir" not in set(scores.method) or not refs:
        methods = sorted(set(scores.method))
        raise ValueError(f"dsir_gaps needs DSIR and one of {GAP_REFERENCES} in scores; got methods {methods}")
    return pd.concat([paired_gaps(scores, "dsir", ref) for ref in refs], ignore_index=True)


def targets_below(gaps: pd.DataFrame, reference: str = "random") -> tuple[int, int]:
    """(targets whose whole DSIR − ``reference`` interval lies below 0, i.e. DSIR's loss is lower; targets)."""
    rows = gaps[(gaps.comparison == f"dsir − {reference}") & (gaps.target != "all")]
    return int((rows.high < 0).sum()), len(rows)


def classify_summary(classify: pd.DataFrame) -> pd.DataFrame:
    """Per target × method: mean accuracy and macro-F1 over seeds with Student-t 95 % intervals."""
    rows = []
    for (target, method), group in classify.groupby(["target", "method"], sort=False):
        row = {"target": target, "method": method, "n_seeds": len(group)}
        for value in ("accuracy", "macro_f1"):
            mean, low, high = student_t_ci(group[value].to_numpy())
            row.update({value: mean, f"{value}_low": low, f"{value}_high": high})
        row["bits_per_byte"] = float(group.bits_per_byte.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def classify_held(classify: pd.DataFrame) -> str:
    """A one-line statement of the paired accuracy gaps (DSIR − random, DSIR − heuristic, DSIR − base) of a run."""
    if classify.empty or "dsir" not in set(classify.method):
        return "downstream classification not run"
    parts = []
    for ref in ("random", "heuristic", "base"):
        if ref not in set(classify.method):
            continue
        gap = paired_gaps(classify, "dsir", ref, value="accuracy")
        per_target, overall = gap[gap.target != "all"], gap[gap.target == "all"].iloc[0]
        if overall.n < 3:
            word = f"from {int(overall.n)} paired cell(s): too few for an interval"
        else:
            word = {1: "higher", -1: "lower", 0: "tied (interval spans 0)"}[interval_sign(overall.low, overall.high)]
        parts.append(
            f"DSIR − {ref} accuracy {overall.mean_diff:+.3f} [{overall.low:+.3f}, {overall.high:+.3f}] {word}, "
            f"DSIR higher on {int((per_target.mean_diff > 0).sum())}/{len(per_target)} targets"
        )
    n_targets, n_seeds = classify.target.nunique(), classify.seed.nunique()
    return f"classification after continued pretraining (linear probe, {n_targets} targets × {n_seeds} seeds): " + (
        "; ".join(parts)
    )


def headline_metrics(results: Results) -> dict[str, float]:
    """Numbers a rerun reproduces: per method the mean KL reduction, bigram loss, label precision and transformer bits
    per byte; the correlations (each downstream and variant of ``correlation_intervals``); DSIR's paired gaps; each
    claim's effect and interval; the tiny-LM and classification tracks per cell."""
    out: dict[str, float] = {}
    columns = [c for c in SCORE_COLUMNS if c in results.scores.columns]
    means = results.scores.groupby("method", sort=False)[columns].mean()
    for method, row in means.iterrows():
        out |= {f"{method}/{column}": float(value) for column, value in row.items()}
    for r in results.correlation_intervals.itertuples():
        key = f"pearson_r/{r.downstream}/{r.variant}"
        out |= {key: float(r.r), f"{key}/ci_low": float(r.low), f"{key}/ci_high": float(r.high)}
    for r in results.paired_gaps.itertuples():
        key = f"{r.comparison}/{r.target}"
        out |= {f"{key}/mean_diff": float(r.mean_diff), f"{key}/ci_low": float(r.low), f"{key}/ci_high": float(r.high)}
    if len(results.paired_gaps):
        out["dsir_beats_random_targets"] = float(targets_below(results.paired_gaps)[0])
    for r in results.tuning.itertuples():
        out[f"{r.method}/validation_nats_per_token"] = float(r.validation_nats_per_token)
    for r in results.claims.itertuples():
        out |= {f"claim/{r.claim}/effect": float(r.mean), f"claim/{r.claim}/ci_low": float(r.low),
                f"claim/{r.claim}/ci_high": float(r.high)}
    if len(results.tiny_lm):
        tiny_means = results.tiny_lm.groupby("method", sort=False)[LOSS].mean()
        out |= {f"{method}/{LOSS}": float(value) for method, value in tiny_means.items()}
    for r in results.tiny_lm.itertuples():
        out[f"tiny_lm/{r.target}/{r.method}/seed{r.seed}/bits_per_byte"] = float(r.bits_per_byte)
    for r in results.llm.itertuples():
        out[f"llm/{r.target}/{r.method}/seed{r.seed}/bits_per_byte"] = float(r.bits_per_byte)
    for r in results.llm_pilot.itertuples():
        key = f"llm_pilot/{r.comparison}/{r.target}"
        out |= {f"{key}/mean_diff": float(r.mean_diff), f"{key}/ci_low": float(r.low), f"{key}/ci_high": float(r.high)}
    for r in results.classify_summary.itertuples():
        out[f"classify/{r.target}/{r.method}/accuracy"] = float(r.accuracy)
        out[f"classify/{r.target}/{r.method}/macro_f1"] = float(r.macro_f1)
    return out


def explorer_weights(cfg: Config, prepared: Prepared, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per target: the pool ids, their DSIR log weights (at ``cfg.target_pseudocount``) and the held-out counts, for
    widgets that vary k (from the pool: no training)."""
    out: dict[str, dict[str, Any]] = {}
    total = prepared.features.total_counts()
    for target in cfg.targets:
        if target in prepared.skipped_targets:
            continue
        split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
        dsir = prepared.dsir(cfg).fit(prepared.features, prepared.features.subset(split.fit), exclude=split.drawn())
        out[target] = {
            "pool": split.pool,
            "log_weights": dsir.log_weights()[split.pool],
            "eval_counts": prepared.features.total_counts(split.eval),
            "pool_counts": total - prepared.features.total_counts(split.drawn()),
        }
    return out
