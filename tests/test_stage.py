"""Tests for labkit.stage: layouts agree, frozen copies stay frozen, EMA after the step, freeze_schedule; the TAU
translator blocks and drop path (labkit.tau); the forecasters' block, mixing and layout options."""

from __future__ import annotations

import pytest
import torch

from labkit import seed_everything
from labkit.models.forecaster import PerVariableForecaster, StackedForecaster
from labkit.stage import (
    ImplicitTwoStage,
    PerVariableDecoder,
    PerVariableEncoder,
    VariableAttention,
    ema_update_,
    end_to_end_losses,
    explicit_two_stage_losses,
    freeze_schedule,
    frozen_copy,
    resolve_layout,
    to_layout,
)
from labkit.tau import DropPath, TAUBlock


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0, threads=1)


@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_grouped_and_modulelist_encoders_agree(n_layers):
    enc = PerVariableEncoder(5, hid=8, n_layers=n_layers, layout="modulelist")
    grouped = to_layout(enc, "grouped")
    x = torch.randn(3, 5, 16, 32)
    torch.testing.assert_close(grouped(x), enc(x), atol=1e-5, rtol=1e-5)
    back = to_layout(grouped, "modulelist")
    torch.testing.assert_close(back(x), enc(x), atol=1e-5, rtol=1e-5)
    assert grouped(x).shape == (3, 5, 8, 16 // 2 ** (n_layers // 2), 32 // 2 ** (n_layers // 2))


def test_grouped_and_modulelist_decoders_agree_including_gradients():
    dec = PerVariableDecoder(4, hid=6, n_layers=2, layout="grouped")
    listed = to_layout(dec, "modulelist")
    z = torch.randn(2, 4, 6, 8, 8)
    out_g, out_l = dec(z), listed(z)
    assert out_g.shape == (2, 4, 16, 16)
    torch.testing.assert_close(out_g, out_l, atol=1e-5, rtol=1e-5)
    out_g.pow(2).sum().backward()
    out_l.pow(2).sum().backward()
    # the first variable's readout weight in the grouped conv is row block 0
    torch.testing.assert_close(dec.net[-1].weight.grad[:1], listed.nets[0][-1].weight.grad, atol=1e-4, rtol=1e-4)


def test_variables_do_not_leak_across_groups():
    enc = PerVariableEncoder(3, hid=4, n_layers=2)
    x = torch.randn(1, 3, 8, 8)
    x2 = x.clone()
    x2[:, 1] += 5.0
    a, b = enc(x), enc(x2)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 2], b[:, 2])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_variable_attention_shapes_and_rows_sum_to_one():
    attn = VariableAttention(c_in=12, c_out=8, d_model=16, heads=4, n_blocks=3)
    z, weights = attn(torch.randn(2, 5, 12, 4, 8))
    assert z.shape == (2, 5, 8, 4, 8)
    assert weights.shape == (2, 3, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4, 5), atol=1e-5, rtol=0)


def test_variable_attention_mixes_variables():
    attn = VariableAttention(c_in=4, d_model=8, heads=2, n_blocks=1)
    z = torch.randn(1, 3, 4, 4, 4)
    z2 = z.clone()
    z2[:, 2] += 1.0
    assert not torch.allclose(attn(z)[0][:, 0], attn(z2)[0][:, 0])


def _tiny_parts():
    model = PerVariableForecaster(n_vars=3, t_in=2, t_out=2, hid=4, n_layers=2, d_model=8, heads=2, n_blocks=1)
    return model.encoder, model.translator, model.decoder


def test_implicit_two_stage_frozen_copies_never_get_gradients():
    its = ImplicitTwoStage(*_tiny_parts(), momentum=0.9)
    x, y = torch.randn(2, 2, 3, 8, 8), torch.randn(2, 2, 3, 8, 8)
    losses = its.losses(x, y)
    losses["loss"].backward()
    for copy_ in (its.encoder_k, its.translator_k, its.decoder_k):
        assert all(p.grad is None and not p.requires_grad for p in copy_.parameters())
    assert all(p.grad is not None for p in its.encoder.parameters())
    assert all(p.grad is not None for p in its.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in its.translator.parameters())


