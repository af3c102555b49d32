"""Sparse Model Soups judged from its computed tables: the rows chosen on validation (each phase's best ingredient,
the mean of the ingredients, the greedy soup of the uniform chain; the baselines' learning rates, chosen in
``compute``), the invariants, the per-seed scores, the per-phase premises and the claims with their sanity checks, and
the readings the notebook shows (verdict text, headline metrics).

Nothing here trains: :func:`judge` is a function of ``compute``'s tables, so a stored report is judged again in
seconds (``Experiment.load``) and a change here never retrains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from labkit import protocol, selection
from labkit.experiments import Computed, Results
from labkit.experiments.sparse_soups import claims
from labkit.experiments.sparse_soups.config import (
    BEST_INGREDIENT,
    DENSE,
    GREEDY_OF_UNIFORM,
    INGREDIENT,
    MEAN_INGREDIENT,
    Config,
    trained_arms,
)

KEYS = ("seed", "arm", "chain", "phase", "member", "budget")  # what identifies a row; every other column is a score


def _best_member(ingredients: pd.DataFrame) -> int:
    """The ingredient of one seed with the best validation accuracy (first on a tie): chosen on validation only."""
    val = pd.DataFrame({"member": ingredients["member"].to_numpy(), "split": selection.VALIDATION,
                        "acc": ingredients["val_acc"].to_numpy()})
    return int(selection.select_best(val, "member", "acc", lower_is_better=False)["member"])


def with_ingredients(cfg: Config, final: pd.DataFrame, last: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, int]]:
    """``final`` with, after each seed's ``SMS uniform`` row, the rows read off the uniform chain's last phase
    ``last`` (its ingredients and greedy soup, one row each): the greedy soup when it has no chain of its own, the
    mean of the ingredients and the ingredient with the best validation accuracy; and that ingredient per seed.

    A derived row copies the uniform soup's row (seed, budget) and takes the metrics ``last`` has: all of them for the
    report's runs, validation accuracy only for the budget check's reruns (the ``longer`` table)."""
    metrics = [c for c in final.columns if c in last.columns and c not in KEYS]
    derived: dict[int, list[dict[str, Any]]] = {}
    best: dict[int, int] = {}
    for seed, rows in last.groupby("seed", sort=False):
        ing = rows[rows["arm"] == INGREDIENT]
        best[int(seed)] = _best_member(ing)
        chosen = ing[ing["member"] == best[int(seed)]].iloc[0]
        greedy = [] if cfg.greedy_chain else [{"arm": GREEDY_OF_UNIFORM, **r[metrics].to_dict()}
                                              for _, r in rows[rows["arm"] == GREEDY_OF_UNIFORM].iterrows()]
        mean = {"arm": MEAN_INGREDIENT, **{k: float(np.mean(ing[k].to_numpy())) for k in metrics}}
        derived[int(seed)] = [*greedy, mean, {"arm": BEST_INGREDIENT, **chosen[metrics].to_dict()}]
    out = []
    for row in final.to_dict("records"):
        out.append(row)
        if row["arm"] == "SMS uniform":
            out += [{**row, **d} for d in derived.get(int(row["seed"]), [])]
    return pd.DataFrame(out, columns=final.columns), best


def phase_premise_scores(phases: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the rows the per-phase premises are judged on: the uniform chain's soup, the mean of its ingredients
    and the ingredient best on validation (chosen per phase), each with its validation accuracy after every phase in
    the columns :func:`claims.phase_val`."""
    chain = phases[phases["chain"] == "SMS uniform"]
    wide: dict[tuple[int, str], dict[str, float]] = {}
    for (seed, phase), rows in chain.groupby(["seed", "phase"], sort=True):
        ing = rows[rows["arm"] == INGREDIENT]
        best = ing[ing["member"] == _best_member(ing)]
        for arm, val in (("SMS uniform", rows[rows["arm"] == "SMS uniform"]["val_acc"]), (MEAN_INGREDIENT,
                         ing["val_acc"].mean()), (BEST_INGREDIENT, best["val_acc"])):
            wide.setdefault((int(seed), arm), {})[claims.phase_val(int(phase))] = float(np.mean(val))
    return pd.DataFrame([{"seed": seed, "arm": arm, **cols} for (seed, arm), cols in wide.items()])


