"""Stage 2 on a real pretrained LLM: GateSkip against its baselines on fresh test seeds.

Stage 1 (:mod:`.premise`) chose one gate configuration on validation; here it is frozen and trained again on each of
``cfg.seeds`` fresh test seeds (100 ..: new gate initialisation, training batches, test windows and questions). The
LM stays frozen as in stage 1, so the pretrained LM is the ``dense`` arm and the static baselines act on it; the
paper's random-skip fine-tune trains the LM and has no frozen counterpart, so it is not run. Per seed:

- ``gateskip``: the chosen gates, scored at every budget of ``cfg.budgets`` with tokens ranked by the gates, and
  ``gateskip + random rank``: the same model ranked at random (the learned ranking is the only difference);
- ``shortgpt`` and ``uls``: static branch and layer removal on the pretrained LM (ShortGPT's block influence on the
  seed's training calibration windows), at the sets ``cfg.budgets`` reaches, credited at the fraction they skip;
- ``dense`` (the pretrained LM) and ``trivial`` (the unigram predictor on text, a guess on multiple choice).

Text is scored teacher-forced on the seed's test windows (bits per byte, with the FLOPs of compact execution beside
the token x branch fraction) and decoded token by token with a KV cache (:func:`~..data.decoded_bpb`: batch scope, and
sequence scope with per-branch thresholds calibrated on validation windows); multiple choice on the seed's GCIDE test
questions. The convergence check trains the first test seed's gates on ``budget_factor`` x the schedule; both runs
are scored on validation windows. The rows have the tiny model's columns (:mod:`.compute`), so one judgement reads
both regimes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import gate, jobs, profile, seed_everything, skip
from labkit.experiments.gateskip.arms.finetune import SCOPES, ArmResults, finetune, static_sets
from labkit.experiments.gateskip.arms.grid import CONTROL, STATIC, Spec, longer
from labkit.experiments.gateskip.arms.premise import contexts, freeze_lm
from labkit.experiments.gateskip.config import Config, test_seeds
from labkit.experiments.gateskip.data import (
    MC_OPTIONS,
    DictMC,
    SkipContext,
    TokenText,
    decoded_bpb,
    executed_flops,
    importance_of,
    mc_correct,
    skipping,
    window_bpb,
    window_trivial_bpb,
)
from labkit.models import pretrained

PRETRAINED = "pretrained LM (frozen)"  # the config label of the dense arm and of the static arms acting on it
STAGE = "stage 2 "  # prefix of stage 2's cost phases (stage 1 trains and scores gates too)


@dataclasses.dataclass
class _Seed:
    """One job's model, data and row builders for one seed."""

    cfg: Config
    seed: int
    model: nn.Module
    tokenizer: Any
    device: torch.device
    split: str = "test"  # "test", or "val" for the convergence check
    text: TokenText = dataclasses.field(init=False)  # the seed's windows of the split (training batches: the same)
    dense_flops: int = 0  # FLOPs of the ungated pretrained LM over the FLOPs batch: the 0 % saved reference
    out: ArmResults = dataclasses.field(default_factory=lambda: ArmResults([]))

    def __post_init__(self) -> None:
        self.text = TokenText(self.tokenizer, self.cfg, self.seed, self.split)

    def on(self, split: str) -> _Seed:
        """The same job (model, rows) reading the seed's windows of ``split``."""
        return _Seed(self.cfg, self.seed, self.model, self.tokenizer, self.device, split, out=self.out,
                     dense_flops=self.dense_flops)

    @property
    def flops_input(self) -> torch.Tensor:
        """The batch whose executed FLOPs are counted: the first ``flops_batch`` windows."""
        return self.text.windows[: self.cfg.flops_batch].to(self.device)

    def timed(self, phase: str, fn: Callable[[], Any], task: str = "text") -> Any:
        start = time.perf_counter()
        value = fn()
        self.out.cost.append({"task": task, "seed": self.seed, "split": self.split, "phase": STAGE + phase,
                              "seconds": time.perf_counter() - start})
        return value

    def row(self, task: str, arm: str, columns: dict[str, Any], budget: float, quality: dict[str, float]) -> dict:
        return {"task": task, "seed": self.seed, "split": self.split, "arm": arm, **columns, "budget": budget,
                **quality}

    def text_point(self, arm: str, columns: dict[str, Any], budget: float, make: Callable[[str, bool], SkipContext]
                   | None) -> dict:
        """Bits per byte of the seed's windows at one point (``make(execution, measure_flops)`` builds its skip
        context; None: full compute), with the FLOPs of compact execution over the FLOPs batch on test."""
        values, fraction = window_bpb(self.model, self.text, make("masked", False) if make else None, self.device)
        row = self.row("text", arm, columns, budget, {"bpb": float(np.mean(values)), "skipped_fraction": fraction})
        if self.split == "test":
            executed = executed_flops(self.model, self.flops_input, make("compact", True) if make else None)
            row.update(flops=executed, flops_saved=1.0 - executed / self.dense_flops)
        return row

    def mc_point(self, mc: DictMC, arm: str, columns: dict[str, Any], budget: float, context: SkipContext | None
                 ) -> dict:
        values, fraction = mc_correct(self.model, mc, context, self.device)
        return self.row("dictmc", arm, columns, budget, {"accuracy": float(np.mean(values)),
                                                          "skipped_fraction": fraction})

    def decode_point(self, arm: str, config: str, scope: str, budget: float, context: SkipContext | None) -> dict:
        values, fraction = decoded_bpb(self.model, self.text, context, self.device)
        return {"task": "text", "seed": self.seed, "split": self.split, "arm": arm, "config": config, "scope": scope,
                "budget": budget, "bpb": float(np.mean(values)), "skipped_fraction": fraction}


