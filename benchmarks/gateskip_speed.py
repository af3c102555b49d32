"""GateSkip speed beside quality: ungated dense vs gated masked vs gated compact, prefill and KV-cache decoding.

Two models: ``--model smollm2`` (SmolLM2-135M-Instruct, the catalogued real pretrained LLM; run
``labkit fetch smollm2`` first) or ``--model toy`` (a random-weight Llama built from a config). Gates are added
untrained (init bias 5, weights spread so importances differ), so this measures speed and the quality cost of
*untrained* rankings; ``--gates-from DIR`` loads trained scalar gates instead (``gateskip_pilot_gates.py`` trains a
pilot set; ``reports/gateskip/cpu/artefacts.safetensors`` holds the gates the GateSkip SmolLM2 report chose, trained
with the first token protected: pass ``--protect 1`` with them).

Masked execution (the paper's default) computes every branch and zeroes skipped tokens, so it cannot be faster than
dense; compact execution gathers the kept tokens. Prefill uses the paper's batch-scope budget. Decoding is greedy,
one token per forward with the KV cache; a skipped token's K/V are copied forward from the layer below (GateSkip
§3.3, Laitenberger et al., arXiv 2510.13876). Two decoding policies, both with per-branch thresholds calibrated on
held-out text: ``row`` (``scope="sequence"``: each row decides for itself, so a step still reads a branch's weights
when any row keeps it) and ``step`` (``scope="step"``: the step's rows skip a branch together when their mean
importance is at or below the threshold, so its weights are not read); at batch 1 they are the same policy.

Quality (held-out stdlib text for SmolLM2, random tokens for the toy model): teacher-forced decoding of held-out
windows at the decoding batch size, one token per forward with the same policy, gives the loss (nats/token) and
the agreement of the greedy next token with the ungated dense model's. ShortGPT (the dense model with its least
influential branches removed, the same fraction) is the static reference a decoding policy must match.

    .venv/bin/python benchmarks/gateskip_speed.py --model smollm2 --threads 2
    .venv/bin/python benchmarks/gateskip_speed.py --model smollm2 --gates scalar --gates-from /tmp/smollm2-gates
    .venv/bin/python benchmarks/gateskip_speed.py --model toy                  # random Llama, seconds
    .venv/bin/python benchmarks/gateskip_speed.py --model smollm2 --profile    # where batch-1 decode time goes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

from labkit import gate, layout, profile, protocol, skip
from labkit.data import sequences
from labkit.models import pretrained
from labkit.models.decoder_lm import build_causal_lm
from labkit.skip.kv_cache import cache_argument, output_cache

SHAPES = {  # prefill batch, prefill tokens, decode prompt tokens, decoded tokens per timed call, quality windows
    "smollm2": (8, 256, 64, 32, (8, 32, 64)),  # prefill 8 x 256 as issue #26 measured; quality: 8 windows, 32
    # prompt tokens, 64 teacher-forced steps
    "toy": (4, 256, 64, 16, (8, 16, 32)),
}
Context = Callable[[], contextlib.AbstractContextManager]
_POLICY = {"sequence": "row policy", "step": "step policy"}


def load_models(
    name: str, device: torch.device, dtype: torch.dtype, gates: list[str], trained: str | None = None
) -> tuple[dict, Any]:
    """The ungated dense model and one gated copy per gate kind, its gates loaded from ``trained`` or left untrained
    (weights spread so importances differ); the tokenizer."""
    tokenizer = None
    if name == "smollm2":
        base, tokenizer = pretrained.load("smollm2")
    else:
        base = build_causal_lm("llama", 1000, 256, 4, 4, max_positions=512, seed=0).eval()
    models = {}
    for kind in gates:  # a deepcopy keeps tied embeddings tied
        model = gate.add_gates(copy.deepcopy(base), kind=kind)
        if trained:
            gate.load_gates(model, trained)
        else:
            with torch.no_grad():
                for b in gate.gated_branches(model):
                    b.residual_gate.linear.weight.normal_(0.0, 0.05)
        models[kind] = model.to(device, dtype)
    return {"dense": base.to(device, dtype), **models}, tokenizer


def stdlib_tokens(tokenizer: Any, files: tuple[str, ...]) -> torch.Tensor:
    """The stdlib source ``files`` (one of ``labkit.data.sequences``' splits), tokenized as one text."""
    data, _ = sequences.stdlib_bytes(files)
    return torch.tensor(tokenizer(bytes(data.tolist()).decode("utf-8", "replace")).input_ids)


def held_out_tokens(tokenizer: Any, vocab: int, n: int, length: int, part: int, device: torch.device) -> torch.Tensor:
    """``n`` windows of ``length`` tokens: held-out stdlib source (test files, tokenized) or random ids (toy model);
    ``part`` 0 and 1 are disjoint (calibration and evaluation)."""
    if tokenizer is None:
        return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(part), device=device)
    ids = stdlib_tokens(tokenizer, sequences.STDLIB_TEST_FILES)
    half = ids[part * len(ids) // 2: (part + 1) * len(ids) // 2]
    starts = torch.linspace(0, len(half) - length - 1, n).long()
    return torch.stack([half[s: s + length] for s in starts]).to(device)


def decoder(model: nn.Module, prompt: torch.Tensor, new_tokens: int, context: Context | None) -> Callable[[], Any]:
    """A call that greedily decodes ``new_tokens`` after ``prompt`` (prefilled once, here) and rewinds the cache
    (a negative ``crop`` drops the newest tokens on every transformers release). Returns the context's stats."""
    name = cache_argument(model)
    with torch.no_grad(), context() if context else contextlib.nullcontext():
        out = model(prompt, use_cache=True, logits_to_keep=1)
    cache, first = output_cache(out), out.logits[:, -1:].argmax(-1)

    def call() -> Any:
        token = first
        with torch.no_grad(), context() if context else contextlib.nullcontext() as stats:
            for _ in range(new_tokens):
                token = model(token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)
        cache.crop(-new_tokens)
        return stats

    return call


@torch.no_grad()
def teacher_forced(model: nn.Module, windows: torch.Tensor, prompt: int, context: Context) -> tuple[torch.Tensor, Any]:
    """Logits (B, steps, vocab) of one-token decoding steps fed the held-out tokens after a ``prompt``-token prefill,
    inside ``context`` (the decoding policy's quality, without compounding its own mistakes), and its SkipStats."""
    name = cache_argument(model)
    with context() as stats:
        out = model(windows[:, :prompt], use_cache=True, logits_to_keep=1)
        cache, logits = output_cache(out), [out.logits[:, -1]]
        for t in range(prompt, windows.shape[1] - 1):
            logits.append(model(windows[:, t: t + 1], use_cache=True, **{name: cache}).logits[:, -1])
    return torch.stack(logits, 1).float(), stats


@torch.no_grad()
def prefill_logits(model: nn.Module, windows: torch.Tensor, context: Context) -> tuple[torch.Tensor, Any]:
    """Next-token logits (B, T-1, vocab) of one prompt forward over the windows inside ``context``, and its stats."""
    with context() as stats:
        logits = model(windows, use_cache=False).logits[:, :-1].float()
    return logits, stats


def quality(logits: torch.Tensor, dense: torch.Tensor, windows: torch.Tensor, prompt: int) -> tuple[float, float]:
    """(held-out loss in nats/token, share of steps whose greedy token equals the dense model's)."""
    target = windows[:, prompt:]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    return float(loss), float((logits.argmax(-1) == dense.argmax(-1)).float().mean())


def _rate(tokens: int, t: profile.Timing) -> str:
    """Tokens/s at the median time, with the IQR as a percentage of the median."""
    return f"{tokens / t.median:,.1f} ±{100 * t.iqr / t.median:.0f}%"


def speedup(base: profile.Timing, *others: profile.Timing) -> tuple[float, float, float]:
    """How many times faster ``others`` are than ``base``, paired by round: the geometric mean of the per-round ratios
    base/other with its Student-t 95 % interval (over log ratios). The variants of a round ran back to back, so a
    change in machine load between rounds cancels; a ratio of medians keeps it. Several ``others`` that run the same
    code (every r = 0 variant decides nothing) are pooled within each round: the round stays the unit."""
    logs = [sum(math.log(b / o) for o in round_) / len(round_)
            for b, *round_ in zip(base.times, *(o.times for o in others), strict=True)]
    mean, low, high = protocol.student_t_ci(logs) if len(logs) > 1 else (logs[0],) * 3
    return math.exp(mean), math.exp(low), math.exp(high)


def _speedup(base: profile.Timing, other: profile.Timing) -> str:
    ratio, low, high = speedup(base, other)
    return f"{ratio:.2f}x [{low:.2f}, {high:.2f}]"


_TARGET = {"held": "met", "not held": "missed", "inconclusive": "undecided"}  # protocol's words for a speed target


def target_verdict(base: profile.Timing, others: list[profile.Timing], target: float) -> str:
    """The speed-up of ``others`` (pooled per round) over ``base`` against ``target``, read by its interval as every
    claim is (:func:`labkit.protocol.interval_verdict`): met above it, missed below, undecided when it straddles it."""
    ratio, low, high = speedup(base, *others)
    verdict = _TARGET[protocol.interval_verdict(low, high, target)]
    return f"{ratio:.2f}x [{low:.2f}, {high:.2f}] vs {target:.2f}x: {verdict}"


def versus_static(loss: float, skipped: float, static_loss: float, static_skipped: float, tol: float = 0.01) -> str:
    """A decoding policy against ShortGPT: at least as good only if it loses no more while skipping at least as much
    (skipped fractions within ``tol`` count as equal); worse only if it loses more while skipping no more."""
    if loss <= static_loss and skipped >= static_skipped - tol:
        return "at least ShortGPT's"
    if loss > static_loss and skipped <= static_skipped + tol:
        return "worse than ShortGPT's"
    return f"not comparable ({'lower' if loss <= static_loss else 'higher'} loss, " \
        f"{'fewer' if skipped < static_skipped else 'more'} skipped)"


_OP_GROUPS = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::cat": "KV cache and rotary cat",
              "aten::_scaled_dot_product_flash_attention_for_cpu": "attention"}