EDGES = ("lowest", "highest")  # where a chosen lr sits at its grid's edge (lr_choice's "grid edge" column)


def lr_choice(tuning: pd.DataFrame) -> pd.DataFrame:
    """Per tuned baseline and learning rate: mean validation and test accuracy over seeds, whether it was chosen (on
    validation, in ``compute``) and whether that lr is the grid's lowest or highest (a choice at an edge says the
    grid may not hold the baseline's best lr): the record of the tuning."""
    table = tuning.groupby(["arm", "lr"], sort=False).agg(val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean"),
                                                          chosen=("chosen", "all")).reset_index()
    grid = table.groupby("arm", sort=False)["lr"]
    wide = grid.transform("nunique") > 1  # a one-lr grid has no edge to move past
    table["grid edge"] = np.select([wide & (table["lr"] == grid.transform("min")),
                                    wide & (table["lr"] == grid.transform("max"))], list(EDGES), "")
    return table


def lr_notes(choice: pd.DataFrame) -> list[str]:
    """One line per tuned baseline of :func:`lr_choice`: the lr chosen on validation, and where it is a grid edge."""
    return [f"{r['arm']}: lr {r['lr']:.3g} chosen on validation"
            + (f" (the grid's {r['grid edge']}; a wider grid might move it)" if r["grid edge"] in EDGES else "")
            for r in choice[choice["chosen"]].to_dict("records")]


def withheld(claims_table: pd.DataFrame) -> pd.DataFrame:
    """The claims whose interval alone was decided (held or not held) but whose final verdict is not: what a governing
    premise left unconfirmed, a sanity flag or the Holm adjustment keeps out of the verdict."""
    decided = claims_table["interval verdict"].isin(["held", "not held"])
    return claims_table.loc[decided & (claims_table["verdict"] != claims_table["interval verdict"]),
                            ["claim", "effect", "interval verdict", "raw verdict", "verdict", "sanity"]]


BEST_INGREDIENT_CONTROLS = ("soup_beats_best_ingredient", "soup_beats_best_ingredient_ood")


def best_ingredient_controls(recorded: pd.DataFrame) -> pd.DataFrame:
    """Per run of ``labkit.explorations.recorded_claims``, the soup against its best ingredient chosen on validation,
    on test and on the OOD mean, by interval: what the validation premise cannot show without bias, its best
    ingredient being the maximum on the split that judges it."""
    return recorded.loc[recorded["claim"].isin(BEST_INGREDIENT_CONTROLS),
                        ["exploration", "point", "claim", "mean", "low", "high", "n", "interval verdict", "sanity"]]


def selection_table(last: pd.DataFrame, best: dict[int, int]) -> pd.DataFrame:
    """The last phase's ingredients on validation and test and which one was selected (on validation)."""
    ing = last[last["arm"] == INGREDIENT]
    rows = [{"seed": r.seed, "member": r.member, "split": split, "acc": getattr(r, col),
             "selected": r.member == best[int(r.seed)]}
            for r in ing.itertuples() for split, col in (("val", "val_acc"), ("test", "test_acc"))]
    return pd.DataFrame(rows)


def convergence_curves(val_curves: pd.DataFrame, best: dict[int, int]) -> pd.DataFrame:
    """The last phase's validation curves per arm, with the mean ingredient (the uniform chain's ingredients) and the
    selected ingredient's curve after each seed's uniform soup."""
    parts = []
    for (arm, seed), block in val_curves.groupby(["arm", "seed"], sort=False):
        parts.append(block)
        if arm == "SMS uniform":
            parts.append(block.assign(arm=MEAN_INGREDIENT))
            chosen = block[block["member"] == best[int(seed)]] if (block["member"] >= 0).any() else block
            parts.append(chosen.assign(arm=BEST_INGREDIENT, member=-1))
    return pd.concat(parts, ignore_index=True)


def _sorted_final(cfg: Config, final: pd.DataFrame) -> pd.DataFrame:
    """One row per seed x arm, by seed, the trained arms first (IMP, SWA, IMP m x, SMS greedy, SMS uniform), then the
    others in the order their jobs made them."""
    order = {a: i for i, a in enumerate(trained_arms(cfg)[::-1])}
    key = final["arm"].map(order).fillna(len(order))
    return final.iloc[np.lexsort((key, final["seed"]))].reset_index(drop=True)


