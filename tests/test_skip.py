import inspect

import pytest
import torch
import transformers

from labkit import gate, skip
from labkit.models.decoder_lm import build_causal_lm
from labkit.skip import kv_cache, policy

ARCHS = ["llama", "qwen2", "gpt2"]
EOS, PAD = 13, 14


def gated(arch="llama", kind="vector", seed=0):
    """A tiny gated model whose gates are randomised so that importances differ between tokens."""
    torch.set_num_threads(1)
    model = build_causal_lm(
        arch,
        vocab_size=16,
        hidden_size=32,
        n_layers=2,
        n_heads=2,
        seed=seed,
        eos_token_id=EOS,
        pad_token_id=PAD,
        n_kv_heads=1 if arch == "qwen2" else None,
    ).eval()
    gate.add_gates(model, kind=kind)
    if kind != "none":
        with torch.no_grad():
            for b in gate.gated_branches(model):
                b.residual_gate.linear.weight.normal_(0.0, 1.0)
                b.residual_gate.linear.bias.zero_()
    return model


def tokens(b=3, t=9, seed=0):
    return torch.randint(0, 13, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_compact_equals_masked(arch, scope):
    model = gated(arch)
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :2] = 0  # left padding in one row
    with skip.budget(model, 0.4, scope=scope, measure_flops=True) as masked_stats:
        masked = model(x, attention_mask=mask).logits
    with skip.budget(model, 0.4, scope=scope, execution="compact") as compact_stats:
        compact = model(x, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(compact[real], masked[real], atol=1e-5, rtol=1e-5)
    assert compact_stats.skipped_fraction == masked_stats.skipped_fraction > 0.3
    assert masked_stats.flops == masked_stats.dense_flops  # masked computes everything
    assert compact_stats.flops < 0.9 * compact_stats.dense_flops


def test_ratio_zero_is_identity_and_skipped_tokens_pass_residual():
    model = gated()
    x = tokens()
    plain = model(x).logits
    with skip.budget(model, 0.0, measure_flops=False) as stats:
        torch.testing.assert_close(model(x).logits, plain, atol=0.0, rtol=0.0)
    assert stats.skipped_fraction == 0.0
    # A zero budget decides nothing (issue #26's r = 0 path) yet still counts every branch and replays its FLOPs.
    with skip.budget(model, 0.0, execution="compact") as stats:
        model(x)
    assert set(stats.per_module) == {b.name for b in gate.gated_branches(model)}
    assert set(stats.per_module.values()) == {0.0} and stats.flops == stats.dense_flops > 0
    # A branch output is zero exactly where its token was skipped.
    outputs = {}
    hooks = [
        b.register_forward_hook(lambda m, a, o, n=b.name: outputs.__setitem__(n, o[0] if isinstance(o, tuple) else o))
        for b in gate.gated_branches(model)
    ]
    with skip.budget(model, 0.5, record=True, measure_flops=False) as stats:
        model(x)
    for h in hooks:
        h.remove()
    for name, rec in stats.records.items():
        skipped = ~rec["keep"]
        assert skipped.any()
        assert outputs[name][skipped].abs().max() == 0
        assert outputs[name][~skipped].abs().min() > 0
        # the skipped tokens are the least important ones
        assert rec["importance"][skipped].max() <= rec["importance"][~skipped].min()


def test_batch_scope_hits_ratio_and_sequence_scope_per_row():
    model = gated()
    x = tokens(4, 10)
    with skip.budget(model, 0.3, record=True, measure_flops=False) as stats:
        model(x)
    assert stats.skipped_fraction == pytest.approx(12 / 40)
    with skip.budget(model, 0.3, scope="sequence", record=True, measure_flops=False) as stats:
        model(x)
    for rec in stats.records.values():
        assert ((~rec["keep"]).sum(1) == 3).all()


def test_pad_and_eos_never_skipped():
    model = gated()
    x = tokens(2, 8)
    x[:, -1] = EOS
    x[1, :3] = PAD
    mask = (x != PAD).long()
    with skip.budget(model, 0.9, record=True, measure_flops=False) as stats:
        model(x, attention_mask=mask)
    for rec in stats.records.values():
        assert rec["keep"][:, -1].all() and rec["keep"][1, :3].all()


def test_protect_keeps_the_first_real_tokens_counting_past_ones():
    model = gated()
    x = tokens(2, 8)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding: row 1's first real token is at position 3
    with skip.budget(model, 0.9, record=True, measure_flops=False, protect=2) as stats:
        model(x, attention_mask=mask)
    for rec in stats.records.values():
        assert rec["keep"][0, :2].all() and rec["keep"][1, 3:5].all()
        assert not rec["keep"][0, 2:].all()
    assert stats.skipped_fraction == pytest.approx(9 / 13)  # floor(0.9 x 13 real) = 11, capped by the 9 eligible
    with torch.no_grad():  # a cached continuation: its tokens sit at positions 1-4, so protect=2 keeps only the first
        past = kv_cache.output_cache(model(x[:1, :1], use_cache=True))
        with skip.budget(model, 0.75, record=True, measure_flops=False, protect=2) as stats:
            model(x[:1, 1:5], cache=past, use_cache=True)
    assert all(rec["keep"][0].tolist() == [True, False, False, False] for rec in stats.records.values())


def test_protect_in_left_padded_generation_and_its_refusals():
    model = gated()
    prompt = tokens(2, 6)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    prompt[1, :2] = PAD
    firsts = []
    hook = model.register_forward_pre_hook(
        lambda m, a, k: firsts.append(k["attention_mask"].shape[1]), with_kwargs=True)
    with skip.budget(model, 0.5, scope="batch", record=True, measure_flops=False, protect=5) as stats:
        model.generate(prompt, attention_mask=mask, max_new_tokens=2, do_sample=False)
    hook.remove()
    assert firsts[:2] == [6, 7]  # the 2-D mask grows with the cache: positions count past tokens
    # the last step's tokens: row 0 at position 7, row 1 at position 5 (two pads before): neither protected by 5
    assert all(not rec["keep"].all() for rec in stats.records.values())
    with pytest.raises(ValueError, match="protect=1 needs a 2-D attention mask over the 0 cached and 6 new"):
        with skip.budget(model, 0.5, measure_flops=False, protect=1):
            model(prompt, attention_mask=mask[:, None, None, :].float())
    with pytest.raises(ValueError, match="protect=1 needs the forward's input_ids"):
        with skip.budget(model, 0.5, measure_flops=False, protect=1):
            model(inputs_embeds=model.get_input_embeddings()(prompt))
    with pytest.raises(ValueError, match="protect"):
        with skip.budget(model, 0.5, protect=-1):
            pass


def test_copy_source_refuses_a_cache_without_the_layer():
    model = gated()
    cache = kv_cache.output_cache(model(tokens(1, 3), use_cache=True))

    class NoLayers:
        pass

    with pytest.raises(kv_cache.CacheLayoutError, match="expected a KV cache with a layer 5, found 2 layers"):
        kv_cache.copy_source(cache, 5, model)
    with pytest.raises(kv_cache.CacheLayoutError, match="without `.layers`"):
        kv_cache.copy_source(NoLayers(), 1, model)


def test_single_sequence_decoding_batch_scope_skips_nothing_sequence_scope_uses_thresholds():
    model = gated()
    prompt = tokens(1, 5)
    with skip.budget(model, 0.4, measure_flops=False) as stats:
        model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert stats.per_module["1.mlp"] == pytest.approx(2 / 8)  # prefill only: floor(0.4 * 5) = 2 of 5 + 3 decoded tokens
    with pytest.raises(ValueError, match="needs a threshold"):
        with skip.budget(model, 0.4, scope="sequence", measure_flops=False):
            model.generate(prompt, max_new_tokens=2, do_sample=False)
    thresholds = skip.calibrate_thresholds(model, [tokens(8, 9, seed=1)], 0.4)
    assert set(thresholds) == {"0.attn", "0.mlp", "1.attn", "1.mlp"}
    with skip.budget(model, 0.4, scope="sequence", thresholds=thresholds, measure_flops=False) as stats:
        model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert 0.0 < stats.skipped_fraction < 1.0


def test_random_ranking_decodes_one_token_steps_without_thresholds():
    model = gated(kind="none")
    prompt = tokens(64, 2)
    with skip.budget(model, 0.5, scope="sequence", ranking="random", measure_flops=False) as stats:
        model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert 0.3 < stats.skipped_fraction < 0.7  # each one-token step skips with probability r (no calibration)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_copy_forward_kv_and_compact_agree(arch):
    model = gated(arch)
    prompt = tokens(3, 4)
    with skip.budget(model, 0.4, record=True, measure_flops=False):
        out = model(prompt, use_cache=True)
    cache = kv_cache.output_cache(out)
    # replay the same decisions to find a token skipped at layer 1 attention
    with skip.budget(model, 0.4, record=True, measure_flops=False) as stats:
        model(prompt)
    skipped = ~stats.records["1.attn"]["keep"]
    assert skipped.any()
    b, t = skipped.nonzero()[0].tolist()
    torch.testing.assert_close(cache.layers[1].keys[b, :, t], cache.layers[0].keys[b, :, t], atol=0.0, rtol=0.0)
    kept = (~skipped).nonzero()[0].tolist()
    assert not torch.equal(cache.layers[1].keys[kept[0], :, kept[1]], cache.layers[0].keys[kept[0], :, kept[1]])
    with skip.budget(model, 0.4, measure_flops=False):
        masked = model.generate(prompt, max_new_tokens=5, do_sample=False)
    with skip.budget(model, 0.4, execution="compact", measure_flops=False):
        compact = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(masked, compact)


def test_random_ranking_on_ungated_wrappers_and_accounting():
    model = gated(kind="none")
    x = tokens(4, 10)
    with skip.budget(model, 0.5, ranking="random", seed=1, execution="compact") as stats:
        model(x)
    assert stats.skipped_fraction == pytest.approx(0.5)
    assert stats.flops_saved > 0.2 and stats.seconds > 0 and stats.calls == 1
    with pytest.raises(ValueError, match="ranking='gate' needs gates"):
        with skip.budget(model, 0.5):
            pass


def test_static_skip_shortgpt_and_uls():
    model = build_causal_lm("llama", 16, 32, 2, 2, seed=0).eval()
    x = tokens()
    dense = model(x).logits
    order = skip.shortgpt_order(model, [x])
    assert sorted(order) == ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    assert sorted(skip.shortgpt_order(model, [x], granularity="layer")) == [0, 1]
    with skip.static_skip(model, [order[0]], execution="compact") as stats:
        dropped = model(x).logits
    assert stats.skipped_fraction == 0.25 and stats.flops < stats.dense_flops
    assert not torch.allclose(dropped, dense)
    assert not gate.gated_branches(model)  # temporary wrappers removed
    torch.testing.assert_close(model(x).logits, dense, atol=0.0, rtol=0.0)
    for arch in ARCHS:  # whole layers skipped: compact attention with no kept query equals masked
        model = gated(arch, kind="none")
        with skip.static_skip(model, [0], measure_flops=False):
            masked = model(x).logits
        with skip.static_skip(model, [0], execution="compact", measure_flops=False):
            compact = model(x).logits
        torch.testing.assert_close(compact, masked, atol=1e-5, rtol=1e-5)
    assert skip.uls_layers(8, 2.0) == [2, 3, 4, 5]
    assert skip.uls_layers(8, 1.0) == []
    assert skip.uls_layers(4, 10.0) == [1, 2]


def test_bad_inputs():
    model = gated()
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"skip_fraction must be in \[0, 1\)"):
            with skip.budget(model, fraction):
                pass
    with pytest.raises(ValueError, match="scope must be one of"):
        with skip.budget(model, 0.1, scope="token"):
            pass
    with pytest.raises(ValueError, match="execution must be one of"):
        with skip.budget(model, 0.1, execution="sparse"):
            pass
    plain = build_causal_lm("llama", 16, 32, 2, 2, seed=0)
    with pytest.raises(ValueError, match="has no gated branches"):
        with skip.budget(plain, 0.1):
            pass
    with pytest.raises(ValueError, match="layer index 5 out of range"):
        with skip.static_skip(plain, [5]):
            pass
    with pytest.raises(ValueError, match="speedup"):
        skip.uls_layers(8, 0.5)


