"""DSIR's language-model arms: per seed × target every method's selection scored by KL reduction and a bigram LM
(each tuned method at every setting of its grid), and the tiny byte-level transformer track, the
main downstream, with its premise arm (the target's own held-in text) and budget check.

Jobs run through :func:`labkit.jobs.run_jobs` in forked workers, which inherit the prepared pool (set in
:data:`SHARED` by :func:`shared_pool`) instead of pickling it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit import seed_everything
from labkit.experiments.dsir.arms.selection import kl_scorer, select
from labkit.experiments.dsir.config import PREMISE_ARM, TARGETS, TINY_TRACK, TUNED, Config
from labkit.experiments.dsir.data import Prepared, held_in_target, split_target
from labkit.jobs import run_jobs
from labkit.models import byte_lm as byte_lm_module
from labkit.models.ngram_lm import BigramLM

if TYPE_CHECKING:
    import torch
    from torch import nn

SHARED: dict[str, Any] = {}  # what forked workers inherit, never pickled: the prepared pool, and what a track adds


@contextmanager
def shared_pool(prepared: Prepared, **more: Any) -> Iterator[None]:
    """Make ``prepared`` (and its corpus totals, and ``more``) visible to this module's jobs while the block runs."""
    SHARED.update(prepared=prepared, total_counts=prepared.features.total_counts(), **more)
    try:
        yield
    finally:
        SHARED.clear()


def byte_lm(cfg: Config, seed: int) -> nn.Module:
    """A fresh byte-level transformer of the config's size (``lm_hidden``, ``lm_layers``, ``lm_heads``)."""
    return byte_lm_module.build_byte_lm(cfg.lm_hidden, cfg.lm_layers, cfg.lm_heads, cfg.lm_context, seed)


