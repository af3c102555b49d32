"""Compute saved at a quality level and the choices made on validation: what the runs need to freeze each role's
configuration before testing it, and what the judgement reads again from the stored validation rows.

"Compute saved at 90 %" is the official ``collect_results.py`` statistic (largest saving whose quality stays within
90 % of a reference, linear interpolation); here it is taken against the dense fine-tune of the same seed, which a
damaged model cannot flatter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from labkit import selection
from labkit.experiments.gateskip.arms.grid import CONTROL, STATIC, Spec
from labkit.experiments.gateskip.config import GATE_SHIFT_TOLERANCE, HEALTH_TOLERANCE_PCT


def quality_column(task: str) -> str:
    """The headline quality of a task: sequence exact match (cumsum), accuracy (dictmc) or bits per byte (text, lower
    is better)."""
    return {"cumsum": "seq_em", "dictmc": "accuracy"}.get(task, "bpb")


def _saved_at(xs: np.ndarray, ys: np.ndarray, threshold: float, higher_is_better: bool) -> float:
    """Largest saved fraction before quality first falls below ``threshold`` (linear interpolation)."""
    ok = ys >= threshold if higher_is_better else ys <= threshold
    if not ok[0]:
        return 0.0
    for i in range(1, len(xs)):
        if not ok[i]:
            y0, y1 = ys[i - 1], ys[i]
            t = (threshold - y0) / (y1 - y0) if y1 != y0 else 0.0
            return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))
    return float(xs[-1])


def _keys(curves: pd.DataFrame) -> list[str]:
    return [c for c in ("task", "split", "seed", "arm", "config", "scope") if c in curves.columns]


def saved_at_quality(
    curves: pd.DataFrame, metric: str, x: str = "skipped_fraction", fraction: float = 0.9, reference: str = "dense"
) -> pd.DataFrame:
    """Compute saved while keeping ``fraction`` of the quality, per task x (split) x seed x arm (x config, scope).

    ``reference="own"``: relative to the arm's own 0 % point (the paper's; flatters a damaged model);
    ``"dense"``: relative to the single dense row of the same task, split and seed. Bits per byte (lower is
    better): within 1/fraction of the reference. Also returns ``area``: mean quality relative to the reference.
    """
    if reference not in ("own", "dense"):
        raise ValueError(f"reference must be 'own' or 'dense', got {reference!r}")
    higher = metric != "bpb"
    keys = _keys(curves)
    base = [k for k in ("task", "split", "seed") if k in keys]
    dense = curves[curves.arm == "dense"]
    counts = dense.groupby(base).size()
    if reference == "dense" and (counts > 1).any():
        raise ValueError(f"saved_at_quality needs one dense row per {base}; found {int(counts.max())}: filter first")
    refs = dense.set_index(base)[metric]
    out = []
    for key, group in curves[curves.arm != "dense"].dropna(subset=[metric]).groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        group = group.groupby(x, as_index=False)[metric].mean().sort_values(x)
        xs, ys = group[x].to_numpy(), group[metric].to_numpy()
        if reference == "own":
            ref = ys[0]
        else:
            at = tuple(row[k] for k in base)
            if at not in refs.index:
                raise ValueError(f"no dense row for {dict(zip(base, at, strict=True))} to take {metric} from")
            ref = float(refs.loc[at])
        threshold = fraction * ref if higher else ref / fraction
        rel = (ys / ref if ref > 0 else ys) if higher else ref / ys
        out.append(
            {
                **row,
                "reference": reference,
                "x": x,
                "level": fraction,
                "saved": _saved_at(xs, ys, threshold, higher),
                "area": float(np.mean(rel)),
            }
        )
    return pd.DataFrame(out)


def choose(val: pd.DataFrame, level: float = 0.9) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each role's configuration, chosen on the validation rows ``val`` only (:func:`labkit.selection.select_best`),
    and the table of every configuration run there.

    Dense: best full-compute quality. GateSkip, random skip, ShortGPT and ULS (the last two each choose the dense
    fine-tune they act on): most compute saved at ``level`` of the chosen dense model's quality (token x branch), exact
    ties (all at 0 %, or all at the largest budget) broken by the mean relative quality over budgets. Returns
    ``chosen`` (task, role, config, spec (a :class:`Spec`), val_score: its mean validation quality or saved fraction)
    and ``table`` (per task x arm x config, means over tuning seeds: quality at r = 0, saved at ``level`` in %, and
    whether the role chose it).
    """
    if set(val["split"]) != {"val"}:
        raise ValueError(f"choose() takes validation rows only; got splits {sorted(set(val['split']))}")
    rows, table = [], []
    for task, sub in val.groupby("task", sort=False):
        metric = quality_column(task)
        dense = sub[sub.arm == "dense"][["config", "seed", metric, "split"]]
        best = selection.select_best(dense, "config", metric, lower_is_better=metric == "bpb")["config"]
        picks = {"dense": _chosen(task, "dense", best, sub, dense.groupby("config")[metric].mean()[best])}
        saved = saved_at_quality(sub[(sub.arm != "dense") | (sub.config == best)], metric, fraction=level)
        for role in ("gateskip", "random_skip", *STATIC):
            candidates = saved[saved.arm == role]
            if candidates.empty:
                raise ValueError(f"no validation rows of {role!r} for task {task!r} to choose from")
            means = candidates.groupby("config").saved.mean()
            tied = candidates[candidates.config.isin(means[means == means.max()].index)]
            pick = selection.select_best(tied, "config", "area", lower_is_better=False)["config"]
            picks[role] = _chosen(task, role, pick, sub[sub.arm == role], means[pick])
        rows += picks.values()
        mean_saved = saved.groupby(["arm", "config"], sort=False).saved.mean()
        full = sub[sub.budget == 0].groupby(["arm", "config"], sort=False)[metric].mean()
        table += [
            {
                "task": task,
                "arm": arm,
                "config": config,
                "metric": metric,
                "quality at r=0": quality,
                f"saved at {level:.0%} (%)": 100 * mean_saved.get((arm, config), 0.0),
                "chosen": "yes" if arm in picks and picks[arm]["config"] == config else "",
            }
            for (arm, config), quality in full.items()
        ]
    return pd.DataFrame(rows), pd.DataFrame(table)


