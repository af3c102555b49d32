import pytest
import torch

from labkit.data.corruptions import corrupt
from labkit.models.vision import VisionConfig, build


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("cnn", (1, 40)),
                                        ("resnet", (3, 16, 16))])
def test_models_map_inputs_to_class_logits_and_carry_batchnorm(arch, shape):
    model = build(VisionConfig(arch=arch, input_shape=shape, width=8, classes=10))
    assert model(torch.rand(4, *shape)).shape == (4, 10)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown arch 'vit'.*'mlp', 'cnn', 'resnet'"):
        build(VisionConfig(arch="vit"))


def test_corruptions_are_seeded_shape_preserving_and_clipped():
    x = torch.rand(6, 1, 12, 12)
    for spec in ("rotate:30", "noise:0.3", "blur:1.0", "contrast:0.3", "rotate:15+noise:0.1"):
        a, b = corrupt(x, spec, seed=1), corrupt(x, spec, seed=1)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, x)
    assert not torch.equal(corrupt(x, "noise:0.3", seed=1), corrupt(x, "noise:0.3", seed=2))


def test_bad_corruption_specs_say_what_is_expected():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(x, "fog:1")
    with pytest.raises(ValueError, match="needs a number"):
        corrupt(x, "noise:high")


def test_predict_returns_probabilities_independent_of_batch_size():
    from labkit.models.vision import predict

    model = build(VisionConfig(arch="mlp", input_shape=(1, 8, 8), width=6, classes=3))
    x = torch.rand(7, 1, 8, 8)
    probs = predict(model, x)
    assert not model.training and probs.shape == (7, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    torch.testing.assert_close(predict(model, x, batch_size=2), probs)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        predict(model, x, batch_size=0)