def profile_decoding(calls: dict[str, Callable[[], Any]], new_tokens: int, repeat: int, device: torch.device,
                     traced: int = 3) -> None:
    """Where batch-1 decoding time goes, variant beside variant: wall time per token (medians of ``repeat`` rounds,
    round-robin), the operators' own time per token from ``torch.profiler`` traces (``labkit.profile.trace``; the
    median of ``traced`` round-robin traced calls, since one trace's operator times vary), grouped, and the wall time
    no operator accounts for (Python and dispatch; tracing slows the operators, so it can read below zero), then the
    largest operators of each variant's last trace."""
    timings = profile.measure_many(calls, warmup=1, repeat=repeat, device=device)
    groups = [*dict.fromkeys(_OP_GROUPS.values()), "other operators"]
    per_group: dict[tuple[str, str], list[float]] = {}
    traces = {}
    for _ in range(traced):
        for name, call in calls.items():
            with profile.trace(os.path.join(tempfile.gettempdir(), "gateskip_decode.json")) as traces[name]:
                call()
            for group in groups:
                per_group.setdefault((name, group), []).append(sum(
                    e.self_cpu_time_total for e in traces[name].profiler.key_averages()
                    if _OP_GROUPS.get(e.key, "other operators") == group) / 1e3 / new_tokens)
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("device:", profile.device_info())
    print(f"batch-1 greedy decoding, {new_tokens} one-token forwards per call; ms per token; wall: median of {repeat} "
          f"round-robin calls; operators: self CPU time, median of {traced} traced calls\n")
    print(f"{'':34}" + "".join(f"{name:>20}" for name in calls))
    per_token = {name: timings[name].median * 1e3 / new_tokens for name in calls}
    print(f"{'wall':34}" + "".join(f"{per_token[name]:>20.2f}" for name in calls))
    ops = {(name, group): statistics.median(values) for (name, group), values in per_group.items()}
    for group in groups:
        print(f"{'  ' + group:34}" + "".join(f"{ops[name, group]:>20.2f}" for name in calls))
    outside = (per_token[n] - sum(ops[n, g] for g in groups) for n in calls)
    print(f"{'outside operators (wall - all ops)':34}" + "".join(f"{v:>20.2f}" for v in outside))
    base = next(iter(calls))
    speeds = (_speedup(timings[base], timings[n]) for n in calls)
    print(f"{'speed vs ' + base + ' [95 % CI]':34}" + "".join(f"{v:>20}" for v in speeds))
    for name in calls:
        print(f"\n== {name}: largest operators of its last traced call ==")
        print(traces[name].table(row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="toy")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gates", nargs="+", default=["scalar", "vector"], choices=["scalar", "vector"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.7])
    parser.add_argument("--quality-ratios", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 0.7],
                        help="skip fractions of the quality rows (the cpu report's gates were trained for 5 %%)")
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gates-from", help="trained scalar gates to load: a saved model folder or a .safetensors "
                        "file (the GateSkip cpu report's reports/gateskip/cpu/artefacts.safetensors)")
    parser.add_argument("--protect", type=int, default=0,
                        help="never skip the first N tokens of a row (skip.budget's protect; the gates of the GateSkip "
                        "cpu report were trained with 1)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile batch-1 decoding: ungated dense, its branch wrappers alone, gated without a "
                        "budget, and gated at r = 0 and at r = 0.5 (compact)")
    args = parser.parse_args()
    if args.gates_from and args.gates != ["scalar"]:
        parser.error(f"--gates-from loads scalar gates: pass --gates scalar (got --gates {' '.join(args.gates)})")
    torch.set_num_threads(args.threads)
    device = profile.resolve_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, length, prompt_len, new_tokens, (q_rows, q_prompt, q_steps) = SHAPES[args.model]
    models, tokenizer = load_models(args.model, device, dtype, args.gates, args.gates_from)
    dense, vocab = models["dense"], models["dense"].config.vocab_size
    n_branches = 2 * len(layout.decoder_layers(dense))
    calibration = held_out_tokens(tokenizer, vocab, 16, q_prompt + q_steps, 0, device)
    windows = held_out_tokens(tokenizer, vocab, q_rows, q_prompt + q_steps, 1, device)
    quality_ratios = [r for r in args.quality_ratios if r > 0]

    def thresholds(model: nn.Module, r: float, scope: str, b: int) -> dict[str, float]:
        """Calibrated on held-out batches of the decoding batch size ``b`` (what a step scope compares)."""
        return skip.calibrate_thresholds(model, list(calibration.split(b)), r, scope)

    def policy(model: nn.Module, r: float, scope: str, execution: str, th: dict | None) -> Context:
        return lambda: skip.budget(model, r, scope, execution, thresholds=th, measure_flops=False,
                                   protect=args.protect)

    if args.profile:
        model = models[args.gates[0]]
        prompt = held_out_tokens(tokenizer, vocab, 1, prompt_len, 1, device)
        wrapped = gate.add_gates(copy.deepcopy(dense), kind="none")  # the branch wrappers alone, no gate
        profile_decoding({
            "ungated dense": decoder(dense, prompt, new_tokens, None),
            "wrappers, no gate": decoder(wrapped, prompt, new_tokens, None),
            "gated, no budget": decoder(model, prompt, new_tokens, None),
            "gated, r = 0": decoder(model, prompt, new_tokens, policy(model, 0.0, "sequence", "compact", None)),
            "gated, r = 0.5": decoder(model, prompt, new_tokens, policy(model, 0.5, "sequence", "compact",
                                                                        thresholds(model, 0.5, "sequence", 1))),
        }, new_tokens, args.repeat, device)
        return

    load_start = os.getloadavg()[0]
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("device:", profile.device_info())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads={torch.get_num_threads()}")
    print(f"model: {args.model} ({sum(p.numel() for p in dense.parameters()) / 1e6:.1f} M parameters, "
          f"{len(layout.decoder_layers(dense))} layers, d={dense.config.hidden_size}); {dtype}; gates {args.gates}, "
          f"{'trained, from ' + args.gates_from if args.gates_from else 'untrained'}; "
          f"first {args.protect} tokens of a row protected")

    # -- speed: every variant timed round-robin in one process -------------------------------------------------------
    x = held_out_tokens(tokenizer, vocab, batch, length, 1, device)
    calls: dict[Any, Callable[[], Any]] = {}

    def forward(model: nn.Module, context: Context | None = None) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad(), context() if context else contextlib.nullcontext():
                model(x, use_cache=False, logits_to_keep=1)

        return call

    calls["prefill", "dense"] = forward(dense)
    for kind in args.gates:
        for r in args.ratios:
            for execution in ("masked", "compact"):
                calls["prefill", kind, r, execution] = forward(models[kind], policy(models[kind], r, "batch", execution,
                                                                                None))
    decode_thresholds = {}
    for b in args.decode_batches:
        prompt = held_out_tokens(tokenizer, vocab, b, prompt_len, 1, device)
        calls["decode", b, "dense"] = decoder(dense, prompt, new_tokens, None)
        for kind in args.gates:
            model = models[kind]
            for scope in ("sequence", "step") if b > 1 else ("sequence",):
                for r in args.ratios:
                    th = decode_thresholds[kind, scope, b, r] = thresholds(model, r, scope, b) if r else None
                    for execution in ("masked", "compact"):
                        calls["decode", b, kind, scope, r, execution] = decoder(
                            model, prompt, new_tokens, policy(model, r, scope, execution, th))
    timings = profile.measure_many(calls, warmup=2, repeat=args.repeat, device=device)

    tokens = batch * length
    dense_prefill = timings["prefill", "dense"]
    print(f"\n== prefill: batch {batch} x {length} tokens, no cache, batch-scope budget ==")
    print(f"ungated dense: {_rate(tokens, dense_prefill)} tok/s")
    for kind in args.gates:
        print(f"\n{kind} gates\n{'ratio':>6} {'masked tok/s':>14} {'compact tok/s':>14} "
              f"{'compact/dense [95 % CI]':>24}")
        for r in args.ratios:
            masked, compact = timings["prefill", kind, r, "masked"], timings["prefill", kind, r, "compact"]
            print(f"{r:>6.2f} {_rate(tokens, masked):>14} {_rate(tokens, compact):>14} "
                  f"{_speedup(dense_prefill, compact):>24}")

    # -- quality: teacher-forced decoding of held-out windows at the largest decoding batch -------------------------
    q_batch = max(args.decode_batches)
    reference, _ = teacher_forced(dense, windows, q_prompt, contextlib.nullcontext)
    dense_loss, _ = quality(reference, reference, windows, q_prompt)
    order = skip.shortgpt_order(dense, list(calibration.split(q_batch)))
    quality_rows: dict[Any, tuple[float, float, float]] = {}  # arm -> loss, agreement, skipped fraction
    prefill_reference, _ = prefill_logits(dense, windows, contextlib.nullcontext)
    for r in quality_ratios:
        removed = order[: round(r * n_branches)]
        logits, stats = prefill_logits(
            dense, windows, lambda k=removed: skip.static_skip(dense, k, "compact", measure_flops=False))
        quality_rows["prefill", "shortgpt", r] = (*quality(logits, prefill_reference, windows, 1),
                                                  stats.skipped_fraction)
        for kind in args.gates:
            logits, stats = prefill_logits(models[kind], windows, policy(models[kind], r, "batch", "compact", None))
            quality_rows["prefill", kind, r] = (*quality(logits, prefill_reference, windows, 1),
                                                stats.skipped_fraction)
        logits, stats = teacher_forced(
            dense, windows, q_prompt, lambda k=removed: skip.static_skip(dense, k, "compact", measure_flops=False))
        quality_rows["shortgpt", r] = (*quality(logits, reference, windows, q_prompt), stats.skipped_fraction)
        for kind in args.gates:
            model = models[kind]
            for scope in ("sequence", "step"):
                context = policy(model, r, scope, "compact", thresholds(model, r, scope, q_batch))
                logits, stats = teacher_forced(model, windows, q_prompt, context)
                quality_rows[kind, scope, r] = (*quality(logits, reference, windows, q_prompt), stats.skipped_fraction)

    print(f"\n== decode: greedy, KV cache, prompt {prompt_len} tokens then {new_tokens} one-token forwards per timed "
          f"call; tok/s = batch x new tokens / median call time (± IQR/median) ==")
    for b in args.decode_batches:
        n = b * new_tokens
        base = timings["decode", b, "dense"]
        print(f"\nbatch {b}: ungated dense {_rate(n, base)} tok/s")
        for kind in args.gates:
            for scope in ("sequence", "step") if b > 1 else ("sequence",):
                print(f"\n{kind} gates, {_POLICY[scope]} (scope={scope!r})")
                print(f"{'ratio':>6} {'skipped':>8} {'masked tok/s':>14} {'compact tok/s':>14} "
                      f"{'compact/dense [95 % CI]':>24}")
                for r in args.ratios:
                    masked = timings["decode", b, kind, scope, r, "masked"]
                    compact = timings["decode", b, kind, scope, r, "compact"]
                    skipped = calls["decode", b, kind, scope, r, "compact"]().skipped_fraction  # one more call
                    print(f"{r:>6.2f} {skipped:>8.2f} {_rate(n, masked):>14} {_rate(n, compact):>14} "
                          f"{_speedup(base, compact):>24}")
    print(f"\n== quality of prefill: one forward over the {q_rows} held-out windows ({q_prompt + q_steps} tokens), "
          "loss of every next token and agreement with the dense model's greedy token ==")
    print(f"{'ratio':>6} {'arm':>24} {'skipped':>8} {'loss':>8} {'agree':>7}")
    for r in quality_ratios:
        for arm in ["shortgpt", *args.gates]:
            loss, agree, skipped = quality_rows["prefill", arm, r]
            label = "ShortGPT (static)" if arm == "shortgpt" else f"{arm} gates, batch scope"
            print(f"{r:>6.2f} {label:>24} {skipped:>8.2f} {loss:>8.3f} {agree:>7.3f}")
    print(f"\n== quality of decoding: teacher-forced decoding of {q_rows} held-out windows at batch {q_batch} "
          f"({q_prompt} prompt tokens, {q_steps} one-token steps; the row policy decides each row as at batch 1); "
          "ungated dense loss "
          f"{dense_loss:.3f} nats/token ==")
    print(f"{'ratio':>6} {'arm':>24} {'skipped':>8} {'loss':>8} {'agree':>7}")
    for r in quality_ratios:
        for key in [("shortgpt", r)] + [(kind, scope, r) for kind in args.gates for scope in ("sequence", "step")]:
            loss, agree, skipped = quality_rows[key]
            arm = "ShortGPT (static)" if key[0] == "shortgpt" else f"{key[0]} gates, {_POLICY[key[1]]}"
            print(f"{r:>6.2f} {arm:>24} {skipped:>8.2f} {loss:>8.3f} {agree:>7.3f}")
    if "scalar" in args.gates and 0.0 in args.ratios and 0.5 in args.ratios:
        print("\n== issue #26 targets (scalar gates, r = 0.5 unless stated; compact vs ungated dense, paired by round: "
              "geometric mean [95 % CI]; met when the interval clears the target) ==")
        print(f"prefill >= 1.5x: {target_verdict(dense_prefill, [timings['prefill', 'scalar', 0.5, 'compact']], 1.5)}")
        for b in args.decode_batches:
            scope, base = "step" if b > 1 else "sequence", timings["decode", b, "dense"]
            goal = 1.4 if b == 1 else 1.2
            print(f"batch-{b} decode, {_POLICY[scope]} >= {goal}x: "
                  f"{target_verdict(base, [timings['decode', b, 'scalar', scope, 0.5, 'compact']], goal)}")
            same = [timings[key] for key in timings if key[:3] == ("decode", b, "scalar") and key[4] == 0.0]
            print(f"batch-{b} decode at r = 0 within 5 % of dense (>= 0.95x; its {len(same)} r = 0 variants, the same "
                  f"code, pooled per round): {target_verdict(base, same, 0.95)}")
    if "scalar" in args.gates:  # a decoding policy is worth keeping where it loses no more than ShortGPT
        for r in quality_ratios:
            static_loss, static_agree, static_skipped = quality_rows["shortgpt", r]
            for scope in ("sequence", "step"):
                loss, agree, skipped = quality_rows["scalar", scope, r]
                verdict = versus_static(loss, skipped, static_loss, static_skipped)
                print(f"decoding quality, {_POLICY[scope]} at r = {r:g} ({skipped:.2f} skipped): loss {loss:.3f} "
                      f"vs ShortGPT {static_loss:.3f} ({static_skipped:.2f} skipped) nats/token, agreement "
                      f"{agree:.3f} vs {static_agree:.3f}: {verdict}")
    print(f"\nAll speed variants timed round-robin in one process ({args.repeat} rounds, medians); load average "
          f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. Absolute rates vary with machine load; "
          "compare the paired ratios. 'skipped' is the achieved fraction of (token, branch) pairs skipped while "
          "decoding.")


if __name__ == "__main__":
    main()
