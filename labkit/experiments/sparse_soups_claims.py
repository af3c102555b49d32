"""Sparse Model Soups' claims as data, judged by :mod:`labkit.protocol` on the per-seed results of
:func:`labkit.experiments.sparse_soups.run`.

Every claim compares two arms at the final phase, paired by seed (IMP chain j, SWA cycle j and SMS ingredient j
share their retraining seeds), with a Student-t 95 % interval of the difference in percentage points (sparsity: in
% of weights). The comparison arms are fixed in advance; the "best ingredient" is chosen on validation, never on test.
The paper's numbers (CIFAR-10/100, ImageNet; Tables 1–2 of arXiv 2306.16788) are not transcribed in the notes, so the
``paper`` column names where the claim is made, not a number to match.
"""

from __future__ import annotations

import pandas as pd

from labkit import protocol
from labkit.protocol import Claim

CHANCE = "chance (majority class)"  # the trivial baseline of the sanity check: the test set's most frequent label
BEST_INGREDIENT = "best ingredient (val)"  # the last phase's ingredient with the best validation accuracy
NAIVE = "naive average (different masks)"
REPRUNED = "naive average re-pruned"
TOLERANCE_PP = 0.0  # any improvement counts: at this scale the claims are about the sign of the effect
_PAPER = "Tables 1-2 (CIFAR-10/100, ImageNet)"


def claims(m: int = 4) -> tuple[Claim, ...]:
    """The claims tested with ``m`` ingredients per phase (the equal-compute IMP arm is named ``IMP {m}x``)."""
    mx = f"IMP {m}x"
    equal = f"equal retraining per phase: {m} x the epochs of one IMP retrain; one sparse model at inference"
    more = f"SMS retrains {m} x more per phase than IMP; same final sparsity and inference cost"

    def acc(name: str, text: str, metric: str, arm: str, baseline: str, compute: str, paper: str) -> Claim:
        return Claim(name, text, metric, arm, baseline, lower_is_better=False, tolerance=TOLERANCE_PP,
                     compute=compute, paper=paper)

    return (
        acc("sms_beats_imp", "SMS (uniform soup) is more accurate than IMP at the same sparsity", "test_acc",
            "SMS uniform", "IMP", more, f"SMS > IMP, {_PAPER}"),
        acc("sms_beats_imp_ood", "SMS (uniform soup) is more accurate than IMP out of distribution", "ood_acc",
            "SMS uniform", "IMP", more, "SMS > IMP on CIFAR-C / ImageNet-C"),
        acc("sms_beats_imp_mx", f"SMS beats IMP retrained {m} x longer (equal compute)", "test_acc", "SMS uniform",
            mx, equal, f"SMS > IMP m x, {_PAPER}"),
        acc("sms_beats_imp_mx_ood", f"SMS beats IMP retrained {m} x longer out of distribution", "ood_acc",
            "SMS uniform", mx, equal, "SMS > IMP m x on CIFAR-C / ImageNet-C"),
        acc("greedy_beats_imp", "SMS with a greedy soup (its own chain) beats IMP", "test_acc", "SMS greedy", "IMP",
            more, f"greedy SMS > IMP, {_PAPER}"),
        acc("greedy_beats_imp_mx", f"SMS with a greedy soup beats IMP retrained {m} x longer", "test_acc",
            "SMS greedy", mx, equal, f"greedy SMS > IMP m x, {_PAPER}"),
        acc("soup_beats_best_ingredient", "the soup beats its best ingredient (chosen on validation)", "test_acc",
            "SMS uniform", BEST_INGREDIENT, "the soup averages the ingredients it is compared with",
            "soup > ingredients (Fig. 1, Tables 1-2)"),
        acc("soup_beats_best_ingredient_ood", "the soup beats its best ingredient out of distribution", "ood_acc",
            "SMS uniform", BEST_INGREDIENT, "the soup averages the ingredients it is compared with",
            "soup > ingredients OOD"),
        acc("sms_beats_swa", "SMS beats SWA along one retraining run (averaged cycle ends, equal compute)",
            "test_acc", "SMS uniform", "SWA", equal, "not in the paper: an OpenReview reviewer's requested baseline"),
        Claim("naive_average_loses_sparsity", "averaging differently pruned models loses sparsity (SMS soups keep it)",
              "sparsity_pct", "SMS uniform", NAIVE, lower_is_better=False, tolerance=TOLERANCE_PP,
              compute="the naive average merges independent IMP chains, each one IMP's compute",
              paper="motivation (Sec. 1, 3): masks of different runs differ"),
        acc("repruned_average_loses_accuracy", "re-pruning the naive average to the goal (no retraining) is worse "
            "than SMS", "test_acc", "SMS uniform", REPRUNED, "the naive average merges independent IMP chains",
            "averaged-then-re-pruned baselines (from memory, unverified)"),
    )


CLAIMS = claims()


def per_seed_scores(final: pd.DataFrame, chance_acc: float) -> pd.DataFrame:
    """The final table (one row per arm and seed) plus sparsity in % and a chance row per seed (``chance_acc``,
    the majority-class accuracy on test, which OOD shares: the corruption keeps the labels)."""
    for col in ("seed", "arm", "sparsity", "test_acc", "ood_acc"):
        if col not in final.columns:
            raise KeyError(f"per_seed_scores: column {col!r} missing from the final table; it has "
                           f"{list(final.columns)}")
    scores = final.assign(sparsity_pct=100 * final["sparsity"])
    chance = pd.DataFrame({"seed": sorted(set(final["seed"])), "arm": CHANCE, "test_acc": chance_acc,
                           "ood_acc": chance_acc})
    return pd.concat([scores, chance], ignore_index=True)


def validation_curves(val_curves: pd.DataFrame) -> dict[tuple[str, int], list[float]]:
    """(arm, seed) -> the last phase's validation-accuracy curve (mean over members: an SMS arm's ingredients)."""
    curves = {}
    mean = val_curves.groupby(["arm", "seed", "point"], sort=False)["val_acc"].mean().reset_index()
    for (arm, seed), group in mean.groupby(["arm", "seed"], sort=False):
        if len(group) >= 2:
            curves[(arm, int(seed))] = group.sort_values("point")["val_acc"].tolist()
    return curves


def verdicts(
    scores: pd.DataFrame, val_curves: pd.DataFrame, m: int = 4, plateau_tol: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (every claim whose arms ran) and the per-arm sanity table (converged, beats chance).

    ``plateau_tol``: relative gain of validation accuracy that counts as an improvement in the convergence check.
    """
    checks = protocol.sanity(scores, "test_acc", trivial=CHANCE, curves=validation_curves(val_curves),
                             lower_is_better=False, rel_tol=plateau_tol)
    arms = set(scores["arm"])
    ran = [c for c in claims(m) if {c.arm, c.baseline} <= arms and c.metric in scores.columns]
    return protocol.claims_table([protocol.judge(c, scores, checks) for c in ran]), checks
