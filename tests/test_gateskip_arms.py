import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from labkit import gate
from labkit.experiments import gateskip as experiment
from labkit.experiments.gateskip import arms, config
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


def test_config_grids_need_an_equal_tuning_budget():
    cfg = experiment.Config()
    grid = arms.tuning_grid(cfg)
    assert len(grid) == 3 * len(cfg.dense_lrs) * len(cfg.finetune_stops)  # dense, GateSkip and random skip alike
    assert config.stop_steps(cfg) == [100, 150, 200]
    runs = arms.tuning_runs(grid)  # one fine-tune per configuration, scored at every stop on the way
    assert len(runs) == 3 * len(cfg.dense_lrs) and all(r.steps == 200 and stops == (100, 150) for r, stops in runs)
    with pytest.raises(ValueError, match="same tuning budget"):
        experiment.configure("smoke", {"dense_lrs": (1e-3, 3e-3)})
    with pytest.raises(ValueError, match="round to the same step"):
        experiment.configure("smoke", {"finetune_stops": (0.5, 0.52)})
    with pytest.raises(ValueError, match="finetune_stops"):
        experiment.configure("smoke", {"finetune_stops": (0.0, 1.0)})
    assert config.test_seeds(cfg)[0] > config.tune_seeds(cfg)[-1]  # fresh seeds on test


def test_run_arm_is_deterministic_and_scores_the_split_it_is_given(tmp_path):
    cfg = experiment.configure("smoke", {"budgets": (0.0, 0.2), "eval_size": 32, "tasks": ("cumsum",)})
    pre = arms.pretrain(cfg, "cumsum", 0, tmp_path)
    spec, stops = next(r for r in arms.tuning_runs(arms.tuning_grid(cfg)) if r[0].family == "gateskip")
    first = pd.DataFrame(arms.run_arm(cfg, pre, spec, "val", tmp_path, stops=stops).rows)
    again = pd.DataFrame(arms.run_arm(cfg, pre, spec, "val", tmp_path, stops=stops).rows)
    pd.testing.assert_frame_equal(first, again)  # a job does not depend on what ran before it
    assert set(first.split) == {"val"} and "flops" not in first  # tuning never measures test FLOPs
    assert sorted(set(first.steps)) == [5, 10] and first.config.str.endswith(" steps").all()  # both stops scored
    assert 0.5 < first.gate_mean.iloc[0] < 1.0 and (first.gate_shift >= 0).all()  # mean |g - g0| after training
    early = dataclasses.replace(spec, steps=5)  # stopping early trains exactly as the checkpointed run did
    alone = pd.DataFrame(arms.run_arm(cfg, pre, early, "val", tmp_path).rows)
    pd.testing.assert_frame_equal(first[first.steps == 5].reset_index(drop=True), alone)
    with pytest.raises(ValueError, match="do not lie before the run's end"):
        arms.run_arm(cfg, pre, early, "val", tmp_path, stops=(5,))
    test = arms.run_arm(cfg, pre, spec, "test", tmp_path)
    rows = pd.DataFrame(test.rows)
    assert set(rows.arm) == {"gateskip", "gateskip + random rank"} and rows.flops_saved.notna().all()
    generation = pd.DataFrame(test.generation)
    assert set(generation.scope) == {"batch", "sequence"} and generation.gen_em.between(0, 1).all()
    assert test.model_path is not None
    dense = next(s for s in arms.tuning_grid(cfg) if s.family == "dense")
    static = pd.DataFrame(arms.run_arm(cfg, pre, dense, "test", tmp_path, roles=("shortgpt",)).rows)
    assert set(static.arm) == {"shortgpt"} and static.budget.max() > 0
    long_cfg, long_spec = arms.longer(cfg, dense, 2.0)  # the convergence check's run: same schedule, stretched
    assert (long_cfg.finetune_steps, long_spec.steps) == (2 * cfg.finetune_steps, 2 * dense.steps)
    short = arms.run_arm(cfg, pre, dense, "val", tmp_path, roles=("dense",)).history
    long = arms.run_arm(long_cfg, pre, long_spec, "val", tmp_path, roles=("dense",)).history
    assert len(long) == 2 * len(short)
    np.testing.assert_allclose(long.lr.to_numpy()[::2], short.lr.to_numpy())  # the same lr at the same fraction