@pytest.mark.parametrize("name", kv_cache.CACHE_KWARGS)
def test_copy_forward_reads_the_cache_under_either_kwarg_name(name):
    """transformers 5.24 passes `cache=`, 5.17 `past_key_values=`: both reach the copy-forward."""
    model = gated("llama")
    if name == "cache" and "cache" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"transformers {transformers.__version__} takes the cache only as past_key_values=")
    prompt = tokens(3, 4)
    cache = transformers.DynamicCache(config=model.config)
    with skip.budget(model, 0.4, record=True, measure_flops=False) as stats:
        model(prompt, use_cache=True, **{name: cache})
    skipped = ~stats.records["1.attn"]["keep"]
    b, t = skipped.nonzero()[0].tolist()
    torch.testing.assert_close(cache.layers[1].keys[b, :, t], cache.layers[0].keys[b, :, t], atol=0.0, rtol=0.0)


def test_a_cache_that_never_reaches_the_attention_is_an_error(monkeypatch):
    """If a release renames the kwarg again, copy-forward must fail loudly, naming the model and the version."""
    model = gated("llama")
    monkeypatch.setattr(kv_cache, "CACHE_KWARGS", ("some_future_name",))
    monkeypatch.setattr(policy, "find_cache", lambda kwargs: (None, None))
    with pytest.raises(kv_cache.CacheLayoutError, match=r"LlamaForCausalLM \(transformers [0-9.]+.*use_cache=True"):
        with skip.budget(model, 0.4, measure_flops=False):
            model(tokens(2, 4), use_cache=True)
    with skip.budget(model, 0.4, measure_flops=False):  # no cache asked for: nothing to copy, no error
        model(tokens(2, 4), use_cache=False)


