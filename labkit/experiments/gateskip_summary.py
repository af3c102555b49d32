"""GateSkip summaries (Laitenberger et al., arXiv 2510.13876): compute saved at a quality level, the choices made on
validation, and the per-seed scores the claims are judged on, over the tidy tables of
:func:`labkit.experiments.gateskip.run`.

"Compute saved at 90 %" is the official ``collect_results.py`` statistic (largest saving whose quality stays within
90 % of a reference, linear interpolation); here it is taken against the dense fine-tune of the same seed, which a
damaged model cannot flatter, at every level of ``cfg.levels``, in the paper's token x branch fraction and in
executed FLOPs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from labkit import protocol
from labkit.experiments.gateskip_arms import CONTROL, STATIC, Spec

MEASURES = {"tokens": "skipped_fraction", "flops": "flops_saved"}  # compute-saved measures and their columns


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
    """Each role's configuration, chosen on the validation rows ``val`` only (:func:`labkit.protocol.select_best`),
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
        best = protocol.select_best(dense, "config", metric, lower_is_better=metric == "bpb")["config"]
        picks = {"dense": _chosen(task, "dense", best, sub, dense.groupby("config")[metric].mean()[best])}
        saved = saved_at_quality(sub[(sub.arm != "dense") | (sub.config == best)], metric, fraction=level)
        for role in ("gateskip", "random_skip", *STATIC):
            candidates = saved[saved.arm == role]
            if candidates.empty:
                raise ValueError(f"no validation rows of {role!r} for task {task!r} to choose from")
            means = candidates.groupby("config").saved.mean()
            tied = candidates[candidates.config.isin(means[means == means.max()].index)]
            pick = protocol.select_best(tied, "config", "area", lower_is_better=False)["config"]
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


def _chosen(task: str, role: str, config: str, rows: pd.DataFrame, score: float) -> dict[str, Any]:
    first = rows[rows.config == config].iloc[0]
    spec = Spec(
        first.family, first.finetune_lr, first.gate_lr, first.sparsity_weight, first.train_skip_end, int(first.steps)
    )
    return {"task": task, "role": role, "config": config, "spec": spec, "val_score": float(score)}


