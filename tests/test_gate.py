import pytest
import torch
from safetensors.torch import save_file

from labkit import gate
from labkit.models.decoder_lm import build_causal_lm

ARCHS = ["llama", "qwen2", "gpt2"]


def tiny(arch="llama", seed=0):
    torch.set_num_threads(1)
    return build_causal_lm(
        arch, vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=seed, eos_token_id=13, pad_token_id=14
    ).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_start_nearly_open_and_remove_restores(arch):
    model = tiny(arch)
    x = torch.randint(0, 13, (2, 7))
    dense = model(x).logits
    gate.add_gates(model)
    branches = gate.gated_branches(model)
    assert [b.name for b in branches] == ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    assert not any(b.training for b in branches)  # wrappers follow the model's eval mode
    gated = model(x).logits
    torch.testing.assert_close(gated, dense, atol=0.05, rtol=0.0)  # sigmoid(5) = 0.993
    for b in branches:
        assert b.last_gate.shape == (2, 7, 32)
        assert b.last_gate.min() > 0.98
    gate.remove_gates(model)
    torch.testing.assert_close(model(x).logits, dense, atol=0.0, rtol=0.0)
    assert not gate.gated_branches(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_from_pretrained_restore_gates(arch, tmp_path):
    from labkit.models.decoder_lm import load_lm

    model = tiny(arch)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    gate.add_gates(model, kind="scalar")
    with torch.no_grad():
        for b in gate.gated_branches(model):
            b.residual_gate.linear.bias.fill_(-1.0)
    x = torch.randint(0, 13, (2, 5))
    expected = model(x).logits
    model.save_pretrained(tmp_path)
    restored = gate.from_pretrained(tmp_path).eval()
    assert gate.gated_branches(restored)[0].residual_gate.kind == "scalar"
    torch.testing.assert_close(restored(x).logits, expected, atol=1e-6, rtol=0.0)
    plain = load_lm(tmp_path)  # the backbone keys are unchanged by the wrappers
    assert not gate.gated_branches(plain)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, dense_state[key], atol=0.0, rtol=0.0)


def test_generate_works_with_gates():
    model = gate.add_gates(tiny())
    out = model.generate(torch.randint(0, 13, (2, 3)), max_new_tokens=4, do_sample=False, attention_mask=None)
    assert out.shape == (2, 7)


def test_gate_reads_detached_input_and_penalty_trains_gates_only():
    model = gate.add_gates(tiny())
    model.train()
    model(torch.randint(0, 13, (2, 5)))
    penalty = gate.gate_penalty(model, "l2")
    penalty.backward()
    assert model.model.embed_tokens.weight.grad is None  # stop-gradient on the gate input
    assert gate.gated_branches(model)[0].residual_gate.linear.bias.grad is not None
    for kind in ("l1", "kl"):
        assert gate.gate_penalty(model, kind).item() >= 0.0


def test_l2_penalty_value():
    model = gate.add_gates(tiny())
    model(torch.randint(0, 13, (1, 4)))
    expected = torch.stack([b.last_gate.pow(2).mean() for b in gate.gated_branches(model)]).mean()
    torch.testing.assert_close(gate.gate_penalty(model), expected)


def test_parameter_groups_put_gates_at_gate_lr():
    from labkit.train import train_causal_lm

    model = gate.add_gates(tiny())
    gate_ids = {id(p) for n, p in model.named_parameters() if f".{gate.GATE_ATTR}." in n}
    assert len(gate_ids) == 8  # weight and bias of 4 branch gates
    groups = gate.parameter_groups(model, 1e-3, 3e-2)
    assert [g["lr"] for g in groups] == [1e-3, 3e-2]
    assert {id(p) for p in groups[1]["params"]} == gate_ids
    assert not gate_ids & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert [g["lr"] for g in gate.parameter_groups(model, 1e-3)] == [1e-3, 1e-3]  # 0: same as lr
    assert len(gate.parameter_groups(tiny(), 1e-3, 3e-2)) == 1  # no gates: one group
    assert len(gate.parameter_groups(gate.add_gates(tiny(), kind="none"), 1e-3, 3e-2)) == 1  # wrappers, no gates

    gates = [p for p in model.parameters() if id(p) in gate_ids]
    backbone = [p for p in model.parameters() if id(p) not in gate_ids]
    before_gates, before_backbone = [p.detach().clone() for p in gates], [p.detach().clone() for p in backbone]

    def batches(step):
        return torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(step))

    train_causal_lm(model, batches, 3, 1e-8, parameters=gate.parameter_groups(model, 1e-8, 1e-2),
                    extra_loss=lambda m: gate.gate_penalty(m), progress=False)
    assert max(float((b - p.detach()).abs().max()) for b, p in zip(before_gates, gates, strict=True)) > 5e-3
    assert max(float((b - p.detach()).abs().max()) for b, p in zip(before_backbone, backbone, strict=True)) < 1e-6


@pytest.mark.parametrize(
    ("lr", "gate_lr", "match"),
    [(0.0, 0.0, r"lr must be a finite number > 0, got 0\.0"), (float("nan"), 0.0, r"lr must be .*> 0, got nan"),
     ("1e-3", 0.0, r"lr must be .*got '1e-3'"), (1e-3, -1.0, r"gate_lr must be a finite number >= 0.*got -1\.0"),
     (1e-3, float("inf"), r"gate_lr must be .*got inf")],
)
def test_parameter_groups_bad_lr(lr, gate_lr, match):
    with pytest.raises(ValueError, match=match):
        gate.parameter_groups(gate.add_gates(tiny()), lr, gate_lr)


def test_bad_inputs(tmp_path):
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match=r"no decoder layer ModuleList .* found in BertModel; .*looked for"):
        gate.add_gates(
            BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
        )
    model = gate.add_gates(tiny())
    with pytest.raises(ValueError, match="already has gates"):
        gate.add_gates(model)
    with pytest.raises(ValueError, match="gate kind must be one of"):
        gate.add_gates(tiny(), kind="matrix")
    with pytest.raises(ValueError, match="penalty must be one of"):
        gate.gate_penalty(model, "l3")
    model.save_pretrained(tmp_path / "gated")
    with pytest.raises(ValueError, match="has no gates to load into"):
        gate.load_gates(tiny(), tmp_path / "gated")
    tiny().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="holds no labkit gates"):
        gate.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="lacks gate weights"):
        gate.load_gates(gate.add_gates(tiny()), tmp_path / "plain")


def test_load_gates_from_one_safetensors_file(tmp_path):
    """A file of gate weights alone (a GateSkip stage-1 report's artefacts) loads like a saved gated model; a missing
    file is named."""
    trained = gate.add_gates(tiny(), kind="scalar")
    with torch.no_grad():
        for b in gate.gated_branches(trained):
            b.residual_gate.linear.weight.normal_()
    state = {k: v for k, v in trained.state_dict().items() if f".{gate.GATE_ATTR}." in k}
    save_file(state, str(tmp_path / "artefacts.safetensors"))
    fresh = gate.load_gates(gate.add_gates(tiny(), kind="scalar"), tmp_path / "artefacts.safetensors")
    for key, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="no gate weights file .*missing.safetensors"):
        gate.load_gates(fresh, tmp_path / "missing.safetensors")
