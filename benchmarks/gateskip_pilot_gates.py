"""Pilot GateSkip gates on SmolLM2 for the speed benchmark's quality rows (until the GateSkip SmolLM2 report exists).

Scalar residual gates trained alone on the frozen SmolLM2-135M-Instruct (the catalogued real LLM; ``labkit fetch
smollm2`` first), GateSkip's recipe shortened: next-token loss on stdlib *training* files with batch-scope skipping
ramped from 0 to ``--skip-end`` over the schedule (ranked by the gates, masked execution) plus ``--sparsity`` times
the L2 gate penalty (Laitenberger et al., arXiv 2510.13876). Only the gates' tensors are saved
(``<out>/model.safetensors``), for ``gateskip_speed.py --gates-from <out>``. A pilot, not a tuned run: one seed, one
setting, no validation selection; its quality rows say what gates trained this briefly buy, nothing more.

    .venv/bin/python benchmarks/gateskip_pilot_gates.py --out /tmp/smollm2-gates     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from gateskip_speed import stdlib_tokens  # the benchmark's tokenizing of stdlib splits (same folder)
from safetensors.torch import save_file
from torch import nn

from labkit import gate, skip
from labkit.data import sequences
from labkit.models import pretrained
from labkit.train import train_causal_lm


def train_gates(model: nn.Module, ids: torch.Tensor, args: argparse.Namespace) -> float:
    """Train the gates alone as the module docstring says; returns the last step's loss."""
    for p in model.parameters():
        p.requires_grad_(False)
    gates = [p for b in gate.gated_branches(model) for p in b.residual_gate.parameters()]
    for p in gates:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(args.seed)

    def batch(step: int) -> torch.Tensor:
        starts = torch.randint(0, len(ids) - args.length, (args.batch,), generator=gen)
        return torch.stack([ids[s: s + args.length] for s in starts])

    def context(step: int) -> AbstractContextManager[skip.SkipStats]:
        return skip.budget(model, args.skip_end * step / max(1, args.steps - 1), measure_flops=False)

    model.train()
    frame = train_causal_lm(model, batch, args.steps, args.lr, step_context=context,
                            extra_loss=lambda m: args.sparsity * gate.gate_penalty(m, "l2"), parameters=gates,
                            desc="gates")
    model.eval()
    return float(frame["loss"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-2, help="peak lr of the gates (cosine schedule)")
    parser.add_argument("--skip-end", type=float, default=0.5, help="skipped fraction at the end of the ramp")
    parser.add_argument("--sparsity", type=float, default=0.01, help="weight of the L2 gate penalty")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = pretrained.load("smollm2")
    gate.add_gates(model, kind="scalar")
    start = time.perf_counter()
    loss = train_gates(model, stdlib_tokens(tokenizer, sequences.STDLIB_TRAIN_FILES), args)  # disjoint from the
    # benchmark's held-out test files
    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if f".{gate.GATE_ATTR}." in k}
    save_file(tensors, str(args.out / "model.safetensors"))
    bias = torch.stack([b.residual_gate.linear.bias for b in gate.gated_branches(model)]).flatten()
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s, last loss {loss:.3f}; gate biases "
          f"{bias.min():.2f} .. {bias.max():.2f} (init 5); saved {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
