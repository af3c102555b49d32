"""GateSkip's tasks and how an arm is scored on them (:mod:`labkit.experiments.gateskip`).

``cumsum``: running sums mod 10, scored by token accuracy and exact match of chain + answer; ``text``: byte-level LM
on pinned CPython stdlib sources, scored by bits per byte. Compute is scored as FLOPs actually executed in compact
execution (:func:`labkit.profile.count_flops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit import profile, skip
from labkit.data import sequences

if TYPE_CHECKING:
    from labkit.experiments.gateskip import Config

SkipContext = Callable[[], AbstractContextManager[skip.SkipStats]]  # a fresh skip block per evaluation batch


class Task:
    """Data and metrics of one task for one seed."""

    def __init__(self, name: str, cfg: Config, seed: int, device: torch.device) -> None:
        self.name, self.cfg, self.device = name, cfg, device
        self.train_gen = torch.Generator().manual_seed(seed)
        eval_gen = torch.Generator().manual_seed(10_000 + seed)
        self.calib_gen_seed = 20_000 + seed
        self.provenance: dict[str, Any] = {}
        if name == "cumsum":
            self.vocab, self.eos, self.pad = sequences.VOCAB_SIZE, sequences.EOS, sequences.PAD
            self.eval_tokens = sequences.running_sum_batch(cfg.eval_size, cfg.n_digits, eval_gen)
            self.scored = sequences.running_sum_scored(cfg.n_digits)
        else:
            self.vocab, self.eos, self.pad = 256, None, None
            self.train_bytes, prov = sequences.stdlib_bytes(sequences.STDLIB_TRAIN_FILES)
            eval_bytes, eval_prov = sequences.stdlib_bytes(sequences.STDLIB_EVAL_FILES)
            self.provenance = {"train": prov, "eval": eval_prov}
            self.eval_tokens = sequences.byte_windows(eval_bytes, cfg.eval_size, cfg.text_length, eval_gen)
            self.scored = torch.ones(cfg.text_length - 1, dtype=torch.bool)

    def batch(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training sequences drawn with ``generator`` (default: the task's own training stream)."""
        gen = generator or self.train_gen
        if self.name == "cumsum":
            return sequences.running_sum_batch(n, self.cfg.n_digits, gen)
        return sequences.byte_windows(self.train_bytes, n, self.cfg.text_length, gen)

    def calibration(self) -> list[torch.Tensor]:
        """ShortGPT's calibration batches: the same ones for every arm of the seed."""
        gen = torch.Generator().manual_seed(self.calib_gen_seed)
        return [self.batch(self.cfg.batch_size, gen).to(self.device) for _ in range(self.cfg.calib_batches)]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, context: SkipContext | None = None) -> dict[str, float]:
    """Quality over the task's held-out set, each eval batch inside ``context()`` (a skip context or None)."""
    cfg = task.cfg
    model.eval()
    scored = task.scored.to(task.device)
    n_tok = n_correct = n_seq_ok = 0
    nll = 0.0
    fractions = []
    for start in range(0, task.eval_tokens.shape[0], cfg.eval_batch):
        x = task.eval_tokens[start : start + cfg.eval_batch].to(task.device)
        if context is None:
            logits = model(x, use_cache=False).logits
        else:
            with context() as stats:
                logits = model(x, use_cache=False).logits
            fractions.append(stats.skipped_fraction)
        pred, target = logits[:, :-1], x[:, 1:]
        correct = (pred.argmax(-1) == target) & scored
        n_correct += int(correct.sum())
        n_tok += int(scored.sum()) * x.shape[0]
        n_seq_ok += int((correct | ~scored).all(1).sum())
        nll += float(
            F.cross_entropy(pred[:, scored].reshape(-1, pred.shape[-1]), target[:, scored].reshape(-1), reduction="sum")
        )
    out = {"token_acc": n_correct / n_tok, "skipped_fraction": float(np.mean(fractions)) if fractions else 0.0}
    if task.name == "cumsum":
        out["seq_em"] = n_seq_ok / task.eval_tokens.shape[0]
    else:
        out["bpb"] = nll / n_tok / math.log(2)
    return out


@torch.no_grad()
def executed_flops(model: nn.Module, task: Task, context: SkipContext | None = None) -> int:
    """FLOPs of one forward over the first ``flops_batch`` eval sequences (compact execution inside ``context``)."""
    x = task.eval_tokens[: task.cfg.flops_batch].to(task.device)
    if context is None:
        return profile.count_flops(lambda: model(x, use_cache=False))
    with context() as stats:
        model(x, use_cache=False)
    return int(stats.flops)


@torch.no_grad()
def mean_gate(model: nn.Module, task: Task) -> float:
    """Mean gate value over every branch and token of the first evaluation batch at r = 0 (init: sigmoid(5))."""
    x = task.eval_tokens[: task.cfg.eval_batch].to(task.device)
    with skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x, use_cache=False)
    return float(torch.stack([rec["importance"].float().mean() for rec in stats.records.values()]).mean())


def gate_maps(model: nn.Module, task: Task, cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of mean gate importance per layer x branch x position (r = 0) and of skip fraction per branch x position
    at the training budget ``train_skip_end``, over the first evaluation batch."""
    x = task.eval_tokens[: cfg.eval_batch].to(task.device)
    gates, skips = [], []
    with torch.no_grad(), skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x)
    for name, rec in stats.records.items():
        layer, role = name.split(".")
        for pos, value in enumerate(rec["importance"].mean(0).tolist()):
            gates.append({"task": task.name, "layer": int(layer), "branch": role, "position": pos, "importance": value})
    with (
        torch.no_grad(),
        skip.budget(model, cfg.train_skip_end, scope=cfg.scope, measure_flops=False, record=True) as stats,
    ):
        model(x)
    for name, rec in stats.records.items():
        for pos, value in enumerate((~rec["keep"]).float().mean(0).tolist()):
            skips.append({"task": task.name, "module": name, "position": pos, "skip_fraction": value})
    return gates, skips
