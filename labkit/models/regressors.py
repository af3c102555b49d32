"""Small regressors for C-Mixup reproductions: the official tabular MLP and a compact CNN for RCF images.

Each model names its first block ``block1`` and its rest ``head`` so ``labkit.mixup.manifold_mixup(model,
"block1")`` mixes hidden states where the official ``forward_mixup`` does (after the first block / after the trunk).
"""

from __future__ import annotations

import torch
from torch import nn


class MLPRegressor(nn.Module):
    """The official C-Mixup tabular MLP: d → hidden → hidden → out with LeakyReLU(0.1) (``src/models.py``)."""

    def __init__(self, d_in: int, hidden: int = 128, d_out: int = 1) -> None:
        super().__init__()
        if d_in < 1 or hidden < 1 or d_out < 1:
            raise ValueError(f"sizes must be >= 1, got d_in={d_in}, hidden={hidden}, d_out={d_out}")
        self.block1 = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.1))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block1(x.flatten(1)))


class CNNRegressor(nn.Module):
    """A compact CNN for small images: a conv trunk (``block1``), global average pooling and a linear ``head``.

    Stands in for the paper's ImageNet-pretrained ResNet-18 (no hub downloads here); manifold mixup at ``block1``
    mixes after the trunk and before pooling, as the official RCF-MNIST model does.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 3, d_out: int = 1) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        layers, c = [], in_channels
        for i in range(depth):
            layers += [nn.Conv2d(c, width * 2**i, 3, padding=1), nn.BatchNorm2d(width * 2**i), nn.ReLU()]
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2))
            c = width * 2**i
        self.block1 = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block1(x))
