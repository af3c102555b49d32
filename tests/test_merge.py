import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from labkit import merge, prune


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


def perturbed(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return out


def test_uniform_and_weighted_average_match_the_mean():
    items = [mlp(s).state_dict() for s in range(3)]
    soup = merge.average(items)
    torch.testing.assert_close(soup["0.weight"], sum(i["0.weight"] for i in items) / 3, atol=1e-6, rtol=0)
    weighted = merge.average(items, weights=[0.5, 0.25, 0.25])
    expect = 0.5 * items[0]["3.bias"] + 0.25 * items[1]["3.bias"] + 0.25 * items[2]["3.bias"]
    torch.testing.assert_close(weighted["3.bias"], expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed,target", [(0, 0.5), (1, 0.9), (2, 0.99)])
def test_sparse_soup_stays_exactly_as_sparse(seed, target):
    parent = mlp(seed)
    masks = prune.magnitude_masks(parent, target)
    prune.apply_masks(parent, masks)
    children = []
    for s in range(4):  # retrained copies: perturb, then keep the shared mask
        child = perturbed(parent, 10 * seed + s)
        prune.apply_masks(child, masks)
        children.append(child)
    for spec in (masks, [masks] * 4, "zeros"):
        soup = merge.average(children, masks=spec)
        assert prune.sparsity(soup) == pytest.approx(prune.sparsity(parent), abs=0)
        for k, m in masks.items():
            assert (soup[k][~m] == 0).all()
    # even an ingredient that drifted off its mask is forced back
    drifted = [c.state_dict() for c in children]
    drifted[0]["0.weight"] = drifted[0]["0.weight"] + 1.0
    assert prune.sparsity(merge.average(drifted, masks=masks)) == pytest.approx(prune.sparsity(parent), abs=0)


def test_sparse_soup_with_different_masks_raises_listing_keys():
    a, b = mlp(0), mlp(1)
    ma, mb = prune.magnitude_masks(a, 0.8), prune.magnitude_masks(b, 0.8)
    prune.apply_masks(a, ma)
    prune.apply_masks(b, mb)
    with pytest.raises(ValueError, match=r"identical masks.*0\.weight"):
        merge.average([a, b], masks=[ma, mb])
    with pytest.raises(ValueError, match="identical masks"):
        merge.average([a, b], masks="zeros")


def test_mismatched_keys_and_shapes_raise_or_merge_intersection():
    a = mlp(0).state_dict()
    b = dict(a)
    b.pop("3.bias")
    b["extra.weight"] = torch.ones(2)
    with pytest.raises(ValueError, match=r"3\.bias|extra\.weight"):
        merge.average([a, b])
    with pytest.warns(UserWarning, match="skipped"):
        soup = merge.average([a, b], strict=False)
    assert "3.bias" not in soup and "extra.weight" not in soup and "0.weight" in soup
    other = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).state_dict()
    with pytest.raises(ValueError, match=r"0\.weight.*shapes"):
        merge.average([a, other])


def test_integer_buffers_are_never_averaged():
    a, b = mlp(0), mlp(1)
    a[1].num_batches_tracked.fill_(3)
    b[1].num_batches_tracked.fill_(6)
    soup = merge.average([a, b])
    assert soup["1.num_batches_tracked"].dtype == torch.int64
    assert int(soup["1.num_batches_tracked"]) == 3


def test_half_precision_accumulates_in_fp32_and_returns_input_dtype():
    items = [
        {k: v.to(torch.bfloat16) for k, v in mlp(s).state_dict().items() if v.is_floating_point()} for s in range(4)
    ]
    soup = merge.average(items)
    assert soup["0.weight"].dtype == torch.bfloat16
    expect = (sum(i["0.weight"].float() for i in items) / 4).to(torch.bfloat16)
    torch.testing.assert_close(soup["0.weight"], expect, atol=0, rtol=0)


def test_module_prefixes_and_torch_prune_keys_are_normalised():
    a, b = mlp(0), mlp(1)
    masks = prune.magnitude_masks(b, 0.5)
    prune.to_torch_prune(b, masks)
    prefixed = {f"module.{k}": v for k, v in a.state_dict().items()}
    soup = merge.average([prefixed, b])
    assert "0.weight" in soup and not any(k.startswith("module.") or k.endswith("_orig") for k in soup)
    clean_b = prune.from_torch_prune(b)[0]
    torch.testing.assert_close(
        soup["0.weight"], (a.state_dict()["0.weight"] + clean_b["0.weight"]) / 2, atol=1e-6, rtol=0
    )
    mlp(5).load_state_dict(soup)


def test_streaming_safetensors_merge_equals_in_memory(tmp_path):
    items = [mlp(s).state_dict() for s in range(3)]
    paths = []
    for i, sd in enumerate(items):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
    out = merge.average(paths, out=tmp_path / "soup.safetensors")
    assert out == tmp_path / "soup.safetensors" and not (tmp_path / "soup.safetensors.partial").exists()
    streamed = load_file(str(out))
    in_memory = merge.average(items)
    assert set(streamed) == set(in_memory)
    for k in in_memory:
        torch.testing.assert_close(streamed[k], in_memory[k], atol=1e-6, rtol=0)
    mixed = merge.average([paths[0], items[1], mlp(2)])  # paths, dicts and modules in one call
    torch.testing.assert_close(mixed["3.weight"], in_memory["3.weight"], atol=1e-6, rtol=0)


def test_failed_streaming_merge_writes_nothing(tmp_path):
    a, b = mlp(0).state_dict(), mlp(1).state_dict()
    b["3.weight"] = b["3.weight"].clone()
    b["3.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"item 1 has non-finite values in '3\.weight'"):
        merge.average([a, b], out=tmp_path / "soup.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_hf_model_directory_and_tied_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=True,
    )
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(transformers.LlamaForCausalLM(config))
    soup = merge.average(models)
    assert soup["lm_head.weight"] is soup["model.embed_tokens.weight"]  # tied stays tied
    models[0].save_pretrained(tmp_path / "a")
    models[1].save_pretrained(tmp_path / "b")
    from_dirs = merge.average([tmp_path / "a", tmp_path / "b"])
    torch.testing.assert_close(
        from_dirs["model.layers.0.mlp.up_proj.weight"], soup["model.layers.0.mlp.up_proj.weight"], atol=1e-6, rtol=0
    )


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="empty list"):
        merge.average([])
    with pytest.raises(ValueError, match="unknown merge method"):
        merge.merge("fisher", [mlp(0)])
    with pytest.raises(ValueError, match="unknown parameter"):
        merge.merge("linear", [mlp(0)], alpha=2)
    with pytest.raises(ValueError, match="expected 2 weights"):
        merge.average([mlp(0), mlp(1)], weights=[1.0])
    with pytest.raises(TypeError, match="expected an nn.Module"):
        merge.average([3])


def test_greedy_soup_strict_and_non_strict():
    base = mlp(0)
    items = [perturbed(base, s, 0.01) for s in range(4)]

    def evaluate(sd):  # a flat score after the first: ties everywhere
        return 1.0

    soup, chosen, scores = merge.greedy_soup(items, evaluate)
    assert chosen == [0, 1, 2, 3] and scores == [1.0] * 4
    _, chosen_strict, _ = merge.greedy_soup(items, evaluate, strict=True)
    assert chosen_strict == [0]
    target = items[2].state_dict()["0.weight"]

    def closeness(sd):
        return -float((sd["0.weight"] - target).norm())

    soup, chosen, scores = merge.greedy_soup(items, closeness)
    assert chosen[0] == 2 and max(scores) == scores[2]
    with pytest.raises(ValueError, match="finite score"):
        merge.greedy_soup(items, lambda sd: float("nan"))


def test_lerp_and_slerp_endpoints_and_sphere():
    a, b = mlp(0).state_dict(), mlp(1).state_dict()
    for fn in (merge.lerp, merge.slerp):
        torch.testing.assert_close(fn(a, b, 0.0)["0.weight"], a["0.weight"], atol=1e-5, rtol=0)
        torch.testing.assert_close(fn(a, b, 1.0)["0.weight"], b["0.weight"], atol=1e-5, rtol=0)
    x, y = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}
    mid = merge.slerp(x, y, 0.5)["w"]
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5)] * 2), atol=1e-6, rtol=0)


