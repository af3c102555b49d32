"""DSIR's downstream protocol at byte-LM scale: continued pretraining on a selection, then a labelled target task.

The paper continues pretraining RoBERTa on each method's selection and fine-tunes it on a labelled task of the target
domain (Xie et al., NeurIPS 2023, §6). Here: one base byte-level transformer is pretrained on a random sample of the
pool; for every target × method × seed it is continued on that method's selection, and a **linear probe** (logistic
regression on mean-pooled last hidden states, the transformer frozen) learns to tell apart the target domain's fine
tags (``CLASSIFY_TASKS``). Accuracy and macro-F1 on a disjoint labelled evaluation set. The budget check reruns the
first seed × target's continued pretraining at ``budget_factor`` × the steps and scores both runs on the target's fit
sample (validation text: never selectable, never tested). Jobs run through :func:`labkit.jobs.run_jobs` in forked
workers, which inherit the pool and the base model (:data:`SHARED`). Nothing here draws or prints.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit import seed_everything
from labkit.experiments.dsir.arms.lm import SHARED, budget_steps, byte_lm, shared_pool, train_bytes
from labkit.experiments.dsir.arms.selection import kl_scorer, select
from labkit.experiments.dsir.config import CLASSIFY_TASKS, CLASSIFY_TRACK, TARGETS, Config
from labkit.experiments.dsir.data import Prepared, Split, draw_task, split_target
from labkit.jobs import run_jobs
from labkit.models.byte_lm import bits_per_byte, byte_tensor

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ClassifyRun:
    """The classification track of one run."""

    table: pd.DataFrame  # seed, target, method (+ "base"), accuracy, macro_f1, bits_per_byte, kl_reduction, k, sizes
    skipped: dict[str, str]  # classification target -> why it was not run
    # the budget check's runs: track, arm, seed ("target/seed"), budget, steps, validation_bits_per_byte (fit sample)
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget_curves: dict[tuple[str, str, float], list[float]] = field(default_factory=dict)  # (track, arm, budget)


def pooled_features(model: nn.Module, texts: list[str], context: int, batch_size: int = 64) -> np.ndarray:
    """Mean over positions of the last hidden state for the first ``context`` UTF-8 bytes of each text."""
    import torch

    device = next(model.parameters()).device
    encoded = [list(t.encode("utf-8")[:context]) or [32] for t in texts]
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i : i + batch_size]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width)
            for r, row in enumerate(chunk):  # right padding: a causal model's earlier positions do not see it
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1.0
            hidden = model(input_ids=ids.to(device), output_hidden_states=True, use_cache=False).hidden_states[-1]
            mask = mask.to(device)[:, :, None]
            out.append(((hidden.float() * mask).sum(1) / mask.sum(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, c: float) -> dict:
    """Linear probe: standardized features → multinomial logistic regression; accuracy and macro-F1 on eval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train_x), train_y)
    pred = clf.predict(scaler.transform(eval_x))
    return {"accuracy": float((pred == eval_y).mean()), "macro_f1": float(f1_score(eval_y, pred, average="macro"))}