def _load(cfg: Config, seed: int, split: str) -> _Seed:
    seed_everything(seed, threads=cfg.threads)
    device = profile.resolve_device(cfg.device)
    model, tokenizer = pretrained.load(cfg.model)
    job = _Seed(cfg, seed, model.to(device).eval(), tokenizer, device, split)
    job.dense_flops = executed_flops(job.model, job.flops_input)
    return job


def _mc(job: _Seed) -> DictMC | None:
    return DictMC(job.tokenizer, job.cfg, job.seed, job.cfg.mc_test_questions, "test") if "dictmc" in job.cfg.tasks \
        else None


def _over_budgets(cfg: Config, arms: tuple[tuple[str, str], ...], score: Callable[[str, str, float], list[dict]]
                  ) -> list[dict]:
    """``score(arm, ranking, budget)`` at every budget of every arm. At r = 0 nothing is skipped whatever the ranking,
    so every arm after the first takes the first arm's r = 0 rows, relabelled (budgets ascend from 0: Config)."""
    rows: list[dict] = []
    full: list[dict] = []
    for k, (arm, ranking) in enumerate(arms):
        for budget in cfg.budgets:
            if budget == 0 and k > 0:
                rows += [dict(row, arm=arm) for row in full]
                continue
            new = score(arm, ranking, budget)
            full = new if budget == 0 else full
            rows += new
    return rows


def _gates_job(args: tuple[Config, Config, Spec, int, tuple[str, ...], bool]) -> ArmResults:
    """Train the chosen gates on one seed (``run_cfg``: the schedule, longer for the convergence check) and score
    them on each split of ``splits``: on test, every arm x budget x task and decoding scope; on validation (the
    convergence check), GateSkip at every budget. Rows carry ``run_budget``, the schedule's multiple."""
    cfg, run_cfg, spec, seed, splits, progress = args
    job = _load(cfg, seed, splits[0])
    torch.manual_seed(40_000 + seed)  # the gates' initialisation of this seed, as in stage 1
    job.model = gate.add_gates(job.model, kind=cfg.gate_kind)
    freeze_lm(job.model)
    first = job.text.windows[: cfg.eval_batch].to(job.device)
    initial = importance_of(job.model, first)
    history = job.timed("train gates", lambda: finetune(job.model, job.text, run_cfg, spec, seed, (),
                                                        lambda done: None, progress))
    job.model.eval()
    importance = importance_of(job.model, first)
    factor = run_cfg.finetune_steps / cfg.finetune_steps
    columns = {**spec.columns(), "gate_mean": float(importance.mean()),
               "gate_shift": float((importance - initial).abs().mean()), "run_budget": factor}
    job.out.history = history.assign(seed=seed, split=splits[0], phase="train gates", run_budget=factor)
    for split in splits:
        _score_gates(job.on(split), columns)
    return job.out