def test_copy_forward_on_a_cache_without_keys_is_an_error():
    cache = transformers.DynamicCache()
    with pytest.raises(kv_cache.CacheLayoutError, match="MyModel .*layer 1"):
        skip.copy_forward_kv(cache, 1, torch.ones(1, 2, dtype=torch.bool), model="MyModel")
    model = gated("llama")
    with torch.no_grad():
        out = model(tokens(2, 4), use_cache=True)
    with pytest.raises(kv_cache.CacheLayoutError, match="newest 9 tokens"):
        skip.copy_forward_kv(kv_cache.output_cache(out), 1, torch.ones(2, 9, dtype=torch.bool), model=model)


def test_compact_decoding_at_batch_1_equals_masked_when_a_step_skips_everything():
    """A one-token decode step whose token skips attention at a layer copies all K/V forward: nothing to project."""
    model = gate.add_gates(build_causal_lm("llama", 100, 32, 3, 4, seed=0).eval())
    with torch.no_grad():
        for branch in gate.gated_branches(model):
            branch.residual_gate.linear.weight.normal_(0, 0.05)
    thresholds = skip.calibrate_thresholds(model, [torch.randint(0, 100, (4, 12))], 0.5)
    prompt = torch.randint(0, 100, (1, 6))
    out = {}
    for execution in ("masked", "compact"):
        with skip.budget(model, 0.5, "sequence", execution, thresholds=thresholds, measure_flops=False):
            out[execution] = model.generate(prompt, max_new_tokens=8, do_sample=False, output_scores=True,
                                            return_dict_in_generate=True)
    assert torch.equal(out["masked"].sequences, out["compact"].sequences)
    for a, b in zip(out["masked"].scores, out["compact"].scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _branch_calls(model):
    """Counts of forwards of each gated branch's inner module (its weights read), by branch name."""
    calls = {}
    for branch in gate.gated_branches(model):
        calls[branch.name] = 0
        branch.branch.register_forward_hook(lambda m, a, o, n=branch.name: calls.__setitem__(n, calls[n] + 1))
        for child in branch.branch.modules():
            if isinstance(child, torch.nn.Linear):
                child.register_forward_hook(lambda m, a, o, n=branch.name: calls.__setitem__(n, calls[n] + 1))
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_step_scope_skips_a_branch_for_every_row_of_a_decoding_step_and_compact_equals_masked(arch):
    model = gated(arch)
    prompt = tokens(4, 5)
    thresholds = skip.calibrate_thresholds(model, [tokens(4, 9, seed=1), tokens(4, 9, seed=2)], 0.5, scope="step")
    out = {}
    for execution in ("masked", "compact"):
        with skip.budget(model, 0.5, "step", execution, thresholds=thresholds, measure_flops=False) as stats:
            out[execution] = model.generate(prompt, max_new_tokens=6, do_sample=False, output_scores=True,
                                            return_dict_in_generate=True)
        assert 0.0 < stats.skipped_fraction < 1.0
    assert torch.equal(out["masked"].sequences, out["compact"].sequences)
    for a, b in zip(out["masked"].scores, out["compact"].scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    decisions = []
    with torch.no_grad():
        step = model(prompt, use_cache=True)
        cache = kv_cache.output_cache(step)
        for i in range(6):  # one context per step, to read each step's decisions; varied tokens fed
            with skip.budget(model, 0.5, "step", thresholds=thresholds, record=True, measure_flops=False) as stats:
                model(tokens(4, 1, seed=10 + i), cache=cache, use_cache=True)
            decisions += [rec["keep"] for rec in stats.records.values()]
    assert all(keep.shape == (4, 1) and (keep.all() or not keep.any()) for keep in decisions)
    assert any(not keep.any() for keep in decisions) and any(keep.all() for keep in decisions)


def test_a_skipped_decoding_step_reads_no_branch_weights_and_copies_one_position_forward():
    model = gated("llama", kind="scalar")
    thresholds = skip.calibrate_thresholds(model, [tokens(2, 9, seed=1)], 0.5, scope="step")
    prompt = tokens(2, 5)
    with torch.no_grad():
        cache = kv_cache.output_cache(model(prompt, use_cache=True))
        for branch in gate.gated_branches(model):  # the one-time check a compact budget makes, not this step's reads
            skip.verify_compact(branch)
        calls = _branch_calls(model)
        with skip.budget(model, 0.5, "step", "compact", thresholds=thresholds, record=True,
                         measure_flops=False) as stats:
            model(tokens(2, 1, seed=3), cache=cache, use_cache=True)
    for name, rec in stats.records.items():
        assert (calls[name] == 0) == (not rec["keep"].any()), name  # skipped: nothing ran; kept: the branch ran
        if name.endswith("attn") and not rec["keep"].any() and name != "0.attn":
            layer = int(name.split(".")[0])
            torch.testing.assert_close(cache.layers[layer].keys[:, :, -1], cache.layers[layer - 1].keys[:, :, -1],
                                       atol=0.0, rtol=0.0)
            assert cache.layers[layer].keys.shape[2] == 6


def test_step_thresholds_at_batch_1_are_the_sequence_thresholds_and_bad_scopes_fail():
    model = gated()
    batch = [tokens(1, 12, seed=4)]
    assert skip.calibrate_thresholds(model, batch, 0.3, "step") == skip.calibrate_thresholds(model, batch, 0.3)
    with pytest.raises(ValueError, match="calibrated for scope 'sequence' or 'step'.*'batch'"):
        skip.calibrate_thresholds(model, batch, 0.3, "batch")
    with pytest.raises(ValueError, match="scope='step' on a one-token decoding step needs a threshold"):
        with skip.budget(model, 0.3, "step", measure_flops=False):
            model.generate(tokens(2, 3), max_new_tokens=2, do_sample=False)


def test_flops_of_a_decoding_step_replay_its_own_decisions():
    """The FLOP replay re-runs each forward with its recorded masks; a one-token step's whole-step decision must not
    leak into the replay of the next branch (the replay counts what the step executed)."""
    import copy

    from labkit.profile import count_flops

    model = gated("llama", kind="scalar")
    thresholds = skip.calibrate_thresholds(model, [tokens(2, 9, seed=1)], 0.5, scope="step")
    with torch.no_grad():
        cache = kv_cache.output_cache(model(tokens(2, 5), use_cache=True))
        token = tokens(2, 1, seed=3)

        def step(measure: bool) -> skip.SkipStats:
            with skip.budget(model, 0.5, "step", "compact", thresholds=thresholds, measure_flops=measure) as stats:
                model(token, cache=copy.deepcopy(cache), use_cache=True)
            return stats

        measured = step(True)
        executed = count_flops(lambda: step(False))
    assert 0 < measured.flops == executed < measured.dense_flops


class _GatedOutput(torch.nn.Module):
    """An attention wrapper that gates its output (as AFMoE / Laguna do); labkit's adapter reads its projections."""

    def __init__(self, attn: torch.nn.Module) -> None:
        super().__init__()
        self.inner = attn
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.config, self.layer_idx, self.head_dim = attn.config, attn.layer_idx, attn.head_dim
        self.scaling, self.attention_dropout = attn.scaling, attn.attention_dropout
        self.is_causal = True

    def forward(self, *args, **kwargs):
        out, weights = self.inner(*args, **kwargs)
        return torch.sigmoid(out) * out, weights


def test_compact_refuses_clearly_where_it_would_not_reproduce_the_family_and_masked_still_works():
    model = build_causal_lm("llama", vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=0,
                            eos_token_id=EOS, pad_token_id=PAD).eval()
    for layer in model.model.layers:
        layer.self_attn = _GatedOutput(layer.self_attn)
    gate.add_gates(model)
    x = tokens()
    with pytest.raises(ValueError, match=r"compact execution does not reproduce _GatedOutput \(branch 0.attn\)"):
        with skip.budget(model, 0.4, execution="compact", measure_flops=False):
            model(x)
    with pytest.raises(ValueError, match="does not reproduce"):  # refused again, not silently run
        with skip.budget(model, 0.4, execution="compact", measure_flops=False):
            model(x)
    with skip.budget(model, 0.4, measure_flops=False):  # masked execution runs the module itself
        model(x)
    plain = gated("llama")
    with torch.no_grad():  # fine-tuned after add_gates recorded its probe: checked against today's weights
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with skip.budget(plain, 0.4, measure_flops=False):
        masked = plain(x).logits
    with skip.budget(plain, 0.4, execution="compact", measure_flops=False):
        torch.testing.assert_close(plain(x).logits, masked, atol=1e-5, rtol=1e-5)
    assert all(b.compact_checked and b.compact_error is None and b.probe is None for b in gate.gated_branches(plain))


def test_the_old_name_ratio_still_works_for_one_release_with_a_warning():
    model = gated()
    with pytest.warns(DeprecationWarning, match="'ratio' is renamed 'skip_fraction'"):
        with skip.budget(model, ratio=0.5) as stats:
            model(torch.randint(0, 10, (2, 6)))
    assert stats.skipped_fraction > 0
    with pytest.raises(TypeError, match="both 'ratio'"):
        with skip.budget(model, skip_fraction=0.5, ratio=0.5):
            pass