def test_budget_jobs_rerun_every_trained_choice_at_1x_and_longer():
    cfg = experiment.configure("smoke", {"budget_factor": 3.0})
    grid = arms.tuning_grid(cfg)
    dense, gated = (next(s for s in grid if s.family == f and s.steps == 5) for f in ("dense", "gateskip"))
    chosen = pd.DataFrame(
        {"task": "cumsum", "role": ["dense", "shortgpt", "uls", "gateskip"], "spec": [dense, dense, dense, gated]}
    )
    jobs = arms.budget_jobs(cfg, chosen)  # one dense fine-tune serves dense, ShortGPT and ULS
    runs = [(spec.family, b) for _, spec, _, _, b in jobs]
    assert runs == [("dense", 1), ("dense", 3), ("gateskip", 1), ("gateskip", 3)]
    _, _, long_cfg, long_spec, _ = jobs[-1]
    assert (long_cfg.finetune_steps, long_spec.steps) == (30, 15)  # stopped at half of a 3x schedule, as chosen
    with pytest.raises(ValueError, match="budget_factor"):
        experiment.configure("smoke", {"budget_factor": 1.5})


def test_generated_chains_and_the_trivial_predictor(tmp_path):
    from labkit.experiments.gateskip import data as tasks

    cfg = experiment.configure("smoke", {"eval_size": 32, "tasks": ("cumsum",)})
    task = tasks.Task("cumsum", cfg, 0, torch.device("cpu"))
    model = tiny()
    forced = tasks.evaluate(model, task, split="val")
    generated = tasks.generate_chains(model, task, split="val")
    assert generated["gen_em"] <= forced["token_acc"] + 1e-9  # an untrained model: both near zero, never above
    with pytest.raises(ValueError, match="running-sum task"):
        tasks.generate_chains(
            model, tasks.Task("text", dataclasses.replace(cfg, text_length=16), 0, torch.device("cpu"))
        )
    trivial = tasks.trivial_quality(task, "test")
    assert trivial["seq_em"] < 0.05 and 0.2 < trivial["token_acc"] < 0.6  # per-position frequencies: '=' and EOS


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


def test_claims_forest_and_generation_figures():
    from labkit.views import gateskip as views

    claims = pd.DataFrame(
        {
            "claim": ["a", "b", "c"],
            "mean": [3.0, -2.0, 0.5],
            "low": [1.5, -4.0, float("nan")],
            "high": [4.5, -0.5, float("nan")],
            "verdict": ["held", "not held", "inconclusive"],
            "role": ["premise", "main", "secondary"],
            "tolerance": ["0.01", "1", "1"],
        }
    )
    fig = views.claims_forest(claims)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
    matplotlib.pyplot.close(fig)
    rows = [
        {"arm": arm, "scope": scope, "seed": seed, "budget": b, "skipped_fraction": b, "gen_em": 1 - b}
        for arm in ("dense", "gateskip")
        for scope in ("batch", "sequence")
        for seed in (0, 1)
        for b in (0.0, 0.2)
    ]
    fig = views.generation_curves(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes] == ["batch scope", "sequence scope"]
    matplotlib.pyplot.close(fig)


def test_quality_figure_keeps_its_legend_where_flops_were_not_counted_and_gate_training_draws_every_run():
    from labkit.views import gateskip as views

    curves = pd.DataFrame([
        {"task": "dictmc", "split": "test", "arm": arm, "seed": seed, "budget": b, "skipped_fraction": b,
         "flops_saved": float("nan"), "accuracy": 0.7 - b}
        for arm in ("dense", "gateskip", "shortgpt") for seed in (0, 1) for b in (0.0, 0.1)
    ])
    fig = views.quality_vs_saved(curves, "dictmc", "accuracy", "pretrained LM")
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None  # the axes that drew the arms
    matplotlib.pyplot.close(fig)
    history = pd.DataFrame([
        {"step": step, "loss": 3.0, "extra": 0.1, "seed": seed, "split": split, "run_budget": factor}
        for seed, split, factor, steps in ((100, "test", 1.0, 4), (101, "test", 1.0, 4), (100, "val", 2.0, 8))
        for step in range(steps)
    ] + [{"step": 0, "loss": 3.0, "extra": 0.1, "config": "stage 1", "split": None, "run_budget": None}])
    fig = views.gate_training(history, 0.05)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["test seed 100", "test seed 101", "convergence check (validation, 2x steps)"]
    assert "0 -> 5%" in fig.axes[0].get_title()
    matplotlib.pyplot.close(fig)