def _score_gates(job: _Seed, columns: dict[str, Any]) -> None:
    """GateSkip's rows on the job's split (test: its control's too, decoded text and multiple choice)."""
    cfg = job.cfg
    arms = (("gateskip", "gate"), (CONTROL, "random")) if job.split == "test" else (("gateskip", "gate"),)

    def text(arm: str, ranking: str, budget: float) -> list[dict]:
        make = _maker(job, budget, ranking) if budget > 0 else None
        return [job.timed(f"eval {arm}", lambda: job.text_point(arm, columns, budget, make))]

    job.out.rows += _over_budgets(cfg, arms, text)
    if job.split != "test":
        return
    job.out.generation += job.timed("decode gateskip", lambda: _decode_gated(job, arms, columns["config"]))
    mc = _mc(job)
    if mc is not None:
        def choice(arm: str, ranking: str, budget: float) -> list[dict]:
            context = contexts(job.model, cfg, budget, ranking, job.seed) if budget > 0 else None
            return [job.timed("eval", lambda: job.mc_point(mc, arm, columns, budget, context), "dictmc")]

        job.out.rows += _over_budgets(cfg, arms, choice)


def _maker(job: _Seed, budget: float, ranking: str) -> Callable[[str, bool], SkipContext]:
    def make(execution: str, flops: bool) -> SkipContext:
        """Masked execution scores quality (a fresh random draw per forward); compact execution counts FLOPs."""
        if execution == "masked":
            return contexts(job.model, job.cfg, budget, ranking, job.seed)
        return lambda: skipping(job.model, job.cfg, budget, ranking=ranking, seed=job.seed, execution=execution,
                                measure_flops=flops)

    return make


def _decode_gated(job: _Seed, arms: tuple[tuple[str, str], ...], config: str) -> list[dict]:
    """Decoded bits per byte of GateSkip and its control at every budget, per scope; sequence-scope thresholds of the
    gates are calibrated on the seed's validation windows (random ranking compares no thresholds)."""
    cfg = job.cfg
    batches = list(job.on("val").text.windows[: cfg.decode_windows].to(job.device).split(cfg.eval_batch))

    def decoded(arm: str, ranking: str, budget: float) -> list[dict]:
        rows = []
        for scope in SCOPES:
            thresholds = None
            if scope == "sequence" and ranking == "gate" and budget > 0:
                thresholds = skip.calibrate_thresholds(job.model, batches, budget)
            context = (lambda t=thresholds, s=scope: skipping(job.model, cfg, budget, scope=s, ranking=ranking,
                                                               thresholds=t, seed=job.seed)) if budget > 0 else None
            rows.append(job.decode_point(arm, config, scope, budget, context))
        return rows

    return _over_budgets(cfg, arms, decoded)


def _static_job(args: tuple[Config, int, bool]) -> ArmResults:
    """The pretrained LM on one test seed: dense and trivial, and ShortGPT's and ULS's sets (teacher-forced, decoded,
    multiple choice); with ``check``, also dense on the seed's validation windows (the convergence check's
    reference)."""
    cfg, seed, check = args
    job = _load(cfg, seed, "test")
    dense = {"family": "dense", "config": PRETRAINED, "run_budget": 1.0}
    if check:
        val = job.on("val")
        job.out.rows.append(val.timed("eval dense", lambda: val.text_point("dense", dense, 0.0, None)))
    job.out.rows.append(job.timed("eval dense", lambda: job.text_point("dense", dense, 0.0, None)))
    trivial = window_trivial_bpb(job.text, job.model.config.vocab_size)
    job.out.rows.append(job.row("text", "trivial", dense, 0.0, {"bpb": float(np.mean(trivial))}))
    job.out.generation += [job.decode_point("dense", PRETRAINED, scope, 0.0, None) for scope in SCOPES]
    calibration = [batch.to(job.device) for batch in job.text.calibration()]
    sets = job.timed("static orders", lambda: static_sets(job.model, calibration, job.model.config.num_hidden_layers,
                                                         cfg.budgets))
    mc = _mc(job)
    if mc is not None:
        job.out.rows.append(job.timed("eval", lambda: job.mc_point(mc, "dense", dense, 0.0, None), "dictmc"))
        job.out.rows.append(job.row("dictmc", "trivial", dense, 0.0, {"accuracy": 1 / MC_OPTIONS}))
    for arm in STATIC:
        for layers in sets[arm]:
            _score_static(job, mc, arm, layers)
    return job.out


