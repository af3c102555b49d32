"""GateSkip's claims as data (Laitenberger et al., arXiv 2510.13876), judged by :mod:`labkit.protocol` on the per-seed
test scores of :func:`labkit.experiments.gateskip.summary.test_scores`.

The paper's central claim: learned residual gates save more compute than random token skipping and static layer
removal at the same quality ("up to 15 % compute saved while keeping > 90 % of baseline accuracy", abstract). Each
claim compares the GateSkip arm chosen on validation with one baseline, paired by seed, on compute saved (percentage
points) at 90 % and 95 % of the dense fine-tune's quality, in the paper's token x branch fraction and in FLOPs
actually executed; on running sums also on chains generated with a KV cache (batch scope, and sequence scope with
thresholds calibrated on validation). "dense" saves 0 by definition, so GateSkip vs dense asks "does it save
anything at that quality". Every baseline got the same tuning budget on validation. Every saved-compute score is read
against the dense fine-tune of its seed, so every claim rests on "dense" too.

With a real pretrained LLM, stage 1's premises are judged first on held-out validation windows or questions (the
paired unit) with the gates chosen on the other half of the text windows (:func:`stage1_premises`): the gates move
(governing every task: all use the gates trained on text), the learned ranking beats random ranking of the same model,
GateSkip stays within :data:`HEALTH_TOLERANCE_PCT` % of the pretrained LM at full compute, and the pretrained LM beats
the trivial predictor. They govern stage 2, the comparison on test seeds, with the LM frozen: its "dense" is the
pretrained LM, nothing but the gates is tuned (:data:`COMPUTE_FROZEN`), and there is no random-skip fine-tune.

In the comparison (the tiny model), per task two premises are judged first: GateSkip's gates move from their initial
value (else the ranking is the initialisation's, not a learned one), and the dense fine-tune beats the trivial
predictor (else the task is not learned). A premise not held makes that task's claims read "premise not met"; an
inconclusive one, "premise unconfirmed".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from labkit import protocol
from labkit.experiments.gateskip.arms import CONTROL, quality_column
from labkit.experiments.gateskip.config import GATE_SHIFT_TOLERANCE, HEALTH_TOLERANCE_PCT
from labkit.protocol import Claim

TOLERANCE_PP = 1.0  # a difference below 1 percentage point of compute saved does not count
TRIVIAL = "trivial"  # per-position token frequencies of the training data
TRIVIAL_PRETRAINED = "the trivial predictor (text: the unigram predictor; dictmc: a guess)"  # a pretrained LLM's
INIT = "init"  # the GateSkip model before fine-tuning: its gates' shift is 0 by definition
# The dense fine-tune (and those ShortGPT and ULS act on) is converged if twice the budget improves its validation
# quality by at most 1 % (relative): every claim is read at 90 % or 95 % of dense quality, and a 1 % shift of the
# reference moves those thresholds by a fifth of the strictest level's 5 % margin or less. GateSkip and random skip are
# checked on the saving they were chosen on, against the claims' own tolerance TOLERANCE_PP.
CONVERGED_QUALITY_PCT = 1.0
# Stage 1: the learned ranking must keep quality better than random ranking by more than 1 % (relative, in bits per
# byte at the premise budget): a smaller edge would not survive into a saving at 90 % or 95 % of dense quality.
RANKING_TOLERANCE_PCT = 1.0
_COMPUTE = (
    "one fine-tuning schedule, its stopping point tuned on validation; every family tuned there with the same number "
    "of configurations"
)
COMPUTE_FROZEN = "stage 1's gate configuration trained on each test seed; static arms on the frozen pretrained LM"
_PAPER = "up to 15 % saved at > 90 % of baseline accuracy (abstract, 1B-8B LLMs)"
_BASELINES = {
    "dense": "saves compute at all (the dense model saves 0)",
    "random_skip": "saves more than a random-skip fine-tune",
    "shortgpt": "saves more than ShortGPT (static branch removal)",
    "uls": "saves more than ULS (static layer removal)",
    CONTROL: "saves more than the same model with tokens ranked at random (the learned ranking matters)",
}
_MEASURES = {"tokens": "token x branch", "flops": "executed FLOPs"}
# per task: what is generated with a KV cache and the quality it is read in
_GENERATED = {"cumsum": ("generating chains", "exact match"),
              "text": ("decoding held-out text token by token", "quality (bits per byte within dense / level)")}


def claims(levels: tuple[float, ...], generation: bool, task: str) -> list[Claim]:
    """Every claim of one task: per level x measure x baseline, and (``generation``) per level x scope on text
    generated with a KV cache vs dense, random skip, ShortGPT, ULS and the same model ranked at random."""
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
            what, unit = _GENERATED[task]
            for scope in ("batch", "sequence"):
                for baseline in ("dense", "random_skip", "shortgpt", "uls", CONTROL):
                    out.append(
                        _claim(
                            f"gen_saved_{pct}_{scope}",
                            f"{what} with a KV cache ({scope} scope), "
                            f"at {pct} % of dense {unit}, GateSkip {_BASELINES[baseline]}",
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
        rests_on=("dense",),  # both savings are read at a fraction of the dense fine-tune's quality of the seed
    )


def premises(metric: str, frozen: bool = False) -> list[Claim]:
    """The two premises of one task (quality measured in ``metric``): GateSkip's gates move from their initial value,
    and the dense model beats the trivial predictor at full compute. ``frozen``: a pretrained LLM's stage 2, whose
    dense model is the frozen pretrained LM and whose gates alone are trained."""
    before = "the gates' initialisation (the LM frozen)" if frozen else "the same model before fine-tuning"
    dense = f"the pretrained LM beats {TRIVIAL_PRETRAINED}" if frozen else \
        "the dense fine-tune beats the trivial predictor (per-position token frequencies)"
    return [
        Claim(
            "gates move from init",
            "GateSkip's gates move from their initial value: mean |g - g0| over branches and tokens of a test batch "
            f"at r = 0, against {before}",
            "gate_shift",
            "gateskip",
            INIT,
            lower_is_better=False,
            tolerance=GATE_SHIFT_TOLERANCE,
            compute="the GateSkip configuration chosen on validation, test seeds",
            kind="premise",
        ),
        Claim(
            "dense beats trivial",
            f"{dense} at full compute",
            "quality",
            "dense",
            TRIVIAL,
            lower_is_better=metric == "bpb",
            compute="full compute, test seeds",
            kind="premise",
        ),
    ]


def stage1_premises(task: str, budget: float, dense: float, random: float) -> list[Claim]:
    """The premises of stage 1 on a pretrained LLM for ``task``, read at skipped fraction ``budget`` per validation
    window (text: bits per byte) or question (dictmc: correct or not); "dense" is the pretrained LM, "trivial" the
    unigram predictor (text) or a guess (dictmc). On accuracy, whose per-question values are 0 or 1, the relative
    tolerances are taken of the mean ``dense`` (health) and ``random`` (ranking) accuracy. The gates are trained on
    text, so whether they moved is judged there."""
    where = ("the judging half of the validation windows; gates chosen on the other half" if task == "text" else
             "every validation question (nothing is chosen on them), with the gates chosen on text")
    metric = quality_column(task)
    accuracy = metric != "bpb"
    out = [] if task != "text" else [
        Claim("gates move from init",
              "the trained gates move from their initial value: mean |g - g0| over branches and tokens of a window",
              "gate_shift", "gateskip", INIT, lower_is_better=False, tolerance=GATE_SHIFT_TOLERANCE, compute=where,
              kind="premise"),
    ]
    # one description for both tasks: a headline merges a claim's tasks into one sentence under one description
    units = "text: bits per byte, relative difference; dictmc: accuracy, absolute difference"
    return out + [
        Claim("learned ranking beats random",
              f"at {budget:.0%} of branch-tokens skipped, "
              "ranking tokens by the trained gates keeps more quality than ranking them at random in the same model "
              f"({units}; tolerance {RANKING_TOLERANCE_PCT:g} % of random's)",
              f"{metric}_skipped", "gateskip", CONTROL, lower_is_better=not accuracy, relative=not accuracy,
              tolerance=RANKING_TOLERANCE_PCT * (random / 100 if accuracy else 1), compute=where, kind="premise"),
        Claim("healthy at full compute",
              f"GateSkip at full compute stays within {HEALTH_TOLERANCE_PCT:g} % of the pretrained LM ({units})",
              metric, "gateskip", "dense", lower_is_better=not accuracy, relative=not accuracy,
              tolerance=-HEALTH_TOLERANCE_PCT * (dense / 100 if accuracy else 1), compute=where, kind="premise"),
        Claim("dense beats trivial",
              f"the pretrained LM beats {TRIVIAL_PRETRAINED}",
              metric, "dense", TRIVIAL, lower_is_better=not accuracy, compute=where, kind="premise"),
    ]


def convergence(values: pd.DataFrame) -> pd.DataFrame:
    """The budget check (:func:`labkit.protocol.budget_check`) of every task x trained arm on the validation measures
    of :func:`labkit.experiments.gateskip.summary.budget_values`: a quality gaining more than
    :data:`CONVERGED_QUALITY_PCT` % or a saving gaining more than :data:`TOLERANCE_PP` pp at the longer budget is not
    converged. Returns task, arm, seed, budget, measure, val_1x, val_long, improvement, converged, flags."""
    parts = []
    for (task, measure), group in values.groupby(["task", "measure"], sort=False):
        saving = measure.startswith("saved_")
        name = f"val {measure}" + (" (%)" if saving else "")
        checked = protocol.budget_check(
            group.rename(columns={"value": name}),
            name,
            TOLERANCE_PP if saving else CONVERGED_QUALITY_PCT,
            lower_is_better=measure == "bpb",
            relative=not saving,
        )
        renamed = checked.rename(columns={f"{name}_1x": "val_1x", f"{name}_long": "val_long"})
        parts.append(renamed.assign(task=task, measure=measure))
    columns = ["task", "arm", "seed", "budget", "measure", "val_1x", "val_long", "improvement", "converged", "flags"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def health(scores: pd.DataFrame) -> pd.DataFrame:
    """Every arm's full-compute test quality against the dense fine-tune of its seed
    (:func:`labkit.protocol.health`, :data:`HEALTH_TOLERANCE_PCT` % relative); failures name the seed."""
    parts = []
    for task, table in scores.groupby("task", sort=False):
        metric = quality_column(task)
        dense = table[table.arm == "dense"].set_index("seed")["quality"]
        others = table[table.arm != "dense"][["arm", "seed", "quality"]].rename(columns={"quality": metric})
        checked = protocol.health(
            others, metric, dense, HEALTH_TOLERANCE_PCT, lower_is_better=metric == "bpb", relative=True, what="dense"
        )
        parts.append(checked.rename(columns={metric: "quality"}).assign(task=task, metric=metric))
    columns = ["task", "arm", "seed", "metric", "quality", "dense", "healthy", "flags"]
    return pd.concat(parts, ignore_index=True)[columns]


def verdicts(
    scores: pd.DataFrame,
    trivial: pd.DataFrame,
    budget: pd.DataFrame,
    healthy: pd.DataFrame,
    levels: tuple[float, ...],
    stage1: Sequence[protocol.Verdict] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (``<task>: <claim>`` for every task, premises first) and the sanity table (per task x arm:
    converged at the longer budget (:func:`convergence`), healthy (:func:`health`), full-compute test quality beats
    the trivial predictor). ``stage1``: a pretrained LLM's premises, judged on validation before the comparison
    (:func:`stage1_premises`); they govern the claims beside each task's test :func:`premises` (then named
    "... (test seeds)": the gates retrained on every test seed must move too).

    A premise is judged on its own measurement, without the arms' sanity flags: whether the gates moved or dense
    beats the trivial predictor does not depend on a longer run or on the skipping arms' health, and a flag there
    would turn the task's claims into "premise unconfirmed" where they are inconclusive; each claim resting on a flagged
    arm is inconclusive instead."""
    judged, checks = [], []
    for task, table in scores.groupby("task", sort=False):
        metric = quality_column(task)
        quality = pd.concat(
            [
                table[["arm", "seed", "quality"]],
                trivial[trivial.task == task].rename(columns={metric: "quality"})[["arm", "seed", "quality"]],
            ],
            ignore_index=True,
        )
        check = protocol.sanity(
            quality,
            "quality",
            TRIVIAL,
            budget=budget[budget.task == task],
            healthy=healthy[healthy.task == task],
            lower_is_better=metric == "bpb",
        )
        check["flags"] = check["flags"].map(lambda t, n=task: "; ".join(f"{n}: {f}" for f in t.split("; ") if f))
        checks.append(check.assign(task=task))
        gates = table[table.arm == "gateskip"].reindex(columns=["arm", "seed", "gate_shift"]).dropna()
        evidence = {"gate_shift": pd.concat([gates, gates.assign(arm=INIT, gate_shift=0.0)]), "quality": quality}
        for claim in premises(metric, frozen=bool(stage1)):  # under stage 1's premises: stage 2's, on test seeds
            claim = dataclasses.replace(claim, name=f"{claim.name} (test seeds)") if stage1 else claim
            if len(evidence[claim.metric]):
                judged.append(protocol.judge(_of(claim, task), evidence[claim.metric]))
        generation = any(c.startswith("gen_saved_") and table[c].notna().any() for c in table.columns)
        for claim in claims(levels, generation, task):
            claim = dataclasses.replace(claim, compute=COMPUTE_FROZEN) if stage1 else claim
            if claim.metric not in table.columns:
                continue  # e.g. a generation scope that did not run
            rows = table[table.arm.isin([claim.arm, claim.baseline])].dropna(subset=[claim.metric])
            if set(rows.arm) == {claim.arm, claim.baseline}:
                judged.append(protocol.judge(_of(claim, task), rows, check))
    sanity = pd.concat(checks, ignore_index=True)
    measures = budget.drop_duplicates(["task", "arm"]).set_index(["task", "arm"]).measure
    sanity["budget_measure"] = [measures.get((t, a), "") for t, a in zip(sanity.task, sanity.arm, strict=True)]
    columns = ["task", "arm", "converged", "budget_measure", "budget_1x", "budget_long", "healthy", "beats_trivial"]
    return protocol.claims_table([*stage1, *judged]), sanity.reindex(columns=[*columns, "flags"])


def _of(claim: Claim, task: str) -> Claim:
    """``claim`` of one task: named ``<task>: <name>`` and governed by that task's premises."""
    return dataclasses.replace(claim, name=f"{task}: {claim.name}", group=task)