def run_classification(
    cfg: Config, prepared: Prepared, progress: bool = True, settings: dict[str, Any] | None = None
) -> ClassifyRun:
    """Base LM → per target × method × seed: continued pretraining on the selection, probe of the target's tags.

    Rows: seed, target, method, accuracy, macro_f1, bits_per_byte (held-out target chunks), kl_reduction, k, sizes.
    Method ``"base"`` is the base LM without continued pretraining (deterministic: the same value for every seed).
    Task chunks are reserved: never in a target's fit/held-out draw, a selection pool, or the base LM's sample.
    A tuned method uses its setting in ``settings`` (chosen on validation; default its grid's first). The budget check
    reruns the first seed × target of every method at ``budget_factor`` × ``continue_steps`` (warm-up and cosine
    horizon scaled with it, from the same base model and selection); both runs are scored on the target's fit sample.
    """
    from labkit.profile import resolve_device

    device = resolve_device(cfg.device)
    corpus = prepared.corpus
    labels, texts = corpus.label.to_numpy(), corpus.text.to_numpy()
    tasks, skipped = {}, {}
    for target in cfg.classify_targets:
        if target in prepared.skipped_targets:
            skipped[target] = prepared.skipped_targets[target]
            continue
        task = draw_task(labels, CLASSIFY_TASKS[target], cfg.classify_train, cfg.classify_eval)
        if isinstance(task, str):
            skipped[target] = task
            continue
        reserved = np.concatenate([task[0], task[2]])
        have = len(np.setdiff1d(np.nonzero(np.isin(labels, TARGETS[target]))[0], reserved))
        if have < cfg.n_fit + cfg.n_eval + 1:
            skipped[target] = f"{have} target chunks left after reserving the task; needs > n_fit + n_eval"
            continue
        tasks[target] = task
    if not tasks:
        return ClassifyRun(pd.DataFrame(), skipped)
    all_reserved = np.unique(np.concatenate([np.concatenate([t[0], t[2]]) for t in tasks.values()]))
    seed_everything(0, threads=cfg.threads)
    candidates = np.setdiff1d(np.arange(len(corpus)), all_reserved)
    sample = np.random.default_rng(0).choice(candidates, size=min(cfg.base_chunks, len(candidates)), replace=False)
    base = byte_lm(cfg, seed=0).to(device)
    train_bytes(base, byte_tensor(list(texts[sample])), cfg.base_steps, cfg.lm_lr, cfg, seed=0)
    settings = settings or {}
    cells = [(s, t) for s in range(cfg.classify_seeds) for t in tasks]
    jobs = [(cfg, *cells[0], m, cfg.budget_factor, True, settings) for m in cfg.classify_methods]  # longest first
    jobs += [(cfg, s, t, m, 1.0, (s, t) == cells[0], settings) for s, t in cells for m in cfg.classify_methods]
    with shared_pool(prepared, tasks=tasks, base=base):
        first = {t: s for s, t in reversed(cells)}  # the base model is scored once per target, at its first seed
        base_rows = {t: _score(cfg, base, t, s, "base", {"kl_reduction": float("nan"), "k": 0})
                     for t, s in first.items()}
        done = run_jobs(_classify_job, jobs, workers=cfg.workers, desc="dsir classification", progress=progress,
                        start="fork")
    by_cell = {(s, t, m): out["row"] for (_, s, t, m, factor, _, _), out in zip(jobs, done, strict=True)
               if factor == 1}
    rows = []
    for seed, target in cells:
        rows.append({**base_rows[target], "seed": seed})
        rows += [by_cell[(seed, target, method)] for method in cfg.classify_methods]
    checked = [(job, out) for job, out in zip(jobs, done, strict=True) if job[5]]  # the budget cell's runs
    budget = pd.DataFrame([{"track": CLASSIFY_TRACK, "arm": m, "seed": f"{t}/{s}", "budget": factor,
                            "steps": budget_steps(cfg.continue_steps, factor),
                            "validation_bits_per_byte": out["validation"]}
                           for (_, s, t, m, factor, _, _), out in checked])
    budget = budget.sort_values("budget", kind="stable", ignore_index=True)
    curves = {(CLASSIFY_TRACK, m, factor): out["curve"] for (_, _, _, m, factor, _, _), out in checked}
    return ClassifyRun(pd.DataFrame(rows), skipped, budget, curves)


def _split(cfg: Config, seed: int, target: str) -> Split:
    """The target's split with its classification task's chunks reserved."""
    prepared, tasks = SHARED["prepared"], SHARED["tasks"]
    train_ids, _, eval_ids, _ = tasks[target]
    return split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, reserved=np.concatenate([train_ids, eval_ids]))


def _score(cfg: Config, model: nn.Module, target: str, seed: int, method: str, extra: dict) -> dict:
    """Probe accuracy / macro-F1 of ``model`` on the target's task and its held-out bits per byte."""
    prepared, tasks = SHARED["prepared"], SHARED["tasks"]
    texts = prepared.corpus.text.to_numpy()
    train_ids, train_y, eval_ids, eval_y = tasks[target]
    train_x = pooled_features(model, list(texts[train_ids]), cfg.lm_context)
    eval_x = pooled_features(model, list(texts[eval_ids]), cfg.lm_context)
    row = {"seed": seed, "target": target, "method": method}
    row.update(probe(train_x, train_y, eval_x, eval_y, cfg.probe_c))
    held_out = list(texts[_split(cfg, seed, target).eval])
    row["bits_per_byte"] = bits_per_byte(model, byte_tensor(held_out), cfg.lm_context)
    row.update(extra)
    row.update({"n_tags": len(CLASSIFY_TASKS[target]), "n_train": len(train_ids), "n_eval": len(eval_ids)})
    return row


def _classify_job(job: tuple[Config, int, str, str, float, bool, dict[str, Any]]) -> dict[str, Any]:
    """One seed × target × method: select (a tuned method at its setting in ``settings``), continue pretraining the
    base LM on the selection for ``budget`` × ``continue_steps``; at budget 1 probe it (its row); with ``validate``
    score the fit sample (the budget check)."""
    cfg, seed, target, method, budget, validate, settings = job
    prepared = SHARED["prepared"]
    split = _split(cfg, seed, target)
    k = min(cfg.budget_k, len(split.pool))
    chosen = select(method, prepared, split, target, k, seed, cfg, setting=settings.get(method))
    seed_everything(seed, threads=cfg.threads)
    model = copy.deepcopy(SHARED["base"])
    texts = prepared.corpus.text.to_numpy()
    steps = budget_steps(cfg.continue_steps, budget)
    curve = train_bytes(model, byte_tensor(list(texts[chosen])), steps, cfg.continue_lr, cfg, seed)
    out: dict[str, Any] = {"curve": curve, "row": None, "validation": float("nan")}
    if budget == 1:
        kl = kl_scorer(prepared, split, cfg, SHARED["total_counts"])(chosen)
        out["row"] = _score(cfg, model, target, seed, method, {"kl_reduction": kl, "k": k})
    if validate:
        out["validation"] = bits_per_byte(model, byte_tensor(list(texts[split.fit])), cfg.lm_context)
    return out
