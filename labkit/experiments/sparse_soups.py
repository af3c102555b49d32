"""Sparse Model Soups (Zimmer, Spiegel, Pokutta, ICLR 2024, arXiv 2306.16788) against IMP, at small scale.

Arms, all at the same final sparsity and paired by seed: IMP (one prune-retrain chain); IMP m x (retrained m x
longer per phase: equal compute); SMS with a uniform and with a greedy soup (each phase retrains m copies of one
pruned model, soups them, and starts the next phase from the soup); the last phase's ingredients; their
prediction ensemble (m x inference); and the naive average of independent IMP chains (different masks), before
and after re-pruning it to the target. BatchNorm is recalibrated after every retrain and merge, for every arm.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import merge, prune
from labkit.data import corruptions
from labkit.experiments import (
    check_types,
    require_choice,
    require_device,
    require_non_empty,
    require_non_negative,
    require_positive,
    require_unique,
    require_within,
)
from labkit.experiments import configure as _configure
from labkit.models.vision import VisionConfig, build
from labkit.profile import resolve_device, seed_everything


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
    naive_runs: int = 3  # independent IMP chains averaged naively (different masks); 0 or 1 skips the arm
    ood: str = "rotate:35+noise:0.25"  # corruption of the test set (labkit.data.corruptions spec)
    augment: float = 0.0  # training augmentation: random rotation up to this many degrees (+ shifts of 2/28)
    curve_points: int = 11  # alphas on the interpolation paths
    seeds: tuple[int, ...] = (0, 1, 2)  # paired seeds: each seed runs every arm
    threads: int = 1  # torch threads: 1 is fastest for a small MLP on 2 shared cores
    device: str = "auto"  # "auto" -> CUDA when present

    def __post_init__(self) -> None:
        check_types(self)
        require_choice(self, "data", ("mnist", "mnist1d", "digits"))
        require_choice(self, "arch", ("mlp", "cnn", "resnet"))
        require_choice(self, "vary", ("seed", "lr", "wd"))
        require_positive(self, "width", "depth", "pretrain_epochs", "phases", "retrain_epochs", "m", "spread", "lr",
                         "batch_size", "threads")
        require_non_negative(self, "n_train", "weight_decay", "naive_runs", "augment", "seeds")
        require_within(self, "goal_sparsity", 0, 1, "()")
        require_within(self, "momentum", 0, 1, "[)")
        require_within(self, "warmup_frac", 0, 1, "[)")
        require_within(self, "bn_frac", 0, 1, "(]")
        require_within(self, "curve_points", 2, math.inf, "[)")
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
        "seeds": (0,),
        "curve_points": 3,
        "batch_size": 64,
    },
    "cpu": {},
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


# Settings searched for the regime where SMS beats IMP (cpu preset + these overrides); every one run is reported in
# reports/sparse_soups/explorations.md. EXPLORE_BASE drops the arms the search does not need, to save compute.
EXPLORE_BASE: dict[str, Any] = {"greedy_chain": False, "naive_runs": 0, "curve_points": 3}
EXPLORATIONS: dict[str, dict[str, Any]] = {
    "vary_seed": {"vary": "seed"},
    "vary_lr_wide": {"spread": (0.25, 2.0)},
    "extreme_sparsity": {"goal_sparsity": 0.995, "phases": 5},
    "moderate_sparsity": {"goal_sparsity": 0.9, "phases": 3},
    "augment": {"augment": 15.0},
    "short_retrain": {"retrain_epochs": 2},
    "mnist1d": {
        "data": "mnist1d",
        "n_train": 0,
        "width": 300,
        "pretrain_epochs": 40,
        "goal_sparsity": 0.95,
        "ood": "noise:0.5",
    },
    "mnist1d_cnn": {
        "data": "mnist1d",
        "n_train": 0,
        "arch": "cnn",
        "width": 16,
        "pretrain_epochs": 40,
        "goal_sparsity": 0.95,
        "ood": "noise:0.5",
    },
    "cnn": {
        "arch": "cnn",
        "width": 8,
        "n_train": 5000,
        "pretrain_epochs": 10,
        "retrain_epochs": 3,
        "goal_sparsity": 0.95,
        "phases": 3,
        "m": 3,
    },
}


def configure(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config for ``preset`` with explicit ``overrides`` applied (unknown names raise)."""
    return _configure(Config, PRESETS, preset, overrides)