def _score_static(job: _Seed, mc: DictMC | None, arm: str, layers: list[Any]) -> None:
    """One static set's rows: teacher-forced (with FLOPs), decoded (no ranking: the same in both scopes) and multiple
    choice, each at the fraction it skips."""
    def make(execution: str, flops: bool) -> SkipContext:
        return lambda: skip.static_skip(job.model, layers, execution, measure_flops=flops)

    columns = {"family": "dense", "config": PRETRAINED, "removed": str(layers)}
    point = job.timed(f"eval {arm}", lambda: job.text_point(arm, columns, 0.0, make))
    job.out.rows.append(dict(point, budget=point["skipped_fraction"]))  # a static point sits at its own fraction
    decoded = job.timed(f"decode {arm}", lambda: job.decode_point(arm, PRETRAINED, "batch", 0.0, make("masked", False)))
    job.out.generation += [dict(decoded, scope=scope, budget=decoded["skipped_fraction"]) for scope in SCOPES]
    if mc is not None:
        point = job.timed(f"eval {arm}", lambda: job.mc_point(mc, arm, columns, 0.0, make("masked", False)), "dictmc")
        job.out.rows.append(dict(point, budget=point["skipped_fraction"]))


def compute(cfg: Config, spec: Spec, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Stage 2 of the gate configuration ``spec`` chosen in stage 1: one gate-training job and one pretrained-LM job
    per test seed (the first seed's also scored on validation) and the convergence check's longer run, in
    ``cfg.workers`` processes. Tables: ``curves`` (per task x seed x arm x point on test; ShortGPT and ULS also name
    the branches ``removed``), ``generation`` (decoded text per scope), ``budget_runs`` (validation rows of the
    first test seed's 1x and longer runs and of the pretrained LM, tagged ``chosen_config`` and ``run_budget``),
    ``trivial``, ``history``, ``cost`` and ``provenance`` (the test text and questions)."""
    seeds = test_seeds(cfg)
    first = seeds[0]
    run_cfg, run_spec = longer(cfg, spec, cfg.budget_factor)
    inner = progress and cfg.workers == 1
    args: list[tuple[Callable, tuple]] = [(_gates_job, (cfg, run_cfg, run_spec, first, ("val",), inner))]
    args += [(_gates_job, (cfg, cfg, spec, s, ("test", "val") if s == first else ("test",), inner)) for s in seeds]
    args += [(_static_job, (cfg, s, s == first)) for s in seeds]  # the longest jobs first
    done = jobs.run_jobs(_dispatch, args, workers=cfg.workers, desc="gateskip stage 2", progress=progress)
    rows = pd.DataFrame([row for out in done for row in out.rows])
    val, test = rows[rows.split == "val"], rows[rows.split == "test"]
    _, tokenizer = pretrained.load(cfg.model)
    data = {"text": TokenText(tokenizer, cfg, first, "test").provenance["test"],
            "dictmc": f"GCIDE headwords of the test split (hash bucket), {cfg.mc_test_questions} per seed"}
    return {
        "curves": test[test.arm != "trivial"].drop(columns="run_budget").reset_index(drop=True),
        "generation": pd.DataFrame([row for out in done for row in out.generation]),
        "budget_runs": val.assign(chosen_config=np.where(val.arm == "gateskip", spec.config, PRETRAINED)),
        "trivial": test[test.arm == "trivial"].dropna(axis=1, how="all").reset_index(drop=True),
        "history": pd.concat([out.history for out in done if out.history is not None], ignore_index=True),
        "cost": pd.DataFrame([row for out in done for row in out.cost]),
        "provenance": pd.DataFrame([{"task": "text", "stage": 2, "data": json.dumps(data)}]),
    }


def check_text(cfg: Config) -> None:
    """Raise now if the held-out text cannot give every test seed its windows (the last seed's are the furthest), not
    after stage 1's hour."""
    _, tokenizer = pretrained.load(cfg.model)
    for split in ("test", "val"):
        TokenText(tokenizer, cfg, test_seeds(cfg)[-1], split)


def _dispatch(job: tuple[Callable, tuple]) -> ArmResults:
    fn, args = job
    return fn(args)
