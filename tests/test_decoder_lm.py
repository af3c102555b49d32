import pytest
import torch

from labkit.models.decoder_lm import build_causal_lm, load_lm, n_parameters, save_lm


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_build_save_reload_roundtrip(arch, tmp_path):
    torch.set_num_threads(1)
    model = build_causal_lm(arch, vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=0).eval()
    x = torch.randint(0, 16, (2, 6))
    expected = model(x).logits
    assert expected.shape == (2, 6, 16)
    assert model.config.num_hidden_layers == 2
    reloaded = load_lm(save_lm(model, tmp_path / arch)).eval()
    torch.testing.assert_close(reloaded(x).logits, expected, atol=0.0, rtol=0.0)
    assert n_parameters(reloaded) == n_parameters(model)


def test_seed_makes_weights_identical():
    a = build_causal_lm("llama", 16, 32, 2, 2, seed=3)
    b = build_causal_lm("llama", 16, 32, 2, 2, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0.0, rtol=0.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown arch 'mamba'"):
        build_causal_lm("mamba", 16, 32, 2, 2)
    with pytest.raises(ValueError, match="divisible by n_heads 3"):
        build_causal_lm("llama", 16, 32, 2, 3)
