"""Helpers shared by the decoder-family tests (tests/test_gate_families.py, tests/test_families.py)."""

from pathlib import Path

import torch

from labkit import gate, layout, skip

V, EOS, PAD, BOS = 64, 61, 62, 60  # tiny vocabulary and its special tokens (tokens() draws below BOS)


def randomize_gates(model: torch.nn.Module) -> torch.nn.Module:
    """Random gate weights (zero bias), so that importances differ between tokens; returns ``model``."""
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.weight.normal_(0.0, 1.0)
            b.residual_gate.linear.bias.zero_()
    return model


def tokens(b: int = 3, t: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, BOS, (b, t), generator=torch.Generator().manual_seed(seed))


def budget_generate(model: torch.nn.Module, prompt: torch.Tensor, execution: str, **budget_kw):
    """Greedy generation of 5 tokens with a KV cache inside ``skip.budget(model, 0.4, execution)``; the output (with
    scores) and the budget's stats."""
    with skip.budget(model, 0.4, execution=execution, measure_flops=False, **budget_kw) as stats:
        out = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, output_scores=True,
                             return_dict_in_generate=True)
    return out, stats


def check_round_trip(model: torch.nn.Module, folder: Path | str) -> None:
    """save_pretrained into ``folder``, then gate.from_pretrained: the same logits, with and without a budget."""
    x = tokens()
    expected = model(x).logits
    with skip.budget(model, 0.3, measure_flops=False):
        expected_skipping = model(x).logits
    model.save_pretrained(folder)
    restored = gate.from_pretrained(folder, attn_implementation=model.config._attn_implementation).eval()
    assert layout.architecture(restored) == layout.architecture(model)
    torch.testing.assert_close(restored(x).logits, expected, atol=0.0, rtol=0.0)
    with skip.budget(restored, 0.3, measure_flops=False):
        torch.testing.assert_close(restored(x).logits, expected_skipping, atol=0.0, rtol=0.0)
