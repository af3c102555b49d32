"""GateSkip summaries (Laitenberger et al., arXiv 2510.13876): compute saved at a quality level, quality at equal
compute saved, and the verdict of a run, over the tidy curves of :func:`labkit.experiments.gateskip.run`.

"Compute saved at 90 %" is the official ``collect_results.py`` statistic (largest saving whose quality stays within
90 % of a reference, linear interpolation); here it is also taken against the dense fine-tune, which a damaged model
cannot flatter.
"""

from __future__ import annotations

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
