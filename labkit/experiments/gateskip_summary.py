"""GateSkip summaries (Laitenberger et al., arXiv 2510.13876): compute saved at a quality level, quality at equal
compute saved, and the verdict of a run, over the tidy curves of :func:`labkit.experiments.gateskip.run`.

"Compute saved at 90 %" is the official ``collect_results.py`` statistic (largest saving whose quality stays within
90 % of a reference, linear interpolation); here it is also taken against the dense fine-tune, which a damaged model
cannot flatter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def quality_column(task: str) -> str:
    """The headline quality of a task: sequence exact match (cumsum) or bits per byte (text, lower is better)."""
    return "seq_em" if task == "cumsum" else "bpb"


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


def saved_at_quality(
    curves: pd.DataFrame, metric: str, x: str = "skipped_fraction", fraction: float = 0.9, reference: str = "dense"
) -> pd.DataFrame:
    """Compute saved while keeping ``fraction`` of the quality, per task x seed x arm (the official statistic).

    ``reference="own"``: relative to the arm's own 0 % point (the paper's; flatters a damaged model);
    ``"dense"``: relative to the dense fine-tune of the same seed. Bits per byte: within 1/fraction of the reference.
    """
    if reference not in ("own", "dense"):
        raise ValueError(f"reference must be 'own' or 'dense', got {reference!r}")
    higher = metric != "bpb"
    out = []
    data = curves[curves.arm != "dense"].dropna(subset=[metric])
    for (task, seed, arm), group in data.groupby(["task", "seed", "arm"], sort=False):
        group = group.groupby(x, as_index=False)[metric].mean().sort_values(x)
        xs, ys = group[x].to_numpy(), group[metric].to_numpy()
        if reference == "own":
            ref = ys[0]
        else:
            ref = curves[(curves.task == task) & (curves.seed == seed) & (curves.arm == "dense")][metric].iloc[0]
        threshold = fraction * ref if higher else ref / fraction
        out.append(
            {
                "task": task,
                "seed": seed,
                "arm": arm,
                "reference": reference,
                "x": x,
                "saved": _saved_at(xs, ys, threshold, higher),
            }
        )
    return pd.DataFrame(out)


def quality_at(curves: pd.DataFrame, metric: str, at: float, x: str = "skipped_fraction") -> pd.DataFrame:
    """Quality of every arm interpolated at a common saved fraction ``at`` (per task x seed x arm)."""
    out = []
    for (task, seed, arm), group in curves[curves.arm != "dense"].groupby(["task", "seed", "arm"], sort=False):
        group = group.groupby(x, as_index=False)[metric].mean().sort_values(x)
        if group[x].max() < at:
            continue
        out.append(
            {"task": task, "seed": seed, "arm": arm, "at": at, metric: float(np.interp(at, group[x], group[metric]))}
        )
    return pd.DataFrame(out)


def verdict(curves: pd.DataFrame, task: str = "cumsum") -> dict[str, Any]:
    """Did learned gates keep more quality than random and static skipping at equal compute saved?

    Compares "saved at 90 % of the dense model's quality" of the first GateSkip arm (first λ) with each baseline,
    seed by seed; returns the numbers and a one-line statement.
    """
    metric = quality_column(task)
    sub = curves[curves.task == task]
    saved = saved_at_quality(sub, metric, reference="dense")
    gate_arms = [a for a in dict.fromkeys(sub.arm) if a.startswith("gateskip") and "random" not in a]
    head = gate_arms[0]
    pivot = saved.pivot(index="seed", columns="arm", values="saved")
    baselines = [a for a in ("random_skip", "shortgpt", "uls", f"{head} + random rank") if a in pivot]
    wins = {b: int((pivot[head] > pivot[b]).sum()) for b in baselines}
    means = pivot.mean().to_dict()
    held = all(means[head] > means[b] for b in baselines) and all(w * 2 > len(pivot) for w in wins.values())
    parts = [f"{b} {means[b]:.1%} (GateSkip ahead on {wins[b]}/{len(pivot)} seeds)" for b in baselines]
    text = (
        f"{'HELD' if held else 'DID NOT HOLD'} on {task}: compute saved at 90 % of dense {metric}, "
        f"{head} {means[head]:.1%} vs " + "; ".join(parts)
    )
    return {"held": held, "statement": text, "means": means, "wins": wins, "head": head, "per_seed": pivot}


def lambda_table(curves: pd.DataFrame, saved: pd.DataFrame) -> pd.DataFrame:
    """One row per task x λ of the GateSkip arms: quality at r = 0 and 0.2, saved at 90 % vs dense and own point.

    ``saved`` holds :func:`saved_at_quality` rows for both references (column ``reference``).
    """
    rows = []
    for (task, weight), group in curves[curves.family == "gateskip"].groupby(["task", "sparsity_weight"]):
        metric = quality_column(task)
        s = saved[(saved.task == task) & (saved.arm == group.arm.iloc[0])]
        rows.append(
            {
                "task": task,
                "λ": weight,
                "quality at r=0": group[group.budget == 0][metric].mean(),
                "quality at r=0.2": group[group.budget.round(3) == 0.2][metric].mean(),
                "saved@90 (dense)": s[s.reference == "dense"].saved.mean(),
                "saved@90 (own)": s[s.reference == "own"].saved.mean(),
            }
        )
    return pd.DataFrame(rows)


def position_importance(gates: pd.DataFrame, task: str, n_digits: int) -> dict[str, float]:
    """Mean gate importance at BOS (position 0), the other prompt positions and the rest: the BOS-anchor check."""
    by_pos = gates[gates.task == task].groupby("position").importance.mean()
    prompt = list(range(1, n_digits + 2) if task == "cumsum" else range(1, 16))
    return {
        "bos": float(by_pos.iloc[0]),
        "prompt": float(by_pos.loc[prompt].mean()),
        "later": float(by_pos.loc[by_pos.index > max(prompt)].mean()),
    }


def held_lines(
    curves: pd.DataFrame, tasks: Sequence[str], lambdas: pd.DataFrame, anchor: dict[str, float]
) -> list[str]:
    """The report's "what held": each task's verdict, the headline arm's full-compute cost, every λ's numbers and
    (running sums only: text windows start mid-file) the BOS-anchor check."""
    verdicts = {task: verdict(curves, task) for task in tasks}
    head_task = tasks[0]
    v = verdicts[head_task]
    metric = quality_column(head_task)
    dense_q = curves[(curves.task == head_task) & (curves.arm == "dense")][metric].mean()
    head_q0 = curves[(curves.task == head_task) & (curves.arm == v["head"]) & (curves.budget == 0)][metric].mean()
    lines = [x["statement"] for x in verdicts.values()]
    lines.append(f"full-compute {metric}: {v['head']} {head_q0:.3f} vs dense {dense_q:.3f}")
    for row in lambdas.to_dict("records"):
        lines.append(
            f"{row['task']} λ={row['λ']:g}: {quality_column(row['task'])} at r=0 {row['quality at r=0']:.3f}, "
            f"saved@90 vs dense {row['saved@90 (dense)']:.1%}"
        )
    if head_task == "cumsum":
        lines.append(
            f"BOS anchor: mean gate {anchor['bos']:.3f} at BOS vs {anchor['prompt']:.3f} other prompt positions"
        )
    return lines
