"""Sparse Model Soups (Zimmer, Spiegel, Pokutta, ICLR 2024, arXiv 2306.16788) against IMP, at small scale.

Arms, all at the same final sparsity and paired by seed: IMP (one prune-retrain chain); IMP m x (retrained m x
longer per phase: equal compute); SWA (per phase, m retraining cycles one after the other, their ends averaged:
equal compute, the baseline an OpenReview reviewer asked for); SMS with a uniform and with a greedy soup, each its
own chain (each phase retrains m copies of one pruned model, soups them, and starts the next phase from the soup);
the last phase's ingredients (their mean, and the one with the best *validation* accuracy); their prediction
ensemble (m x inference); and the naive average of independent IMP chains (different masks), before and after
re-pruning it to the target. BatchNorm is recalibrated after every retrain and merge, for every arm.

Every choice (greedy soup, best ingredient) sees the validation split only (carved from MNIST's training set); the
premise and claims are declared and judged in :mod:`labkit.experiments.sparse_soups_claims`. Convergence is checked by
rerunning the first seed's trained arms at ``budget_factor`` x the budget (:func:`longer`). This module holds the
config, presets, the (arm, seed) jobs and :func:`run`; the data, the retraining loop and the IMP, SWA and SMS chains
live in :mod:`labkit.experiments.sparse_soups_arms`, the settings searched are declared in
``labkit/experiments/explorations/sparse_soups.toml`` (``labkit explore``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from labkit import merge, protocol, prune
from labkit.experiments import (
    check_types,
    require_choice,
    require_device,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_unique,
    require_within,
    sparse_soups_claims,
)
from labkit.experiments import configure as _configure
from labkit.experiments.sparse_soups_arms import (
    Clock,
    Data,
    accuracy,
    cached_data,
    evaluate,
    imp_chain,
    load_data,
    loaded,
    phase_row,
    recalibrate,
    scores,
    sms_chain,
    swa_chain,
    train,
    val_acc,
)
from labkit.models.vision import VisionConfig, build, predict
from labkit.profile import seed_everything


@dataclass
class Config:
    data: str = "mnist"  # "mnist" (50k/10k/10k, fetched cache) | "mnist1d" (generated locally) | "digits" (smoke)
    n_train: int = 10_000  # training examples used (a seeded subset; 0 = all): small enough for 2 CPU cores
    arch: str = "mlp"  # "mlp" (LeNet-300-100 + BN) | "cnn" | "resnet" (GPU)
    width: int = 300  # mlp: first hidden width (second = width // 3); cnn/resnet: first-stage channels
    depth: int = 1  # resnet blocks per stage
    pretrain_epochs: int = 20  # dense training before the first prune
    phases: int = 4  # prune-retrain phases (k in the paper)
    goal_sparsity: float = 0.99  # final global sparsity over conv/linear weights, incl. first and last layer
    retrain_epochs: int = 5  # epochs per retrain (per ingredient and per IMP phase)
    m: int = 4  # ingredients per phase (and independent IMP chains for the naive-average arm)
    vary: str = "lr"  # what differs between ingredients: "seed" | "lr" | "wd" (the trial's lr gave more diversity)
    spread: tuple[float, float] = (0.5, 1.5)  # vary="lr"/"wd": factors spaced evenly over this range
    lr: float = 0.1  # peak LR (SMS: 0.1); retraining uses LLR: 10 % warm-up, then linear to 0
    weight_decay: float = 1e-4  # SMS default
    momentum: float = 0.9  # SGD with Nesterov, as SMS
    batch_size: int = 128  # SMS's MNIST batch size
    warmup_frac: float = 0.1  # LLR warm-up fraction of each retrain
    bn_frac: float = 0.2  # fraction of the training set used to recalibrate BN (SMS: 0.2)
    greedy_strict: bool = False  # False: add an ingredient if val acc does not drop (>=, SMS); True: > (model-soups)
    greedy_chain: bool = False  # True: greedy soup as its own chain (2x SMS cost); False: greedy soups of the
    # uniform chain's ingredients, reported as "SMS greedy (uniform chain)" (keeps the cpu preset near 10 min)
    imp_mx: bool = True  # run the equal-compute IMP m x arm
    swa: bool = True  # run the SWA arm (m retraining cycles per phase, cycle ends averaged: equal compute)
    naive_runs: int = 3  # independent IMP chains averaged naively (different masks); 0 or 1 skips the arm
    ood: str = "rotate:35+noise:0.25"  # corruption of the test set (labkit.data.corruptions spec)
    augment: float = 0.0  # training augmentation: random rotation up to this many degrees (+ shifts of 2/28)
    curve_points: int = 11  # alphas on the interpolation paths
    seeds: tuple[int, ...] = (0, 1, 2)  # paired seeds: each seed runs every arm
    val_points: int = 10  # validation evaluations along each last-phase retrain (a figure; convergence: budget)
    budget_factor: float = 2.0  # convergence check: the first seed's trained arms rerun with every retrain (and the
    # dense pretraining) this many times longer in epochs, rounded up; the same LLR shape (see `longer`)
    threads: int = 1  # torch threads: 1 is fastest for a small MLP on 2 shared cores
    workers: int = 1  # processes running (arm, seed) jobs in parallel (2 on a 2-core machine)
    device: str = "auto"  # "auto" -> CUDA when present

    def __post_init__(self) -> None:
        check_types(self)
        require_choice(self, "data", ("mnist", "mnist1d", "digits"))
        require_choice(self, "arch", ("mlp", "cnn", "resnet"))
        require_choice(self, "vary", ("seed", "lr", "wd"))
        require_positive(self, "width", "depth", "pretrain_epochs", "phases", "retrain_epochs", "m", "spread", "lr",
                         "batch_size", "threads", "val_points", "workers")
        require_non_negative(self, "n_train", "weight_decay", "naive_runs", "augment", "seeds")
        require_within(self, "goal_sparsity", 0, 1, "()")
        require_within(self, "momentum", 0, 1, "[)")
        require_within(self, "warmup_frac", 0, 1, "[)")
        require_within(self, "bn_frac", 0, 1, "(]")
        require_within(self, "curve_points", 2, math.inf, "[)")
        require_within(self, "val_points", 2, math.inf, "[)")
        require_within(self, "budget_factor", 2, math.inf, "[)")
        if self.spread[0] > self.spread[1]:
            raise ValueError(f"parameter 'spread' must be (low, high) with low <= high, got {self.spread!r}")
        require_non_empty(self, "seeds")
        require_unique(self, "seeds")
        require_device(self)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": "digits",
        "n_train": 0,
        "width": 64,
        "pretrain_epochs": 3,
        "phases": 2,
        "goal_sparsity": 0.8,
        "retrain_epochs": 1,
        "m": 2,
        "naive_runs": 2,
        "greedy_chain": True,
        "seeds": (0, 1, 2),
        "curve_points": 3,
        "batch_size": 64,
    },
    # cpu: all 50k MNIST training images (the 10k subset saturated), 2 retrain epochs per phase (782 steps: twice the
    # old 5 epochs on 10k), 10 dense epochs, 5 paired seeds, greedy soup and SWA as their own chains, 2 workers:
    # ~12 min wall on 2 idle cores (estimate from timed jobs; see the notebook's cost cell)
    "cpu": {
        "n_train": 0,
        "pretrain_epochs": 10,
        "retrain_epochs": 2,
        "seeds": (0, 1, 2, 3, 4),
        "greedy_chain": True,
        "workers": 2,
    },
    "gpu": {
        "arch": "resnet",
        "width": 16,
        "depth": 1,
        "n_train": 0,
        "pretrain_epochs": 30,
        "phases": 3,
        "goal_sparsity": 0.95,
        "retrain_epochs": 5,
        "m": 5,
        "augment": 10.0,
        "seeds": (0, 1, 2, 3, 4),
        "greedy_chain": True,
        "naive_runs": 5,
        "ood": "rotate:35+noise:0.25",
        "threads": 4,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


TABLES = ("phases", "final", "naive", "curves", "soups", "val_curves", "selection", "longer")


@dataclass
class Results:
    """Tidy tables; ``final`` has one row per seed x arm at the last phase."""

    phases: pd.DataFrame  # seed, chain, phase, sparsity, arm, member, test_acc, ood_acc, ece, val_acc
    final: pd.DataFrame  # seed, arm, sparsity, test_acc, ood_acc, ece, val_acc
    naive: pd.DataFrame  # seed, mean_mask_iou, naive_sparsity, goal
    curves: pd.DataFrame  # seed, path, alpha, test_acc, ood_acc, sparsity
    soups: pd.DataFrame  # seed, chain, phase, chosen, max_l2, mean_l2, mean_angle_degrees, mean_to_average
    val_curves: pd.DataFrame  # seed, arm, member, point, val_acc: the last phase's retraining curves
    selection: pd.DataFrame  # seed, member, split (val | test), acc, selected: the best ingredient, chosen on val
    scores: pd.DataFrame  # final + sparsity_pct + the dense model and a chance row per seed: what claims are judged on
    claims: pd.DataFrame  # labkit.protocol.claims_table: premises first; role, effect [interval], n, verdicts, rule
    sanity: pd.DataFrame  # arm, converged (budget check), budget_1x, budget_long, healthy, beats_trivial, flags
    budget: pd.DataFrame  # protocol.budget_check: arm, seed, budget, val_acc_1x, val_acc_long, improvement, converged
    health: pd.DataFrame  # protocol.health: arm, seed, val_acc, dense (its seed's dense model), healthy, flags
    checks: dict[str, bool] = field(default_factory=dict)  # sanity assertions that held
    timings: dict[str, float] = field(default_factory=dict)  # seconds per arm, summed over seeds (and workers)


def _template(cfg: Config, data: Data) -> nn.Module:
    """The untrained network for ``data`` (weights drawn from torch's global RNG)."""
    shape = tuple(data.train_x.shape[1:])
    return build(VisionConfig(cfg.arch, shape, int(data.train_y.max()) + 1, cfg.width, cfg.depth)).to(
        data.train_x.device
    )


def _final(seed: int, arm: str, model: nn.Module, data: Data) -> dict[str, Any]:
    return {"seed": seed, "arm": arm, "sparsity": prune.sparsity(model), **evaluate(model, data),
            "val_acc": val_acc(model, data)}


def _curve_rows(seed: int, arm: str, curves: list[list[float]]) -> list[dict[str, Any]]:
    """Rows of ``Results.val_curves``: one curve per member (SMS ingredients) or a single one (member -1)."""
    one = len(curves) == 1
    return [{"seed": seed, "arm": arm, "member": -1 if one else j, "point": k + 1, "val_acc": v}
            for j, curve in enumerate(curves) for k, v in enumerate(curve)]


def _ingredient_rows(cfg: Config, seed: int, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], int]:
    """Final rows read off the uniform chain's last phase (its greedy soup without a greedy chain of its own, the
    mean of its ingredients, the ingredient with the best validation accuracy), the selection rows and the choice."""
    last = [r for r in rows if r["chain"] == "SMS uniform" and r["phase"] == cfg.phases]
    keep = ("seed", "sparsity", "test_acc", "ood_acc", "ece", "val_acc")
    out = []
    if not cfg.greedy_chain:
        out += [{k: r[k] for k in keep} | {"arm": "SMS greedy (uniform chain)"}
                for r in last if r["arm"] == "SMS greedy (uniform chain)"]
    ing = [r for r in last if r["arm"] == "ingredient"]
    out.append({"seed": seed, "arm": "ingredients (mean)", "sparsity": float(np.mean([r["sparsity"] for r in ing])),
                **{k: float(np.mean([r[k] for r in ing])) for k in ("test_acc", "ood_acc", "ece", "val_acc")}})
    selection = [{"seed": seed, "member": r["member"], "split": split, "acc": r[col]}
                 for r in ing for split, col in (("val", "val_acc"), ("test", "test_acc"))]
    val = pd.DataFrame([s for s in selection if s["split"] == "val"])
    best = int(protocol.select_best(val, "member", "acc", lower_is_better=False)["member"])
    chosen = next(r for r in ing if r["member"] == best)
    out.append({k: chosen[k] for k in keep} | {"arm": sparse_soups_claims.BEST_INGREDIENT})
    return out, [s | {"selected": s["member"] == best} for s in selection], best


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
    to the goal, and its row of ``Results.naive`` (how much the masks overlap)."""
    start = time.perf_counter()
    avg = loaded(dense, merge.average([m.state_dict() for m, _ in imp]), data, cfg)
    out = [_final(seed, sparse_soups_claims.NAIVE, avg, data)]
    pruned = copy.deepcopy(avg)
    prune.apply_masks(pruned, prune.magnitude_masks(pruned, cfg.goal_sparsity)).remove()
    recalibrate(pruned, data, cfg)
    out.append(_final(seed, sparse_soups_claims.REPRUNED, pruned, data))
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


def arms(cfg: Config) -> list[str]:
    """The (arm) jobs run for every seed, longest first (better load balance over workers)."""
    jobs = ["SMS uniform"] + ["SMS greedy"] * cfg.greedy_chain + [f"IMP {cfg.m}x"] * cfg.imp_mx + ["SWA"] * cfg.swa
    return jobs + ["IMP"]


def longer(cfg: Config) -> Config:
    """The budget check's config: every phase's retraining ``budget_factor`` x longer in epochs (rounded up), so IMP
    m x, each SWA cycle and each SMS ingredient retrain that much longer too, with the same LLR shape (the warm-up is
    a fraction of each retrain and the decay reaches 0 at its end); the dense pretraining likewise (its own rerun).
    The reruns skip what is not a trained arm: IMP's extra chains of the naive average (``naive_runs=0``)."""
    return dataclasses.replace(cfg, retrain_epochs=math.ceil(cfg.budget_factor * cfg.retrain_epochs),
                               pretrain_epochs=math.ceil(cfg.budget_factor * cfg.pretrain_epochs), naive_runs=0)


