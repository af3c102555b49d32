"""The Sparse Model Soups runs: one job per (arm, seed, learning rate) from the seed's dense model, the choice of each
baseline's learning rate on validation, the budget check's reruns of the first seed, and :func:`compute`, which
gathers their rows into the computed tables.

Arms, all at the same final sparsity and paired by seed: IMP (one prune-retrain chain); IMP m x (retrained m x
longer per phase: equal compute); SWA (per phase, m retraining cycles one after the other, their ends averaged:
equal compute, the baseline an OpenReview reviewer asked for); these three each at every peak LR of
:func:`~labkit.experiments.sparse_soups.config.lr_grid`, the one with the best mean validation accuracy over seeds
kept (the ``tuning`` table). SMS with a uniform and with a greedy soup, each its own chain (each phase retrains m
copies of one pruned model, soups them, and starts the next phase from the soup); the last phase's ingredients
(logged per member: their mean and the best on validation are read off in judgement); their prediction ensemble
(m x inference); and the naive average of independent IMP chains (different masks), before and after re-pruning it
to the target, and re-pruned then retrained as long as one SMS phase (m retrains). BatchNorm is recalibrated after
every retrain and merge, for every arm.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from labkit import merge, prune, selection
from labkit.experiments import Computed
from labkit.experiments.sparse_soups.arms.training import (
    Clock,
    accuracy,
    evaluate,
    imp_chain,
    loaded,
    phase_row,
    recalibrate,
    retrain_seed,
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
    REPRUNED_RETRAINED,
    Config,
    longer,
    lr_grid,
    trained_arms,
    tuned_arms,
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
    def mean_probs(x: Tensor) -> Tensor:
        return torch.stack([predict(i, x) for i in ingredients]).mean(0)

    probs_t, probs_v = mean_probs(data.test_x), mean_probs(data.val_x)
    probs_o = {spec: mean_probs(x) for spec, x in data.ood.items()}
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
    to the goal, and re-pruned then retrained for one SMS phase's budget (m x ``retrain_epochs``, the LLR schedule at
    ``cfg.lr``: the fair "prune after averaging" alternative); and its row of the ``naive`` table (mask overlap)."""
    start = time.perf_counter()
    avg = loaded(dense, merge.average([m.state_dict() for m, _ in imp]), data, cfg)
    out = [_final(seed, NAIVE, avg, data)]
    pruned = copy.deepcopy(avg)
    masks = prune.magnitude_masks(pruned, cfg.goal_sparsity)
    prune.apply_masks(pruned, masks).remove()
    recalibrate(pruned, data, cfg)
    out.append(_final(seed, REPRUNED, pruned, data))
    retrained = train(copy.deepcopy(pruned), data, cfg, epochs=cfg.m * cfg.retrain_epochs, lr=cfg.lr,
                      weight_decay=cfg.weight_decay, seed=retrain_seed(seed, cfg.phases + 1, 0), masks=masks,
                      warmup_frac=cfg.warmup_frac)
    out.append(_final(seed, REPRUNED_RETRAINED, recalibrate(retrained, data, cfg), data))
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


