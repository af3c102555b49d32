"""GateSkip's tasks and how an arm is scored on them.

``cumsum``: running sums mod 10, scored teacher-forced by token accuracy and exact match of chain + answer, and by
exact match of chains generated with a KV cache; ``text``: byte-level LM on pinned CPython stdlib sources, scored by
bits per byte. Train, validation and test never share a prompt (cumsum) or a file (text). Compute is scored as FLOPs
actually executed in compact execution (:func:`labkit.profile.count_flops`).

With a real pretrained LLM (stage 1, :class:`TokenText`) the same stdlib files are read as the LLM's own tokens, and
bits per byte divide each window's loss by the UTF-8 bytes its scored tokens decode to, so they compare across
tokenizers; each window is scored on its own, the unit the premise is paired on. ``dictmc`` (:class:`DictMC`) is an
accuracy task the gates are not trained on: which of four GCIDE definitions belongs to a headword, by the LM's
likelihood of each definition after the headword against after a neutral prompt; its unit is the question.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit import profile, skip
from labkit.data import corpora, sequences
from labkit.experiments.gateskip.config import TEST_SEED_OFFSET, Config
from labkit.skip.kv_cache import cache_argument, output_cache

SkipContext = Callable[[], AbstractContextManager[skip.SkipStats]]  # a fresh skip block per evaluation batch


def skipping(model: nn.Module, cfg: Config, ratio: float, **options: Any) -> AbstractContextManager[skip.SkipStats]:
    """``skip.budget`` as this experiment skips everywhere: the configured scope and protected first tokens, FLOPs not
    counted; ``options`` add to or override these (ranking, seed, thresholds, execution, ...)."""
    return skip.budget(model, ratio, **{"scope": cfg.scope, "protect": cfg.protect_first, "measure_flops": False,
                                        **options})


def forward_logits(
    model: nn.Module,
    x: torch.Tensor,
    context: SkipContext | None,
    fractions: list[float],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits of one forward over ``x`` (no KV cache), inside a fresh ``context()`` when one is given: its
    token x branch fraction skipped is appended to ``fractions``. ``attention_mask`` marks real tokens (padding is
    neither attended to nor counted in the budget)."""
    if context is None:
        return model(x, attention_mask=attention_mask, use_cache=False).logits
    with context() as stats:
        logits = model(x, attention_mask=attention_mask, use_cache=False).logits
    fractions.append(stats.skipped_fraction)
    return logits


EVAL_SPLITS = ("val", "test")  # tuning sees "val", the frozen configuration is reported on "test"
DECODE_PROMPT = 8  # tokens of a held-out window read in one forward before decoding the rest token by token


def vocabulary(name: str) -> tuple[int, int | None, int | None]:
    """The vocabulary size, EOS and pad token ids of task ``name`` (bytes for text: no EOS, no padding)."""
    if name == "cumsum":
        return sequences.VOCAB_SIZE, sequences.EOS, sequences.PAD
    return 256, None, None


