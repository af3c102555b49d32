"""Sparse Model Soups' premise and claims as data, judged by :mod:`labkit.protocol` on the per-seed scores that
:mod:`.summary` builds from the computed tables.

**Premise** (judged first, on *validation* accuracy so the test split stays for the claims): the paper presupposes
that averaging the m retrained copies beats them, so *after every phase*, paired by seed, the uniform soup must beat
the mean of its own ingredients and the ingredient with the best validation accuracy (two premises per phase; their
score columns are :func:`phase_val`). The second is a strict reading: that ingredient's validation accuracy is the
maximum of m, so it carries the winner's optimism. While any premise is not held, every accuracy claim (group
``soup``) reads "premise not met" ("premise unconfirmed" while one is inconclusive); the sparsity claim is structural
(whether differently masked models keep their zeros) and is not governed by it.

**Claims** compare two arms at the final phase, paired by seed (IMP chain j, SWA cycle j and SMS ingredient j share
their retraining seeds), with a Student-t 95 % interval of the difference in percentage points (sparsity: in % of
weights). IMP, IMP m x and SWA run at the learning rate chosen on validation from the ingredients' grid. OOD
accuracy (``ood_acc``) is the mean over the corruption types of ``Config.ood``, each also judged on its own
(secondary); every OOD comparison with a baseline has a *control* beside it: the best single ingredient against the
same baseline. When the control gains as much as SMS, the gain cannot be credited to the last averaging: one
ingredient retrained from the previous phase's soup gets it too (the earlier phases' soups are behind both).
The comparison arms are fixed in advance; the "best ingredient" is chosen on validation, never on test. Claims with
a ``paper`` reference are the paper's statements (main: Holm-adjusted); the others are secondary. The paper's
numbers (CIFAR-10/100, ImageNet; Tables 1-2 of arXiv 2306.16788) are not transcribed in the notes, so the ``paper``
column names where the claim is made, not a number to match.

**Sanity** per arm: converged (the first seed rerun with every phase's retraining ``Config.budget_factor`` x longer
gains at most :data:`BUDGET_TOLERANCE_PP` of validation accuracy), healthy (within :data:`HEALTH_TOLERANCE_PP` of
the dense model of its seed on validation) and better than chance. The naive-average claims rest on IMP too: the
averaged chains are IMP chains (at the default lr), whose convergence IMP's rerun stands for; the re-pruned and
retrained average is not rerun (its health is checked). No claim rests on the dense model: it enters no score, only
the health check as its reference; its own rerun at 2x (pretraining) is shown in the sanity table, not propagated.
"""

from __future__ import annotations

import pandas as pd

from labkit import protocol
from labkit.experiments.sparse_soups.config import (
    BEST_INGREDIENT,
    CHANCE,
    DENSE,
    MEAN_INGREDIENT,
    NAIVE,
    REPRUNED,
    REPRUNED_RETRAINED,
    ood_metric,
)
from labkit.protocol import Claim

TOLERANCE_PP = 0.0  # any improvement counts: at this scale the claims are about the sign of the effect
# Convergence: a rerun at 2x budget may gain at most this much validation accuracy (pp). The claims' tolerance is 0,
# so this is the resolution of the measurement instead: one binomial standard error of a ~97 % accuracy on the 10 000
# validation images is 0.17 pp (rounded up to 0.2), the same resolution the v1 curve check used (0.002 relative);
# a single rerun's smaller gain cannot be told from the evaluation noise of one model.
BUDGET_TOLERANCE_PP = 0.2
# Health: a sparse arm may trail the dense model of its seed by at most this much validation accuracy (pp). It
# catches a broken or collapsed arm, not the price of pruning: at 99 % sparsity (1 % of the weights left) a point or
# two below dense is the expected cost (the cpu run: 1.1-1.7 pp), while 3 pp about triples the dense error (~1.5 %).
HEALTH_TOLERANCE_PP = 3.0
SOUP = "soup"  # the group of the premise and of the accuracy claims it governs
_PAPER = "Tables 1-2 (CIFAR-10/100, ImageNet)"
_SOUP_COMPUTE = "the soup averages the ingredients it is compared with"


def phase_val(phase: int) -> str:
    """The score column of the premise after ``phase``: validation accuracy of the uniform chain's soup, the mean of
    its ingredients and the ingredient best on validation, after that phase."""
    return f"val_acc_phase{phase}"