def test_implicit_two_stage_routes_each_loss_to_one_part():
    its = ImplicitTwoStage(*_tiny_parts())
    x, y = torch.randn(2, 2, 3, 8, 8), torch.randn(2, 2, 3, 8, 8)
    losses = its.losses(x, y)
    losses["rec"].backward(retain_graph=True)
    assert all(p.grad is None for p in its.translator.parameters())  # no pixel-space gradient to the translator
    its.zero_grad(set_to_none=True)
    losses["latent"].backward()
    assert all(p.grad is None for p in its.encoder.parameters())
    assert all(p.grad is None for p in its.decoder.parameters())


def test_after_step_updates_copies_after_the_optimizer_step():
    its = ImplicitTwoStage(*_tiny_parts(), momentum=0.9, enc_momentum=0.0)
    opt = torch.optim.SGD([p for p in its.parameters() if p.requires_grad], lr=0.1)
    before_t = [p.clone() for p in its.translator_k.parameters()]
    before_online_t = [p.clone() for p in its.translator.parameters()]
    its.losses(torch.randn(2, 2, 3, 8, 8), torch.randn(2, 2, 3, 8, 8))["loss"].backward()
    opt.step()
    for k, b in zip(its.translator_k.parameters(), before_t, strict=True):  # untouched until after_step
        torch.testing.assert_close(k, b)
    its.after_step()
    for k, q in zip(its.encoder_k.parameters(), its.encoder.parameters(), strict=True):
        torch.testing.assert_close(k, q)  # hard copy
    for k, b, q in zip(its.translator_k.parameters(), before_t, its.translator.parameters(), strict=True):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * q, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(b, q) for b, q in zip(before_online_t, its.translator.parameters(), strict=True))


def test_forward_matches_online_path_after_hard_copy():
    its = ImplicitTwoStage(*_tiny_parts())
    x = torch.randn(1, 2, 3, 8, 8)
    online = its.decoder(its.translator(its.encoder(x))[0])
    torch.testing.assert_close(its(x), online)


def test_ema_update_and_bad_momentum():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.5 * a.weight.detach() + 0.5 * b.weight.detach()
    ema_update_(a, b, 0.5)
    torch.testing.assert_close(a.weight, expected)
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update_(a, b, 1.5)
    with pytest.raises(ValueError, match="momentum must be in"):
        ImplicitTwoStage(*_tiny_parts(), momentum=-0.1)
    frozen = frozen_copy(a)
    assert not any(p.requires_grad for p in frozen.parameters()) and all(p.requires_grad for p in a.parameters())


def test_freeze_schedule():
    enc, trans, dec = _tiny_parts()
    groups = {"autoencoder": torch.nn.ModuleList([enc, dec]), "translator": trans}
    plan = {"autoencoder": (0, 3), "translator": (3, None)}
    assert freeze_schedule(groups, plan, 0) == {"autoencoder": True, "translator": False}
    assert not any(p.requires_grad for p in trans.parameters())
    assert freeze_schedule(groups, plan, 3) == {"autoencoder": False, "translator": True}
    assert all(p.requires_grad for p in trans.parameters()) and not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="unknown group"):
        freeze_schedule(groups, {"decoder": (0, 1)}, 0)
    with pytest.raises(ValueError, match="stop 1 < start 2"):
        freeze_schedule(groups, {"translator": (2, 1)}, 0)


def test_explicit_two_stage_and_end_to_end_losses():
    enc, trans, dec = _tiny_parts()
    x, y = torch.randn(2, 2, 3, 8, 8), torch.randn(2, 2, 3, 8, 8)
    ae = explicit_two_stage_losses(enc, trans, dec, x, y, "autoencoder")
    ae["loss"].backward()
    assert all(p.grad is None for p in trans.parameters())
    lat = explicit_two_stage_losses(enc, trans, dec, x, y, "translator")
    assert lat["loss"].requires_grad and set(lat) == {"latent", "loss"}
    assert end_to_end_losses(enc, trans, dec, x, y)["loss"].ndim == 0
    with pytest.raises(ValueError, match="unknown phase"):
        explicit_two_stage_losses(enc, trans, dec, x, y, "both")


def test_bad_inputs_name_the_problem():
    enc = PerVariableEncoder(5, hid=4)
    with pytest.raises(ValueError, match=r"expected input N x 5 x H x W"):
        enc(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="unknown layout"):
        PerVariableEncoder(5, layout="stacked")
    with pytest.raises(ValueError, match="even hid"):
        PerVariableDecoder(5, hid=3)
    with pytest.raises(ValueError, match="divisible by heads"):
        VariableAttention(8, d_model=10, heads=4)
    model = PerVariableForecaster(n_vars=5, t_in=3, t_out=2, hid=4, d_model=8, heads=2, n_blocks=1)
    with pytest.raises(ValueError, match=r"expected input B x 3 x 5 x H x W"):
        model(torch.randn(1, 3, 4, 8, 8))


