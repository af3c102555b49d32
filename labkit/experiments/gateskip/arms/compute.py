"""GateSkip's runs: tune every family on validation, freeze each role's choice, run the choices on fresh test seeds,
and rerun every trained choice at 1x and ``budget_factor`` x for the convergence check. Returns what training
produced (:class:`~labkit.experiments.Computed`); the judgement reads only that.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from labkit import gate, jobs, profile
from labkit.experiments import Computed
from labkit.experiments.gateskip.arms import comparison, premise
from labkit.experiments.gateskip.arms.finetune import ArmResults, Pretrained, pretrain, run_arm
from labkit.experiments.gateskip.arms.grid import Spec, longer, tuning_grid, tuning_runs
from labkit.experiments.gateskip.arms.selection import choose
from labkit.experiments.gateskip.config import Config, test_seeds, tune_seeds
from labkit.experiments.gateskip.data import Task, trivial_quality

T = TypeVar("T")
MODEL_PREFIX = "model."  # Computed.tensors keys of the widget's GateSkip model (its state dict); "examples": its batch
EXAMPLES = "examples"


def _pretrain_job(args: tuple[Config, str, int, str, bool]) -> Pretrained:
    cfg, task_name, seed, workdir, progress = args
    return pretrain(cfg, task_name, seed, Path(workdir), progress)


def _arm_job(
    args: tuple[Config, Pretrained, Spec, str, str, tuple[str, ...], tuple[int, ...], bool],
) -> ArmResults:
    cfg, pre, spec, split, workdir, roles, stops, progress = args
    return run_arm(cfg, pre, spec, split, Path(workdir), roles, stops, progress)


def _test_jobs(chosen: pd.DataFrame) -> list[tuple[str, Spec, tuple[str, ...]]]:
    """(task, spec, roles) per frozen choice; one dense fine-tune serves every role that chose its lr."""
    out = []
    for task_name, group in chosen.groupby("task", sort=False):
        by_spec: dict[Spec, list[str]] = {}
        for row in group.to_dict("records"):
            by_spec.setdefault(row["spec"], []).append(row["role"])
        out += [(task_name, spec, tuple(roles)) for spec, roles in by_spec.items()]
    return out


def budget_jobs(cfg: Config, chosen: pd.DataFrame) -> list[tuple[str, Spec, Config, Spec, float]]:
    """The convergence check's runs: (task, chosen spec, config and spec of the run, budget) for every trained choice
    (one dense fine-tune per distinct dense spec, GateSkip, random skip), at 1x and at ``cfg.budget_factor`` x.

    Both run on the first test seed and are scored on its validation split: the 1x run trains exactly as that seed's
    test run (same checkpoint, batches and schedule; jobs do not depend on each other), the longer one stretches the
    schedule, skip ramp and chosen stopping step together (:func:`~.grid.longer`). There is no patience to
    scale: the stopping step is a fraction of the schedule, chosen on validation.
    """
    out = []
    for task, spec, _ in _test_jobs(chosen):
        out += [(task, spec, cfg, spec, 1.0), (task, spec, *longer(cfg, spec, cfg.budget_factor), cfg.budget_factor)]
    return out


@contextlib.contextmanager
def _workdir() -> Iterator[str]:
    """Where checkpoints go: inside the run's job cache when it has one (a resumed run's cached jobs point at
    checkpoints that still exist, and their keys do not change), else a temporary folder."""
    cache = jobs.cache_dir()
    if cache is not None:
        folder = cache / "gateskip-checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        yield str(folder)
        return
    with tempfile.TemporaryDirectory(prefix="labkit-gateskip-") as tmp:
        yield tmp


def _pretrained_llm(cfg: Config, progress: bool) -> Computed:
    """Stage 1 (:mod:`.premise`), then stage 2 (:mod:`.comparison`) of the gates it chose when ``cfg.compare`` and
    stage 1's choice allows it (:func:`~.selection.stage2_blockers`); stage 2's tables join stage 1's (history, cost
    and provenance appended)."""
    if cfg.compare:
        comparison.check_text(cfg)
    computed = premise.compute(cfg, progress)
    spec, blockers = premise.chosen_spec(cfg, computed.tables)
    if not cfg.compare or blockers:
        return computed
    tables = dict(computed.tables)
    for name, table in comparison.compute(cfg, spec, progress).items():
        appended = name in ("history", "cost", "provenance")  # stage 1's rows first
        tables[name] = pd.concat([tables[name], table], ignore_index=True) if appended else table
    cost = tables["cost"]
    timings = {phase: float(seconds) for phase, seconds in cost.groupby("phase").seconds.sum().items()}
    return Computed(tables, computed.tensors, timings)


def compute(cfg: Config, progress: bool = True) -> Computed:
    """With a real pretrained LLM (``cfg.model`` other than "tiny"): stage 1, the premise on validation
    (:func:`labkit.experiments.gateskip.arms.premise.compute`), then stage 2 on test seeds
    (:func:`labkit.experiments.gateskip.arms.comparison.compute`). Else tune every family on validation, freeze the
    choices, run them on test with fresh seeds, and rerun the first test seed of every trained choice at
    ``budget_factor`` x its schedule (the convergence check).

    Jobs (pretraining per task and seed, then one fine-tune per configuration) run in ``cfg.workers`` spawned
    processes of ``cfg.threads`` threads (:func:`labkit.jobs.run_jobs`); per-step bars only in-process. Tables:
    ``curves`` (every teacher-forced row, validation and test), ``generation``, ``budget_runs`` (the convergence
    reruns, tagged ``chosen_config`` and ``run_budget``), ``trivial``, ``gates``, ``skips``, ``history``, ``cost``
    (wall seconds) and ``provenance``; tensors: the first test seed's GateSkip model of the first task (its state
    dict under ``model.``) and its first test batch (``examples``) for the token widget.
    """
    if cfg.model != "tiny":
        return _pretrained_llm(cfg, progress)
    inner = progress and cfg.workers == 1

    def run(fn: Callable[[Any], T], args: list[Any], desc: str) -> list[T]:
        return jobs.run_jobs(fn, args, workers=cfg.workers, desc=f"gateskip {desc}", progress=progress)

    with _workdir() as tmp:
        seeds = tune_seeds(cfg) + test_seeds(cfg)
        pretrained = {
            (p.task, p.seed): p
            for p in run(_pretrain_job, [(cfg, t, s, tmp, inner) for t in cfg.tasks for s in seeds], "pretrain")
        }
        tune_args = [
            (cfg, pretrained[t, s], spec, "val", tmp, (), stops, inner)
            for t in cfg.tasks
            for s in tune_seeds(cfg)
            for spec, stops in tuning_runs(tuning_grid(cfg))
        ]
        tuned = run(_arm_job, tune_args, "tune")
        val = pd.DataFrame([row for out in tuned for row in out.rows])
        chosen, _ = choose(val, cfg.levels[0])
        test_args = [
            (cfg, pretrained[t, s], spec, "test", tmp, roles, (), inner)
            for t, spec, roles in _test_jobs(chosen)
            for s in test_seeds(cfg)
        ]
        reruns = budget_jobs(cfg, chosen)
        first = test_seeds(cfg)[0]
        rerun_args = [
            (run_cfg, pretrained[t, first], run_spec, "val", tmp, ("dense",), (), inner)
            for t, _, run_cfg, run_spec, _ in reruns
        ]
        done = run(_arm_job, rerun_args + test_args, "test and budget")  # the longest jobs first: none ends last
        checked, tested = done[: len(rerun_args)], done[len(rerun_args) :]
        device = profile.resolve_device(cfg.device)
        trivial = [
            {"task": t, "seed": s, "arm": "trivial", **trivial_quality(Task(t, cfg, s, device))}
            for t in cfg.tasks
            for s in test_seeds(cfg)
        ]
        saved_model = next(o for o in tested if o.model_path is not None)
        model = gate.from_pretrained(saved_model.model_path).to(device).eval()
        tensors = {MODEL_PREFIX + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        tensors[EXAMPLES] = Task(cfg.tasks[0], cfg, first, device).tokens("test")[: cfg.eval_batch].clone()
    outs = tuned + tested
    budget_runs = [
        dict(row, chosen_config=spec.config, run_budget=factor)
        for out, (_, spec, *_, factor) in zip(checked, reruns, strict=True)
        for row in out.rows
    ]
    history = pd.concat(
        [p.history.assign(split="pretrain") for p in pretrained.values()]
        + [out.history for out in outs]
        + [out.history.assign(split="budget", run_budget=job[-1]) for out, job in zip(checked, reruns, strict=True)],
        ignore_index=True,
    )
    cost = [
        {"task": p.task, "seed": p.seed, "split": "pretrain", "phase": "pretrain", "seconds": p.seconds}
        for p in pretrained.values()
    ]
    cost += [dict(row, split="budget", phase=f"budget {row['phase']}") for out in checked for row in out.cost]
    cost = pd.DataFrame(cost + [row for out in outs for row in out.cost])
    provenance = {  # per task: LM size and data provenance (text: stdlib files and SHA-256 per split)
        task: {"task": task, "parameters": p.parameters, "data": json.dumps(p.provenance)}
        for (task, _), p in pretrained.items()
    }
    tables = {
        "curves": pd.DataFrame([row for out in outs for row in out.rows]),
        "generation": pd.DataFrame([row for out in outs for row in out.generation]),
        "budget_runs": pd.DataFrame(budget_runs),
        "trivial": pd.DataFrame(trivial),
        "gates": pd.DataFrame([row for out in tested for row in out.gates]),
        "skips": pd.DataFrame([row for out in tested for row in out.skips]),
        "history": history,
        "cost": cost,
        "provenance": pd.DataFrame(provenance.values()),
    }
    timings = {phase: float(seconds) for phase, seconds in cost.groupby("phase").seconds.sum().items()}
    return Computed(tables, tensors, timings)
