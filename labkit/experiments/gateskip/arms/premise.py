"""Stage 1 on a real pretrained LLM: GateSkip's premise, on validation only.

The paper presupposes a pretrained LLM whose branches are partly redundant for some tokens, and gates that learn which.
Before any comparison, stage 1 asks whether that holds here: gates are added to the catalogued model
(:mod:`labkit.models.pretrained`), trained (alone when ``cfg.freeze_lm``: the LM's pilot fine-tunes degraded it) over
the GateSkip grid of gate lr x λ with the budget ramped to ``cfg.train_skip_end``, and each configuration is scored at
every stopping point on held-out validation windows: at full compute, and at each ``cfg.premise_budgets`` fraction
with tokens ranked by the gates and at random (the same model: the ranking is the only difference). The pretrained
LM itself ("dense") and the unigram predictor ("trivial") are scored on the same windows.

Every score is per window (the unit the premise is paired on). A configuration and stop is chosen on the first half of
the text windows (:func:`~.selection.stage1_choice`) and the premises are judged on the other half. With ``dictmc``
among the tasks, the chosen gates (trained on text only) and the pretrained LM are then scored on GCIDE multiple-choice
questions at full compute and at the last premise budget, ranked by the gates and at random: an accuracy task the
gates never saw, its unit the question (every question judges: nothing is chosen on them).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from labkit import gate, jobs, profile, seed_everything
from labkit.experiments import Computed
from labkit.experiments.gateskip.arms.finetune import finetune
from labkit.experiments.gateskip.arms.grid import CONTROL, Spec, tuning_grid, tuning_runs
from labkit.experiments.gateskip.arms.selection import quality_column, stage1_choice, stage2_blockers
from labkit.experiments.gateskip.config import Config
from labkit.experiments.gateskip.data import (
    MC_OPTIONS,
    DictMC,
    SkipContext,
    TokenText,
    importance_of,
    mc_correct,
    skipping,
    window_bpb,
    window_trivial_bpb,
)
from labkit.models import pretrained

HALVES = ("select", "judge")  # the first half of the validation windows chooses, the second judges


@dataclass
class StageOne:
    """What one stage-1 job returns: per-window rows and the job's training losses and wall seconds."""

    rows: list[dict[str, Any]]  # window, half, arm, config, steps, budget, bpb, skipped_fraction
    gates: list[dict[str, Any]] = field(default_factory=list)  # window, half, config, steps, gate_shift, gate_mean
    history: pd.DataFrame | None = None
    cost: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)  # the text's files, sizes, SHA-256 and token counts
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # the gates' weights at each stop
    config: str = ""  # the gate configuration trained (without its stop)


def _half(window: int, n: int) -> str:
    return HALVES[0] if window < n // 2 else HALVES[1]


def _rows(values: Any, base: dict[str, Any], task: str = "text", **columns: Any) -> list[dict[str, Any]]:
    """One row per window (question) of the per-window ``values`` of ``task``'s quality, tagged ``base`` and
    ``columns``; text's windows are split into halves, dictmc's questions all judge (nothing is chosen on them)."""
    n, metric = len(values), quality_column(task)
    return [{"task": task, **base, **columns, "window": i, "half": _half(i, n) if task == "text" else HALVES[1],
             metric: float(v)} for i, v in enumerate(values)]


def _load(cfg: Config, seed: int) -> tuple[nn.Module, TokenText, torch.device]:
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    model, tokenizer = pretrained.load(cfg.model)
    return model.to(device), TokenText(tokenizer, cfg, seed, "val"), device


def _reference_job(args: tuple[Config, int]) -> StageOne:
    """The pretrained LM without gates ("dense") and the unigram predictor ("trivial") on every validation window."""
    cfg, seed = args
    model, text, device = _load(cfg, seed)
    start = time.perf_counter()
    dense, _ = window_bpb(model, text, device=device)
    rows = _rows(dense, {"arm": "dense", "config": "", "steps": 0}, budget=0.0, skipped_fraction=0.0)
    trivial = window_trivial_bpb(text, model.config.vocab_size)
    rows += _rows(trivial, {"arm": "trivial", "config": "", "steps": 0}, budget=0.0, skipped_fraction=0.0)
    cost = [{"phase": "eval dense", "config": "", "seconds": time.perf_counter() - start}]
    return StageOne(rows, history=pd.DataFrame(), cost=cost, provenance=text.provenance)