class Task:
    """Data and metrics of one task for one seed: training stream, validation and test sets (disjoint sources)."""

    def __init__(self, name: str, cfg: Config, seed: int, device: torch.device) -> None:
        self.name, self.cfg, self.device = name, cfg, device
        self.train_gen = torch.Generator().manual_seed(seed)
        gens = {
            split: torch.Generator().manual_seed(offset + seed) for split, offset in (("val", 10_000), ("test", 50_000))
        }
        self.calib_gen_seed = 20_000 + seed
        self.provenance: dict[str, Any] = {}
        self.eval_tokens: dict[str, torch.Tensor] = {}
        self.vocab, self.eos, self.pad = vocabulary(name)
        if name == "cumsum":
            for split, gen in gens.items():
                self.eval_tokens[split] = sequences.running_sum_batch(cfg.eval_size, cfg.n_digits, gen, split=split)
            self.scored = sequences.running_sum_scored(cfg.n_digits)
            self.provenance = {"splits": "prompt hash buckets (labkit.data.sequences.running_sum_split)"}
        else:
            self.train_bytes, self.provenance["train"] = sequences.stdlib_bytes(sequences.STDLIB_SPLIT_FILES["train"])
            for split, gen in gens.items():
                data, self.provenance[split] = sequences.stdlib_bytes(sequences.STDLIB_SPLIT_FILES[split])
                self.eval_tokens[split] = sequences.byte_windows(data, cfg.eval_size, cfg.text_length, gen)
            self.scored = torch.ones(cfg.text_length - 1, dtype=torch.bool)

    def batch(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training sequences drawn with ``generator`` (default: the task's own training stream)."""
        gen = generator or self.train_gen
        if self.name == "cumsum":
            return sequences.running_sum_batch(n, self.cfg.n_digits, gen, split="train")
        return sequences.byte_windows(self.train_bytes, n, self.cfg.text_length, gen)

    def calibration(self) -> list[torch.Tensor]:
        """ShortGPT's calibration batches (training data): the same ones for every arm of the seed."""
        gen = torch.Generator().manual_seed(self.calib_gen_seed)
        return [self.batch(self.cfg.batch_size, gen).to(self.device) for _ in range(self.cfg.calib_batches)]

    def tokens(self, split: str) -> torch.Tensor:
        """The held-out sequences of ``split`` ("val" or "test")."""
        if split not in self.eval_tokens:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        return self.eval_tokens[split]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, context: SkipContext | None = None, split: str = "test") -> dict[str, float]:
    """Teacher-forced quality over ``split``, each eval batch inside ``context()`` (a skip context or None)."""
    cfg = task.cfg
    model.eval()
    tokens = task.tokens(split)
    scored = task.scored.to(task.device)
    n_tok = n_correct = n_seq_ok = 0
    nll = 0.0
    fractions = []
    for start in range(0, tokens.shape[0], cfg.eval_batch):
        x = tokens[start : start + cfg.eval_batch].to(task.device)
        logits = forward_logits(model, x, context, fractions)
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
        out["seq_em"] = n_seq_ok / tokens.shape[0]
    else:
        out["bpb"] = nll / n_tok / math.log(2)
    return out


@torch.no_grad()
def generate_chains(
    model: nn.Module, task: Task, context: SkipContext | None = None, split: str = "test"
) -> dict[str, float]:
    """Running sums generated greedily with a KV cache from the prompt ``<s> d1 .. dN |``, each batch inside
    ``context()``: exact match of the whole generated chain, answer and EOS (``gen_em``) and the token x branch
    fraction skipped over prefill and decoding (``skipped_fraction``)."""
    if task.name != "cumsum":
        raise ValueError(f"generate_chains needs the running-sum task, got {task.name!r}")
    cfg = task.cfg
    model.eval()
    tokens = task.tokens(split)
    prompt_len = cfg.n_digits + 2
    n_ok, fractions = 0, []
    for start in range(0, tokens.shape[0], cfg.eval_batch):
        x = tokens[start : start + cfg.eval_batch].to(task.device)
        prompt, target = x[:, :prompt_len], x[:, prompt_len:]
        kwargs = {
            "attention_mask": torch.ones_like(prompt),
            "max_new_tokens": target.shape[1],
            "do_sample": False,
            "use_cache": True,
            "pad_token_id": task.pad,
            "eos_token_id": task.eos,
        }
        if context is None:
            out = model.generate(prompt, **kwargs)
        else:
            with context() as stats:
                out = model.generate(prompt, **kwargs)
            fractions.append(stats.skipped_fraction)
        new = F.pad(out[:, prompt_len:], (0, target.shape[1] - (out.shape[1] - prompt_len)), value=-1)
        n_ok += int((new == target).all(1).sum())
    return {"gen_em": n_ok / tokens.shape[0], "skipped_fraction": float(np.mean(fractions)) if fractions else 0.0}


@torch.no_grad()
def trivial_quality(task: Task, split: str = "test") -> dict[str, float]:
    """The trivial baseline every arm must beat: per-position token frequencies of 64 training batches (add-one
    smoothed), predicting the most frequent token at each position; bits per byte for text, accuracies for cumsum."""
    train = torch.cat([task.batch(task.cfg.batch_size, torch.Generator().manual_seed(60_000)) for _ in range(64)])
    if task.name == "text":
        counts = torch.bincount(train.reshape(-1), minlength=task.vocab).float()[None].expand(train.shape[1], -1)
    else:
        counts = torch.stack([torch.bincount(col, minlength=task.vocab) for col in train.unbind(1)]).float()
    logp = torch.log((counts + 1) / (counts + 1).sum(-1, keepdim=True))[1:]  # predictions for positions 1..T-1
    target = task.tokens(split)[:, 1:]
    scored = task.scored
    correct = (logp.argmax(-1)[None] == target) & scored
    out = {"token_acc": float(correct.sum()) / (int(scored.sum()) * target.shape[0]), "skipped_fraction": 0.0}
    if task.name == "cumsum":
        out["seq_em"] = float((correct | ~scored).all(1).float().mean())
    else:
        nll = -logp.gather(1, target.T).T[:, scored]
        out["bpb"] = float(nll.mean()) / math.log(2)
    return out


@torch.no_grad()
def executed_flops(model: nn.Module, x: torch.Tensor, context: SkipContext | None = None) -> int:
    """FLOPs of one forward over the batch ``x`` (the first ``flops_batch`` test sequences; compact execution inside
    ``context``)."""
    if context is None:
        return profile.count_flops(lambda: model(x, use_cache=False))
    with context() as stats:
        model(x, use_cache=False)
    return int(stats.flops)


@torch.no_grad()
def importance_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gate importance of every branch and token of the batch ``x`` at r = 0, as (branches, batch, tokens)."""
    with skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x, use_cache=False)
    return torch.stack([rec["importance"].float() for rec in stats.records.values()])


def gate_importance(model: nn.Module, task: Task) -> torch.Tensor:
    """:func:`importance_of` the first test batch of ``task``."""
    return importance_of(model, task.tokens("test")[: task.cfg.eval_batch].to(task.device))


def mean_gate(importance: torch.Tensor) -> float:
    """Mean gate value over branches and tokens of :func:`gate_importance` (init: sigmoid(5) = 0.9933)."""
    return float(importance.mean(dim=(1, 2)).mean())


def gate_shift(importance: torch.Tensor, initial: torch.Tensor) -> float:
    """How far the gates moved from their initial value: mean |g - g0| over branches and tokens of the same batch
    (:func:`gate_importance` of the trained and of the freshly gated model); the premise that GateSkip's gates are
    trained at all."""
    if importance.shape != initial.shape:
        raise ValueError(f"gate_shift needs importances of the same batch: {tuple(importance.shape)} vs "
                         f"{tuple(initial.shape)}")
    return float((importance - initial).abs().mean())


def gate_maps(model: nn.Module, task: Task, cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of mean gate importance per layer x branch x position (r = 0) and of skip fraction per branch x position
    at the training budget ``train_skip_end``, over the first evaluation batch."""
    x = task.tokens("test")[: cfg.eval_batch].to(task.device)
    gates, skips = [], []
    with torch.no_grad(), skip.budget(model, 0.0, measure_flops=False, record=True) as stats:
        model(x)
    for name, rec in stats.records.items():
        layer, role = name.split(".")
        for pos, value in enumerate(rec["importance"].mean(0).tolist()):
            gates.append({"task": task.name, "layer": int(layer), "branch": role, "position": pos, "importance": value})
    with (
        torch.no_grad(),
        skipping(model, cfg, cfg.train_skip_end, record=True) as stats,
    ):
        model(x)
    for name, rec in stats.records.items():
        for pos, value in enumerate((~rec["keep"]).float().mean(0).tolist()):
            skips.append({"task": task.name, "module": name, "position": pos, "skip_fraction": value})
    return gates, skips


def disjoint_windows(stream: torch.Tensor, n: int, length: int, generator: torch.Generator, part: int = 0,
                     after: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` tokens of ``stream`` drawn without replacement from its non-overlapping windows:
    no token is scored twice, and a window that chooses never overlaps one that judges. ``part`` takes the ``part``-th
    n windows of one permutation (drawn by ``generator``) past its first ``after``, so the windows of different parts
    never overlap either."""
    available = stream.numel() // length
    if after + (part + 1) * n > available:
        raise ValueError(f"{n} held-out windows of part {part} (past {after}) need {after + (part + 1) * n} "
                         f"non-overlapping windows of {length} tokens; the held-out text has {available} (parameters "
                         "'eval_size', 'test_windows', 'seeds', 'text_length')")
    first = after + part * n
    starts = torch.randperm(available, generator=generator)[first : first + n] * length
    return stream[starts[:, None] + torch.arange(length)[None]]


TUNING_PARTS = 2  # validation parts of the tuning seeds 0 and 1 (SmolLM2: exploration on 0, stage 1 on 1)


class TokenText:
    """The stdlib text task in a pretrained LLM's tokens: a training stream and held-out windows of ``split``, each
    with the UTF-8 bytes its scored tokens (positions 1 .. T-1) decode to, so bits per byte compare across tokenizers.
    Seeds draw parts of one permutation per split, so no two seeds of a split share a window: tuning seed s takes
    the s-th ``eval_size`` validation windows; test seed 100 + i the i-th ``test_windows`` of each split (of
    validation past the :data:`TUNING_PARTS` tuning seeds' windows). ``tokenizer`` needs
    ``encode(text, add_special_tokens=False)`` and ``decode(ids)``."""

    def __init__(self, tokenizer: Any, cfg: Config, seed: int, split: str = "val") -> None:
        if split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        self.cfg, self.seed, self.train_gen = cfg, seed, torch.Generator().manual_seed(seed)
        self.provenance: dict[str, Any] = {}
        streams = {}
        for part in ("train", split):
            data, self.provenance[part] = sequences.stdlib_bytes(sequences.STDLIB_SPLIT_FILES[part])
            text = bytes(data.numpy()).decode("utf-8")
            streams[part] = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)
            self.provenance[part]["tokens"] = int(streams[part].numel())
        self.train = streams["train"]
        gen = torch.Generator().manual_seed(10_000 if split == "val" else 50_000)  # one permutation; a seed its part
        n, part, after = cfg.eval_size, seed, 0
        if seed >= TEST_SEED_OFFSET:
            n, part = cfg.test_windows, seed - TEST_SEED_OFFSET
            after = TUNING_PARTS * cfg.eval_size if split == "val" else 0
        self.windows = disjoint_windows(streams[split], n, cfg.text_length, gen, part, after)
        self.scored_bytes = torch.tensor(
            [len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in self.windows], dtype=torch.float64
        )

    def batch(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training windows drawn with ``generator`` (default: the task's own training stream)."""
        return sequences.byte_windows(self.train, n, self.cfg.text_length, generator or self.train_gen)

    def calibration(self) -> list[torch.Tensor]:
        """ShortGPT's calibration batches (training windows), the same for every arm of the seed."""
        gen = torch.Generator().manual_seed(20_000 + self.seed)
        return [self.batch(self.cfg.batch_size, gen) for _ in range(self.cfg.calib_batches)]


@torch.no_grad()
def window_bpb(
    model: nn.Module, text: TokenText, context: SkipContext | None = None, device: torch.device | None = None
) -> tuple[np.ndarray, float]:
    """Bits per byte of every held-out window of ``text`` (``eval_batch`` windows per forward, each inside a fresh
    ``context()``) and the mean token x branch fraction skipped."""
    model.eval()
    nll, fractions = [], []
    for start in range(0, text.windows.shape[0], text.cfg.eval_batch):
        x = text.windows[start : start + text.cfg.eval_batch].to(device or "cpu")
        logits = forward_logits(model, x, context, fractions)
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").sum(1)
        nll.append(loss.double().cpu())
    bpb = torch.cat(nll) / text.scored_bytes / math.log(2)
    return bpb.numpy(), float(np.mean(fractions)) if fractions else 0.0


@torch.no_grad()
def decoded_bpb(
    model: nn.Module, text: TokenText, context: SkipContext | None = None, device: torch.device | None = None
) -> tuple[np.ndarray, float]:
    """:func:`window_bpb` of the first ``decode_windows`` held-out windows read as a generating model reads them: the
    first :data:`DECODE_PROMPT` tokens in one forward, then one token per step with a KV cache (teacher-forced), each
    batch inside one ``context()``, so skipping acts on decoding steps (a skipped token's K/V copied forward) as in
    generation; returns bits per byte per window and the token x branch fraction skipped over prefill and steps."""
    if text.cfg.text_length <= DECODE_PROMPT + 1:
        raise ValueError(f"parameter 'text_length' must exceed {DECODE_PROMPT + 1} to decode after a "
                         f"{DECODE_PROMPT}-token prompt, got {text.cfg.text_length}")
    model.eval()
    windows = text.windows[: text.cfg.decode_windows]
    nll, fractions, name = [], [], cache_argument(model)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(1).double()

    for start in range(0, windows.shape[0], text.cfg.eval_batch):
        x = windows[start : start + text.cfg.eval_batch].to(device or "cpu")
        with context() if context is not None else contextlib.nullcontext() as stats:
            out = model(x[:, :DECODE_PROMPT], use_cache=True)
            total, cache = loss(out.logits, x[:, 1 : DECODE_PROMPT + 1]), output_cache(out)
            for t in range(DECODE_PROMPT, x.shape[1] - 1):
                total += loss(model(x[:, t : t + 1], use_cache=True, **{name: cache}).logits, x[:, t + 1 : t + 2])
        if stats is not None:
            fractions.append(stats.skipped_fraction)
        nll.append(total.cpu())
    bpb = torch.cat(nll) / text.scored_bytes[: windows.shape[0]] / math.log(2)
    return bpb.numpy(), float(np.mean(fractions)) if fractions else 0.0


def window_trivial_bpb(text: TokenText, vocab: int) -> np.ndarray:
    """Bits per byte of every held-out window under the training stream's unigram token frequencies (add-one): the
    trivial predictor the pretrained LM must beat."""
    counts = torch.bincount(text.train, minlength=vocab).double() + 1
    logp = torch.log(counts / counts.sum())
    nll = -logp[text.windows[:, 1:]].sum(1)
    return (nll / text.scored_bytes / math.log(2)).numpy()


MC_OPTIONS = 4  # one definition is the headword's own, three belong to other headwords (chance: 25 %)
_HEADWORD = re.compile(r"^([A-Za-z][a-z-]{2,}) \\")
_TAGS = re.compile(r"\([A-Z][A-Za-z. ]*\.\)|^\d+\.\s*|--.*$")


def _first_definition(text: str) -> str:
    """The first sense of a GCIDE entry: its bracketed etymologies and header line dropped, then the first block of
    lines, without domain tags, sense number and source, cut at its first sentence or semicolon."""
    lines = re.sub(r"\[[^\]]*\]", "", text).splitlines()[1:]
    sense = []
    for line in lines:
        if not line.strip():
            if sense:
                break
            continue
        sense.append(line.strip())
    first = _TAGS.sub("", " ".join(sense)).strip()
    return re.split(r"(?<=[a-z])\.(?:\s|$)|;", first)[0].strip()


def dictionary_questions(n: int, seed: int, split: str = "val") -> list[tuple[str, list[str], int]]:
    """``n`` multiple-choice questions from GCIDE headwords of ``split`` (a fixed hash of the headword puts each
    in one of train / val / test): (headword, four definitions, index of the right one), drawn with ``seed``.
    A definition of 3-24 words without the headword or a leftover bracket is kept; distractors are other headwords'."""
    if split not in ("train", *EVAL_SPLITS):
        raise ValueError(f"split must be 'train' or one of {EVAL_SPLITS}, got {split!r}")
    pool, seen = [], set()
    for _, text in corpora.gcide_entries():
        match = _HEADWORD.match(text)
        if not match or match.group(1).lower() in seen:
            continue
        word = match.group(1)
        seen.add(word.lower())
        bucket = int(hashlib.sha256(word.lower().encode()).hexdigest(), 16) % 3
        definition = _first_definition(text)
        if ("train", "val", "test")[bucket] == split and 3 <= len(definition.split()) <= 24 \
                and word.lower()[:5] not in definition.lower() and not re.search(r"[\[\]\\]", definition):
            pool.append((word, definition))
    if len(pool) < n * MC_OPTIONS:
        raise ValueError(f"GCIDE's {split} split has {len(pool)} usable headwords, fewer than {n * MC_OPTIONS}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=(n, MC_OPTIONS), replace=False)
    questions = []
    for row in picks:
        answer = int(rng.integers(MC_OPTIONS))
        options = [pool[j][1] for j in row]
        options[0], options[answer] = options[answer], options[0]
        questions.append((pool[row[0]][0], options, answer))
    return questions


class DictMC:
    """``dictionary_questions`` as token sequences, each option twice: after ``The word "<headword>" means:`` and after
    the neutral ``Definition:``, right-padded with EOS to the longest row (:func:`mc_correct` trims each batch to its
    own longest row and masks the padding, so the skip budget counts real tokens only). An option is scored by the
    log-likelihood of its tokens under the headword less that under the neutral prompt (pointwise mutual information:
    a definition is not chosen for being a likely sentence); measured on SmolLM2 this takes the pretrained LM from 34 %
    (the likelihood alone) to 66 % on 100 validation questions. ``questions`` of ``split``, drawn with ``seed``."""

    NEUTRAL = "Definition:"

    def __init__(self, tokenizer: Any, cfg: Config, seed: int, questions: int, split: str = "val") -> None:
        self.cfg = cfg
        self.questions = dictionary_questions(questions, seed, split)
        self.answers = torch.tensor([answer for _, _, answer in self.questions])
        self.tokens, self.scored, self.lengths = {}, {}, {}
        for name, prompt_of in (("word", lambda w: f'The word "{w}" means:'), ("neutral", lambda w: self.NEUTRAL)):
            rows, spans = [], []
            for word, options, _ in self.questions:
                prompt = tokenizer.encode(prompt_of(word), add_special_tokens=False)
                for option in options:
                    ids = tokenizer.encode(" " + option, add_special_tokens=False)
                    rows.append(prompt + ids)
                    spans.append((len(prompt), len(prompt) + len(ids)))
            width = max(map(len, rows))
            self.lengths[name] = torch.tensor([len(r) for r in rows])
            self.tokens[name] = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
            positions = torch.arange(1, width)[None]  # the target positions of the next-token predictions
            begin, end = torch.tensor(spans).T
            self.scored[name] = (positions >= begin[:, None]) & (positions < end[:, None])


@torch.no_grad()
def mc_correct(
    model: nn.Module, mc: DictMC, context: SkipContext | None = None, device: torch.device | None = None
) -> tuple[np.ndarray, float]:
    """Per question, 1 when the right definition scores highest (:class:`DictMC`: its log-likelihood after the
    headword less after the neutral prompt; ``eval_batch`` x 4 sequences per forward, padded to the batch's longest
    and masked, each inside a fresh ``context()``), and the mean token x branch fraction skipped of real tokens."""
    model.eval()
    fractions, step = [], mc.cfg.eval_batch * MC_OPTIONS
    loglik = {}
    for name, tokens in mc.tokens.items():
        scores = []
        for start in range(0, tokens.shape[0], step):
            lengths = mc.lengths[name][start : start + step]
            width = int(lengths.max())
            x = tokens[start : start + step, :width].to(device or "cpu")
            real = (torch.arange(width)[None] < lengths[:, None]).long().to(x.device)
            logits = forward_logits(model, x, context, fractions, attention_mask=real)
            logp = -F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").double().cpu()
            scores.append((logp * mc.scored[name][start : start + step, : width - 1]).sum(1))
        loglik[name] = torch.cat(scores)
    pmi = (loglik["word"] - loglik["neutral"]).view(-1, MC_OPTIONS)
    return (pmi.argmax(1) == mc.answers).double().numpy(), float(np.mean(fractions)) if fractions else 0.0
