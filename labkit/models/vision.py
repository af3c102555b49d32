"""Small image classifiers with BatchNorm for pruning and merging experiments.

``MLP``: LeNet-300-100 with BatchNorm (266,200 prunable weights on 28x28 inputs), the CPU model of the SMS
reproduction. ``SmallCNN``: three conv-BN-ReLU blocks and a linear head. ``ResNet``: a CIFAR-style ResNet
(3 stages of basic blocks, He et al. 2016) adapted to small grey images, for GPU runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VisionConfig:
    arch: str = "mlp"  # "mlp" | "cnn" | "resnet"
    input_shape: tuple[int, ...] = (1, 28, 28)  # channels x height x width (or channels x length for 1-D data)
    classes: int = 10  # output logits
    width: int = 300  # mlp: first hidden width (second is width // 3); cnn/resnet: channels of the first stage
    depth: int = 1  # resnet: basic blocks per stage (1 -> ResNet-8, 3 -> ResNet-20)


class MLP(nn.Module):
    """Flatten -> [Linear -> BN -> ReLU] per hidden width -> Linear."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (300, 100), classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU blocks (widths w, 2w, 4w, the last two with stride 2), global pooling, linear head."""

    def __init__(self, in_channels: int = 1, width: int = 32, classes: int = 10, dims: int = 2) -> None:
        super().__init__()
        conv, bn, pool = (
            (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
            if dims == 2
            else (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d)
        )
        layers: list[nn.Module] = []
        channels = in_channels
        for i, w in enumerate((width, 2 * width, 4 * width)):
            layers += [conv(channels, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), bn(w), nn.ReLU()]
            channels = w
        layers += [pool(1), nn.Flatten(), nn.Linear(channels, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): a stem conv, 3 stages of ``depth`` basic blocks (w, 2w, 4w), pooling, linear.

    C-Mixup's RCF-MNIST uses it with ``classes=1`` as a regressor in place of the paper's ImageNet-pretrained ResNet-18.
    Deviations from ResNet-18: trained from scratch (no hub download); a 3x3 stride-1 stem without max-pooling (28 px
    inputs); 3 stages of ``depth`` blocks (ResNet-8 at depth 1) instead of 4 stages of 2; widths w, 2w, 4w (w = 8 on
    CPU) instead of 64..512. Manifold mixup mixes the output of ``blocks``: after the trunk, before pooling, where
    the official ``forward_mixup`` mixes ResNet-18's features."""

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for b in range(depth):
                blocks.append(BasicBlock(cin, w, 2 if stage > 0 and b == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build(cfg: VisionConfig) -> nn.Module:
    """The model ``cfg`` names; raises on an unknown architecture, listing the known ones."""
    if cfg.arch == "mlp":
        return MLP(math.prod(cfg.input_shape), (cfg.width, max(cfg.width // 3, 1)), cfg.classes)
    if cfg.arch == "cnn":
        return SmallCNN(cfg.input_shape[0], cfg.width, cfg.classes, dims=len(cfg.input_shape) - 1)
    if cfg.arch == "resnet":
        if len(cfg.input_shape) != 3:
            raise ValueError(f"resnet needs C x H x W inputs, got input_shape {cfg.input_shape}")
        return ResNet(cfg.input_shape[0], cfg.width, cfg.depth, cfg.classes)
    raise ValueError(f"unknown arch {cfg.arch!r}; expected one of ['mlp', 'cnn', 'resnet']")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Class probabilities (softmax) of ``model`` in eval mode over ``x``, ``batch_size`` inputs per forward."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    model.eval()
    return torch.cat([torch.softmax(model(x[i : i + batch_size]), -1) for i in range(0, len(x), batch_size)])