def premises(phases: int = 1) -> tuple[Claim, ...]:
    """What every accuracy claim presupposes: after each of ``phases`` phases the soup beats its own ingredients, on
    validation."""
    return tuple(
        Claim(f"{name}_phase{p}", f"{text} on validation after phase {p}", phase_val(p), "SMS uniform", baseline,
              lower_is_better=False, tolerance=TOLERANCE_PP, compute=_SOUP_COMPUTE,
              paper="premise: soups beat their ingredients (abstract, Fig. 1)", kind="premise", group=SOUP)
        for p in range(1, phases + 1)
        for name, text, baseline in (
            ("soup_beats_mean_ingredient_val", "the uniform soup beats the mean of its own ingredients",
             MEAN_INGREDIENT),
            ("soup_beats_best_ingredient_val", "the uniform soup beats its best ingredient (chosen on the same split)",
             BEST_INGREDIENT),
        )
    )


def claims(m: int = 4, phases: int = 1, ood: tuple[str, ...] = ()) -> tuple[Claim, ...]:
    """The premises of ``phases`` phases and the claims tested with ``m`` ingredients per phase (the equal-compute
    IMP arm: ``IMP {m}x``) and the OOD test sets ``ood`` (corruption specs, each judged on its own too)."""
    mx = f"IMP {m}x"
    equal = f"equal retraining per phase: {m} x the epochs of one IMP retrain; one sparse model at inference"
    more = f"SMS retrains {m} x more per phase than IMP; same final sparsity and inference cost"
    naive = "the naive average merges independent IMP chains at the default lr, each one IMP's compute"
    control = "control: one ingredient retrained from the previous phase's soup, no last averaging"

    def acc(name: str, text: str, metric: str, arm: str, baseline: str, compute: str, paper: str,
            rests_on: tuple[str, ...] = ()) -> Claim:
        return Claim(name, text, metric, arm, baseline, lower_is_better=False, tolerance=TOLERANCE_PP,
                     compute=compute, paper=paper, rests_on=rests_on, group=SOUP)

    def ood_pair(name: str, baseline: str, compute: str, paper: str, metric: str = "ood_acc",
                 what: str = "out of distribution (mean over corruptions)") -> tuple[Claim, Claim]:
        """An OOD claim of SMS over ``baseline`` and its control: the best single ingredient over the same baseline."""
        return (acc(name, f"SMS (uniform soup) beats {baseline} {what}", metric, "SMS uniform", baseline, compute,
                    paper),
                acc(f"control_{name.replace('sms_beats', 'best_ingredient_vs')}", f"control: the best ingredient "
                    f"(val) against {baseline} {what}", metric, BEST_INGREDIENT, baseline, control, ""))

    per_corruption = tuple(c for spec in ood for c in ood_pair(
        f"sms_beats_imp_mx_ood[{spec}]", mx, equal, "", ood_metric(spec), f"on the OOD test set {spec}"))
    return premises(phases) + (
        acc("sms_beats_imp", "SMS (uniform soup) is more accurate than IMP at the same sparsity", "test_acc",
            "SMS uniform", "IMP", more, f"SMS > IMP, {_PAPER}"),
        *ood_pair("sms_beats_imp_ood", "IMP", more, "SMS > IMP on CIFAR-C / ImageNet-C"),
        acc("sms_beats_imp_mx", f"SMS beats IMP retrained {m} x longer (equal compute)", "test_acc", "SMS uniform",
            mx, equal, f"SMS > IMP m x, {_PAPER}"),
        *ood_pair("sms_beats_imp_mx_ood", mx, equal, "SMS > IMP m x on CIFAR-C / ImageNet-C"),
        acc("greedy_beats_imp", "SMS with a greedy soup (its own chain) beats IMP", "test_acc", "SMS greedy", "IMP",
            more, f"greedy SMS > IMP, {_PAPER}"),
        acc("greedy_beats_imp_mx", f"SMS with a greedy soup beats IMP retrained {m} x longer", "test_acc",
            "SMS greedy", mx, equal, f"greedy SMS > IMP m x, {_PAPER}"),
        acc("soup_beats_best_ingredient", "the soup beats its best ingredient (chosen on validation)", "test_acc",
            "SMS uniform", BEST_INGREDIENT, _SOUP_COMPUTE, "soup > ingredients (Fig. 1, Tables 1-2)"),
        acc("soup_beats_best_ingredient_ood", "the soup beats its best ingredient out of distribution (mean over "
            "corruptions)", "ood_acc", "SMS uniform", BEST_INGREDIENT, _SOUP_COMPUTE, "soup > ingredients OOD"),
        acc("sms_beats_swa", "SMS beats SWA along one retraining run (averaged cycle ends, equal compute; not in "
            "the paper: the baseline an OpenReview reviewer asked for)", "test_acc", "SMS uniform", "SWA", equal, ""),
        Claim("naive_average_loses_sparsity", "averaging differently pruned models loses sparsity (SMS soups keep it)",
              "sparsity_pct", "SMS uniform", NAIVE, lower_is_better=False, tolerance=TOLERANCE_PP, compute=naive,
              paper="motivation (abstract): averaging sparse models with different connectivities reduces sparsity",
              rests_on=("IMP",), group="masks"),
        acc("repruned_average_loses_accuracy", "averaging then re-pruning to the goal and retraining as long as one "
            "SMS phase is worse than SMS (not a paper claim: the prune-after-averaging alternative)", "test_acc",
            "SMS uniform", REPRUNED_RETRAINED, f"{naive}; then {m} x one IMP retrain", "", rests_on=("IMP",)),
        *per_corruption,
    )