def invariants(cfg: Config, final: pd.DataFrame, soups: pd.DataFrame) -> dict[str, bool]:
    """The run's sanity assertions: exact final sparsity of the chains, one shared mask before every soup. Raises
    AssertionError naming the ones that failed (the run is broken, not a finding)."""
    exact = final[final["arm"].isin(["IMP", "SMS uniform", "SMS greedy", GREEDY_OF_UNIFORM, "SWA", f"IMP {cfg.m}x"])]
    checks = {
        "final sparsity equals goal (1e-4) for IMP, SWA and SMS": bool(
            (exact["sparsity"] - cfg.goal_sparsity).abs().max() < 1e-4
        ),
        "ingredients share one mask before every soup": bool(soups["masks_identical"].all()),
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise AssertionError(f"sanity checks failed: {failed}")
    return checks


def judge(cfg: Config, computed: Computed) -> Results:
    """The full Results from the computed tables: ``final`` (``trained`` plus the ingredient rows chosen on
    validation), ``selection``, ``convergence_curves``, ``scores`` (what claims are judged on, the per-phase premise
    columns included), ``claims``, ``sanity``, ``budget``, ``health`` and ``lr_choice``; the invariants as the
    artefact ``checks``."""
    t = computed.tables
    phases = t["phases"]
    last = phases[(phases["chain"] == "SMS uniform") & (phases["phase"] == cfg.phases)
                  & phases["arm"].isin([INGREDIENT, GREEDY_OF_UNIFORM])]
    final, best = with_ingredients(cfg, t["trained"], last)
    final = _sorted_final(cfg, final)
    checks = invariants(cfg, final, t["soups"])
    reruns = t["longer"]
    long_last = reruns[reruns["arm"].isin([INGREDIENT, GREEDY_OF_UNIFORM])]
    long_final, _ = with_ingredients(cfg, reruns[~reruns.index.isin(long_last.index)], long_last)
    dense = phases[phases["chain"] == DENSE][["seed", "sparsity", "test_acc", "ood_acc", "ece", "val_acc"]]
    scores = claims.per_seed_scores(final, dense, float(t["trivial"]["test_acc"].iloc[0]))
    scores = scores.merge(phase_premise_scores(phases), on=["seed", "arm"], how="left")
    table, sanity, budget, health = claims.verdicts(scores, long_final.drop(columns="member"), cfg.m, cfg.phases,
                                                    cfg.ood)
    judged = {"final": final, "selection": selection_table(last, best),
              "convergence_curves": convergence_curves(t["val_curves"], best), "scores": scores, "claims": table,
              "sanity": sanity, "budget": budget, "health": health, "lr_choice": lr_choice(t["tuning"])}
    return Results(cfg, {**t, **judged}, computed, {"checks": checks})


def verdict_text(results: Results) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, the premises then every claim with its
    role, effect (percentage points), interval, n and verdict (and raw verdict where it differs), the sanity flags,
    then each tuned baseline's chosen lr (:func:`lr_notes`)."""
    budget, health = claims.BUDGET_TOLERANCE_PP, claims.HEALTH_TOLERANCE_PP
    ok = (f"every trained arm converged (gained at most {budget:g} pp of validation accuracy at a longer budget), "
          f"stayed within {health:g} pp of its dense model and beat chance")
    return protocol.verdict_text(results.claims, results.sanity, ok, " pp", lr_notes(results.lr_choice))


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per arm test/OOD accuracy and sparsity, the naive average's mask overlap, each
    premise's and claim's effect."""
    final = results.final.groupby("arm", sort=False).mean(numeric_only=True)
    out = {}
    for arm in final.index:
        key = arm.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        for col in ("test_acc", "ood_acc", "sparsity"):
            out[f"{key}_{col}"] = float(final.loc[arm, col])
    if len(results.naive):
        out["naive_average_sparsity"] = float(results.naive.naive_sparsity.mean())
        out["imp_mask_iou"] = float(results.naive.mean_mask_iou.mean())
    out |= {f"claim_{r.claim}": float(r.mean) for r in results.claims.itertuples()}
    return out

