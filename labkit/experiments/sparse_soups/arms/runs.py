"""The Sparse Model Soups runs: one job per (arm, seed) from the seed's dense model, the budget check's reruns of the
first seed, and :func:`compute`, which gathers their rows into the computed tables.

Arms, all at the same final sparsity and paired by seed: IMP (one prune-retrain chain); IMP m x (retrained m x
longer per phase: equal compute); SWA (per phase, m retraining cycles one after the other, their ends averaged:
equal compute, the baseline an OpenReview reviewer asked for); SMS with a uniform and with a greedy soup, each its
own chain (each phase retrains m copies of one pruned model, soups them, and starts the next phase from the soup);
the last phase's ingredients (logged per member: their mean and the best on validation are read off in judgement);
their prediction ensemble (m x inference); and the naive average of independent IMP chains (different masks),
before and after re-pruning it to the target. BatchNorm is recalibrated after every retrain and merge, for every arm.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from labkit import merge, prune
from labkit.experiments import Computed
from labkit.experiments.sparse_soups.arms.training import (
    Clock,
    accuracy,
    evaluate,
    imp_chain,
    loaded,
    phase_row,
    recalibrate,
    scores,
    sms_chain,
    swa_chain,
    train,
    val_acc,
)
from labkit.experiments.sparse_soups.config import (
    CHANCE,
    DENSE,
    GREEDY_OF_UNIFORM,
    INGREDIENT,
    NAIVE,
    REPRUNED,
    Config,
    longer,
    trained_arms,
)
from labkit.experiments.sparse_soups.data import Data, cached_data, chance_accuracy
from labkit.jobs import run_jobs
from labkit.models.vision import VisionConfig, build, predict
from labkit.profile import seed_everything

# The computed tables (one list of rows each per job): the raw material every verdict and figure is judged from.
TABLES = ("phases", "trained", "naive", "curves", "soups", "val_curves", "longer")


def template(cfg: Config, data: Data) -> nn.Module:
    """The untrained network for ``data`` (weights drawn from torch's global RNG)."""
    shape = tuple(data.train_x.shape[1:])
    return build(VisionConfig(cfg.arch, shape, int(data.train_y.max()) + 1, cfg.width, cfg.depth)).to(
        data.train_x.device
    )


def _final(seed: int, arm: str, model: nn.Module, data: Data) -> dict[str, Any]:
    """A row of the ``trained`` table: a final model's sparsity and scores."""
    return {"seed": seed, "arm": arm, "sparsity": prune.sparsity(model), **evaluate(model, data),
            "val_acc": val_acc(model, data)}


def _curve_rows(seed: int, arm: str, curves: list[list[float]]) -> list[dict[str, Any]]:
    """Rows of the ``val_curves`` table: one curve per member (SMS ingredients) or a single one (member -1)."""
    one = len(curves) == 1
    return [{"seed": seed, "arm": arm, "member": -1 if one else j, "point": k + 1, "val_acc": v}
            for j, curve in enumerate(curves) for k, v in enumerate(curve)]


def _ensemble_row(cfg: Config, data: Data, seed: int, ingredients: list[nn.Module]) -> dict[str, Any]:
    """The last phase's ingredients as a prediction ensemble (mean probabilities: m x the inference cost)."""
    probs_t = torch.stack([predict(i, data.test_x) for i in ingredients]).mean(0)
    probs_o = torch.stack([predict(i, data.ood_x) for i in ingredients]).mean(0)
    probs_v = torch.stack([predict(i, data.val_x) for i in ingredients]).mean(0)
    return {
        "seed": seed,
        "arm": f"prediction ensemble ({cfg.m}x inference)",
        "sparsity": prune.sparsity(ingredients[0]),
        **scores(probs_t, probs_o, data),
        "val_acc": accuracy(probs_v, data.val_y),
    }


def _naive_average(
    cfg: Config, data: Data, seed: int, dense: nn.Module, imp: list[tuple[nn.Module, prune.Masks]], clock: Clock
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Final rows of the naive average of independent IMP chains (different masks), before and after re-pruning it
    to the goal, and its row of the ``naive`` table (how much the masks overlap)."""
    start = time.perf_counter()
    avg = loaded(dense, merge.average([m.state_dict() for m, _ in imp]), data, cfg)
    out = [_final(seed, NAIVE, avg, data)]
    pruned = copy.deepcopy(avg)
    prune.apply_masks(pruned, prune.magnitude_masks(pruned, cfg.goal_sparsity)).remove()
    recalibrate(pruned, data, cfg)
    out.append(_final(seed, REPRUNED, pruned, data))
    ious = [prune.mask_iou(imp[a][1], imp[b][1]) for a in range(len(imp)) for b in range(a + 1, len(imp))]
    naive = {"seed": seed, "mean_mask_iou": float(np.mean(ious)), "runs": len(imp),
             "naive_sparsity": prune.sparsity(avg), "goal": cfg.goal_sparsity}
    clock.add("naive average", start)
    return out, [naive]


def _path(cfg: Config, data: Data, seed: int, dense: nn.Module, path: str, a: nn.Module, b: nn.Module,
          clock: Clock) -> list[dict[str, Any]]:
    """Scores along the straight line between ``a`` and ``b`` (BN recalibrated at every point)."""
    start = time.perf_counter()
    rows = []
    for alpha in np.linspace(0, 1, cfg.curve_points):
        mdl = loaded(dense, merge.lerp(a.state_dict(), b.state_dict(), float(alpha)), data, cfg)
        rows.append({"seed": seed, "path": path, "alpha": float(alpha), "sparsity": prune.sparsity(mdl),
                     **evaluate(mdl, data)})
    clock.add("curves", start)
    return rows


def _dense_job(cfg: Config, seed: int, data: Data) -> dict[str, Any]:
    """The dense model every chain of ``seed`` starts from (pretrained, BN recalibrated); logged as phase 0."""
    seed_everything(seed, threads=cfg.threads)
    clock = Clock()
    start = time.perf_counter()
    dense = train(template(cfg, data), data, cfg, epochs=cfg.pretrain_epochs, lr=cfg.lr,
                  weight_decay=cfg.weight_decay, seed=seed * 7919)
    recalibrate(dense, data, cfg)
    clock.add("dense", start)
    state = {k: v.detach().cpu().clone() for k, v in dense.state_dict().items()}
    return {"state": state, "phases": [phase_row(seed, DENSE, 0, DENSE, -1, dense, data)], "timings": clock.seconds}


def _arm_job(cfg: Config, arm: str, seed: int, dense_state: dict[str, Tensor], data: Data,
             paths: bool = True) -> dict[str, Any]:
    """One arm of one seed from the seed's dense model: its rows of every computed table and its seconds
    (``paths``: also the interpolation paths between two models, which the budget reruns skip)."""
    seed_everything(seed, threads=cfg.threads)
    dense = template(cfg, data)
    dense.load_state_dict(dense_state)
    clock = Clock()
    out: dict[str, Any] = {k: [] for k in TABLES}
    rows = out["phases"]
    if arm == "IMP":
        curve: list[float] = []
        imp = [imp_chain(dense, data, cfg, seed, c, cfg.retrain_epochs, clock, "IMP" if c == 0 else f"IMP run {c}",
                         rows, curve if c == 0 else None) for c in range(max(1, cfg.naive_runs))]
        out["trained"].append(_final(seed, arm, imp[0][0], data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
        if len(imp) > 1:
            averaged, out["naive"] = _naive_average(cfg, data, seed, dense, imp, clock)
            out["trained"] += averaged
            if paths:
                out["curves"] = _path(cfg, data, seed, dense, "different masks (IMP runs 0, 1)", imp[0][0],
                                      imp[1][0], clock)
    elif arm.startswith("IMP "):
        curve = []
        model = imp_chain(dense, data, cfg, seed, 0, cfg.m * cfg.retrain_epochs, clock, arm, rows, curve)[0]
        out["trained"].append(_final(seed, arm, model, data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
    elif arm == "SWA":
        curve = []
        out["trained"].append(_final(seed, arm, swa_chain(dense, data, cfg, seed, clock, rows, curve), data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
    else:
        curves: list[list[float]] = []
        mode = arm.removeprefix("SMS ")
        model, _, ingredients = sms_chain(dense, data, cfg, seed, mode, clock, rows, out["soups"], curves)
        out["trained"].append(_final(seed, arm, model, data))
        out["val_curves"] = _curve_rows(seed, arm, curves)
        if mode == "uniform":
            out["trained"].append(_ensemble_row(cfg, data, seed, ingredients))
            if cfg.m > 1 and paths:
                out["curves"] = _path(cfg, data, seed, dense, "same mask (SMS ingredients 0, 1)", *ingredients[:2],
                                      clock)
    out["timings"] = clock.seconds
    return out


Job = tuple[Config, str, int, dict[str, Tensor] | None, float]  # cfg, arm, seed, dense state (None: dense), budget


def _run_job(job: Job) -> dict[str, Any]:
    """One job on the data of its config (loaded once per process): the dense model of a seed (no state) or one arm
    from it. At a budget > 1 (a rerun of :func:`longer`) only its rows of the ``longer`` table (arm, seed, budget,
    member, val_acc: its final models and the uniform chain's last-phase ingredients and greedy soup, from which
    judgement reads the rerun's mean and best ingredient) and its seconds."""
    cfg, arm, seed, state, budget = job
    data = cached_data(cfg)
    out = _dense_job(cfg, seed, data) if state is None else _arm_job(cfg, arm, seed, state, data, paths=budget == 1)
    if budget == 1:
        return out
    last = [r for r in out["phases"] if r["chain"] == "SMS uniform" and r["phase"] == cfg.phases
            and r["arm"] in (INGREDIENT, GREEDY_OF_UNIFORM)]
    rows = out["phases"] if state is None else out["trained"] + last
    return {"longer": [{"arm": r["arm"], "seed": seed, "budget": budget, "member": r.get("member", -1),
                        "val_acc": r["val_acc"]} for r in rows],
            "timings": {f"{k} ({budget:g}x budget)": v for k, v in out["timings"].items()}}


def _budget_jobs(cfg: Config, dense_state: dict[str, Tensor]) -> list[Job]:
    """The budget check's reruns of the first seed (:func:`longer`): every trained arm from the same dense model as
    its report run (its retraining longer), and the dense pretraining itself."""
    long, seed = longer(cfg), 0
    retrain, pretrain = long.retrain_epochs / cfg.retrain_epochs, long.pretrain_epochs / cfg.pretrain_epochs
    reruns: list[Job] = [(long, arm, seed, dense_state, retrain) for arm in trained_arms(cfg)]
    return reruns + [(long, DENSE, seed, None, pretrain)]


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Every arm for seeds ``0 .. cfg.seeds - 1`` and the budget check's reruns of seed 0, in ``cfg.workers``
    processes: the computed tables (``phases``, ``trained``, ``naive``, ``curves``, ``soups``, ``val_curves``,
    ``longer``, ``trivial``: the chance baseline) and seconds per arm summed over seeds."""
    seeds = range(cfg.seeds)
    dense = run_jobs(_run_job, [(cfg, DENSE, s, None, 1.0) for s in seeds], workers=cfg.workers,
                     desc="dense models", progress=progress)
    jobs = _budget_jobs(cfg, dense[0]["state"])  # the longest jobs first: better load balance over workers
    jobs += [(cfg, arm, s, d["state"], 1.0) for arm in trained_arms(cfg) for s, d in zip(seeds, dense, strict=True)]
    done = dense + run_jobs(_run_job, jobs, workers=cfg.workers, desc="arms x seeds (+ budget check)",
                            progress=progress)
    timings: dict[str, float] = {}
    tables: dict[str, list[dict]] = {k: [] for k in TABLES}
    for out in done:
        for k, v in out["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        for k in TABLES:
            tables[k] += out.get(k, [])
    chance = chance_accuracy(cached_data(cfg))
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    frames["trivial"] = pd.DataFrame([{"arm": CHANCE, "test_acc": chance, "ood_acc": chance}])
    return Computed(frames, timings={k: round(v, 2) for k, v in timings.items()})