def test_task_arithmetic_ties_and_dare():
    base = {"w": torch.zeros(4)}
    a = {"w": torch.tensor([1.0, -2.0, 0.1, 3.0])}
    b = {"w": torch.tensor([1.0, 2.0, 0.0, -1.0])}
    torch.testing.assert_close(merge.task_arithmetic(base, [a, b])["w"], torch.tensor([2.0, 0.0, 0.1, 2.0]))
    torch.testing.assert_close(merge.task_arithmetic(base, [a], scale=-1.0)["w"], -a["w"])
    # TIES at full density: sign of the sum, mean of agreeing entries only
    torch.testing.assert_close(merge.ties(base, [a, b], density=1.0)["w"], torch.tensor([1.0, 0.0, 0.1, 3.0]))
    # trimming to 50 % keeps a's {-2, 3} and b's {2, -1}; entry 1 has a zero sum -> 0
    torch.testing.assert_close(merge.ties(base, [a, b], density=0.5)["w"], torch.tensor([0.0, 0.0, 0.0, 3.0]))
    torch.testing.assert_close(merge.dare(base, [a, b], drop=0.0)["w"], merge.task_arithmetic(base, [a, b])["w"])
    big = {"w": torch.ones(20000)}
    dropped = merge.dare({"w": torch.zeros(20000)}, [big], drop=0.9, seed=1)["w"]
    assert ((dropped == 0) | ((dropped - 10.0).abs() < 1e-4)).all()
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.1)
    again = merge.dare({"w": torch.zeros(20000)}, [big], drop=0.9, seed=1)["w"]
    assert torch.equal(dropped, again)
    with pytest.raises(ValueError, match="needs base="):
        merge.merge("ties", [a, b])


