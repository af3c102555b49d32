"""GateSkip's stage 2 on a pretrained LLM, run end to end with a tiny Llama and a byte tokenizer standing in for
SmolLM2: the chosen gates trained again on fresh test seeds, every arm scored teacher-forced, decoded with a KV cache
and on multiple choice, the convergence check's runs on validation, and the claims judged under stage 1's premises."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from labkit.experiments import gateskip as experiment
from labkit.experiments.gateskip import data, summary
from labkit.experiments.gateskip.arms import CONTROL, comparison, premise
from labkit.models import decoder_lm, pretrained
from tests.llm_helpers import ByteTokenizer

BUDGETS = (0.0, 0.1, 0.25)


def _four_layers(name: str = "smollm2"):
    """A 4-layer Llama over bytes: ULS keeps the first and last layer, so it needs more than two to skip one."""
    return decoder_lm.build_causal_lm("llama", 256, 32, 4, 2, max_positions=64, seed=0).eval(), ByteTokenizer()


@pytest.fixture(scope="module")
def both_stages():
    cfg = experiment.configure("cpu", {
        "finetune_steps": 4, "batch_size": 4, "text_length": 16, "eval_size": 8, "eval_batch": 4, "workers": 1,
        "gate_lrs": (0.05,), "sparsity_weights": (0.01,), "premise_budgets": (0.1, 0.25), "mc_questions": 4,
        "compare": True, "seeds": 2, "budgets": BUDGETS, "mc_test_questions": 4, "decode_windows": 4, "test_windows": 6,
        "flops_batch": 2, "calib_batches": 1,
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrained, "load", _four_layers)
        chosen = premise.chosen_spec
        mp.setattr(premise, "chosen_spec", lambda *a: (chosen(*a)[0], []))  # whatever the tiny gates learned
        computed = experiment.arms.compute(cfg, progress=False)
    return cfg, computed


def test_stage2_scores_every_arm_at_every_point_of_every_test_seed(both_stages):
    cfg, computed = both_stages
    curves = computed.tables["curves"]
    assert set(curves.split) == {"test"} and sorted(set(curves.seed)) == [100, 101]
    text, mc = curves[curves.task == "text"], curves[curves.task == "dictmc"]
    assert set(text.arm) == {"dense", "gateskip", CONTROL, "shortgpt", "uls"}
    for arm in ("gateskip", CONTROL):  # every budget, r = 0 included (the control's is GateSkip's: nothing skipped)
        assert text[text.arm == arm].groupby("seed").budget.apply(tuple).tolist() == [BUDGETS] * 2
        assert mc[mc.arm == arm].groupby("seed").budget.apply(tuple).tolist() == [BUDGETS] * 2
    assert text.flops_saved.notna().all() and mc.flops_saved.isna().all()  # FLOPs counted on text
    gated = text[text.arm == "gateskip"]
    assert (gated.flops_saved[gated.budget == 0] < 0).all()  # at r = 0 the gates cost FLOPs and save none
    assert (gated.gate_shift >= 0).all() and gated.config.str.endswith("4 steps").all()
    static = text[text.arm.isin(["shortgpt", "uls"])]
    assert (static.budget == static.skipped_fraction).all() and static.removed.notna().all()
    gen = computed.tables["generation"]
    assert set(gen.scope) == {"batch", "sequence"} and gen.bpb.gt(0).all()
    assert set(gen.arm) == {"dense", "gateskip", CONTROL, "shortgpt", "uls"}
    trivial = computed.tables["trivial"]
    assert set(trivial.task) == {"text", "dictmc"} and (trivial[trivial.task == "dictmc"].accuracy == 0.25).all()
    runs = computed.tables["budget_runs"]
    assert set(runs.split) == {"val"} and set(runs.seed) == {100}
    assert sorted(set(runs[runs.arm == "gateskip"].run_budget)) == [1.0, cfg.budget_factor]
    assert set(runs[runs.arm == "dense"].config) == {comparison.PRETRAINED}
    cost = computed.tables["cost"]
    assert {"stage 2 train gates", "stage 2 decode gateskip"} <= set(cost.phase) and "dictmc" in set(cost.task)
    assert list(computed.tables["provenance"].stage.fillna(1)) == [1, 2]


def test_stage2_is_judged_under_stage_one_premises(both_stages):
    cfg, computed = both_stages
    results = experiment.summary.judge(cfg, computed)
    assert summary.ran_comparison(results) and summary.stage2_status(results).startswith("stage 2 ran")
    table = results.claims
    premises = table[table.role == "premise"]
    stage1 = premises[~premises.claim.str.endswith("(test seeds)")]
    assert len(stage1) == 7 and stage1.claim.str.startswith(("text: ", "dictmc: ")).all()
    assert (stage1.group[stage1.claim == "text: gates move from init"] == "").all()  # every task uses text's gates
    assert {"text: gates move from init (test seeds)", "dictmc: dense beats trivial (test seeds)"} <= set(
        premises.claim)
    compared = table[table.role != "premise"]
    assert not compared.claim.str.contains("random_skip").any()  # a frozen LM has no random-skip fine-tune
    assert {"text: saved_90_flops vs shortgpt", f"text: gen_saved_90_sequence vs {CONTROL}",
            "text: gen_saved_95_batch vs uls", "dictmc: saved_95_tokens vs uls"} <= set(compared.claim)
    assert not compared.claim.str.startswith("dictmc: saved_90_flops").any()
    sanity = results.sanity.set_index(["task", "arm"])
    assert sanity.loc[("text", "gateskip"), "budget_measure"] == "saved_90_tokens"
    assert pd.isna(sanity.loc[("text", "dense"), "converged"])  # a frozen LM trains nothing: no longer run
    lines = experiment.verdict_lines(results)
    assert lines[0].startswith("stage 2 ran") and any(line.startswith("stage 1 chose") for line in lines)
    metrics = experiment.headline_metrics(results)
    assert "text/gateskip/saved_90_tokens" in metrics and "stage1/text/dense/bpb" in metrics
    assert set(summary.recorded_tables(results)) >= {"scores", "stage1", "evidence", "claims"}
    again = experiment.summary.judge(cfg, computed.roundtrip())
    pd.testing.assert_frame_equal(results.claims, again.claims, check_dtype=False)


def test_decoding_with_a_kv_cache_reads_the_windows_as_one_forward_does():
    cfg = experiment.configure("cpu", {"text_length": 16, "eval_size": 4, "eval_batch": 2, "decode_windows": 3})
    model, tokenizer = _four_layers()
    text = data.TokenText(tokenizer, cfg, 0)
    decoded, fraction = data.decoded_bpb(model, text)
    assert np.allclose(decoded, data.window_bpb(model, text)[0][:3], rtol=1e-4) and fraction == 0.0
    with pytest.raises(ValueError, match="'text_length' must exceed 9"):
        data.decoded_bpb(model, data.TokenText(tokenizer, dataclasses.replace(cfg, text_length=8), 0))


def test_test_seeds_read_windows_no_tuning_seed_read():
    cfg = experiment.configure("cpu", {"text_length": 16, "eval_size": 4, "test_windows": 3})
    tokenizer = ByteTokenizer()

    def windows(seed: int, split: str) -> set[tuple]:
        return {tuple(w.tolist()) for w in data.TokenText(tokenizer, cfg, seed, split).windows}

    tuning = windows(0, "val") | windows(1, "val")
    assert not tuning & (windows(100, "val") | windows(101, "val"))  # validation parts past the tuning seeds'
    assert not windows(100, "test") & windows(101, "test") and len(windows(100, "test")) == cfg.test_windows
    with pytest.raises(ValueError, match=r"past 8\) need .* \(parameters 'eval_size', 'test_windows'"):
        data.TokenText(tokenizer, dataclasses.replace(cfg, test_windows=10**5), 100, "val")


def test_stage2_settings_are_checked_up_front():
    with pytest.raises(ValueError, match="'budgets' must ascend from 0"):
        experiment.configure("cpu", {"budgets": (0.05, 0.0)})
    with pytest.raises(ValueError, match="set freeze_lm=True, or compare=False"):
        experiment.configure("cpu", {"freeze_lm": False, "compare": True})
    experiment.configure("cpu", {"freeze_lm": False, "compare": False})