@dataclass
class Data:
    """Tensors on the run's device; ``ood_x`` is the corrupted test set (same labels as ``test_y``)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    ood_x: Tensor
    name: str
    images: bool  # 2-D images (augmentation and rotation apply) or 1-D signals


def load_data(cfg: Config) -> Data:
    """The configured dataset, subset to ``n_train``, with its deterministic OOD test split."""
    device = resolve_device(cfg.device)
    if cfg.data in ("mnist", "digits"):
        from labkit.data import images

        s = images.mnist() if cfg.data == "mnist" else images.digits()
        tx, ty, vx, vy, sx, sy, name = s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y, s.name
    elif cfg.data == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # generated locally (get_dataset would download)
        x, y = d["x"].astype(np.float32)[:, None], d["y"].astype(np.int64)
        cut = int(0.8 * len(y))
        tx, ty, vx, vy = x[:cut], y[:cut], x[cut:], y[cut:]
        sx, sy, name = d["x_test"].astype(np.float32)[:, None], d["y_test"].astype(np.int64), "MNIST-1D (generated)"
    else:
        raise ValueError(f"unknown data {cfg.data!r}; expected one of ['mnist', 'mnist1d', 'digits']")
    if cfg.n_train and cfg.n_train < len(ty):
        keep = np.random.default_rng(12345).permutation(len(ty))[: cfg.n_train]
        tx, ty = tx[keep], ty[keep]
    t = {k: torch.as_tensor(v) for k, v in dict(tx=tx, ty=ty, vx=vx, vy=vy, sx=sx, sy=sy).items()}
    images = t["sx"].dim() == 4
    ood = corruptions.corrupt(t["sx"], cfg.ood, seed=0, clip=images) if cfg.ood else t["sx"].clone()
    return Data(*(v.to(device) for v in t.values()), ood.to(device), name, images)


def variant(cfg: Config, j: int) -> tuple[float, float]:
    """Peak LR and weight decay of ingredient ``j`` (seeds always differ; ``vary`` picks the knob on top)."""
    factor = float(np.linspace(*cfg.spread, cfg.m)[j]) if cfg.m > 1 else 1.0
    if cfg.vary == "seed":
        return cfg.lr, cfg.weight_decay
    if cfg.vary == "lr":
        return cfg.lr * factor, cfg.weight_decay
    if cfg.vary == "wd":
        return cfg.lr, cfg.weight_decay * factor
    raise ValueError(f"unknown vary {cfg.vary!r}; expected one of ['seed', 'lr', 'wd']")


def retrain_seed(seed: int, phase: int, j: int) -> int:
    """Ingredient j's seed in a phase; IMP chain j uses the same one, which pairs IMP with ingredient 0."""
    return seed * 100_003 + phase * 101 + j