def per_seed_scores(final: pd.DataFrame, dense: pd.DataFrame, chance_acc: float) -> pd.DataFrame:
    """The final table (one row per arm and seed) plus sparsity in %, the dense model of each seed (``dense``: seed,
    sparsity, test_acc, ood_acc, val_acc) and a chance row per seed (``chance_acc``, the majority-class accuracy on
    test, which OOD shares: the corruption keeps the labels)."""
    for table, what in ((final, "final"), (dense, "dense")):
        for col in ("seed", "sparsity", "test_acc", "ood_acc", "val_acc"):
            if col not in table.columns:
                raise KeyError(f"per_seed_scores: column {col!r} missing from the {what} table; it has "
                               f"{list(table.columns)}")
    rows = pd.concat([final, dense.assign(arm=DENSE)], ignore_index=True)
    scores = rows.assign(sparsity_pct=100 * rows["sparsity"])
    chance = pd.DataFrame({"seed": sorted(set(final["seed"])), "arm": CHANCE, "test_acc": chance_acc,
                           "ood_acc": chance_acc})
    return pd.concat([scores, chance], ignore_index=True)


def budget_table(scores: pd.DataFrame, longer: pd.DataFrame) -> pd.DataFrame:
    """Rows (arm, seed, budget, val_acc) for :func:`labkit.protocol.budget_check`: each rerun of ``longer`` (arm,
    seed, budget, val_acc) beside the same arm and seed at the report's budget (1) from ``scores``."""
    short = scores.merge(longer[["arm", "seed"]], on=["arm", "seed"])[["arm", "seed", "val_acc"]]
    return pd.concat([short.assign(budget=1.0), longer[["arm", "seed", "budget", "val_acc"]]], ignore_index=True)


def health_arms(scores: pd.DataFrame) -> pd.DataFrame:
    """The trained sparse arms whose health is checked: every arm but the dense reference, chance and the naive
    averages without retraining (baselines built to show what merging differently masked models loses, so their loss
    is the claim); the re-pruned and retrained average is a trained baseline and is checked."""
    return scores[~scores["arm"].isin([DENSE, CHANCE, NAIVE, REPRUNED])]


def verdicts(
    scores: pd.DataFrame, longer: pd.DataFrame, m: int = 4, phases: int = 1, ood: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The claims table (premises first; every claim of :func:`claims` whose arms ran), the per-arm sanity table, the
    budget check (``longer``: the reruns at a longer budget, see :func:`budget_table`) and the health check."""
    budget = protocol.budget_check(budget_table(scores, longer), "val_acc", BUDGET_TOLERANCE_PP,
                                   lower_is_better=False)
    dense = scores[scores["arm"] == DENSE].set_index("seed")["val_acc"]
    health = protocol.health(health_arms(scores), "val_acc", dense, HEALTH_TOLERANCE_PP, lower_is_better=False,
                             what=DENSE)
    checks = protocol.sanity(scores, "test_acc", trivial=CHANCE, budget=budget, healthy=health,
                             lower_is_better=False)
    arms = set(scores["arm"])
    ran = [c for c in claims(m, phases, ood) if {c.arm, c.baseline} <= arms and c.metric in scores.columns]
    return protocol.claims_table([protocol.judge(c, scores, checks) for c in ran]), checks, budget, health