def test_recalibrate_bn_matches_data_statistics_and_restores_momentum():
    model = mlp(0)
    x = torch.randn(256, 12) * 3 + 1
    loader = [(x[i : i + 32], torch.zeros(32)) for i in range(0, 256, 32)]
    merge.recalibrate_bn(model, loader)
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0), atol=1e-4, rtol=1e-4)
    assert model[1].momentum == 0.1
    merge.recalibrate_bn(model, loader, frac=0.25)
    with torch.no_grad():
        h = model[0](x[:64])
    torch.testing.assert_close(model[1].running_mean, h.mean(0), atol=1e-4, rtol=1e-4)


def test_diagnostics_and_ema():
    base = mlp(0)
    items = [perturbed(base, s) for s in range(3)]
    d = merge.soup_distances(items)
    assert d["l2"].shape == (3, 3) and torch.all(d["l2"].diagonal() == 0) and (d["l2"] + torch.eye(3) > 0).all()
    assert d["angle_degrees"].shape == (3, 3) and d["to_average"].shape == (3,)
    curve = merge.interpolation_curve(items[0], items[1], lambda sd: float(sd["3.bias"].sum()), alphas=5)
    assert [a for a, _ in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    ema = merge.ema_model(base, decay=0.5)
    ema.update_parameters(items[0])
    assert isinstance(ema.module, nn.Sequential)


def test_slerp_falls_back_to_lerp_for_opposite_and_colinear_tensors():
    a = {"w": torch.tensor([1.0, 2.0])}
    opposite = {"w": torch.tensor([-2.0, -4.0])}  # angle pi: sin(pi) ~ 0 in fp32 gave ~1e7 before
    torch.testing.assert_close(merge.slerp(a, opposite, 0.5)["w"], torch.tensor([-0.5, -1.0]))
    torch.testing.assert_close(merge.slerp(a, opposite, 0.25)["w"], torch.tensor([0.25, 0.5]))
    nearly = {"w": torch.tensor([1.0, 2.02])}  # |cos| > 0.9995 (mergekit's DOT_THRESHOLD): lerp
    torch.testing.assert_close(merge.slerp(a, nearly, 0.5)["w"], torch.tensor([1.0, 2.01]))
    zero = {"w": torch.zeros(2)}
    torch.testing.assert_close(merge.slerp(a, zero, 0.5)["w"], torch.tensor([0.5, 1.0]))


def test_ties_normalize_false_sums_the_agreeing_weighted_deltas():
    base = {"w": torch.zeros(4)}
    a = {"w": torch.tensor([1.0, -2.0, 0.1, 3.0])}
    b = {"w": torch.tensor([1.0, 2.0, 0.0, -1.0])}
    # weighted deltas 2a = [2, -4, 0.2, 6] and 1b = [1, 2, 0, -1]; elected signs [+, -, +, +]
    summed = merge.ties(base, [a, b], density=1.0, weights=[2.0, 1.0], normalize=False)["w"]
    torch.testing.assert_close(summed, torch.tensor([3.0, -4.0, 0.2, 6.0]))
    mean = merge.ties(base, [a, b], density=1.0, weights=[2.0, 1.0])["w"]  # divided by the agreeing weights
    torch.testing.assert_close(mean, torch.tensor([1.0, -2.0, 0.1, 3.0]))
    scaled = merge.ties(base, [a, b], density=1.0, weights=[2.0, 1.0], scale=0.5, normalize=False)["w"]
    torch.testing.assert_close(scaled, 0.5 * summed)


def test_weights_may_be_a_tensor_or_a_sequence():
    base = {"w": torch.zeros(4)}
    a, b = {"w": torch.tensor([1.0, -2.0, 0.1, 3.0])}, {"w": torch.tensor([1.0, 2.0, 0.0, -1.0])}
    for fn, kwargs in [(merge.task_arithmetic, {}), (merge.ties, {"density": 0.5}), (merge.dare, {"drop": 0.5})]:
        as_list = fn(base, [a, b], weights=[0.3, 0.7], **kwargs)["w"]
        as_tensor = fn(base, [a, b], weights=torch.tensor([0.3, 0.7]), **kwargs)["w"]
        as_tuple = fn(base, [a, b], weights=(0.3, 0.7), **kwargs)["w"]
        torch.testing.assert_close(as_tensor, as_list)
        torch.testing.assert_close(as_tuple, as_list)
    soup = merge.average([a, b], weights=torch.tensor([0.25, 0.75]))["w"]
    torch.testing.assert_close(soup, 0.25 * a["w"] + 0.75 * b["w"])


def test_mixed_float_dtypes_and_01_float_masks_are_accepted():
    a = {"w": torch.tensor([1.0, 2.0, 3.0])}
    b = {"w": torch.tensor([3.0, 2.0, 1.0], dtype=torch.bfloat16)}
    soup = merge.average([a, b], masks={"w": torch.tensor([1.0, 0.0, 1.0])})["w"]
    assert soup.dtype == torch.float32  # the first item's dtype
    torch.testing.assert_close(soup, torch.tensor([2.0, 0.0, 2.0]))


def test_legacy_torch_save_file_is_read_without_mmap(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    torch.testing.assert_close(merge.average([path, {"w": torch.zeros(2)}])["w"], torch.full((2,), 0.5))


def test_a_method_is_declared_once_by_its_typed_signature(monkeypatch):
    """The registry reads names, defaults, checks, base and item count from the signature alone (as mergekit)."""
    from typing import Annotated

    from labkit.merge import methods

    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))

    @methods.merge_method("shift", "https://example.org/shift")
    def shift_tensor(
        tensors: tuple[Tensor, Tensor], base: Tensor, amount: Annotated[float, methods.Interval("[0, 2]")] = 1.0
    ) -> Tensor:
        return base + amount * (tensors[0] - tensors[1])

    spec = methods.METHODS["shift"]
    assert (spec.params, spec.needs_base, spec.n_items) == ({"amount": 1.0}, True, 2)
    a, b, base = {"w": torch.ones(2)}, {"w": torch.zeros(2)}, {"w": torch.full((2,), 3.0)}
    torch.testing.assert_close(merge.merge("shift", [a, b], base=base, amount=0.5)["w"], torch.full((2,), 3.5))
    with pytest.raises(ValueError, match=r"amount must be in \[0, 2\], got 3\.0"):
        merge.merge("shift", [a, b], base=base, amount=3.0)
    with pytest.raises(ValueError, match="takes exactly 2 items"):
        merge.merge("shift", [a], base=base)
    with pytest.raises(ValueError, match="already registered"):
        methods.merge_method("shift", "")(shift_tensor)
    with pytest.raises(TypeError, match=r"parameters \['amount'\] .* need defaults"):
        methods.merge_method("bad", "")(lambda tensors, base, amount: tensors[0])


def test_public_functions_take_the_per_tensor_signature():
    """ties/dare/task_arithmetic are generated: their parameters are the per-tensor function's, in its order."""
    import inspect

    for public, per_tensor in ((merge.ties, merge.ties_tensor), (merge.dare, merge.dare_tensor),
                               (merge.task_arithmetic, merge.task_arithmetic_tensor)):
        own = [p for p in inspect.signature(per_tensor).parameters if p not in ("tensors", "base", "key")]
        assert list(inspect.signature(public).parameters) == ["base", "items", *own, "out", "strict"]
    a, base = {"w": torch.tensor([1.0, -2.0])}, {"w": torch.zeros(2)}
    torch.testing.assert_close(merge.ties(base, [a], 1.0)["w"], a["w"])  # density positional, as before