def _importance(model: nn.Module, text: TokenText, device: torch.device) -> torch.Tensor:
    """Gate importance at r = 0 of every branch and token of every validation window: (branches, windows, tokens)."""
    batch = text.cfg.eval_batch
    parts = [importance_of(model, text.windows[i : i + batch].to(device)) for i in range(0, len(text.windows), batch)]
    return torch.cat(parts, dim=1)


def contexts(model: nn.Module, cfg: Config, budget: float, ranking: str, seed: int) -> SkipContext:
    """Fresh skip contexts at ``budget`` ranked by ``ranking``, one per forward, each with its own random draw (seeds
    ``seed * 10_000``, +1, ...): random ranking never repeats its pattern from one batch to the next."""
    draws = itertools.count(seed * 10_000)
    return lambda: skipping(model, cfg, budget, ranking=ranking, seed=next(draws))


def freeze_lm(model: nn.Module) -> None:
    """Train the residual gates alone: every other parameter stops taking gradients."""
    gates = {id(p) for p in gate.gate_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in gates)


def _gates_job(args: tuple[Config, Spec, tuple[int, ...], int, bool]) -> StageOne:
    """Train one gate configuration and score it on every validation window at each stop: full compute, and each
    premise budget ranked by the gates and at random."""
    cfg, spec, stops, seed, progress = args
    model, text, device = _load(cfg, seed)
    torch.manual_seed(40_000 + seed)  # every configuration starts from the same gates
    model = gate.add_gates(model, kind=cfg.gate_kind)
    if cfg.freeze_lm:
        freeze_lm(model)
    initial = _importance(model, text, device)
    label = dataclasses.replace(spec, steps=0).config
    out = StageOne([], config=label)

    def score(done: int) -> None:
        start = time.perf_counter()
        base = {"config": label, "gate_lr": spec.gate_lr, "sparsity_weight": spec.sparsity_weight, "steps": done}
        importance = _importance(model, text, device)
        shift, mean = (importance - initial).abs().mean(dim=(0, 2)), importance.mean(dim=(0, 2))
        out.states[done] = {k: v.detach().clone() for k, v in model.state_dict().items() if f".{gate.GATE_ATTR}." in k}
        out.gates += [
            {**base, "window": i, "half": _half(i, len(shift)), "gate_shift": float(s), "gate_mean": float(m)}
            for i, (s, m) in enumerate(zip(shift, mean, strict=True))
        ]
        full, _ = window_bpb(model, text, device=device)
        out.rows += _rows(full, {**base, "arm": "gateskip"}, budget=0.0, skipped_fraction=0.0)
        for budget in cfg.premise_budgets:
            for arm, ranking in (("gateskip", "gate"), (CONTROL, "random")):
                values, fraction = window_bpb(model, text, contexts(model, cfg, budget, ranking, seed), device)
                out.rows += _rows(values, {**base, "arm": arm}, budget=budget, skipped_fraction=fraction)
        out.cost.append({"phase": "eval gateskip", "config": label, "seconds": time.perf_counter() - start})

    start = time.perf_counter()
    history = finetune(model, text, cfg, spec, seed, stops, score, progress)
    out.cost.append({"phase": "train gates", "config": label,
                     "seconds": time.perf_counter() - start - sum(c["seconds"] for c in out.cost)})
    model.eval()
    score(spec.steps)
    out.history = history.assign(config=label, phase="train gates")
    return out


def _mc_job(args: tuple[Config, int, dict[str, torch.Tensor] | None, dict[str, Any], tuple]) -> StageOne:
    """GCIDE multiple choice on the pretrained LM (``state`` None: "dense"), or on it with the chosen ``state`` of the
    gates, as ``point`` says: (arm, ranking, budget), ranking None for full compute."""
    cfg, seed, state, base, (arm, ranking, budget) = args
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    model, tokenizer = pretrained.load(cfg.model)
    model = model.to(device)
    if state is not None:
        model = gate.add_gates(model, kind=cfg.gate_kind)
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"gate weights {unexpected[:3]} do not fit the gated {cfg.model!r}")
    mc = DictMC(tokenizer, cfg, seed, cfg.mc_questions)
    out, start = StageOne([]), time.perf_counter()
    context = contexts(model, cfg, budget, ranking, seed) if ranking else None
    values, fraction = mc_correct(model, mc, context, device)
    out.rows += _rows(values, {**base, "arm": arm}, "dictmc", budget=budget, skipped_fraction=fraction)
    out.cost.append({"phase": "eval dictmc", "config": base["config"], "seconds": time.perf_counter() - start})
    return out


