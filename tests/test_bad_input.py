"""Bad inputs to the public API: each must raise a given exception whose message names the offending thing.

One table, one row per case: (id, callable, exception type, regex the message must match). Cases are tiny (a few
numbers, a 2-layer Llama of width 32), so the whole table runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from labkit import gate, mixup, profile, runner, select, skip, stage
from labkit.experiments import cmixup, dsir, gateskip, met2net, profiling, sparse_soups
from labkit.select.features import HashedFeatures, NgramHasher, featurize, iter_documents

EXPERIMENTS = {"profiling": profiling, "cmixup": cmixup, "met2net": met2net, "sparse_soups": sparse_soups,
               "dsir": dsir, "gateskip": gateskip}
DOCS = ["the cat sat on the mat", "a dog ran in the park", "the cat ate the fish", "birds sing in trees"]
TARGET = ["the cat sat", "a cat ate"]


@functools.cache
def _tiny_lm() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(config).eval()


def _gated_after_forward() -> nn.Module:
    model = gate.add_gates(_fresh_lm())
    model(torch.randint(0, 16, (1, 4)))
    return model


def _fresh_lm() -> nn.Module:
    import copy

    return copy.deepcopy(_tiny_lm())


@functools.cache
def _fitted_dsir() -> select.DSIR:
    return select.DSIR(num_buckets=64).fit(DOCS, TARGET)


def _static_skip(layers) -> None:
    with skip.static_skip(_fresh_lm(), layers, measure_flops=False):
        pass


def _two_stage() -> stage.ImplicitTwoStage:
    enc = stage.PerVariableEncoder(2, hid=4, n_layers=2)  # N x 2 x 8 x 8 -> N x 2 x 4 x 4 x 4
    trans = stage.VariableAttention(4, d_model=8, heads=2, n_blocks=1)
    dec = stage.PerVariableDecoder(2, hid=4, n_layers=2)
    return stage.ImplicitTwoStage(enc, trans, dec)


def _stage_losses(x_batch: int, y_batch: int) -> None:
    its = _two_stage()
    its.losses(torch.randn(x_batch, 2, 8, 8), torch.randn(y_batch, 2, 8, 8))


def _configure(module, overrides, preset="smoke"):
    return lambda: module.configure(preset, overrides)


def _coerce(name: str, text: str, experiment=profiling) -> Callable[[], object]:
    return lambda: runner.coerce(name, text, runner.parameter_types(experiment)[name])


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


# (id, callable, exception, regex naming the offending thing and what was expected)
CASES: list[tuple[str, Callable[[], object], type[BaseException], str]] = [
    # ------------------------------------------------------------------------------------------------ mixup
    ("mixup.kernel_probabilities bandwidth=0",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 1), torch.zeros(3, 1), 0.0), ValueError, r"bandwidth.*> 0.*0"),
    ("mixup.kernel_probabilities bandwidth=-1",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 1), torch.zeros(3, 1), -1.0), ValueError, r"bandwidth.*-1"),
    ("mixup.kernel_probabilities bandwidth=nan",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 1), torch.zeros(3, 1), math.nan), ValueError, r"bandwidth.*nan"),
    ("mixup.kernel_probabilities NaN label",
     lambda: mixup.kernel_probabilities(torch.tensor([[0.0], [math.nan]]), torch.zeros(3, 1), 1.0),
     ValueError, r"labels.*finite.*\[1\]"),
    ("mixup.kernel_probabilities empty candidates",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 1), torch.zeros(0, 1), 1.0), ValueError, r"candidates.*empty"),
    ("mixup.kernel_probabilities label dims differ",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 2), torch.zeros(3, 1), 1.0), ValueError,
     r"labels and candidates.*dimension.*2.*1"),
    ("mixup.kernel_probabilities exclude shape",
     lambda: mixup.kernel_probabilities(torch.zeros(3, 1), torch.zeros(4, 1), 1.0, exclude=torch.zeros(3, 3).bool()),
     ValueError, r"exclude.*\(3, 4\).*\(3, 3\)"),
    ("mixup.mix lam=nan",
     lambda: mixup.mix(torch.ones(2, 3), torch.ones(2), torch.zeros(2, 3), torch.zeros(2), math.nan),
     ValueError, r"lam.*finite.*\[0, 1\].*nan"),
    ("mixup.mix lam=1.5",
     lambda: mixup.mix(torch.ones(2, 3), torch.ones(2), torch.zeros(2, 3), torch.zeros(2), 1.5),
     ValueError, r"lam.*\[0, 1\].*1\.5"),
    ("mixup.mix per-example lam with nan",
     lambda: mixup.mix(torch.ones(2, 3), torch.ones(2), torch.zeros(2, 3), torch.zeros(2),
                       torch.tensor([0.5, math.nan])),
     ValueError, r"lam.*finite"),
    ("mixup.cutmix lam=nan",
     lambda: mixup.cutmix(torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), math.nan), ValueError, r"lam.*nan"),
    ("mixup.bandwidth_sweep all losses NaN",
     lambda: mixup.bandwidth_sweep(lambda s: math.nan, [0.1, 1.0]), ValueError, r"non-finite.*0\.1.*1\.0"),
    ("mixup.bandwidth_sweep loss not a number",
     lambda: mixup.bandwidth_sweep(lambda s: "low", [0.1]), TypeError, r"validation_loss.*0\.1.*'low'"),
    ("mixup.bandwidth_sweep bandwidth 0",
     lambda: mixup.bandwidth_sweep(lambda s: 1.0, [0.0, 1.0]), ValueError, r"bandwidth.*> 0.*0"),
    ("mixup.CMixupSampler empty labels",
     lambda: mixup.CMixupSampler([], 1.0), ValueError, r"labels.*empty"),
    ("mixup.CMixupSampler NaN label", lambda: mixup.CMixupSampler([0.0, 1.0, math.nan], 1.0),
     ValueError, r"labels.*finite.*\[2\]"),
    ("mixup.CMixupSampler bandwidth 0", lambda: mixup.CMixupSampler([0.0, 1.0], 0), ValueError, r"bandwidth.*0"),
    ("mixup.CMixupSampler truncate nan", lambda: mixup.CMixupSampler([0.0, 1.0], 1.0, truncate=math.nan),
     ValueError, r"truncate.*nan"),
    ("mixup.CMixupSampler.sample float indices", lambda: mixup.CMixupSampler([0.0, 1.0], 1.0).sample([0.5]),
     TypeError, r"indices.*integer.*float"),
    ("mixup.CMixupSampler.sample out of range", lambda: mixup.CMixupSampler([0.0, 1.0], 1.0).sample([2]),
     IndexError, r"indices.*\[0, 2\).*2"),
    ("mixup.UniformSampler n=True", lambda: mixup.UniformSampler(True), ValueError, r"n must be an int.*True"),
    ("mixup.UniformSampler n=0", lambda: mixup.UniformSampler(0), ValueError, r"n must be an int >= 1.*0"),
    ("mixup.beta_lambda alpha=0", lambda: mixup.beta_lambda(0.0), ValueError, r"alpha.*> 0.*0"),
    ("mixup.beta_lambda size=-1", lambda: mixup.beta_lambda(1.0, -1), ValueError, r"size.*-1"),
    ("mixup.bandwidth_from_std constant labels", lambda: mixup.bandwidth_from_std([1.0, 1.0], 1.0),
     ValueError, r"labels are constant"),
    ("mixup.self_pair_rate shapes differ", lambda: mixup.self_pair_rate(torch.arange(4), torch.arange(1)),
     ValueError, r"indices and partners.*\(4,\).*\(1,\)"),
    ("mixup.self_pair_rate empty", lambda: mixup.self_pair_rate(torch.arange(0), torch.arange(0)),
     ValueError, r"empty"),
    ("mixup.within_batch_partners one candidate", lambda: mixup.within_batch_partners(torch.zeros(1), 1.0),
     ValueError, r"at least 2"),
    ("mixup.ManifoldMixup lam=nan", lambda: mixup.ManifoldMixup(nn.Sequential(nn.Linear(2, 2)), "0")(
        torch.ones(2, 2), torch.ones(2, 2), math.nan), ValueError, r"lam.*finite.*nan"),
    ("mixup.ManifoldMixup unknown layer", lambda: mixup.ManifoldMixup(nn.Sequential(nn.Linear(2, 2)), "fc"),
     ValueError, r"layer 'fc' not found"),
    ("mixup.MixupTransform per='token'", lambda: mixup.MixupTransform(per="token"), ValueError, r"per.*'token'"),
    # ------------------------------------------------------------------------------------------------ select
    ("select.DSIR epsilon=-1", lambda: select.DSIR(epsilon=-1), ValueError, r"epsilon.*> 0.*-1"),
    ("select.DSIR epsilon=nan", lambda: select.DSIR(epsilon=math.nan), ValueError, r"epsilon.*nan"),
    ("select.DSIR num_buckets=0", lambda: select.DSIR(num_buckets=0), ValueError, r"num_buckets.*>= 1.*0"),
    ("select.DSIR num_buckets=10.5", lambda: select.DSIR(num_buckets=10.5), TypeError, r"num_buckets.*int.*10\.5"),
    ("select.DSIR ngrams=0", lambda: select.DSIR(ngrams=0), ValueError, r"ngrams.*>= 1.*0"),
    ("select.DSIR hash='md5'", lambda: select.DSIR(hash="md5"), ValueError, r"hash.*'md5'.*sha256"),
    ("select.DSIR min_length=-1", lambda: select.DSIR(min_length=-1), ValueError, r"min_length.*>= 0.*-1"),
    ("select.DSIR target_pseudocount=-1", lambda: select.DSIR(target_pseudocount=-1.0), ValueError,
     r"target_pseudocount.*>= 0.*-1"),
    ("select.DSIR max_raw_tokens=0", lambda: select.DSIR(max_raw_tokens=0), ValueError, r"max_raw_tokens.*>= 1.*0"),
    ("select.DSIR batch_size=0", lambda: select.DSIR(batch_size=0), ValueError, r"batch_size.*>= 1.*0"),
    ("select.DSIR workers=0", lambda: select.DSIR(workers=0), ValueError, r"workers.*>= 1.*0"),
    ("select.DSIR.fit empty raw", lambda: select.DSIR(num_buckets=64).fit([], TARGET), ValueError,
     r"raw.*at least one document"),
    ("select.DSIR.fit empty target", lambda: select.DSIR(num_buckets=64).fit(DOCS, []), ValueError,
     r"target.*at least one document"),
    ("select.DSIR.fit target without tokens", lambda: select.DSIR(num_buckets=64).fit(DOCS, ["", "  "]),
     ValueError, r"target 'target'.*no n-grams"),
    ("select.DSIR.fit raw without tokens", lambda: select.DSIR(num_buckets=64).fit(["", " "], TARGET),
     ValueError, r"raw.*no n-grams"),
    ("select.DSIR.fit empty target dict", lambda: select.DSIR(num_buckets=64).fit(DOCS, {}), ValueError,
     r"target.*empty dict"),
    ("select.DSIR.fit target None", lambda: select.DSIR(num_buckets=64).fit(DOCS, None), TypeError,
     r"target.*None"),
    ("select.DSIR.fit boolean exclude mask",
     lambda: select.DSIR(num_buckets=64).fit(DOCS, TARGET, exclude=np.array([True, False, False, False])),
     TypeError, r"exclude.*indices.*bool"),
    ("select.DSIR.fit exclude out of range", lambda: select.DSIR(num_buckets=64).fit(DOCS, TARGET, exclude=[7]),
     IndexError, r"exclude.*0\.\.3.*7"),
    ("select.DSIR.fit proportions NaN",
     lambda: select.DSIR(num_buckets=64).fit(DOCS, {"a": TARGET, "b": DOCS[:1]}, {"a": math.nan, "b": 1.0}),
     ValueError, r"proportions.*finite.*nan"),
    ("select.DSIR.resample k=0", lambda: _fitted_dsir().resample(0), ValueError, r"k must be in 1\.\.4.*got 0"),
    ("select.DSIR.resample k=2.5", lambda: _fitted_dsir().resample(2.5), TypeError, r"k must be an int.*float"),
    ("select.DSIR.resample temperature=0", lambda: _fitted_dsir().resample(2, temperature=0), ValueError,
     r"temperature.*> 0.*0"),
    ("select.DSIR.resample temperature=nan", lambda: _fitted_dsir().resample(2, temperature=math.nan), ValueError,
     r"temperature.*nan"),
    ("select.DSIR.log_weights unknown target", lambda: _fitted_dsir().log_weights("b"), KeyError, r"'b'"),
    ("select.DSIR.resample before fit", lambda: select.DSIR().resample(1), RuntimeError, r"not fitted"),
    ("select.gumbel_top_k NaN weight", lambda: select.gumbel_top_k(np.array([0.0, math.nan, 1.0]), 1),
     ValueError, r"log_weights.*NaN.*\[1\]"),
    ("select.gumbel_top_k k=1.5", lambda: select.gumbel_top_k(np.zeros(3), 1.5), TypeError, r"k must be an int"),
    ("select.gumbel_top_k 2-D weights", lambda: select.gumbel_top_k(np.zeros((3, 2)), 1), ValueError,
     r"log_weights.*1-D.*\(3, 2\)"),
    ("select.kl_reduction pseudocount=nan", lambda: select.kl_reduction(DOCS, TARGET, DOCS, pseudocount=math.nan),
     ValueError, r"pseudocount.*nan"),
    ("select.kl_reduction empty target dict", lambda: select.kl_reduction(DOCS, {}, DOCS, num_buckets=64),
     ValueError, r"target.*empty"),
    ("select.kl_reduction features of other num_buckets",
     lambda: select.kl_reduction(featurize(DOCS, 32), TARGET, DOCS, num_buckets=64), ValueError,
     r"selected.*num_buckets.*32.*64"),
    ("select.kl_reduction negative counts",
     lambda: select.kl_reduction(-np.ones(64), np.ones(64), np.ones(64), num_buckets=64), ValueError,
     r"selected.*counts.*>= 0"),
    ("select.random_select k=2.5", lambda: select.random_select(4, 2.5), TypeError, r"k must be an int"),
    ("select.random_select k > n", lambda: select.random_select(4, 5), ValueError, r"k must be in 1\.\.4.*5"),
    ("select.heuristic_select pareto_alpha=0",
     lambda: select.heuristic_select(DOCS, TARGET, 2, pareto_alpha=0.0, num_buckets=64), ValueError,
     r"pareto_alpha.*> 0.*0"),
    ("select.heuristic_select negatives_per_target=0",
     lambda: select.heuristic_select(DOCS, TARGET, 2, negatives_per_target=0.0, num_buckets=64), ValueError,
     r"negatives_per_target.*> 0.*0"),
    ("select.heuristic_select exclude out of range",
     lambda: select.heuristic_select(DOCS, TARGET, 2, exclude=[9], num_buckets=64), IndexError, r"exclude.*9"),
    ("select.target_likelihood_select target without tokens",
     lambda: select.target_likelihood_select(DOCS, ["", " "], 2, num_buckets=64), ValueError, r"target.*no n-grams"),
    ("select.tfidf_select target without tokens",
     lambda: select.tfidf_select(DOCS, ["", " "], 2, num_buckets=64), ValueError, r"target.*no n-grams"),
    ("select.tfidf_select boolean exclude",
     lambda: select.tfidf_select(DOCS, TARGET, 2, exclude=np.array([True, False, False, False]), num_buckets=64),
     TypeError, r"exclude.*bool"),
    ("select.write_selected negative index",
     lambda: select.write_selected("raw.jsonl", np.array([1, -1]), "out.jsonl"), ValueError,
     r"indices.*>= 0.*-1"),
    ("select.write_selected float indices",
     lambda: select.write_selected("raw.jsonl", np.array([1.5]), "out.jsonl"), TypeError, r"indices.*integer"),
    # ------------------------------------------------------------------------------------------ select_features
    ("select_features.featurize None", lambda: featurize(None), TypeError, r"documents.*None"),
    ("select_features.featurize batch_size=0", lambda: featurize(DOCS, 64, batch_size=0), ValueError,
     r"batch_size.*>= 1.*0"),
    ("select_features.featurize workers=0", lambda: featurize(DOCS, 64, workers=0), ValueError, r"workers.*>= 1.*0"),
    ("select_features.NgramHasher num_buckets='10'", lambda: NgramHasher("10"), TypeError, r"num_buckets.*int.*'10'"),
    ("select_features.iter_documents non-str item", lambda: list(iter_documents(["a", 3])), TypeError,
     r"document 1 is int"),
    ("select_features.HashedFeatures.subset out of range", lambda: featurize(DOCS, 64).subset([4]), IndexError,
     r"indices.*0\.\.3.*4"),
    ("select_features.HashedFeatures.total_counts negative index",
     lambda: featurize(DOCS, 64).total_counts(np.array([-1])), IndexError, r"indices.*0\.\.3.*-1"),
    ("select_features.HashedFeatures.concatenate mixed settings",
     lambda: HashedFeatures.concatenate([featurize(DOCS, 64), featurize(DOCS, 32)]), ValueError,
     r"num_buckets.*32.*64.*cannot be mixed"),
    # ------------------------------------------------------------------------------------------------ gate
    ("gate.gate_penalty kl keep_fraction=1.5", lambda: gate.gate_penalty(_gated_after_forward(), "kl", 1.5),
     ValueError, r"keep_fraction.*in \(0, 1\).*1\.5"),
    ("gate.gate_penalty kl keep_fraction=0", lambda: gate.gate_penalty(_gated_after_forward(), "kl", 0.0),
     ValueError, r"keep_fraction.*0"),
    ("gate.gate_penalty kl keep_fraction=1", lambda: gate.gate_penalty(_gated_after_forward(), "kl", 1.0),
     ValueError, r"keep_fraction.*1"),
    ("gate.gate_penalty unknown penalty", lambda: gate.gate_penalty(_gated_after_forward(), "l3"), ValueError,
     r"penalty must be one of.*l2.*got 'l3'"),
    ("gate.gate_penalty no gates", lambda: gate.gate_penalty(_fresh_lm()), ValueError, r"no gate values"),
    ("gate.from_pretrained missing folder", lambda: gate.from_pretrained("/nonexistent/labkit-model"),
     FileNotFoundError, r"/nonexistent/labkit-model.*config\.json"),
    ("gate.from_pretrained hub id", lambda: gate.from_pretrained("gpt2"), FileNotFoundError, r"'gpt2'.*local"),
    ("gate.add_gates unknown kind", lambda: gate.add_gates(_fresh_lm(), kind="matrix"), ValueError,
     r"gate kind.*'matrix'"),
    ("gate.add_gates init_std=-1", lambda: gate.add_gates(_fresh_lm(), init_std=-1.0), ValueError,
     r"init_std.*>= 0.*-1"),
    ("gate.add_gates init_bias=nan", lambda: gate.add_gates(_fresh_lm(), init_bias=math.nan), ValueError,
     r"init_bias.*finite.*nan"),
    ("gate.add_gates twice", lambda: gate.add_gates(gate.add_gates(_fresh_lm())), ValueError, r"already has gates"),
    ("gate.add_gates unsupported model", lambda: gate.add_gates(nn.Linear(2, 2)), ValueError,
     r"no decoder layer ModuleList with attention and MLP submodules found in Linear"),
    ("gate.ResidualGate hidden_size=0", lambda: gate.ResidualGate(0), ValueError, r"hidden_size.*>= 1.*0"),
    ("gate.load_gates missing checkpoint", lambda: gate.load_gates(gate.add_gates(_fresh_lm()), "/nonexistent/x"),
     FileNotFoundError, r"/nonexistent/x"),
    # ------------------------------------------------------------------------------------------------ stage
    ("stage.ImplicitTwoStage.losses batch mismatch", lambda: _stage_losses(2, 3), ValueError,
     r"x.*\(2, 2, 8, 8\).*y.*\(3, 2, 8, 8\)"),
    ("stage.ImplicitTwoStage.losses y batch 1 (would broadcast)", lambda: _stage_losses(2, 1), ValueError,
     r"\(2, 2, 8, 8\).*\(1, 2, 8, 8\)"),
    ("stage.ImplicitTwoStage latent_weight=nan",
     lambda: stage.ImplicitTwoStage(nn.Identity(), nn.Identity(), nn.Identity(), latent_weight=math.nan),
     ValueError, r"latent_weight.*nan"),
    ("stage.ImplicitTwoStage momentum=1.5",
     lambda: stage.ImplicitTwoStage(nn.Identity(), nn.Identity(), nn.Identity(), momentum=1.5), ValueError,
     r"momentum.*\[0, 1\].*1\.5"),
    ("stage.end_to_end_losses batch mismatch",
     lambda: stage.end_to_end_losses(nn.Identity(), nn.Identity(), nn.Identity(), torch.ones(2, 3), torch.ones(1, 3)),
     ValueError, r"\(2, 3\).*\(1, 3\)"),
    ("stage.explicit_two_stage_losses batch mismatch",
     lambda: stage.explicit_two_stage_losses(nn.Identity(), nn.Identity(), nn.Identity(), torch.ones(2, 3),
                                             torch.ones(1, 3), "translator"),
     ValueError, r"\(2, 3\).*\(1, 3\)"),
    ("stage.explicit_two_stage_losses unknown phase",
     lambda: stage.explicit_two_stage_losses(nn.Identity(), nn.Identity(), nn.Identity(), torch.ones(2, 3),
                                             torch.ones(2, 3), "joint"),
     ValueError, r"phase 'joint'"),
    ("stage.VariableAttention heads=0", lambda: stage.VariableAttention(4, heads=0), ValueError, r"heads.*>= 1.*0"),
    ("stage.VariableAttention n_blocks=-1", lambda: stage.VariableAttention(4, d_model=4, heads=2, n_blocks=-1),
     ValueError, r"n_blocks.*>= 0.*-1"),
    ("stage.VariableAttention c_in=0", lambda: stage.VariableAttention(0, d_model=4, heads=2), ValueError,
     r"c_in.*>= 1.*0"),
    ("stage.VariableAttention wrong input",
     lambda: stage.VariableAttention(4, d_model=4, heads=2)(torch.ones(1, 2, 3, 2, 2)),
     ValueError, r"B x V x 4 x h x w.*\(1, 2, 3, 2, 2\)"),
    ("stage.PerVariableEncoder odd hid", lambda: stage.PerVariableEncoder(2, hid=3), ValueError, r"hid=3"),
    ("stage.PerVariableEncoder wrong input", lambda: stage.PerVariableEncoder(2, hid=4)(torch.ones(1, 3, 8, 8)),
     ValueError, r"N x 2 x H x W.*\(1, 3, 8, 8\)"),
    ("stage.ema_update_ momentum=nan", lambda: stage.ema_update_(nn.Linear(1, 1), nn.Linear(1, 1), math.nan),
     ValueError, r"momentum.*nan"),
    ("stage.ema_update_ different modules", lambda: stage.ema_update_(nn.Linear(1, 1), nn.Conv1d(1, 1, 1), 0.5),
     ValueError, r"differ"),
    ("stage.parameter_distance different modules",
     lambda: stage.parameter_distance(nn.Linear(1, 1), nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1))),
     ValueError, r"a and b.*parameters.*2.*4"),
    ("stage.freeze_schedule bad plan entry",
     lambda: stage.freeze_schedule({"enc": nn.Linear(1, 1)}, {"enc": 3}, 0), ValueError,
     r"plan\['enc'\].*\(start, stop\).*3"),
    ("stage.freeze_schedule unknown group",
     lambda: stage.freeze_schedule({"enc": nn.Linear(1, 1)}, {"dec": (0, 1)}, 0), ValueError, r"unknown group.*dec"),
    # ------------------------------------------------------------------------------------------- skip.static
    ("skip.static_skip(['mlp'])", lambda: _static_skip(["mlp"]), ValueError,
     r"'mlp'.*layer.*'3\.mlp'"),
    ("skip.static_skip(['0.ffn'])", lambda: _static_skip(["0.ffn"]), ValueError, r"'attn' or 'mlp'.*'ffn'"),
    ("skip.static_skip([5])", lambda: _static_skip([5]), ValueError, r"layer index 5.*2 layers"),
    ("skip.branch_names(['mlp'])", lambda: skip.branch_names(["mlp"], 2), ValueError,
     r"'mlp'.*layer index.*'3\.mlp'"),
    ("skip.branch_names([(0,)])", lambda: skip.branch_names([(0,)], 2), ValueError,
     r"\(0,\).*\(layer, 'attn'\|'mlp'\)"),
    ("skip.branch_names([1.5])", lambda: skip.branch_names([1.5], 2), TypeError, r"1\.5"),
    ("skip.branch_names(['x.mlp'])", lambda: skip.branch_names(["x.mlp"], 2), ValueError,
     r"'x\.mlp'.*layer index"),
    ("skip.branch_names(['3'])", lambda: skip.branch_names(["3"], 4), ValueError, r"'3'.*'3\.mlp'"),
    ("skip.branch_names([True])", lambda: skip.branch_names([True], 2), TypeError, r"True.*bool"),
    ("skip.uls_layers speedup=nan", lambda: skip.uls_layers(4, math.nan), ValueError,
     r"speedup.*nan"),
    ("skip.uls_layers speedup=0.5", lambda: skip.uls_layers(4, 0.5), ValueError, r"speedup.*0\.5"),
    ("skip.shortgpt_order no batches", lambda: skip.shortgpt_order(_fresh_lm(), []), ValueError,
     r"batches.*empty"),
    ("skip.shortgpt_order granularity", lambda: skip.shortgpt_order(_fresh_lm(), [], "head"),
     ValueError, r"granularity.*'head'"),
    # ---------------------------------------------------------------------------------------------- profile
    *([("profile.measure device='cuda' on a CPU-only build",
        lambda: profile.measure(lambda: None, device="cuda"), RuntimeError, r"'cuda'.*not available.*cpu"),
       ("profile.peak_memory device='cuda' on a CPU-only build",
        lambda: profile.peak_memory("cuda").__enter__(), RuntimeError, r"'cuda'.*not available"),
       ("profile.resolve_device('cuda:0') on a CPU-only build",
        lambda: profile.resolve_device("cuda:0"), RuntimeError, r"'cuda:0'.*not available")]
      if _no_cuda() else []),
    ("profile.resolve_device('gpu')", lambda: profile.resolve_device("gpu"), ValueError, r"device 'gpu'.*auto"),
    ("profile.resolve_device('cuda:9')", lambda: profile.resolve_device("cuda:9"), RuntimeError, r"'cuda:9'"),
    ("profile.measure repeat=0", lambda: profile.measure(lambda: None, repeat=0, device="cpu"), ValueError,
     r"repeat.*>= 1.*0"),
    ("profile.measure repeat=2.5", lambda: profile.measure(lambda: None, repeat=2.5, device="cpu"), TypeError,
     r"repeat.*int.*2\.5"),
    ("profile.measure warmup=-1", lambda: profile.measure(lambda: None, warmup=-1, device="cpu"), ValueError,
     r"warmup.*>= 0.*-1"),
    ("profile.measure fn not callable", lambda: profile.measure(3, device="cpu"), TypeError,
     r"fn must be a callable.*int"),
    ("profile.measure_many empty", lambda: profile.measure_many({}, device="cpu"), ValueError, r"fns.*at least one"),
    ("profile.count_flops not callable", lambda: profile.count_flops(None), TypeError, r"fn.*callable.*NoneType"),
    ("profile.flops_by_module not callable", lambda: profile.flops_by_module(1), TypeError, r"fn.*callable"),
    ("profile.seed_everything threads=0", lambda: profile.seed_everything(0, threads=0), ValueError,
     r"threads.*>= 1.*0"),
    ("profile.seed_everything threads=1.5", lambda: profile.seed_everything(0, threads=1.5), TypeError,
     r"threads.*int.*1\.5"),
    ("profile.seed_everything seed=0.5", lambda: profile.seed_everything(0.5), TypeError, r"seed.*int.*0\.5"),
    ("profile.peak_memory interval 0", lambda: profile.peak_memory("cpu", interval_seconds=0).__enter__(),
     ValueError, r"interval_seconds.*> 0.*0"),
    # ------------------------------------------------------------------------- parameters: runner.coerce
    ("runner.coerce -p seq_lens ,", _coerce("seq_lens", ","), runner.ParameterError,
     r"parameter 'seq_lens'.*empty.*','"),
    ("runner.coerce -p seq_lens 16,,32", _coerce("seq_lens", "16,,32"), runner.ParameterError,
     r"parameter 'seq_lens'.*empty.*'16,,32'"),
    ("runner.coerce -p seq_lens ''", _coerce("seq_lens", ""), runner.ParameterError, r"parameter 'seq_lens'.*empty"),
    ("runner.coerce -p seq_lens 16,x", _coerce("seq_lens", "16,x"), runner.ParameterError,
     r"parameter 'seq_lens' expects int, got 'x'"),
    ("runner.coerce -p spread 0.5,1,2 (tuple[float, float])", _coerce("spread", "0.5,1,2", sparse_soups),
     runner.ParameterError, r"parameter 'spread'.*2 values.*3"),
    ("runner.coerce -p hidden_size 1e400", _coerce("hidden_size", "1e400"), runner.ParameterError,
     r"parameter 'hidden_size' expects int"),
    ("runner.coerce -p image_train x (int | None)", _coerce("image_train", "x", cmixup), runner.ParameterError,
     r"parameter 'image_train'.*int.*'x'"),
    # ---------------------------------------------------------------- parameters: experiments.configure types
    ("configure seeds='5' for a count field", _configure(sparse_soups, {"seeds": "5"}), TypeError,
     r"seeds.*int.*'5'"),
    ("configure seeds=(0, 1) for a count field", _configure(sparse_soups, {"seeds": (0, 1)}), TypeError,
     r"seeds.*int.*\(0, 1\)"),
    ("configure seeds=1.5", _configure(sparse_soups, {"seeds": 1.5}), TypeError,
     r"seeds.*int.*1\.5"),
    ("configure hidden_size='64'", _configure(profiling, {"hidden_size": "64"}), TypeError,
     r"hidden_size.*int.*'64'"),
    ("configure hidden_size=64.0", _configure(profiling, {"hidden_size": 64.0}), TypeError, r"hidden_size.*int.*64\.0"),
    ("configure hidden_size=True", _configure(profiling, {"hidden_size": True}), TypeError, r"hidden_size.*int.*True"),
    ("configure lr='1e-3'", _configure(met2net, {"lr": "1e-3"}), TypeError, r"lr.*float.*'1e-3'"),
    ("configure lat_weighted='no'", _configure(met2net, {"lat_weighted": "no"}), TypeError,
     r"lat_weighted.*bool.*'no'"),
    ("configure lat_weighted=1", _configure(met2net, {"lat_weighted": 1}), TypeError, r"lat_weighted.*bool.*1"),
    ("configure spread=(0.5,)", _configure(sparse_soups, {"spread": (0.5,)}), TypeError,
     r"spread.*tuple\[float, float\].*\(0\.5,\)"),
    ("configure max_chunks={'man': '10'}", _configure(dsir, {"max_chunks": {"man": "10"}}), TypeError,
     r"max_chunks.*dict\[Literal\[.*\], int\].*'10'"),
    ("configure datasets='single_index'", _configure(cmixup, {"datasets": "single_index"}), TypeError,
     r"datasets.*list\[Literal\['single_index', .*got 'single_index'"),
    ("configure image_train='all'", _configure(cmixup, {"image_train": "all"}), TypeError,
     r"image_train.*int \| None.*'all'"),
    ("configure device=0", _configure(profiling, {"device": 0}), TypeError, r"device.*str.*0"),
    # ---------------------------------------------------------------- parameters: experiments.configure values
    ("profiling hidden_size=0", _configure(profiling, {"hidden_size": 0}), ValueError, r"hidden_size.*>= 1, got 0"),
    ("profiling hidden_size % n_heads", _configure(profiling, {"hidden_size": 66, "n_heads": 4}), ValueError,
     r"hidden_size.*divisible by n_heads"),
    ("profiling seq_lens=()", _configure(profiling, {"seq_lens": ()}), ValueError, r"seq_lens.*empty"),
    ("profiling seq_lens=(16, 0)", _configure(profiling, {"seq_lens": (16, 0)}), ValueError, r"seq_lens.*>= 1, got 0"),
    ("profiling repeat=0", _configure(profiling, {"repeat": 0}), ValueError, r"repeat.*>= 1, got 0"),
    ("profiling warmup=-1", _configure(profiling, {"warmup": -1}), ValueError, r"warmup.*>= 0.*-1"),
    ("profiling threads=0", _configure(profiling, {"threads": 0}), ValueError, r"threads.*>= 1, got 0"),
    ("profiling device='gpu'", _configure(profiling, {"device": "gpu"}), ValueError, r"device.*'gpu'"),
    ("cmixup seeds=0", _configure(cmixup, {"seeds": 0}), ValueError, r"seeds.*>= 1.*0"),
    ("cmixup sigmas=[]", _configure(cmixup, {"sigmas": []}), ValueError, r"sigmas.*empty"),
    ("cmixup sigmas=[0.3, -1]", _configure(cmixup, {"sigmas": [0.3, -1.0]}), ValueError, r"sigmas.*> 0.*-1"),
    ("cmixup arms=['cutmix']", _configure(cmixup, {"arms": ["cutmix"]}), TypeError, r"arms.*'cutmix'"),
    ("cmixup arms=[]", _configure(cmixup, {"arms": []}), ValueError, r"arms.*empty"),
    ("cmixup alpha=0", _configure(cmixup, {"alpha": 0.0}), ValueError, r"alpha.*> 0.*0"),
    ("cmixup lr=nan", _configure(cmixup, {"lr": math.nan}), ValueError, r"lr.*nan"),
    ("cmixup lam_per='token'", _configure(cmixup, {"lam_per": "token"}), TypeError, r"lam_per.*'token'"),
    ("cmixup image_train=0", _configure(cmixup, {"image_train": 0}), ValueError, r"image_train.*>= 1.*0"),
    ("cmixup angle_range=400", _configure(cmixup, {"angle_range": 400.0}), ValueError, r"angle_range.*400"),
    ("cmixup alphas=[]", _configure(cmixup, {"alphas": []}), ValueError, r"alphas.*empty"),
    ("cmixup sigmas=[0.3, 0.3]", _configure(cmixup, {"sigmas": [0.3, 0.3]}), ValueError, r"sigmas.*repeats.*0.3"),
    ("cmixup patience=0", _configure(cmixup, {"patience": 0}), ValueError, r"patience.*>= 1.*0"),
    ("cmixup min_improvement=1", _configure(cmixup, {"min_improvement": 1.0}), ValueError, r"min_improvement.*1"),
    ("cmixup image_exclude_digits=[-1]", _configure(cmixup, {"image_exclude_digits": [-1]}), ValueError,
     r"image_exclude_digits.*>= 0"),
    ("cmixup image_minority='flipped'", _configure(cmixup, {"image_minority": "flipped"}), TypeError,
     r"image_minority.*'flipped'"),
    ("met2net seeds=0", _configure(met2net, {"seeds": 0}), ValueError, r"seeds.*>= 1.*0"),
    ("met2net momentum=1.5", _configure(met2net, {"momentum": 1.5}), ValueError, r"momentum.*\[0, 1\].*1\.5"),
    ("met2net explicit_ae_epochs=0", _configure(met2net, {"explicit_ae_epochs": 0}), ValueError,
     r"explicit_ae_epochs.*>= 1.*0"),
    ("met2net variables=('u', 'snow')", _configure(met2net, {"variables": ("u", "snow")}), TypeError,
     r"variables.*'snow'"),
    ("met2net translator='unet'", _configure(met2net, {"translator": "unet"}), TypeError, r"translator.*'unet'"),
    ("met2net momentums=(0.9, 2.0)", _configure(met2net, {"momentums": (0.9, 2.0)}), ValueError,
     r"momentums.*\[0, 1\].*2\.0"),
    ("met2net arms=('persistence', 'unet')", _configure(met2net, {"arms": ("persistence", "unet")}), TypeError,
     r"arms.*'unet'"),
    ("met2net d_model % heads", _configure(met2net, {"d_model": 10, "heads": 4}), ValueError,
     r"d_model.*divisible by heads"),
    ("met2net hid_s odd", _configure(met2net, {"hid_s": 5}), ValueError, r"hid_s.*even.*5"),
    ("met2net long_seeds=0", _configure(met2net, {"long_seeds": 0}), ValueError, r"long_seeds.*>= 1.*0"),
    ("met2net long_seeds > seeds", _configure(met2net, {"long_seeds": 4, "seeds": 3}), ValueError,
     r"long_seeds.*<= seeds \(3\).*4"),
    ("met2net max_steps=0", _configure(met2net, {"max_steps": 0}), ValueError, r"max_steps.*>= 1.*0"),
    ("met2net frames too short", _configure(met2net, {"frames": 5}), ValueError, r"frames.*t_in \+ t_out"),
    ("sparse_soups goal_sparsity=1", _configure(sparse_soups, {"goal_sparsity": 1.0}), ValueError,
     r"goal_sparsity.*\(0, 1\).*1"),
    ("sparse_soups seeds=0", _configure(sparse_soups, {"seeds": 0}), ValueError, r"seeds.*>= 1.*0"),
    ("sparse_soups m=0", _configure(sparse_soups, {"m": 0}), ValueError, r"'m' must be >= 1.*0"),
    ("sparse_soups vary='batch'", _configure(sparse_soups, {"vary": "batch"}), TypeError, r"vary.*'batch'"),
    ("sparse_soups vary=('seed', 'colour')", _configure(sparse_soups, {"vary": ("seed", "colour")}), TypeError,
     r"parameter 'vary' expects tuple\[Literal\['seed', 'lr', 'wd', 'augment'\], \.\.\.\].*'colour' is not"),
    ("sparse_soups vary=('lr', 'lr')", _configure(sparse_soups, {"vary": ("lr", "lr")}), ValueError,
     r"'vary' repeats \['lr'\]; expected distinct"),
    ("sparse_soups vary augment without augmentation", _configure(sparse_soups, {"vary": ("augment",)}), ValueError,
     r"'vary' includes 'augment'.*expected augment > 0.*got augment=0\.0"),
    ("sparse_soups ood with an unknown corruption", _configure(sparse_soups, {"ood": ("rotate:35", "sharpen:2")}),
     ValueError, r"parameter 'ood': unknown corruption 'sharpen'.*expected one of \['blur', 'contrast'"),
    ("sparse_soups spread reversed", _configure(sparse_soups, {"spread": (1.5, 0.5)}), ValueError,
     r"spread.*\(1\.5, 0\.5\)"),
    ("sparse_soups bn_frac=0", _configure(sparse_soups, {"bn_frac": 0.0}), ValueError, r"bn_frac.*\(0, 1\]"),
    ("sparse_soups n_train=-1", _configure(sparse_soups, {"n_train": -1}), ValueError, r"n_train.*>= 0.*-1"),
    ("sparse_soups data='cifar'", _configure(sparse_soups, {"data": "cifar"}), TypeError, r"data.*'cifar'"),
    ("sparse_soups workers=0", _configure(sparse_soups, {"workers": 0}), ValueError, r"workers.*>= 1.*0"),
    ("sparse_soups val_points=1", _configure(sparse_soups, {"val_points": 1}), ValueError,
     r"val_points.*>= 2.*1"),
    ("sparse_soups budget_factor=1.5", _configure(sparse_soups, {"budget_factor": 1.5}), ValueError,
     r"budget_factor.*>= 2.*1\.5"),
    ("dsir budget_k=0", _configure(dsir, {"budget_k": 0}), ValueError, r"budget_k.*>= 1.*0"),
    ("dsir seeds=0", _configure(dsir, {"seeds": 0}), ValueError, r"seeds.*>= 1.*0"),
    ("dsir seeds=[0, 1]", _configure(dsir, {"seeds": [0, 1]}), TypeError, r"seeds.*int.*\[0, 1\]"),
    ("dsir temperature=0", _configure(dsir, {"temperature": 0.0}), ValueError, r"temperature.*> 0.*0"),
    ("dsir max_chunks={'man': 0}", _configure(dsir, {"max_chunks": {"man": 0}}), ValueError,
     r"max_chunks.*>= 1.*0.*'man': 0"),
    ("dsir discount=1", _configure(dsir, {"discount": 1.0}), ValueError, r"discount.*\[0, 1\).*1"),
    ("dsir sources=['wiki']", _configure(dsir, {"sources": ["wiki"]}), TypeError, r"sources.*'wiki'"),
    ("dsir lm_hidden % lm_heads", _configure(dsir, {"lm_hidden": 30, "lm_heads": 4}), ValueError,
     r"lm_hidden.*divisible by lm_heads"),
    ("dsir target_pseudocounts=[]", _configure(dsir, {"target_pseudocounts": []}), ValueError,
     r"target_pseudocounts.*empty"),
    ("dsir target_pseudocounts=[-1]", _configure(dsir, {"target_pseudocounts": [-1.0]}), ValueError,
     r"target_pseudocounts.*> 0.*-1"),
    ("dsir target_pseudocounts=[0]: the smoothed variant must smooth", _configure(dsir, {"target_pseudocounts": [0.0]}),
     ValueError, r"target_pseudocounts.*> 0.*0"),
    ("dsir tuned grids of unequal size", _configure(dsir, {"heuristic_grid": [[9.0, 1.0, 5.0]]}), ValueError,
     r"grids differ in size.*heuristic_grid: 1.*expected grids of equal size"),
    ("dsir target_pseudocount=-1", _configure(dsir, {"target_pseudocount": -1.0}), ValueError,
     r"target_pseudocount.*>= 0.*-1"),
    ("dsir tiny_lm_methods=['nope']", _configure(dsir, {"tiny_lm_methods": ["nope"]}), TypeError,
     r"tiny_lm_methods.*'nope'"),
    ("dsir tiny_lm_seeds=0", _configure(dsir, {"tiny_lm_seeds": 0}), ValueError, r"tiny_lm_seeds.*>= 1.*0"),
    ("dsir lm_steps=0", _configure(dsir, {"lm_steps": 0}), ValueError, r"lm_steps.*>= 1.*0"),
    ("dsir heuristic_grid c=0", _configure(dsir, {"heuristic_grid": [[9.0, 0.0, 5.0]]}), ValueError,
     r"heuristic_grid' knob 'c' must be > 0, got 0"),
    ("dsir heuristic_grid missing a knob", _configure(dsir, {"heuristic_grid": [[9.0, 1.0]]}), TypeError,
     r"heuristic_grid.*tuple\[float, float, float\].*\[9\.0, 1\.0\]"),
    ("dsir heuristic_grid repeat", _configure(dsir, {"heuristic_grid": [[9, 1, 5], [9, 1, 5]]}), ValueError,
     r"heuristic_grid.*repeat"),
    ("dsir tfidf_weightings=['sublinear']", _configure(dsir, {"tfidf_weightings": ["sublinear"]}), TypeError,
     r"tfidf_weightings.*'sublinear'"),
    ("dsir target_likelihood_pseudocounts=[-1]", _configure(dsir, {"target_likelihood_pseudocounts": [-1.0]}),
     ValueError, r"target_likelihood_pseudocounts.*>= 0.*-1"),
    ("select.heuristic_select c=0", lambda: select.heuristic_select(DOCS, TARGET, 2, c=0.0, num_buckets=64),
     ValueError, r"c must be > 0.*0"),
    ("select.tfidf_select tf='sublinear'", lambda: select.tfidf_select(DOCS, TARGET, 2, tf="sublinear", num_buckets=64),
     ValueError, r"tf must be one of.*'sublinear'"),
    ("dsir target_pseudocounts repeat", _configure(dsir, {"target_pseudocounts": [1.0, 1.0]}), ValueError,
     r"target_pseudocounts.*repeat"),
    ("dsir n_val=-1", _configure(dsir, {"n_val": -1}), ValueError, r"n_val.*>= 0.*-1"),
    ("dsir workers=0", _configure(dsir, {"workers": 0}), ValueError, r"workers.*>= 1.*0"),
    ("gateskip seeds=0", _configure(gateskip, {"seeds": 0}), ValueError, r"seeds.*>= 1.*0"),
    ("gateskip budgets=(0.5, 1.0)", _configure(gateskip, {"budgets": (0.5, 1.0)}), ValueError,
     r"budgets.*\[0, 1\).*1\.0"),
    ("gateskip penalty='l3'", _configure(gateskip, {"penalty": "l3"}), TypeError, r"penalty.*l2.*'l3'"),
    ("gateskip gate_kind='matrix'", _configure(gateskip, {"gate_kind": "matrix"}), TypeError, r"gate_kind.*'matrix'"),
    ("gateskip arch='bert'", _configure(gateskip, {"arch": "bert"}), TypeError, r"arch.*'bert'"),
    ("gateskip scope='token'", _configure(gateskip, {"scope": "token"}), TypeError, r"scope.*'token'"),
    ("gateskip sparsity_weights=()", _configure(gateskip, {"sparsity_weights": ()}), ValueError,
     r"sparsity_weights.*empty"),
    ("gateskip sparsity_weights=(-1.0,)", _configure(gateskip, {"sparsity_weights": (-1.0,)}), ValueError,
     r"sparsity_weights.*>= 0.*-1"),
    ("gateskip train_skip_end=1", _configure(gateskip, {"train_skip_end": 1.0}), ValueError,
     r"train_skip_end.*\[0, 1\).*1"),
    ("gateskip d_model % n_heads", _configure(gateskip, {"d_model": 30, "n_heads": 4}), ValueError,
     r"d_model.*divisible by n_heads"),
    ("gateskip workers=0", _configure(gateskip, {"workers": 0}), ValueError, r"workers.*>= 1.*0"),
    ("gateskip Config(seeds=0) directly", lambda: gateskip.Config(seeds=0), ValueError, r"seeds.*>= 1.*0"),
    ("gateskip dataclasses.replace(eval_batch=0)",
     lambda: dataclasses.replace(gateskip.Config(), eval_batch=0), ValueError, r"eval_batch.*>= 1.*0"),
]


def _param(case):
    return pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize("call,exception,match", [_param(c) for c in CASES])
def test_bad_input_raises_naming_the_offending_thing(call, exception, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(exception, match=match):
        call()


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_preset_of_every_experiment_configures(name):
    module = EXPERIMENTS[name]
    for preset in module.PRESETS:
        cfg = module.configure(preset)
        assert dataclasses.replace(cfg) == cfg  # __post_init__ accepts its own values again
    for preset, named in getattr(module, "REPORT_VARIANTS", {}).items():
        for params in named.values():
            module.configure(preset, params)


def test_configure_accepts_json_shaped_overrides():
    """A notebook gets overrides through papermill as JSON: lists for tuples, ints for floats."""
    assert sparse_soups.configure("smoke", {"seeds": 2, "spread": [1, 2]}).seeds == 2
    assert sparse_soups.configure("smoke", {"spread": [1, 2]}).spread == (1, 2)
    assert met2net.configure("smoke", {"lr": 1}).lr == 1
    assert cmixup.configure("smoke", {"datasets": ("single_index",)}).datasets == ["single_index"]
    assert cmixup.configure("smoke", {"image_train": None}).image_train is None


def test_bandwidth_sweep_skips_nan_losses_with_a_warning():
    losses = {0.1: math.nan, 0.3: 2.0, 1.0: 1.0}
    with pytest.warns(RuntimeWarning, match=r"non-finite.*0\.1"):
        best, seen = mixup.bandwidth_sweep(losses.__getitem__, list(losses))
    assert best == 1.0 and math.isnan(seen[0.1])
