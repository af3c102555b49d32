"""GateSkip's claims as data (Laitenberger et al., arXiv 2510.13876), judged by :mod:`labkit.protocol` on the per-seed
test scores of :func:`labkit.experiments.gateskip_summary.test_scores`.

The paper's central claim: learned residual gates save more compute than random token skipping and static layer
removal at the same quality ("up to 15 % compute saved while keeping > 90 % of baseline accuracy", abstract). Each
claim compares the GateSkip arm chosen on validation with one baseline, paired by seed, on compute saved (percentage
points) at 90 % and 95 % of the dense fine-tune's quality, in the paper's token x branch fraction and in FLOPs
actually executed; on running sums also on chains generated with a KV cache (batch scope, and sequence scope with
thresholds calibrated on validation). "dense" saves 0 by definition, so GateSkip vs dense asks "does it save
anything at that quality". Every baseline got the same tuning budget on validation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from labkit import protocol
from labkit.experiments.gateskip_arms import CONTROL, STATIC
from labkit.experiments.gateskip_summary import quality_column
from labkit.protocol import Claim

TOLERANCE_PP = 1.0  # a difference below 1 percentage point of compute saved does not count
TRIVIAL = "trivial"  # per-position token frequencies of the training data
CONVERGED_REL_TOL = 0.01  # a fine-tune's loss (means of tenths) improving by < 1 % no longer counts
_COMPUTE = (
    "one fine-tuning schedule, its stopping point tuned on validation; every family tuned there with the same number "
    "of configurations"
)
_PAPER = "up to 15 % saved at > 90 % of baseline accuracy (abstract, 1B-8B LLMs)"
_BASELINES = {
    "dense": "saves compute at all (the dense model saves 0)",
    "random_skip": "saves more than a random-skip fine-tune",
    "shortgpt": "saves more than ShortGPT (static branch removal)",
    "uls": "saves more than ULS (static layer removal)",
    CONTROL: "saves more than the same model with tokens ranked at random (the learned ranking matters)",
}
_MEASURES = {"tokens": "token x branch", "flops": "executed FLOPs"}


def claims(levels: tuple[float, ...], generation: bool) -> list[Claim]:
    """Every claim of one task: per level x measure x baseline, and (``generation``) per level x scope on generated
    chains vs dense, random skip and ShortGPT."""
    out = []
    for level in levels:
        pct = round(100 * level)
        for measure, words in _MEASURES.items():
            for baseline, text in _BASELINES.items():
                out.append(
                    _claim(
                        f"saved_{pct}_{measure}",
                        f"at {pct} % of dense quality, in {words}, GateSkip {text}",
                        baseline,
                        _PAPER if pct == 90 and measure == "tokens" else "",
                    )
                )
        if generation:
            for scope in ("batch", "sequence"):
                for baseline in ("dense", "random_skip", "shortgpt"):
                    out.append(
                        _claim(
                            f"gen_saved_{pct}_{scope}",
                            f"generating chains with a KV cache ({scope} scope), "
                            f"at {pct} % of dense exact match, GateSkip {_BASELINES[baseline]}",
                            baseline,
                        )
                    )
    return out


def _claim(metric: str, text: str, baseline: str, paper: str = "") -> Claim:
    return Claim(
        f"{metric} vs {baseline}",
        text,
        metric,
        "gateskip",
        baseline,
        lower_is_better=False,
        tolerance=TOLERANCE_PP,
        compute=_COMPUTE,
        paper=paper,
    )


def training_curves(
    history: pd.DataFrame, chosen: pd.DataFrame, tenths: int = 10
) -> dict[tuple[str, str, int], list[float]]:
    """(task, arm, seed) -> the test-seed loss of the dense fine-tune each of dense, ShortGPT and ULS chose, as means
    of ``tenths`` equal chunks, for the converged check. Skipping arms train under a budget ramped up over fine-tuning,
    so their loss rises by design and a plateau test does not apply to them."""
    out = {}
    test = history[history.split == "test"]
    for row in chosen[chosen.role.isin(["dense", *STATIC])].itertuples():
        runs = test[(test.task == row.task) & (test.phase == f"dense {row.config}")]
        for seed, group in runs.groupby("seed"):
            chunks = np.array_split(group.sort_values("step")["loss"].to_numpy(), tenths)
            out[(row.task, row.role, int(seed))] = [float(c.mean()) for c in chunks]
    return out


def verdicts(
    scores: pd.DataFrame,
    trivial: pd.DataFrame,
    history: pd.DataFrame,
    chosen: pd.DataFrame,
    levels: tuple[float, ...],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (``<task>: <claim>`` for every task) and the sanity table (per task x arm: the dense
    fine-tune converged, full-compute test quality beats the trivial predictor)."""
    judged, checks = [], []
    curves = training_curves(history, chosen)
    for task, table in scores.groupby("task", sort=False):
        metric = quality_column(task)
        quality = pd.concat(
            [
                table[["arm", "seed", "quality"]],
                trivial[trivial.task == task].rename(columns={metric: "quality"})[["arm", "seed", "quality"]],
            ],
            ignore_index=True,
        )
        by_arm = {(arm, seed): c for (t, arm, seed), c in curves.items() if t == task}
        dense_arms = set(chosen[(chosen.task == task) & (chosen.role.isin(["dense", *STATIC]))].role)
        check = protocol.sanity(
            quality,
            "quality",
            TRIVIAL,
            {k: v for k, v in by_arm.items() if k[0] in dense_arms},
            lower_is_better=metric == "bpb",
            rel_tol=CONVERGED_REL_TOL,
        )
        check["flags"] = check["flags"].map(lambda t, n=task: "; ".join(f"{n}: {f}" for f in t.split("; ") if f))
        checks.append(check.assign(task=task))
        generation = any(c.startswith("gen_saved_") and table[c].notna().any() for c in table.columns)
        for claim in claims(levels, generation):
            if claim.metric not in table.columns:
                continue  # e.g. a generation scope that did not run
            rows = table[table.arm.isin([claim.arm, claim.baseline])].dropna(subset=[claim.metric])
            if set(rows.arm) == {claim.arm, claim.baseline}:
                renamed = dataclasses.replace(claim, name=f"{task}: {claim.name}")
                judged.append(protocol.judge(renamed, rows, check))
    sanity = pd.concat(checks, ignore_index=True).reindex(
        columns=["task", "arm", "converged", "beats_trivial", "flags"]
    )
    return protocol.claims_table(judged), sanity