def _dictmc(cfg: Config, seed: int, state: dict[str, torch.Tensor], chosen: dict[str, Any], progress: bool
            ) -> list[StageOne]:
    """GCIDE multiple choice for the pretrained LM and the gates chosen on text (``state``, trained as ``chosen``
    says), in four one-pass jobs; the trivial predictor guesses (1 / options per question)."""
    budget = cfg.premise_budgets[-1]
    args = [
        (cfg, seed, None, {"config": "", "steps": 0}, ("dense", None, 0.0)),
        (cfg, seed, state, chosen, ("gateskip", None, 0.0)),
        (cfg, seed, state, chosen, ("gateskip", "gate", budget)),
        (cfg, seed, state, chosen, (CONTROL, "random", budget)),
    ]
    done = jobs.run_jobs(_mc_job, args, workers=cfg.workers, desc="gateskip dictmc", progress=progress)
    guess = [dict(row, arm="trivial", accuracy=1 / MC_OPTIONS) for row in done[0].rows]
    return [*done, StageOne(guess)]


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Stage 1: the reference scores and one gate-training job per GateSkip configuration of the grid, in
    ``cfg.workers`` processes, on ``cfg.premise_seed``; then, with ``dictmc``, the multiple-choice jobs of the
    chosen gates. Tables: ``premise_curves`` (per window or question: dense, trivial, and every configuration x stop
    x arm x budget), ``premise_gates`` (per window: gate shift and mean per configuration x stop), ``history``,
    ``cost`` and ``provenance``; the chosen configuration's scalar gate weights are its artefacts."""
    model, _ = pretrained.load(cfg.model)  # converts the GGUF once, before the workers read the converted copy
    parameters = sum(p.numel() for p in model.parameters())
    del model
    seed = cfg.premise_seed
    inner = progress and cfg.workers == 1
    runs = [(spec, stops) for spec, stops in tuning_runs(tuning_grid(cfg)) if spec.family == "gateskip"]
    args = [(cfg, spec, stops, seed, inner) for spec, stops in runs] + [(cfg, seed)]  # the longest jobs first
    fns = [_gates_job] * len(runs) + [_reference_job]
    done = jobs.run_jobs(_dispatch, list(zip(fns, args, strict=True)), workers=cfg.workers,
                         desc="gateskip stage 1", progress=progress)
    curves = pd.DataFrame([row for out in done for row in out.rows])
    gates = pd.DataFrame([row for out in done for row in out.gates])
    choice = stage1_choice(curves, gates, cfg.premise_budgets[-1])
    pick = choice[choice.chosen].iloc[0]
    state = next(out.states[pick.steps] for out in done[: len(runs)] if out.config == pick.config)
    if "dictmc" in cfg.tasks:
        done += _dictmc(cfg, seed, state, {"config": pick.config, "steps": int(pick.steps)}, progress)
    spec = pretrained.MODELS[cfg.model]
    provenance = {"model": cfg.model, "source": spec.source, "gguf": spec.gguf, "gguf_sha256": spec.gguf_sha256,
                  "parameters": parameters, "weights": "Q4_1 dequantized to float32", "seed": seed}
    cost = pd.DataFrame([row for out in done for row in out.cost])
    tables = {
        "premise_curves": pd.DataFrame([row for out in done for row in out.rows]),
        "premise_gates": gates,
        "history": pd.concat([out.history for out in done if out.history is not None and len(out.history)],
                             ignore_index=True),
        "cost": cost,
        "provenance": pd.DataFrame([{"task": "text", **provenance, "data": json.dumps(done[len(runs)].provenance)}]),
    }
    timings = {phase: float(seconds) for phase, seconds in cost.groupby("phase").seconds.sum().items()}
    # the chosen scalar gates (34,620 values) for gate.load_gates (benchmarks/gateskip_speed.py); vector gates (46.5 M
    # values on SmolLM2) would be a checkpoint, not an artefact a report commits
    return Computed(tables, state if cfg.gate_kind == "scalar" else {}, timings)


def chosen_spec(cfg: Config, tables: dict[str, pd.DataFrame]) -> tuple[Spec, list[str]]:
    """The gate configuration stage 1 chose, stopped at its chosen step, and why stage 2 may not run on it
    (:func:`~.selection.stage2_blockers`; empty: it may)."""
    choice = stage1_choice(tables["premise_curves"], tables["premise_gates"], cfg.premise_budgets[-1])
    pick = choice[choice.chosen].iloc[0]
    spec = next(s for s in tuning_grid(cfg) if s.family == "gateskip" and s.steps == pick.steps
                and dataclasses.replace(s, steps=0).config == pick.config)
    return spec, stage2_blockers(pick)


def _dispatch(job: tuple[Any, Any]) -> StageOne:
    fn, args = job
    return fn(args)