def test_scores(curves: pd.DataFrame, generation: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    """Per task x arm x seed on test: compute saved (in %) at each quality level, in token x branch fraction and
    executed FLOPs (``saved_90_tokens``, ``saved_90_flops``, ...), and for generated chains per scope
    (``gen_saved_90_batch``, ...); the dense rows save 0 by definition (the "saves anything" reference); full-compute
    ``quality`` and, for gated arms, ``gate_shift``."""
    test = curves[curves.split == "test"]
    parts = []
    for task, sub in test.groupby("task", sort=False):
        metric = quality_column(task)
        for level in levels:
            for name, column in MEASURES.items():
                saved = saved_at_quality(sub, metric, x=column, fraction=level)
                parts.append(saved.assign(metric=f"saved_{round(100 * level)}_{name}"))
    gen = generation[generation.split == "test"] if len(generation) else generation
    for (task, scope), sub in gen.groupby(["task", "scope"], sort=False) if len(gen) else []:
        for level in levels:
            saved = saved_at_quality(sub.drop(columns="scope"), "gen_em", fraction=level)
            parts.append(saved.assign(task=task, metric=f"gen_saved_{round(100 * level)}_{scope}"))
    long = pd.concat(parts, ignore_index=True)
    wide = long.pivot_table(index=["task", "arm", "seed"], columns="metric", values="saved").mul(100).reset_index()
    measured = wide.drop(columns=["arm", "seed"]).groupby("task").count() > 0  # which columns each task has
    dense = test[test.arm == "dense"][["task", "seed"]].drop_duplicates().assign(arm="dense")
    zeros = pd.concat(
        [
            group.assign(**{m: 0.0 for m, ok in measured.loc[task].items() if ok})
            for task, group in dense.groupby("task")
        ]
    )
    quality = _full_quality(test)
    scores = pd.concat([wide, zeros], ignore_index=True).merge(quality, on=["task", "arm", "seed"], how="left")
    scores.columns.name = None
    return scores


def budget_values(runs: pd.DataFrame, chosen: pd.DataFrame, level: float) -> pd.DataFrame:
    """The validation measure each chosen arm is judged on for the convergence check, per task x role x budget (the
    rows of the 1x and longer runs of :func:`labkit.experiments.gateskip.budget_jobs`, tagged ``chosen_config`` and
    ``run_budget``).

    Dense, ShortGPT and ULS: the full-compute validation quality of the dense fine-tune each chose (ShortGPT and ULS
    train nothing else). GateSkip and random skip: compute saved (%, token x branch) at ``level`` of the 1x dense
    fine-tune's validation quality, the statistic they were chosen on; the threshold stays at the 1x dense model so
    the check measures the arm's own gain. Returns task, arm, seed, budget, measure, value.
    """
    rows = []
    for task, sub in runs.groupby("task", sort=False):
        metric = quality_column(task)
        picks = chosen[chosen.task == task].set_index("role").config
        full = sub[(sub.arm == "dense") & (sub.budget == 0)]
        reference = full[(full.chosen_config == picks["dense"]) & (full.run_budget == 1)]
        for role, config in picks.items():
            for (seed, budget), run in sub[sub.chosen_config == config].groupby(["seed", "run_budget"], sort=False):
                if role in ("gateskip", "random_skip"):
                    curve = pd.concat([reference[reference.seed == seed], run[run.arm == role]], ignore_index=True)
                    value = 100 * float(saved_at_quality(curve, metric, fraction=level).saved.iloc[0])
                    measure = f"saved_{round(100 * level)}_tokens"
                else:
                    value, measure = float(run[(run.arm == "dense") & (run.budget == 0)][metric].iloc[0]), metric
                rows.append({"task": task, "arm": role, "seed": seed, "budget": budget, "measure": measure,
                             "value": value})
    return pd.DataFrame(rows, columns=["task", "arm", "seed", "budget", "measure", "value"])


def _full_quality(test: pd.DataFrame) -> pd.DataFrame:
    """Full-compute test quality per task x arm x seed (r = 0; static arms: the dense model they act on), and the
    gate shift of the gated arms (mean |g - g0|: how far training moved the gates from their initialisation)."""
    rows = []
    for (task, arm, seed), group in test.groupby(["task", "arm", "seed"], sort=False):
        at_zero = group[group.budget == 0]
        if at_zero.empty and arm in STATIC:
            at_zero = test[(test.task == task) & (test.arm == "dense") & (test.seed == seed)]
        shift = float(at_zero["gate_shift"].mean()) if "gate_shift" in at_zero else np.nan
        rows.append({"task": task, "arm": arm, "seed": seed, "quality": float(at_zero[quality_column(task)].mean()),
                     "gate_shift": shift})
    return pd.DataFrame(rows)


def side_by_side(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % Student-t interval of every saved-at-level column, per task x arm (the verdict's table)."""
    columns = [c for c in scores.columns if c.startswith(("saved_", "gen_saved_"))]
    table = scores.groupby(["task", "arm"], sort=False).size().rename("n").reset_index()
    for column in columns:
        summary = protocol.t_summary(scores.dropna(subset=[column]), ["task", "arm"], column)
        summary[column] = [f"{r.mean:+.1f} [{r.low:+.1f}, {r.high:+.1f}]" for r in summary.itertuples()]
        table = table.merge(summary[["task", "arm", column]], on=["task", "arm"], how="left")
    return table


def arm_order(arms: list[str]) -> list[str]:
    """Arms in the report's order: GateSkip, its control, the trained and static baselines, dense."""
    order = ["gateskip", CONTROL, "random_skip", *STATIC, "dense"]
    return [a for a in order if a in arms] + sorted(a for a in arms if a not in order)


def position_importance(gates: pd.DataFrame, task: str, n_digits: int) -> dict[str, float]:
    """Mean gate importance at BOS (position 0), the other prompt positions and the rest: the BOS-anchor check."""
    by_pos = gates[gates.task == task].groupby("position").importance.mean()
    prompt = list(range(1, n_digits + 2) if task == "cumsum" else range(1, 16))
    return {
        "bos": float(by_pos.iloc[0]),
        "prompt": float(by_pos.loc[prompt].mean()),
        "later": float(by_pos.loc[by_pos.index > max(prompt)].mean()),
    }