def train_bytes(
    model: nn.Module, data: torch.Tensor, steps: int, lr: float, cfg: Config, seed: int, bins: int = 20
) -> list[float]:
    """Train ``model`` on ``lm_batch`` windows of ``lm_context`` bytes of ``data`` per step (AdamW, warm-up 10 %,
    cosine decay, as :func:`labkit.models.byte_lm.train_on_bytes`).

    Returns the loss curve, for figures: the mean next-byte loss in ``bins`` equal blocks of steps (convergence is
    judged by the budget check on validation text, not on this curve).
    """
    import torch

    from labkit.train import train_causal_lm

    window = cfg.lm_context + 1
    if len(data) <= window:
        raise ValueError(f"need more than {window} bytes of training text, got {len(data)}")
    generator = torch.Generator().manual_seed(seed)

    def windows(step: int) -> torch.Tensor:
        starts = torch.randint(0, len(data) - window, (cfg.lm_batch,), generator=generator)
        return torch.stack([data[s : s + window] for s in starts.tolist()])

    history = train_causal_lm(model, windows, steps, lr, warmup_steps=max(1, steps // 10), progress=False)
    blocks = np.array_split(history["loss"].to_numpy(dtype=np.float64), min(bins, max(1, steps)))
    return [float(b.mean()) for b in blocks if len(b)]


def budget_steps(steps: int, budget: float) -> int:
    """Steps of a run at ``budget`` × ``steps`` (the budget check's longer run; :func:`train_bytes` scales its warm-up
    and cosine horizon with them, so the schedule keeps its shape)."""
    return int(round(steps * budget))


def train_byte_lm(train_texts: list[str], cfg: Config, seed: int, budget: float = 1.0) -> tuple[Any, list[float]]:
    """A tiny byte-level causal transformer trained on ``train_texts`` for ``budget`` × ``lm_steps`` steps, and its
    training-loss curve (score it with :func:`labkit.models.byte_lm.bits_per_byte`)."""
    from labkit.profile import resolve_device

    seed_everything(seed, threads=cfg.threads)
    model = byte_lm(cfg, seed).to(resolve_device(cfg.device))
    curve = train_bytes(model, byte_lm_module.byte_tensor(train_texts), budget_steps(cfg.lm_steps, budget), cfg.lm_lr,
                        cfg, seed)
    return model, curve


def bigram_cells(cfg: Config, targets: list[str], progress: bool) -> list[dict[str, list]]:
    """Every seed × target cell (:func:`bigram_cell`), in ``cfg.workers`` forked processes (inside
    :func:`shared_pool`)."""
    jobs = [(cfg, s, t) for s in range(cfg.seeds) for t in targets]
    return run_jobs(bigram_cell, jobs, workers=cfg.workers, desc="dsir seeds × targets", progress=progress,
                    start="fork")


def bigram_cell(args: tuple[Config, int, str]) -> dict[str, list]:
    """One seed × target: every method's selection and scores, each tuned method at every setting of its grid.

    A tuned method (:data:`~labkit.experiments.dsir.config.TUNED`) gets one row per setting (tagged ``setting``, the
    index into its grid) and sweep rows with the bigram loss of the validation and the test chunks; the caller keeps
    the setting chosen on validation."""
    cfg, seed, target = args
    prepared: Prepared = SHARED["prepared"]
    labels = prepared.corpus.label.to_numpy()
    split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
    k = min(cfg.budget_k, len(split.pool))
    kl_of = kl_scorer(prepared, split, cfg, SHARED["total_counts"])
    held, val = prepared.encoded.subset(split.eval), prepared.encoded.subset(split.val)
    out: dict[str, list] = {"rows": [], "picks": [], "sweep": []}
    bigram = cfg.downstream in ("bigram", "both")
    for method in cfg.methods:
        settings = list(enumerate(cfg.grid(method))) if method in TUNED else [(None, None)]
        for index, setting in settings:
            chosen = select(method, prepared, split, target, k, seed, cfg, setting=setting)
            row = {"seed": seed, "target": target, "method": method, "k": k, "kl_reduction": kl_of(chosen),
                   "label_precision": float(np.isin(labels[chosen], TARGETS[target]).mean())}
            if bigram:
                lm = BigramLM(prepared.vocab_size, cfg.discount).fit(prepared.encoded.subset(chosen))
                row["bigram_nats_per_token"] = lm.cross_entropy(held)
            tag = {} if index is None else {"setting": index}
            if index is not None:
                val_loss = lm.cross_entropy(val) if bigram and len(split.val) else float("nan")
                out["sweep"] += [{"seed": seed, "target": target, "method": method, "setting": index,
                                  "setting_value": str(setting), "split": name, "bigram_nats_per_token": loss}
                                 for name, loss in (("val", val_loss), ("test", row.get("bigram_nats_per_token",
                                                                                           float("nan"))))]
            out["rows"].append({**row, **tag})
            out["picks"] += [{**r, **tag} for r in _pick_rows(labels[chosen], seed, target, method)]
    return out


def _pick_rows(picked: np.ndarray, seed: int, target: str, method: str) -> list[dict]:
    """The 12 most picked labels of a selection, the rest as "other"."""
    counts = pd.Series(picked).value_counts()
    return [{"seed": seed, "target": target, "method": method, "label": label, "count": int(count)}
            for label, count in [*counts.iloc[:12].items(), ("other", int(counts.iloc[12:].sum()))] if count]


def tiny_job(args: tuple[Config, int, str, str, float, bool, dict[str, Any]]) -> dict[str, Any]:
    """One tiny-transformer run: ``method``'s selection (a tuned method at its chosen setting, ``settings``), or the
    target's held-in text for the premise arm, at ``budget`` × ``lm_steps``. At budget 1 its row (held-out bits per
    byte, the test split); with ``validate`` the bits per byte of the split's validation chunks (the budget check's
    metric)."""
    cfg, seed, target, method, budget, validate, settings = args
    prepared: Prepared = SHARED["prepared"]
    split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
    if method == PREMISE_ARM:
        chosen = held_in_target(prepared, split, target)
    else:
        k = min(cfg.budget_k, len(split.pool))
        chosen = select(method, prepared, split, target, k, seed, cfg, setting=settings.get(method))
    texts = prepared.corpus.text.to_numpy()
    model, curve = train_byte_lm(list(texts[chosen]), cfg, seed, budget)
    out: dict[str, Any] = {"curve": curve, "validation": float("nan"), "row": None}
    if validate:
        out["validation"] = byte_lm_module.bits_per_byte(model, byte_lm_module.byte_tensor(list(texts[split.val])),
                                                         cfg.lm_context)
    if budget == 1:
        held = byte_lm_module.bits_per_byte(model, byte_lm_module.byte_tensor(list(texts[split.eval])), cfg.lm_context)
        kl = kl_scorer(prepared, split, cfg, SHARED["total_counts"])(chosen)
        out["row"] = {"seed": seed, "target": target, "method": method, "bits_per_byte": held, "kl_reduction": kl}
    return out


def tiny_track(
    cfg: Config, targets: list[str], settings: dict[str, Any], progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str, float], list[float]]]:
    """The transformer track: every configured (seed, target) cell × method, plus the premise arm (the target's
    held-in text, same steps × windows of bytes) where random selection runs; and the budget check, which reruns the
    first cell's arms at ``budget_factor`` × the steps. Returns the rows, the budget runs and their curves (inside
    :func:`shared_pool`)."""
    empty = (pd.DataFrame(), pd.DataFrame(), {})
    if cfg.downstream not in ("tiny_lm", "both"):
        return empty
    cells = [(s, t) for s in range(min(cfg.seeds, cfg.tiny_lm_seeds)) for t in targets if t in cfg.tiny_lm_targets]
    arms = [m for m in cfg.methods if m in cfg.tiny_lm_methods]
    arms += [PREMISE_ARM] if "random" in arms else []
    if not cells or not arms:
        return empty
    first = cells[0]
    jobs = [(cfg, *first, arm, cfg.budget_factor, True, settings) for arm in arms]  # the longest first
    jobs += [(cfg, s, t, arm, 1.0, (s, t) == first, settings) for s, t in cells for arm in arms]
    done = run_jobs(tiny_job, jobs, workers=cfg.workers, desc="dsir tiny transformer", progress=progress,
                    start="fork")
    rows, budget, curves = [], [], {}
    for (_, seed, target, arm, factor, validate, _), out in zip(jobs, done, strict=True):
        if out["row"] is not None:
            rows.append(out["row"])
        if validate:
            budget.append({"track": TINY_TRACK, "arm": arm, "seed": f"{target}/{seed}", "budget": factor,
                           "steps": budget_steps(cfg.lm_steps, factor), "validation_bits_per_byte": out["validation"]})
            curves[(TINY_TRACK, arm, factor)] = out["curve"]
    budget = pd.DataFrame(budget).sort_values(["budget"], kind="stable", ignore_index=True)
    return pd.DataFrame(rows), budget, curves
