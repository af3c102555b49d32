import matplotlib
import pandas as pd
import pytest
import torch

from labkit import gate
from labkit.experiments import gateskip as experiment
from labkit.models.decoder_lm import build_causal_lm
from labkit.train import train_causal_lm

matplotlib.use("Agg")


def tiny(seed=0):
    torch.set_num_threads(1)
    return build_causal_lm(
        "llama", vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=seed, eos_token_id=13, pad_token_id=14
    ).eval()


def batches(step):
    return torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(step))


def snapshot(params):
    return [p.detach().clone() for p in params]


def max_change(before, params):
    return max(float((b - p.detach()).abs().max()) for b, p in zip(before, params, strict=True))


def test_train_causal_lm_parameter_groups_get_their_own_peak_lr():
    model = tiny()
    head = [model.model.norm.weight]
    rest = [p for p in model.parameters() if p is not head[0]]
    before_head, before_rest = snapshot(head), snapshot(rest)
    history = train_causal_lm(
        model, batches, 3, 1e-8, parameters=[{"params": rest}, {"params": head, "lr": 1e-1}], progress=False
    )
    assert max_change(before_head, head) > 1e-2  # AdamW moves a parameter by about its lr per step
    assert max_change(before_rest, rest) < 1e-6
    assert history.lr.iloc[0] == pytest.approx(1e-8)  # the logged lr is the schedule applied to lr
    with pytest.raises(ValueError, match="all tensors or all dicts"):
        train_causal_lm(model, batches, 1, 1e-3, parameters=[{"params": rest}, head[0]], progress=False)
    with pytest.raises(ValueError, match="group lr > 0"):
        train_causal_lm(model, batches, 1, 1e-3, parameters=[{"params": rest, "lr": 0.0}], progress=False)


def test_config_gate_lr_default_and_override():
    assert experiment.Config().gate_lr == 0.0  # 0: the gates train at finetune_lr
    assert experiment.configure("smoke", {"gate_lr": 1e-2}).gate_lr == 1e-2


def test_pretrain_once_finetune_arms_reuse_is_deterministic(tmp_path):
    cfg = experiment.configure("smoke", {"budgets": (0.0, 0.2), "eval_size": 32, "gate_lr": 1e-2})
    pre = experiment.pretrain(cfg, "cumsum", 0, tmp_path)
    only_gates = pd.DataFrame(experiment.finetune_arms(cfg, pre, tmp_path, baselines=False).rows)
    full = experiment.finetune_arms(cfg, pre, tmp_path)
    rows = pd.DataFrame(full.rows)
    assert set(only_gates.arm) == {"gateskip λ=0.01", "gateskip λ=0.01 + random rank"}
    assert {"dense", "random_skip", "shortgpt", "uls"} <= set(rows.arm)
    same = rows[rows.arm.isin(only_gates.arm)].reset_index(drop=True)
    pd.testing.assert_frame_equal(same[only_gates.columns], only_gates)  # an arm does not depend on the others
    assert 0.5 < only_gates.gate_mean.iloc[0] < 1.0
    assert full.model_path is not None


def test_draw_tokens_figure():
    from labkit.views import gateskip as views

    model = gate.add_gates(tiny())
    examples = torch.randint(0, 13, (4, 9))
    fig = views.draw_tokens(model, examples, ratio=0.25, example=1)
    title = fig.axes[0].get_title()
    assert title.startswith("tokens skipped at r = 25%")
    assert len(fig.axes[0].get_yticklabels()) == 4  # one row per branch
    matplotlib.pyplot.close(fig)


def test_token_skip_map_shapes_and_budget():
    from labkit.views import gateskip as views

    model = gate.add_gates(tiny())
    examples = torch.randint(0, 13, (4, 9))
    closed = views.token_skip_map(model, examples, 0.0, example=2)
    assert closed["importance"].shape == closed["keep"].shape == (4, 9)  # branches x tokens
    assert closed["names"] == ["0.attn", "0.mlp", "1.attn", "1.mlp"] and len(closed["tokens"]) == 9
    assert closed["keep"].all()  # r = 0 skips nothing
    half = views.token_skip_map(model, examples, 0.5, example=2)
    assert 0 < (~half["keep"]).sum() < half["keep"].size