def _arm_job(cfg: Config, arm: str, seed: int, dense_state: dict[str, Tensor], data: Data, lr: float,
             paths: bool = True) -> dict[str, Any]:
    """One arm of one seed from the seed's dense model (tuned baselines: at peak ``lr``): its rows of every computed
    table and its seconds (``paths``: also the interpolation paths between two models, which the budget reruns
    skip). The naive-average job runs ``naive_runs`` independent IMP chains at ``cfg.lr`` and averages them."""
    seed_everything(seed, threads=cfg.threads)
    dense = template(cfg, data)
    dense.load_state_dict(dense_state)
    clock = Clock()
    out: dict[str, Any] = {k: [] for k in TABLES}
    rows = out["phases"]
    curve: list[float] = []
    if arm == NAIVE:
        imp = [imp_chain(dense, data, cfg, seed, c, cfg.retrain_epochs, clock, f"IMP run {c}", [], cfg.lr)
               for c in range(cfg.naive_runs)]
        out["trained"], out["naive"] = _naive_average(cfg, data, seed, dense, imp, clock)
        if paths:
            out["curves"] = _path(cfg, data, seed, dense, "different masks (IMP runs 0, 1)", imp[0][0], imp[1][0],
                                  clock)
    elif arm.startswith("IMP"):  # IMP, or IMP m x: one chain retrained m x longer per phase
        epochs = cfg.retrain_epochs * (1 if arm == "IMP" else cfg.m)
        model = imp_chain(dense, data, cfg, seed, 0, epochs, clock, arm, rows, lr, curve)[0]
        out["trained"].append(_final(seed, arm, model, data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
    elif arm == "SWA":
        out["trained"].append(_final(seed, arm, swa_chain(dense, data, cfg, seed, clock, rows, lr, curve), data))
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


# cfg, arm, seed, dense state (None: the dense model itself), budget, peak LR (tuned baselines; else unused)
Job = tuple[Config, str, int, dict[str, Tensor] | None, float, float]


def _run_job(job: Job) -> dict[str, Any]:
    """One job on the data of its config (loaded once per process): the dense model of a seed (no state) or one arm
    from it, its rows tagged with the job's ``lr``. At a budget > 1 (a rerun of :func:`longer`) only its rows of the
    ``longer`` table (arm, seed, budget, member, val_acc: its final models and the uniform chain's last-phase
    ingredients and greedy soup, from which judgement reads the rerun's mean and best ingredient) and its seconds."""
    cfg, arm, seed, state, budget, lr = job
    data = cached_data(cfg)
    out = _dense_job(cfg, seed, data) if state is None else _arm_job(cfg, arm, seed, state, data, lr,
                                                                     paths=budget == 1)
    if budget == 1:
        return {**out, "arm": arm, "lr": lr}
    last = [r for r in out["phases"] if r["chain"] == "SMS uniform" and r["phase"] == cfg.phases
            and r["arm"] in (INGREDIENT, GREEDY_OF_UNIFORM)]
    rows = out["phases"] if state is None else out["trained"] + last
    return {"longer": [{"arm": r["arm"], "seed": seed, "budget": budget, "member": r.get("member", -1),
                        "val_acc": r["val_acc"]} for r in rows],
            "timings": {f"{k} ({budget:g}x budget)": v for k, v in out["timings"].items()}}


def _budget_jobs(cfg: Config, dense_state: dict[str, Tensor], arms: dict[str, float]) -> list[Job]:
    """The budget check's reruns of the first seed (:func:`longer`): each of ``arms`` (name -> peak LR: a tuned
    baseline at the LR it was chosen with) from the same dense model as its report run, its retraining longer; with
    the SMS arms, the dense pretraining itself."""
    long, seed = longer(cfg), 0
    retrain, pretrain = long.retrain_epochs / cfg.retrain_epochs, long.pretrain_epochs / cfg.pretrain_epochs
    reruns: list[Job] = [(long, arm, seed, dense_state, retrain, lr) for arm, lr in arms.items()]
    return reruns + [(long, DENSE, seed, None, pretrain, cfg.lr)] * any(a.startswith("SMS ") for a in arms)


def choose_lrs(tuning: pd.DataFrame) -> dict[str, float]:
    """Per tuned arm, the peak LR with the best mean validation accuracy over seeds (``tuning``: arm, seed, lr,
    val_acc; first of the grid on a tie): chosen on validation only."""
    return {arm: float(selection.select_best(rows.assign(split=selection.VALIDATION), "lr", "val_acc",
                                             lower_is_better=False)["lr"])
            for arm, rows in tuning.groupby("arm", sort=False)}


def compute(cfg: Config, progress: bool = True) -> Computed:
    """Every arm for seeds ``0 .. cfg.seeds - 1`` (the tuned baselines at every LR of ``lr_grid``) and the budget
    check's reruns of seed 0, in ``cfg.workers`` processes: the computed tables (``phases``, ``trained``, ``naive``,
    ``curves``, ``soups``, ``val_curves``: the tuned baselines at their chosen LR only; ``tuning``: every LR's final
    validation and test accuracy, the chosen one marked; ``longer``; ``trivial``: the chance baseline) and seconds
    per arm summed over seeds. The tuned baselines' reruns wait for their LR choice; the others run beside them."""
    seeds = range(cfg.seeds)
    dense = run_jobs(_run_job, [(cfg, DENSE, s, None, 1.0, cfg.lr) for s in seeds], workers=cfg.workers,
                     desc="dense models", progress=progress)
    tuned = tuned_arms(cfg)
    sms = {arm: cfg.lr for arm in trained_arms(cfg) if arm not in tuned}
    jobs = _budget_jobs(cfg, dense[0]["state"], sms)  # the longest jobs first: better load balance over workers
    jobs += [(cfg, arm, s, d["state"], 1.0, lr) for arm in trained_arms(cfg)
             for lr in (lr_grid(cfg) if arm in tuned else (cfg.lr,)) for s, d in zip(seeds, dense, strict=True)]
    jobs += [(cfg, NAIVE, s, d["state"], 1.0, cfg.lr) for s, d in zip(seeds, dense, strict=True)
             if cfg.naive_runs > 1]
    done = run_jobs(_run_job, jobs, workers=cfg.workers, desc="arms x seeds x lr (+ budget check)",
                    progress=progress)
    tuning = pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], "lr": out["lr"], "val_acc": r["val_acc"],
                            "test_acc": r["test_acc"]} for out in done if out.get("arm") in tuned
                           for r in out["trained"]])
    chosen = choose_lrs(tuning)
    done += run_jobs(_run_job, _budget_jobs(cfg, dense[0]["state"], chosen), workers=cfg.workers,
                     desc="budget check of the tuned baselines", progress=progress)
    kept = [out for out in dense + done if out.get("arm") not in chosen or out["lr"] == chosen[out["arm"]]]
    timings: dict[str, float] = {}
    tables: dict[str, list[dict]] = {k: [] for k in TABLES}
    for out in kept:
        for k in TABLES:
            tables[k] += out.get(k, [])
    for out in dense + done:  # every job's seconds, the untaken LRs' too: tuning is part of the baselines' cost
        for k, v in out["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
    chance = chance_accuracy(cached_data(cfg))
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    frames["tuning"] = tuning.assign(chosen=[lr == chosen[a] for a, lr in zip(tuning.arm, tuning.lr, strict=True)])
    frames["trivial"] = pd.DataFrame([{"arm": CHANCE, "test_acc": chance, "ood_acc": chance}])
    return Computed(frames, timings={k: round(v, 2) for k, v in timings.items()})