def test_forecasters_shapes():
    x = torch.randn(2, 3, 5, 16, 32)
    pred, attn = PerVariableForecaster(5, 3, 2, hid=4, d_model=8, heads=2, n_blocks=2)(x)
    assert pred.shape == (2, 2, 5, 16, 32) and attn.shape == (2, 2, 2, 5, 5)
    for t_out in (3, 2):
        pred, attn = StackedForecaster(5, 3, t_out, hid=4, hid_t=16)(x)
        assert pred.shape == (2, t_out, 5, 16, 32) and attn is None


def test_met2net_experiment_two_steps_and_bad_config(tmp_path, monkeypatch):
    from labkit.experiments import met2net as experiment

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cfg = experiment.configure("smoke", {"max_steps": 2, "epochs": 2, "seeds": 1, "long_seeds": 1})
    data = experiment.load_data(cfg)
    run = experiment.train_arm("met2net", cfg, 0, data)
    assert run.history["rec"].notna().sum() == 2 and run.history["latent"].notna().sum() == 2
    scores = experiment.evaluate(run.model, data, "test", cfg, torch.device("cpu"))
    n_vars = len(cfg.variables)
    assert scores["mse_z"].shape == (cfg.t_out, n_vars) and scores["attention"].shape == (n_vars, n_vars)
    torch.testing.assert_close(scores["mse_phys"], scores["mse_z"] * torch.as_tensor(data.normalizer.std) ** 2)
    with pytest.raises(ValueError, match=r"'frames' must be >= t_in \+ t_out \(12 \+ 12\).*got 20"):
        experiment.configure("smoke", {"t_in": 12, "t_out": 12})  # caught before any data is generated
    with pytest.raises(TypeError, match=r"arms.*'unet' is not Literal\["):
        experiment.configure("smoke", {"arms": ("stacked", "unet")})
    with pytest.raises(ValueError, match="unknown parameter"):
        experiment.configure("smoke", {"epoch": 3})


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_tau_block_keeps_the_shape_and_trains_every_parameter(norm):
    block = TAUBlock(8, mlp_ratio=2, norm=norm)
    x = torch.randn(3, 8, 6, 10)
    out = block(x)
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    dilated = block.attn.dilated  # statical attention: depthwise 5x5 -> depthwise 7x7, dilation 3 -> 1x1
    assert dilated.weight.shape == (8, 1, 7, 7) and dilated.dilation == (3, 3) and block.attn.local.groups == 8


def test_drop_path_is_the_identity_in_eval_and_stochastic_in_training():
    drop = DropPath(0.5)
    x = torch.ones(2000, 3, 2, 2)
    assert drop.eval()(x) is x
    y = drop.train()(x)
    kept = y[:, 0, 0, 0]
    assert set(kept.unique().tolist()) == {0.0, 2.0}  # whole samples dropped, the rest scaled by 1 / (1 - p)
    assert (y == y[:, :1, :1, :1]).all() and abs(kept.mean().item() - 1.0) < 0.1
    block = TAUBlock(4, drop_path=0.5, layer_scale=1.0)
    z = torch.randn(8, 4, 5, 5)
    block.eval()
    torch.testing.assert_close(block(z), block(z))
    block.train()
    assert not torch.allclose(block(z), block(z))


@pytest.mark.parametrize("ffn", ["conv", "tau"])
def test_mixing_none_keeps_variables_independent(ffn):
    x = torch.randn(2, 2, 3, 8, 8)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    for mixing in ("none", "attention"):
        model = PerVariableForecaster(3, 2, 2, hid=4, d_model=8, heads=2, n_blocks=2, ffn=ffn, mixing=mixing).eval()
        (pred, attn), (pred2, _) = model(x), model(x2)
        assert not torch.allclose(pred[:, :, 0], pred2[:, :, 0])
        if mixing == "none":
            assert attn is None and len(model.translator.attn) == 0
            torch.testing.assert_close(pred[:, :, 1:], pred2[:, :, 1:])
        else:
            assert attn.shape == (2, 2, 2, 3, 3) and not torch.allclose(pred[:, :, 1], pred2[:, :, 1])


