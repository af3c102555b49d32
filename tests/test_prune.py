import pytest
import torch
from torch import nn

from labkit import prune


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def test_imp_schedule_removes_same_fraction_each_phase_and_ends_at_goal():
    sched = prune.imp_schedule(0.99, 4)
    assert len(sched) == 4 and sched[-1] == 0.99
    torch.testing.assert_close(torch.tensor(sched), torch.tensor([0.683772, 0.9, 0.968377, 0.99]), atol=1e-6, rtol=0)
    alive = [1.0] + [1 - s for s in sched]
    ratios = [alive[i + 1] / alive[i] for i in range(4)]
    torch.testing.assert_close(torch.tensor(ratios), torch.full((4,), ratios[0]), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="goal sparsity"):
        prune.imp_schedule(1.0, 3)
    with pytest.raises(ValueError, match="phases"):
        prune.imp_schedule(0.5, 0)


def test_global_masks_prune_exact_count_and_skip_norms_and_biases():
    model = mlp()
    masks = prune.magnitude_masks(model, 0.8)
    assert sorted(masks) == ["0.weight", "3.weight", "5.weight"]
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * total)
    kept = torch.cat([model.state_dict()[k].abs()[m] for k, m in masks.items()])
    dropped = torch.cat([model.state_dict()[k].abs()[~m] for k, m in masks.items()])
    assert kept.min() >= dropped.max()


def test_layer_granularity_prunes_each_tensor_to_the_target():
    masks = prune.magnitude_masks(mlp(), 0.5, granularity="layer")
    for m in masks.values():
        assert int((~m).sum()) == round(0.5 * m.numel())


def test_total_sparsity_prunes_further_from_previous_masks_and_zeros():
    model = mlp()
    first = prune.magnitude_masks(model, 0.5)
    prune.apply_masks(model, first)
    second = prune.magnitude_masks(model, 0.75, prev_masks=first)
    for k in first:
        assert not (second[k] & ~first[k]).any(), "a pruned weight came back"
    prune.apply_masks(model, second)
    assert prune.sparsity(model) == pytest.approx(0.75, abs=1e-9)
    # asking for less than is already dead prunes nothing more
    again = prune.magnitude_masks(model, 0.6)
    assert all(torch.equal(again[k], second[k]) for k in second)


def test_pruned_weights_stay_exactly_zero_through_sgd_momentum_and_adam():
    for make_opt in (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=0.01),
    ):
        model = mlp()
        opt = make_opt(model.parameters())
        x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
        for _ in range(3):  # build up optimizer state while dense
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        masks = prune.magnitude_masks(model, 0.9)
        handle = prune.apply_masks(model, masks, optimizer=opt)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sd = model.state_dict()
        for k, m in masks.items():
            assert (sd[k][~m] == 0).all(), k
        assert prune.sparsity(model) == pytest.approx(0.9, abs=1e-9)
        handle.remove()


def test_layer_sparsity_and_mask_iou():
    model = mlp()
    masks = prune.magnitude_masks(model, 0.5)
    prune.apply_masks(model, masks)
    per_layer = prune.layer_sparsity(model)
    assert set(per_layer) == set(masks)
    assert prune.mask_iou(masks, prune.mask_of_zeros(model)) == 1.0
    other = prune.magnitude_masks(mlp(1), 0.5)
    assert 0.0 < prune.mask_iou(masks, other) < 1.0


def test_torch_prune_round_trip_gives_loadable_clean_state_dict(tmp_path):
    model = mlp()
    masks = prune.magnitude_masks(model, 0.7)
    prune.to_torch_prune(model, masks)
    sd = model.state_dict()
    assert "0.weight_orig" in sd and "0.weight_mask" in sd
    prefixed = {f"module.{k}": v for k, v in sd.items()}  # as DataParallel saves it
    clean, back = prune.from_torch_prune(prefixed)
    fresh = mlp(3)
    fresh.load_state_dict(clean)  # strict: no weight_orig/weight_mask keys left
    assert all(torch.equal(back[k], masks[k]) for k in masks)
    assert prune.sparsity(fresh) == pytest.approx(0.7, abs=1e-9)
    path = prune.save_masks(back, tmp_path / "masks.safetensors")
    loaded = prune.load_masks(path)
    assert all(loaded[k].dtype == torch.bool and torch.equal(loaded[k], masks[k]) for k in masks)
    # a hooked module reports its effective sparsity too
    assert prune.sparsity(model) == pytest.approx(0.7, abs=1e-9)


def test_bad_inputs_name_the_problem():
    model = mlp()
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune.magnitude_masks(model, 1.5)
    with pytest.raises(ValueError, match="granularity must be"):
        prune.magnitude_masks(model, 0.5, granularity="row")
    with pytest.raises(ValueError, match="shape"):
        prune.apply_masks(model, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="nope.weight"):
        prune.apply_masks(model, {"nope.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not prunable"):
        prune.magnitude_masks(model, 0.5, prev_masks={"1.weight": torch.ones(32, dtype=torch.bool)})


def test_float_01_masks_are_accepted_like_bool_masks():
    model = mlp()
    masks = prune.magnitude_masks(model, 0.5)
    as_float = {k: m.float() for k, m in masks.items()}
    again = prune.magnitude_masks(model, 0.75, prev_masks=as_float)
    assert all(torch.equal(again[k], prune.magnitude_masks(model, 0.75, prev_masks=masks)[k]) for k in masks)
    prune.apply_masks(model, as_float)
    assert prune.sparsity(model) == pytest.approx(0.5, abs=1e-9)
    assert prune.check_mask("w", torch.tensor([0, 1], dtype=torch.uint8)).dtype == torch.bool


@pytest.mark.parametrize("install", [prune.apply_masks, prune.to_torch_prune])
def test_each_mask_is_checked_once_per_call(install, monkeypatch):
    model = mlp()
    masks = prune.magnitude_masks(model, 0.5)
    seen = []
    check = prune.check_mask
    monkeypatch.setattr(prune, "check_mask", lambda key, *a, **kw: seen.append(key) or check(key, *a, **kw))
    install(model, masks)
    assert sorted(seen) == sorted(masks)
