"""GateSkip's judgement (Laitenberger et al., arXiv 2510.13876): from the computed tables alone, the choices made on
validation, the per-seed test scores the claims are judged on, the convergence and health checks, the claims and
sanity tables, and the readings the notebook shows (:func:`judge`); the token widget's model is rebuilt from its
stored state dict.

Compute saved is read at every level of ``cfg.levels`` of the dense fine-tune's quality of the same seed
(:func:`~labkit.experiments.gateskip.arms.saved_at_quality`), in the paper's token x branch fraction and in
executed FLOPs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import gate, protocol
from labkit.experiments import Computed, Results
from labkit.experiments.gateskip import claims
from labkit.experiments.gateskip.arms import (
    CONTROL,
    EXAMPLES,
    MODEL_PREFIX,
    STATIC,
    base_lm,
    choose,
    quality_column,
    saved_at_quality,
    stage1_choice,
    stage2_blockers,
)
from labkit.experiments.gateskip.config import Config

MEASURES = {"tokens": "skipped_fraction", "flops": "flops_saved"}  # compute-saved measures and their columns


def test_scores(curves: pd.DataFrame, generation: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    """Per task x arm x seed on test: compute saved (in %) at each quality level, in token x branch fraction and
    executed FLOPs where counted (``saved_90_tokens``, ``saved_90_flops``, ...), and for text generated with a KV
    cache (running-sum chains, or decoded held-out text) per scope
    (``gen_saved_90_batch``, ...); the dense rows save 0 by definition (the "saves anything" reference); full-compute
    ``quality`` and, for gated arms, ``gate_shift``."""
    test = _static_origin(curves[curves.split == "test"])
    parts = []
    for task, sub in test.groupby("task", sort=False):
        metric = quality_column(task)
        for level in levels:
            for name, column in MEASURES.items():
                if column not in sub or sub[column].isna().all():  # FLOPs are counted on text only (LLM)
                    continue
                saved = saved_at_quality(sub, metric, x=column, fraction=level)
                parts.append(saved.assign(metric=f"saved_{round(100 * level)}_{name}"))
    gen = _static_origin(generation[generation.split == "test"]) if len(generation) else generation
    for (task, scope), sub in gen.groupby(["task", "scope"], sort=False) if len(gen) else []:
        metric = generation_column(task)
        for level in levels:
            saved = saved_at_quality(sub.drop(columns="scope").dropna(axis=1, how="all"), metric, fraction=level)
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


def budget_values(runs: pd.DataFrame, chosen: pd.DataFrame, level: float, untrained: tuple[str, ...] = ()
                  ) -> pd.DataFrame:
    """The validation measure each chosen arm is judged on for the convergence check, per task x role x budget (the
    rows of the 1x and longer runs of :func:`labkit.experiments.gateskip.arms.budget_jobs`, tagged ``chosen_config`` and
    ``run_budget``).

    Dense, ShortGPT and ULS: the full-compute validation quality of the dense fine-tune each chose (ShortGPT and ULS
    train nothing else; ``untrained`` roles, such as a frozen pretrained LM's, have no longer run and no row).
    GateSkip and random skip: compute saved (%, token x branch) at ``level`` of the 1x dense
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
            if role in untrained:
                continue
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


def _static_origin(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every static arm's curve starting at full compute: removing nothing is the dense model it acts
    on, so where ShortGPT or ULS has no row at r = 0 for a task x seed (x scope) (a frozen LLM's sets are scored only
    at the fractions they remove; the toy's fine-tunes score it), the dense row is added under its name. Its saving
    then interpolates from full compute as every other arm's does, instead of counting 0 when its first set misses."""
    keys = [k for k in ("task", "split", "seed", "scope") if k in frame.columns]
    dense = frame[(frame.arm == "dense") & (frame.budget == 0)]
    added = []
    for arm in STATIC:
        rows = frame[frame.arm == arm]
        have = rows[rows.budget == 0][keys].drop_duplicates()
        need = rows[keys].drop_duplicates().merge(have, how="left", indicator=True)
        added.append(dense.merge(need[need._merge == "left_only"][keys], on=keys).assign(arm=arm))
    return pd.concat([frame, *added], ignore_index=True)


def _full_quality(test: pd.DataFrame) -> pd.DataFrame:
    """Full-compute test quality per task x arm x seed (r = 0; static arms: the dense model they act on, added by
    :func:`_static_origin`), and the gate shift of the gated arms (mean |g - g0|: how far training moved the gates
    from their initialisation)."""
    rows = []
    for (task, arm, seed), group in test.groupby(["task", "arm", "seed"], sort=False):
        at_zero = group[group.budget == 0]
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


def widget_model(cfg: Config, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The first test seed's GateSkip model of the first task, rebuilt from the state dict the run stored (the token
    widget's model: no training, no checkpoint)."""
    state = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    model = gate.add_gates(base_lm(cfg, cfg.tasks[0], tensors[EXAMPLES].shape[1]), kind=cfg.gate_kind)
    model.load_state_dict(state)
    return model.eval()


def stage1_evidence(
    curves: pd.DataFrame, gates: pd.DataFrame, chosen: pd.Series, budget: float, task: str
) -> pd.DataFrame:
    """Per judging-half window or question of ``task`` (``seed``: the paired unit) and arm: the task's quality at
    full compute (its :func:`quality_column`) and at ``budget`` (``<metric>_skipped``: GateSkip ranked by its gates,
    its control at random), and on text the gate shift (GateSkip, and 0 for its initialisation)."""
    metric = quality_column(task)
    judge = curves[(curves.half == "judge") & (curves.task == task)]
    ours = judge[(judge.config == chosen.config) & (judge.steps == chosen.steps)]
    parts = [judge[judge.arm.isin(["dense", claims.TRIVIAL])], ours[(ours.arm == "gateskip") & (ours.budget == 0)]]
    parts = [part[["arm", "window", metric]] for part in parts]
    skipped = ours[ours.budget == budget][["arm", "window", metric]]
    parts.append(skipped.rename(columns={metric: f"{metric}_skipped"}))
    if task == "text":
        shift = gates[(gates.half == "judge") & (gates.config == chosen.config) & (gates.steps == chosen.steps)]
        shift = shift[["window", "gate_shift"]].assign(arm="gateskip")
        parts += [shift, shift.assign(arm=claims.INIT, gate_shift=0.0)]
    table = pd.concat(parts, ignore_index=True)
    return table.groupby(["arm", "window"], as_index=False).first().rename(columns={"window": "seed"}).assign(task=task)


def _gates_of(task: str, curves: pd.DataFrame, choice: pd.DataFrame) -> pd.Series:
    """The gate configuration and stop ``task`` is judged with: text's is chosen here, from its choosing half; the
    other tasks were scored during the run with the gates chosen then, as their rows record (so a later change of
    the choice rule cannot pair them with gates they were never scored with)."""
    if task == "text":
        return choice[choice.chosen].iloc[0]
    used = curves[(curves.task == task) & (curves.arm == "gateskip")][["config", "steps"]].drop_duplicates()
    if len(used) != 1:
        raise ValueError(f"task {task!r} was scored with {len(used)} gate configurations, expected one")
    return used.iloc[0]


def _stage1(cfg: Config, t: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], list[protocol.Verdict]]:
    """Stage 1's judgement: the choice on one half of the text windows (``stage1``) and the premises of every task
    judged on the other half with those gates, with their per-window ``evidence``."""
    budget = cfg.premise_budgets[-1]
    curves, gates = t["premise_curves"], t["premise_gates"]
    choice = stage1_choice(curves, gates, budget)
    judged, evidence = [], []
    for task in cfg.tasks:
        table = stage1_evidence(curves, gates, _gates_of(task, curves, choice), budget, task)
        means = table.groupby("arm").mean(numeric_only=True)
        metric = quality_column(task)
        reference = (means[metric]["dense"], means[f"{metric}_skipped"][CONTROL])
        for claim in claims.stage1_premises(task, budget, *reference):
            rows = table.dropna(subset=[claim.metric])
            group = "" if claim.metric == "gate_shift" else task  # every task is scored with the gates trained on text
            judged.append(protocol.judge(dataclasses.replace(claim, name=f"{task}: {claim.name}", group=group), rows))
        evidence.append(table)
    return {"stage1": choice, "evidence": pd.concat(evidence, ignore_index=True)}, judged


def _llm_chosen(cfg: Config, curves: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """Each role's configuration in stage 2: GateSkip's gates as stage 1 chose them (``val_score``: their edge over
    random ranking on the choosing half), the pretrained LM for dense, ShortGPT and ULS (nothing tuned)."""
    pick = choice[choice.chosen].iloc[0]
    gated, dense = (curves[curves.arm == arm].config.iloc[0] for arm in ("gateskip", "dense"))
    rows = []
    for task in cfg.tasks:
        rows.append({"task": task, "role": "gateskip", "config": gated, "val_score": float(pick.edge)})
        rows += [{"task": task, "role": role, "config": dense, "val_score": np.nan} for role in ("dense", *STATIC)]
    return pd.DataFrame(rows)


def _judge_llm(cfg: Config, computed: Computed) -> Results:
    """A pretrained LLM: stage 1's premises on validation (:func:`_stage1`); with stage 2's tables, the comparison on
    test seeds judged under those premises, as the tiny model's is (``chosen``, ``scores``, ``budget``, ``health``,
    ``claims``, ``sanity``)."""
    t = computed.tables
    tables, premises = _stage1(cfg, t)
    if "curves" not in t:
        return Results(cfg, {**t, **tables, "claims": protocol.claims_table(premises)}, computed)
    chosen = _llm_chosen(cfg, t["curves"], tables["stage1"])
    scores = test_scores(t["curves"], t["generation"], cfg.levels)
    budget = claims.convergence(budget_values(t["budget_runs"], chosen, cfg.levels[0], ("dense", *STATIC)))
    health = claims.health(scores)
    claim_table, sanity = claims.verdicts(scores, t["trivial"], budget, health, cfg.levels, stage1=premises)
    judged = {"chosen": chosen, "scores": scores, "budget": budget, "health": health, "claims": claim_table,
              "sanity": sanity}
    return Results(cfg, {**t, **tables, **judged}, computed)


def generation_column(task: str) -> str:
    """The quality of text generated with a KV cache: running-sum chains' exact match, else the task's own quality
    (decoded held-out text: bits per byte)."""
    return "gen_em" if task == "cumsum" else quality_column(task)


def ran_stage1(results: Results) -> bool:
    """Whether the run is a pretrained LLM's: stage 1's choice and premises on validation come first."""
    return "stage1" in results.tables


def ran_comparison(results: Results) -> bool:
    """Whether the comparison of arms ran (the tiny model's, or a pretrained LLM's stage 2) or the run stopped after
    stage 1's premises."""
    return "scores" in results.tables


def stage2_status(results: Results) -> str:
    """Why the comparison did or did not run, in one sentence the notebook and the verdict show."""
    if ran_comparison(results):
        return f"{'stage 2' if ran_stage1(results) else 'the comparison'} ran: every arm compared on test seeds"
    blockers = stage2_blockers(results.stage1[results.stage1.chosen].iloc[0])
    if not results.config.compare:
        reason = "it was not asked for (parameter compare=False)"
    elif blockers:
        reason = (f"on the choosing half of the validation windows the gates stage 1 chose failed: "
                  f"{'; '.join(blockers)}, so its premises could not hold")
    else:
        reason = "the run that computed these tables stopped after stage 1"
    return f"STAGE 2 DID NOT RUN: {reason}; only stage 1 (the premises, on validation) is reported"


def judge(cfg: Config, computed: Computed) -> Results:
    """A pretrained LLM's stages (:func:`_judge_llm`); else every judged table from the computed ones:
    ``chosen`` and ``validation`` (the choices, again from the
    validation rows), ``scores``, ``budget`` (convergence), ``health``, ``claims`` and ``sanity``; artefacts ``model``
    and ``examples`` for the token widget."""
    t = computed.tables
    if "premise_curves" in t:
        return _judge_llm(cfg, computed)
    curves = t["curves"]
    chosen, validation = choose(curves[curves.split == "val"], cfg.levels[0])
    scores = test_scores(curves, t["generation"], cfg.levels)
    budget = claims.convergence(budget_values(t["budget_runs"], chosen, cfg.levels[0]))
    health = claims.health(scores)
    claim_table, sanity = claims.verdicts(scores, t["trivial"], budget, health, cfg.levels)
    judged = {
        "chosen": chosen.drop(columns="spec"),
        "validation": validation,
        "scores": scores,
        "budget": budget,
        "health": health,
        "claims": claim_table,
        "sanity": sanity,
    }
    artefacts = {"model": widget_model(cfg, computed.tensors), "examples": computed.tensors[EXAMPLES]}
    return Results(cfg, {**t, **judged}, computed, artefacts)


def claim_text(results: Results) -> str:
    """The report's claim in one sentence: the paper's (the comparison), or the premise stage 1 tests."""
    paper = "paper: up to 15 % compute saved at > 90 % of baseline accuracy (arXiv 2510.13876)."
    if ran_comparison(results) and ran_stage1(results):
        return ("At equal compute saved, residual gates trained on a frozen pretrained LLM keep more quality than the "
                f"same model with tokens ranked at random and than static branch or layer removal; {paper}")
    if ran_comparison(results):
        return ("At equal compute saved, learned residual gates keep more quality than random token skipping and "
                f"static layer skipping; {paper}")
    return ("Stage 1, the premise on a pretrained LLM: residual gates trained on it rank tokens better than random "
            "ranking of the same model at equal skipped fraction, on held-out text and on multiple choice, while "
            "the model stays healthy at full compute (arXiv 2510.13876 presupposes this of 1B-8B LLMs).")


def rule_text(results: Results) -> str:
    """The rule of the report's headline claim, as its claims table records it: the first comparison claim, or (stage 1)
    text's learned-vs-random premise."""
    table = results.claims
    if ran_comparison(results):
        return table[table.role != "premise"].rule.iloc[0]
    return table[table.claim == "text: learned ranking beats random"].rule.iloc[0]


def recorded_tables(results: Results) -> dict[str, pd.DataFrame]:
    """The judged tables a report records beside its computed ones (a pretrained LLM's: stage 1's choice and
    evidence too)."""
    compared = ("claims", "sanity", "budget", "health", "scores", "chosen")
    names = [*compared, "validation"] if "validation" in results.tables else ["claims", "stage1", "evidence"]
    if ran_comparison(results) and ran_stage1(results):  # a pretrained LLM's two stages
        names = [*compared, "stage1", "evidence"]
    return {name: results.tables[name] for name in names}


def verdict_lines(results: Results) -> list[str]:
    """Stage 2's status first, then the rule, every claim with its effect (percentage points; premises in their own
    units), interval, n and verdict, the sanity flags and the configurations chosen on validation: one line each
    (:func:`labkit.protocol.verdict_lines`)."""
    status = stage2_status(results)
    stage1 = []
    if ran_stage1(results):
        chosen = results.stage1[results.stage1.chosen].iloc[0]
        stage1 = [f"stage 1 chose on the other half of the text windows: {chosen.config}, {chosen.steps} steps"]
    if not ran_comparison(results):
        ok = "no arms compared (stage 1 judges its premises only)"
        return [status, *protocol.verdict_lines(results.claims, pd.DataFrame(columns=["flags"]), ok, notes=stage1)]
    picks = [f"{r.task}/{r.role} {r.config}" for r in results.chosen.itertuples() if "stage1" not in results.tables
             or r.role == "gateskip"]  # a pretrained LLM's other arms choose nothing
    premise = results.claims.role == "premise"
    table = results.claims.assign(effect=results.claims.effect.where(premise, results.claims.effect + " pp"))
    ok = (
        "every trained arm converged at the longer budget, every arm within "
        f"{claims.HEALTH_TOLERANCE_PCT:g} % of dense at full compute and beat the trivial predictor"
    )
    notes = [*stage1, "chosen on validation: " + ", ".join(picks)]
    return [status, *protocol.verdict_lines(table, results.sanity, ok, notes=notes)]


def verdict_text(results: Results) -> str:
    """The recorded verdict: :func:`verdict_lines` joined as :func:`labkit.protocol.verdict_text` joins them."""
    return "; ".join(verdict_lines(results))


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per task and arm the saved fractions (%), full-compute quality and gate shift;
    each claim's effect (pp); each premise's effect (in its own units) and whether it was met (1 or 0)."""
    tables = {}  # stage 1: per task and arm, means over the judging half's windows or questions
    if ran_stage1(results):
        tables["stage1/" if ran_comparison(results) else ""] = results.evidence
    if ran_comparison(results):
        tables[""] = results.scores
    out = {}
    for prefix, table in tables.items():
        means = table.groupby(["task", "arm"], sort=False).mean(numeric_only=True).drop(columns="seed")
        for (task, arm), row in means.iterrows():
            for column, value in row.items():
                if pd.notna(value):
                    out[f"{prefix}{task}/{arm}/{column}"] = float(value)
    if ran_stage1(results):
        out["text/chosen/select_edge"] = float(results.stage1[results.stage1.chosen].edge.iloc[0])
    for r in results.claims.itertuples():
        name = r.claim.replace(": ", "/")
        if r.role == "premise":
            out[f"premise/{name}"] = float(r.mean)
            out[f"premise/{name}/met"] = float(r.verdict == "held")
        else:
            out[f"claim/{name}_pp"] = float(r.mean)
    return out