def test_layout_auto_resolves_per_device_and_keeps_the_function():
    assert resolve_layout("auto", "cpu") == "modulelist" and resolve_layout("auto", "cuda") == "grouped"
    assert resolve_layout("grouped", "cpu") == "grouped"
    expected = "grouped" if torch.cuda.is_available() else "modulelist"
    x = torch.randn(2, 3, 4, 8, 16)
    seed_everything(1)
    auto = PerVariableForecaster(4, 3, 2, hid=4, d_model=8, heads=2, n_blocks=1)
    after_auto = torch.rand(3)
    seed_everything(1)
    grouped = PerVariableForecaster(4, 3, 2, hid=4, d_model=8, heads=2, n_blocks=1, layout="grouped")
    assert auto.layout == expected and auto.encoder.encoder.layout == auto.decoder.decoder.layout == expected
    torch.testing.assert_close(torch.rand(3), after_auto)  # same draws after construction: the RNG was not shifted
    torch.testing.assert_close(auto(x)[0], grouped(x)[0], atol=1e-5, rtol=1e-5)
    assert to_layout(grouped.encoder.encoder, "auto").layout == "modulelist"  # the module is on the CPU


def test_stacked_forecaster_with_tau_blocks():
    x = torch.randn(2, 3, 5, 16, 32)
    for t_out in (3, 2):
        model = StackedForecaster(5, 3, t_out, hid=4, hid_t=16, block="tau", drop_path=0.1)
        pred, attn = model(x)
        assert pred.shape == (2, t_out, 5, 16, 32) and attn is None and len(model.norms) == 0
        pred.pow(2).mean().backward()
        assert all(p.grad is not None for p in model.blocks.parameters())
    conv, tau = StackedForecaster(5, 3, 2, hid=4, hid_t=16), StackedForecaster(5, 3, 2, hid=4, hid_t=16, block="tau")
    assert isinstance(tau.blocks[0], TAUBlock) and not isinstance(conv.blocks[0], TAUBlock)


def test_bad_block_mixing_and_drop_path_name_the_parameter():
    with pytest.raises(ValueError, match=r"ffn must be one of \('conv', 'tau'\), got 'mlp'"):
        VariableAttention(8, d_model=8, heads=2, ffn="mlp")
    with pytest.raises(ValueError, match=r"mixing must be one of \('attention', 'none'\), got 'cross'"):
        PerVariableForecaster(3, 2, 2, hid=4, d_model=8, heads=2, mixing="cross")
    with pytest.raises(ValueError, match=r"block must be one of \('conv', 'tau'\), got 'unet'"):
        StackedForecaster(3, 2, 2, block="unet")
    for make in (
        lambda: VariableAttention(8, d_model=8, heads=2, drop_path=-0.1),
        lambda: StackedForecaster(3, 2, 2, drop_path=-0.1),
        lambda: PerVariableForecaster(3, 2, 2, hid=4, d_model=8, heads=2, ffn="tau", drop_path=-0.1),
    ):
        with pytest.raises(ValueError, match=r"drop_path must be a number in \[0, 1\), got -0.1"):
            make()
    with pytest.raises(ValueError, match="norm must be one of"):
        TAUBlock(8, norm="layer")
    with pytest.raises(ValueError, match="unknown layout 'fast'"):
        PerVariableForecaster(3, 2, 2, layout="fast")


def test_implicit_two_stage_with_tau_translator_without_mixing():
    model = PerVariableForecaster(
        3, 2, 2, hid=4, d_model=8, heads=2, n_blocks=2, ffn="tau", drop_path=0.2, mixing="none"
    )
    its = ImplicitTwoStage(model.encoder, model.translator, model.decoder).train()
    assert not its.translator_k.training  # frozen copies: BatchNorm running stats, no drop path
    opt = torch.optim.AdamW([p for p in its.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(2, 2, 3, 8, 8), torch.randn(2, 2, 3, 8, 8)
    losses = its.losses(x, y)
    losses["loss"].backward()
    opt.step()
    its.after_step()
    assert torch.isfinite(losses["loss"]) and its(x).shape == (2, 2, 3, 8, 8)
    stats = [b for name, b in its.translator_k.named_buffers() if name.endswith("running_mean")]
    assert stats and any(s.abs().sum() > 0 for s in stats)  # BatchNorm statistics follow the online translator