def _dense_job(cfg: Config, seed: int, data: Data) -> dict[str, Any]:
    """The dense model every chain of ``seed`` starts from (pretrained, BN recalibrated); logged as phase 0."""
    seed_everything(seed, threads=cfg.threads)
    clock = Clock()
    start = time.perf_counter()
    dense = train(_template(cfg, data), data, cfg, epochs=cfg.pretrain_epochs, lr=cfg.lr,
                  weight_decay=cfg.weight_decay, seed=seed * 7919)
    recalibrate(dense, data, cfg)
    clock.add("dense", start)
    state = {k: v.detach().cpu().clone() for k, v in dense.state_dict().items()}
    return {"state": state, "phases": [phase_row(seed, "dense", 0, "dense", -1, dense, data)], "timings": clock.seconds}


def _arm_job(cfg: Config, arm: str, seed: int, dense_state: dict[str, Tensor], data: Data,
             paths: bool = True) -> dict[str, Any]:
    """One arm of one seed from the seed's dense model: its rows of every ``Results`` table and its seconds
    (``paths``: also the interpolation paths between two models, which the budget reruns skip)."""
    seed_everything(seed, threads=cfg.threads)
    dense = _template(cfg, data)
    dense.load_state_dict(dense_state)
    clock = Clock()
    out: dict[str, Any] = {k: [] for k in TABLES}
    rows = out["phases"]
    if arm == "IMP":
        curve: list[float] = []
        imp = [imp_chain(dense, data, cfg, seed, c, cfg.retrain_epochs, clock, "IMP" if c == 0 else f"IMP run {c}",
                         rows, curve if c == 0 else None) for c in range(max(1, cfg.naive_runs))]
        out["final"].append(_final(seed, arm, imp[0][0], data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
        if len(imp) > 1:
            averaged, out["naive"] = _naive_average(cfg, data, seed, dense, imp, clock)
            out["final"] += averaged
            if paths:
                out["curves"] = _path(cfg, data, seed, dense, "different masks (IMP runs 0, 1)", imp[0][0],
                                      imp[1][0], clock)
    elif arm.startswith("IMP "):
        curve = []
        model = imp_chain(dense, data, cfg, seed, 0, cfg.m * cfg.retrain_epochs, clock, arm, rows, curve)[0]
        out["final"].append(_final(seed, arm, model, data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
    elif arm == "SWA":
        curve = []
        out["final"].append(_final(seed, arm, swa_chain(dense, data, cfg, seed, clock, rows, curve), data))
        out["val_curves"] = _curve_rows(seed, arm, [curve])
    else:
        curves: list[list[float]] = []
        mode = arm.removeprefix("SMS ")
        model, _, ingredients = sms_chain(dense, data, cfg, seed, mode, clock, rows, out["soups"], curves)
        out["final"].append(_final(seed, arm, model, data))
        out["val_curves"] = _curve_rows(seed, arm, curves)
        if mode == "uniform":
            extra, out["selection"], best = _ingredient_rows(cfg, seed, rows)
            out["final"] += extra
            out["val_curves"] += _curve_rows(seed, "ingredients (mean)", curves)
            out["val_curves"] += _curve_rows(seed, sparse_soups_claims.BEST_INGREDIENT, [curves[best]])
            out["final"].append(_ensemble_row(cfg, data, seed, ingredients))
            if cfg.m > 1 and paths:
                out["curves"] = _path(cfg, data, seed, dense, "same mask (SMS ingredients 0, 1)", *ingredients[:2],
                                      clock)
    out["timings"] = clock.seconds
    return out


Job = tuple[Config, str, int, dict[str, Tensor] | None, float]  # cfg, arm, seed, dense state (None: dense), budget


def _run_job(job: Job, data: Data) -> dict[str, Any]:
    """One job: the dense model of a seed (no state) or one arm from it; at a budget > 1 (a rerun of
    :func:`longer`), only its rows of ``Results.budget`` (arm, seed, budget, val_acc) and its seconds."""
    cfg, arm, seed, state, budget = job
    out = _dense_job(cfg, seed, data) if state is None else _arm_job(cfg, arm, seed, state, data, paths=budget == 1)
    if budget == 1:
        return out
    rows = out["phases"] if state is None else out["final"]
    return {"longer": [{"arm": r["arm"], "seed": seed, "budget": budget, "val_acc": r["val_acc"]} for r in rows],
            "timings": {f"{k} ({budget:g}x budget)": v for k, v in out["timings"].items()}}


def _job(job: Job) -> dict[str, Any]:
    """A worker process's entry point: the data is loaded once per process."""
    return _run_job(job, cached_data(job[0]))


def _map(cfg: Config, data: Data, jobs: list[Job], desc: str, progress: bool) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``cfg.workers`` spawned processes when more than one, else here on ``data``; in job order."""
    from tqdm.auto import tqdm

    if cfg.workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=context) as pool:
            return list(tqdm(pool.map(_job, jobs), total=len(jobs), desc=desc, disable=not progress))
    return [_run_job(job, data) for job in tqdm(jobs, desc=desc, disable=not progress)]


def _budget_jobs(cfg: Config, dense_state: dict[str, Tensor]) -> list[Job]:
    """The budget check's reruns of the first seed (:func:`longer`): every trained arm from the same dense model as
    its report run (its retraining longer), and the dense pretraining itself."""
    long, seed = longer(cfg), cfg.seeds[0]
    retrain, pretrain = long.retrain_epochs / cfg.retrain_epochs, long.pretrain_epochs / cfg.pretrain_epochs
    return [(long, arm, seed, dense_state, retrain) for arm in arms(cfg)] + [(long, "dense", seed, None, pretrain)]


def run(cfg: Config, data: Data | None = None, progress: bool = True) -> Results:
    """Every arm for every seed in ``cfg.seeds``, the budget check's reruns of the first seed, then the premise and
    claims judged; sanity checks (exact sparsity, shared masks) raise if violated. With ``cfg.workers > 1`` the
    workers load the data from ``cfg`` (``data`` is used for the chance baseline only)."""
    data = data if data is not None else load_data(cfg)
    dense = _map(cfg, data, [(cfg, "dense", s, None, 1.0) for s in cfg.seeds], "dense models", progress)
    jobs = _budget_jobs(cfg, dense[0]["state"])  # the longest jobs first: better load balance over workers
    jobs += [(cfg, arm, s, d["state"], 1.0) for arm in arms(cfg) for s, d in zip(cfg.seeds, dense, strict=True)]
    done = dense + _map(cfg, data, jobs, "arms x seeds (+ budget check)", progress)
    timings: dict[str, float] = {}
    tables: dict[str, list[dict]] = {k: [] for k in TABLES}
    for out in done:
        for k, v in out["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        for k in TABLES:
            tables[k] += out.get(k, [])
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    order = {a: i for i, a in enumerate(arms(cfg)[::-1])}
    final = frames["final"]
    final = final.iloc[np.lexsort((final.arm.map(order).fillna(len(order)), final.seed))].reset_index(drop=True)
    exact = final[final.arm.isin(["IMP", "SMS uniform", "SMS greedy", "SMS greedy (uniform chain)", "SWA",
                                  f"IMP {cfg.m}x"])]
    checks = {
        "final sparsity equals goal (1e-4) for IMP, SWA and SMS": bool(
            (exact.sparsity - cfg.goal_sparsity).abs().max() < 1e-4
        ),
        "ingredients share one mask before every soup": bool(frames["soups"].masks_identical.all()),
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise AssertionError(f"sanity checks failed: {failed}")
    chance = 100 * float(torch.bincount(data.test_y).max() / len(data.test_y))
    phases = frames["phases"]
    dense_rows = phases[phases.chain == "dense"][["seed", "sparsity", "test_acc", "ood_acc", "ece", "val_acc"]]
    per_seed = sparse_soups_claims.per_seed_scores(final, dense_rows, chance)
    claims, sanity, budget, health = sparse_soups_claims.verdicts(per_seed, frames["longer"], cfg.m)
    return Results(phases, final, frames["naive"], frames["curves"], frames["soups"], frames["val_curves"],
                   frames["selection"], per_seed, claims, sanity, budget, health, checks,
                   {k: round(v, 2) for k, v in timings.items()})


def comparison(final: pd.DataFrame, ref: str = "IMP") -> pd.DataFrame:
    """Per arm: mean sparsity, clean/OOD accuracy (mean, sd over seeds) and the paired difference to ``ref`` with a
    Student-t 95 % interval."""
    stats = final.groupby("arm", sort=False).agg(
        sparsity=("sparsity", "mean"),
        test_acc=("test_acc", "mean"),
        test_sd=("test_acc", "std"),
        ood_acc=("ood_acc", "mean"),
        ood_sd=("ood_acc", "std"),
        seeds=("seed", "nunique"),
    )
    for metric, short in (("test_acc", "test"), ("ood_acc", "ood")):
        base = final[final.arm == ref].set_index("seed")[metric]
        diffs = {}
        for arm, group in final.groupby("arm", sort=False):
            if arm != ref:
                d = group.set_index("seed")[metric] - base
                diffs[arm] = protocol.student_t_ci(d.dropna().to_numpy())
        ci = pd.DataFrame(diffs, index=["mean", "low", "high"]).T
        stats[f"{short}_vs_{ref}"] = ci["mean"]
        stats[f"{short}_vs_{ref}_low"] = ci["low"]
        stats[f"{short}_vs_{ref}_high"] = ci["high"]
    return stats.reset_index()


def verdict_text(results: Results) -> str:
    """The recorded verdict (:func:`labkit.protocol.verdict_text`): the rule, the premises then every claim with its
    role, effect (percentage points), interval, n and verdict (and raw verdict where it differs), then the sanity
    flags."""
    budget, health = sparse_soups_claims.BUDGET_TOLERANCE_PP, sparse_soups_claims.HEALTH_TOLERANCE_PP
    ok = (f"every trained arm converged (gained at most {budget:g} pp of validation accuracy at a longer budget), "
          f"stayed within {health:g} pp of its dense model and beat chance")
    return protocol.verdict_text(results.claims, results.sanity, ok, " pp")


def headline_metrics(results: Results) -> dict[str, float]:
    """Seed means a rerun reproduces: per arm test/OOD accuracy and sparsity, the naive average's mask overlap, each
    premise's and claim's effect."""
    final = results.final.groupby("arm", sort=False).mean(numeric_only=True)
    out = {}
    for arm in final.index:
        key = arm.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        for col in ("test_acc", "ood_acc", "sparsity"):
            out[f"{key}_{col}"] = float(final.loc[arm, col])
    if len(results.naive):
        out["naive_average_sparsity"] = float(results.naive.naive_sparsity.mean())
        out["imp_mask_iou"] = float(results.naive.mean_mask_iou.mean())
    out |= {f"claim_{r.claim}": float(r.mean) for r in results.claims.itertuples()}
    return out