def stage1_choice(curves: pd.DataFrame, gates: pd.DataFrame, budget: float) -> pd.DataFrame:
    """Stage 1's choice on a pretrained LLM: every configuration x stop scored on the choosing half of the text
    validation windows, and the one chosen: the largest edge of the learned over the random ranking at ``budget``
    (random minus learned bits per byte) among those whose gates moved more than :data:`GATE_SHIFT_TOLERANCE` and
    that stay within :data:`HEALTH_TOLERANCE_PCT` % of the pretrained LM at full compute (failing that, among those
    that moved; failing that, among all: the premises then fail). Columns: config, steps, gate_shift, bpb at r=0,
    learned, random, edge, moved, healthy, chosen."""
    sel = curves[(curves.half == "select") & (curves.task == "text")]
    keys = ["config", "steps"]
    shift = gates[gates.half == "select"].groupby(keys, sort=False).gate_shift.mean()
    trained = sel[sel.arm.isin(["gateskip", CONTROL])]
    full = trained[(trained.arm == "gateskip") & (trained.budget == 0)].groupby(keys, sort=False).bpb.mean()
    at = trained[trained.budget == budget].groupby([*keys, "arm"], sort=False).bpb.mean().unstack("arm")
    table = pd.DataFrame({"gate_shift": shift, "bpb at r=0": full, "learned": at["gateskip"], "random": at[CONTROL]})
    table["edge"] = table.random - table.learned
    table["moved"] = table.gate_shift > GATE_SHIFT_TOLERANCE
    table["healthy"] = table["bpb at r=0"] <= sel[sel.arm == "dense"].bpb.mean() * (1 + HEALTH_TOLERANCE_PCT / 100)
    eligible = table.moved & table.healthy
    pool = table[eligible] if eligible.any() else table[table.moved] if table.moved.any() else table
    table["chosen"] = table.index == pool.edge.idxmax()
    return table.reset_index()


def stage2_blockers(chosen: pd.Series) -> list[str]:
    """Why stage 2 may not run on stage 1's chosen row of :func:`stage1_choice` (empty: it may): on the choosing half
    its gates must have moved, it must stay healthy and its ranking must beat random ranking; else the premises cannot
    hold and stage 2 would spend its budget proving so."""
    checks = {"its gates did not move": chosen.moved, "it is not healthy at full compute": chosen.healthy,
              "its ranking does not beat random ranking": chosen.edge > 0}
    return [reason for reason, ok in checks.items() if not ok]


def _chosen(task: str, role: str, config: str, rows: pd.DataFrame, score: float) -> dict[str, Any]:
    first = rows[rows.config == config].iloc[0]
    spec = Spec(
        first.family, first.finetune_lr, first.gate_lr, first.sparsity_weight, first.train_skip_end, int(first.steps)
    )
    return {"task": task, "role": role, "config": config, "spec": spec, "val_score": float(score)}