def train(
    model: nn.Module,
    data: Data,
    cfg: Config,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
    masks: prune.Masks | None = None,
    warmup_frac: float = 0.0,
) -> nn.Module:
    """SGD (Nesterov) with a linear schedule: ``warmup_frac`` warm-up to ``lr``, then linear to 0 (SMS's LLR).

    A fresh optimizer per call, as SMS; with ``masks`` pruned weights stay exactly zero (gradients and state masked).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=weight_decay
    )
    handle = prune.apply_masks(model, masks, optimizer=opt) if masks else None
    n = len(data.train_y)
    per_epoch = math.ceil(n / cfg.batch_size)
    total, warm = epochs * per_epoch, int(warmup_frac * epochs * per_epoch)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(data.train_x.device)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            x = data.train_x[idx]
            if cfg.augment and data.images:
                x = corruptions.affine(x, cfg.augment, 2 / 28, gen)
            scale = (step + 1) / warm if step < warm else (total - step) / max(total - warm, 1)
            for group in opt.param_groups:
                group["lr"] = lr * scale
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), data.train_y[idx]).backward()
            opt.step()
            step += 1
    if handle is not None:
        handle.remove()
    return model


def recalibrate(model: nn.Module, data: Data, cfg: Config) -> nn.Module:
    """BN statistics from the first ``bn_frac`` of the (unshuffled) training set, cumulative average."""
    n = max(cfg.batch_size, int(cfg.bn_frac * len(data.train_y)))
    batches = [data.train_x[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    return merge.recalibrate_bn(model, batches)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + 2000]), -1) for i in range(0, len(x), 2000)])


def ece(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins."""
    conf, pred = probs.max(-1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return total


def scores(probs_test: Tensor, probs_ood: Tensor, data: Data) -> dict[str, float]:
    return {
        "test_acc": 100 * float((probs_test.argmax(-1) == data.test_y).float().mean()),
        "ood_acc": 100 * float((probs_ood.argmax(-1) == data.test_y).float().mean()),
        "ece": ece(probs_test, data.test_y),
    }


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """Test and OOD accuracy (%) and test ECE."""
    return scores(predict(model, data.test_x), predict(model, data.ood_x), data)


def val_acc(model: nn.Module, data: Data) -> float:
    return 100 * float((predict(model, data.val_x).argmax(-1) == data.val_y).float().mean())


def loaded(template: nn.Module, sd: dict[str, Tensor], data: Data, cfg: Config) -> nn.Module:
    """A copy of ``template`` holding ``sd``, with BN recalibrated (SMS does this after every merge)."""
    model = copy.deepcopy(template)
    model.load_state_dict(sd)
    return recalibrate(model, data, cfg)


@dataclass
class Results:
    """Tidy tables; ``final`` has one row per seed x arm at the last phase."""

    phases: pd.DataFrame  # seed, chain, phase, sparsity, arm, member, test_acc, ood_acc, ece, val_acc
    final: pd.DataFrame  # seed, arm, sparsity, test_acc, ood_acc, ece
    naive: pd.DataFrame  # seed, mean_mask_iou, naive_sparsity, goal
    curves: pd.DataFrame  # seed, path, alpha, test_acc, ood_acc, sparsity
    soups: pd.DataFrame  # seed, chain, phase, chosen, max_l2, mean_l2, mean_angle_degrees, mean_to_average
    checks: dict[str, bool] = field(default_factory=dict)  # sanity assertions that held
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per arm (all seeds)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _imp_chain(dense, data, cfg, seed, chain, epochs, clock, name, rows):
    start = time.perf_counter()
    model, masks = copy.deepcopy(dense), None
    for p, target in enumerate(prune.imp_schedule(cfg.goal_sparsity, cfg.phases), start=1):
        masks = prune.magnitude_masks(model, target, prev_masks=masks)
        train(
            model,
            data,
            cfg,
            epochs=epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=retrain_seed(seed, p, chain),
            masks=masks,
            warmup_frac=cfg.warmup_frac,
        )
        recalibrate(model, data, cfg)
        if chain == 0:
            rows.append(
                {
                    "seed": seed,
                    "chain": name,
                    "phase": p,
                    "sparsity": prune.sparsity(model),
                    "arm": name,
                    "member": -1,
                    **evaluate(model, data),
                    "val_acc": val_acc(model, data),
                }
            )
    clock.add(name, start)
    return model, masks


def _sms_chain(dense, data, cfg, seed, mode, clock, rows, soup_rows):
    """One SMS chain: per phase prune the soup, retrain m copies, soup them (``mode``), recalibrate."""
    start = time.perf_counter()
    name = f"SMS {mode}"
    model, masks, ingredients = copy.deepcopy(dense), None, []
    for p, target in enumerate(prune.imp_schedule(cfg.goal_sparsity, cfg.phases), start=1):
        masks = prune.magnitude_masks(model, target, prev_masks=masks)
        prune.apply_masks(model, masks).remove()
        ingredients = []
        for j in range(cfg.m):
            lr, wd = variant(cfg, j)
            ing = train(
                copy.deepcopy(model),
                data,
                cfg,
                epochs=cfg.retrain_epochs,
                lr=lr,
                weight_decay=wd,
                seed=retrain_seed(seed, p, j),
                masks=masks,
                warmup_frac=cfg.warmup_frac,
            )
            recalibrate(ing, data, cfg)
            rows.append(
                {
                    "seed": seed,
                    "chain": name,
                    "phase": p,
                    "sparsity": prune.sparsity(ing),
                    "arm": "ingredient",
                    "member": j,
                    **evaluate(ing, data),
                    "val_acc": val_acc(ing, data),
                }
            )
            ingredients.append(ing)
        sds = [i.state_dict() for i in ingredients]
        zeros = merge.shared_mask(sds, "zeros")  # raises unless the ingredients share one mask exactly
        soups = {"uniform": merge.average(sds, masks=masks)}
        soups["greedy"], chosen, _ = merge.greedy_soup(
            sds,
            lambda sd, template=model: val_acc(loaded(template, sd, data, cfg), data),
            strict=cfg.greedy_strict,
            masks=masks,
        )
        for kind in ("uniform", "greedy") if not cfg.greedy_chain or mode == "uniform" else ("greedy",):
            soup = loaded(model, soups[kind], data, cfg)
            arm = f"SMS {kind}" if kind == mode else f"SMS {kind} (uniform chain)"
            rows.append(
                {
                    "seed": seed,
                    "chain": name,
                    "phase": p,
                    "sparsity": prune.sparsity(soup),
                    "arm": arm,
                    "member": -1,
                    **evaluate(soup, data),
                    "val_acc": val_acc(soup, data),
                }
            )
        dist = merge.soup_distances(sds)
        off = ~torch.eye(cfg.m, dtype=torch.bool)
        soup_rows.append(
            {
                "seed": seed,
                "chain": name,
                "phase": p,
                "chosen": len(chosen),
                "max_l2": float(dist["l2"][off].max()) if cfg.m > 1 else 0.0,
                "mean_l2": float(dist["l2"][off].mean()) if cfg.m > 1 else 0.0,
                "mean_angle_degrees": float(dist["angle_degrees"][off].mean()) if cfg.m > 1 else 0.0,
                "mean_to_average": float(dist["to_average"].mean()),
                "masks_identical": all(torch.equal(zeros[k].cpu(), masks[k].cpu()) for k in masks),
            }
        )
        model = loaded(model, soups[mode], data, cfg)
    clock.add(name, start)
    return model, masks, ingredients


def run_seed(cfg: Config, data: Data, seed: int, clock: _Clock) -> dict[str, list[dict]]:
    """Every arm for one seed; returns row lists for the Results tables."""
    seed_everything(seed, threads=cfg.threads)
    shape = tuple(data.train_x.shape[1:])
    template = build(VisionConfig(cfg.arch, shape, int(data.train_y.max()) + 1, cfg.width, cfg.depth))
    template = template.to(data.train_x.device)
    rows: list[dict] = []
    soup_rows: list[dict] = []
    start = time.perf_counter()
    dense = train(
        template, data, cfg, epochs=cfg.pretrain_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=seed * 7919
    )
    recalibrate(dense, data, cfg)
    clock.add("dense", start)
    rows.append(
        {
            "seed": seed,
            "chain": "dense",
            "phase": 0,
            "sparsity": prune.sparsity(dense),
            "arm": "dense",
            "member": -1,
            **evaluate(dense, data),
            "val_acc": val_acc(dense, data),
        }
    )
    imp = [
        _imp_chain(dense, data, cfg, seed, c, cfg.retrain_epochs, clock, "IMP" if c == 0 else f"IMP run {c}", rows)
        for c in range(max(1, cfg.naive_runs))
    ]
    final = {"IMP": imp[0][0]}
    if cfg.imp_mx:
        final[f"IMP {cfg.m}x"] = _imp_chain(
            dense, data, cfg, seed, 0, cfg.m * cfg.retrain_epochs, clock, f"IMP {cfg.m}x", rows
        )[0]
    sms, masks, ingredients = _sms_chain(dense, data, cfg, seed, "uniform", clock, rows, soup_rows)
    final["SMS uniform"] = sms
    if cfg.greedy_chain:
        final["SMS greedy"] = _sms_chain(dense, data, cfg, seed, "greedy", clock, rows, soup_rows)[0]
    out = [{"seed": seed, "arm": a, "sparsity": prune.sparsity(mdl), **evaluate(mdl, data)} for a, mdl in final.items()]
    last = [r for r in rows if r["chain"] == "SMS uniform" and r["phase"] == cfg.phases]
    if not cfg.greedy_chain:
        out += [
            {k: r[k] for k in ("seed", "sparsity", "test_acc", "ood_acc", "ece")}
            | {"arm": "SMS greedy (uniform chain)"}
            for r in last
            if r["arm"] == "SMS greedy (uniform chain)"
        ]
    ing = [r for r in last if r["arm"] == "ingredient"]
    for label, pick in (("ingredients (mean)", np.mean), ("ingredients (best)", np.max)):
        out.append(
            {
                "seed": seed,
                "arm": label,
                "sparsity": float(np.mean([r["sparsity"] for r in ing])),
                **{k: float(pick([r[k] for r in ing])) for k in ("test_acc", "ood_acc", "ece")},
            }
        )
    probs_t = torch.stack([predict(i, data.test_x) for i in ingredients]).mean(0)
    probs_o = torch.stack([predict(i, data.ood_x) for i in ingredients]).mean(0)
    out.append(
        {
            "seed": seed,
            "arm": f"prediction ensemble ({cfg.m}x inference)",
            "sparsity": prune.sparsity(ingredients[0]),
            **scores(probs_t, probs_o, data),
        }
    )
    naive_rows, curve_rows = [], []
    if len(imp) > 1:
        start = time.perf_counter()
        avg = loaded(dense, merge.average([m.state_dict() for m, _ in imp]), data, cfg)
        out.append(
            {
                "seed": seed,
                "arm": "naive average (different masks)",
                "sparsity": prune.sparsity(avg),
                **evaluate(avg, data),
            }
        )
        pruned = copy.deepcopy(avg)
        prune.apply_masks(pruned, prune.magnitude_masks(pruned, cfg.goal_sparsity)).remove()
        recalibrate(pruned, data, cfg)
        out.append(
            {
                "seed": seed,
                "arm": "naive average re-pruned",
                "sparsity": prune.sparsity(pruned),
                **evaluate(pruned, data),
            }
        )
        ious = [prune.mask_iou(imp[a][1], imp[b][1]) for a in range(len(imp)) for b in range(a + 1, len(imp))]
        naive_rows.append(
            {
                "seed": seed,
                "mean_mask_iou": float(np.mean(ious)),
                "runs": len(imp),
                "naive_sparsity": prune.sparsity(avg),
                "goal": cfg.goal_sparsity,
            }
        )
        clock.add("naive average", start)
    start = time.perf_counter()
    alphas = np.linspace(0, 1, cfg.curve_points)
    paths = {"same mask (SMS ingredients 0, 1)": ingredients[:2]}
    if len(imp) > 1:
        paths["different masks (IMP runs 0, 1)"] = [imp[0][0], imp[1][0]]
    for path, (a, b) in paths.items() if cfg.m > 1 else []:
        for alpha in alphas:
            mdl = loaded(dense, merge.lerp(a.state_dict(), b.state_dict(), float(alpha)), data, cfg)
            curve_rows.append(
                {
                    "seed": seed,
                    "path": path,
                    "alpha": float(alpha),
                    "sparsity": prune.sparsity(mdl),
                    **evaluate(mdl, data),
                }
            )
    clock.add("curves", start)
    return {"phases": rows, "final": out, "naive": naive_rows, "curves": curve_rows, "soups": soup_rows}


def comparison(final: pd.DataFrame, ref: str = "IMP") -> pd.DataFrame:
    """Per arm: mean sparsity, clean/OOD accuracy (mean, sd over seeds) and the paired difference to ``ref``."""
    from labkit.stats import paired_diff

    stats = final.groupby("arm", sort=False).agg(
        sparsity=("sparsity", "mean"),
        test_acc=("test_acc", "mean"),
        test_sd=("test_acc", "std"),
        ood_acc=("ood_acc", "mean"),
        ood_sd=("ood_acc", "std"),
        seeds=("seed", "nunique"),
    )
    for metric, short in (("test_acc", "test"), ("ood_acc", "ood")):
        diff = paired_diff(final, "arm", ref, metric).set_index("arm")
        stats[f"{short}_vs_{ref}"] = diff.mean_diff
        stats[f"{short}_vs_{ref}_low"] = diff.low
        stats[f"{short}_vs_{ref}_high"] = diff.high
    return stats.reset_index()


def run(cfg: Config, data: Data | None = None, progress: bool = True) -> Results:
    """All arms for every seed in ``cfg.seeds``; sanity checks (exact sparsity, shared masks) raise if violated."""
    from tqdm.auto import tqdm

    data = data if data is not None else load_data(cfg)
    clock = _Clock()
    tables: dict[str, list[dict]] = {k: [] for k in ("phases", "final", "naive", "curves", "soups")}
    for seed in tqdm(cfg.seeds, desc="seeds", disable=not progress):
        for name, rows in run_seed(cfg, data, seed, clock).items():
            tables[name] += rows
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    final = frames["final"]
    exact = final[final.arm.isin(["IMP", "SMS uniform", "SMS greedy", "SMS greedy (uniform chain)", f"IMP {cfg.m}x"])]
    checks = {
        "final sparsity equals goal (1e-4) for IMP and SMS": bool(
            (exact.sparsity - cfg.goal_sparsity).abs().max() < 1e-4
        ),
        "ingredients share one mask before every soup": bool(frames["soups"].masks_identical.all()),
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise AssertionError(f"sanity checks failed: {failed}")
    return Results(
        frames["phases"],
        final,
        frames["naive"],
        frames["curves"],
        frames["soups"],
        checks,
        {k: round(v, 2) for k, v in clock.seconds.items()},
    )
