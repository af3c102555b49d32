"""Deterministic out-of-distribution corruptions of image batches, in torch (a CIFAR-10-C stand-in, no download).

Each corruption maps an N x C x H x W float batch in [0, 1] and a severity to a corrupted batch, with randomness
drawn from an explicit ``torch.Generator`` so a seed gives the same test set every run. ``corrupt`` applies a
spec such as ``"rotate:35+noise:0.25"`` (the SMS trial's OOD set). Noise and contrast also work on 1-D signals.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _need_images(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what} needs an N x C x H x W batch, got shape {tuple(x.shape)}")


def affine(x: Tensor, degrees: float, translate: float, generator: torch.Generator) -> Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] and shift it by up to ``translate`` of its size."""
    _need_images(x, "affine")
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2 * translate
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def rotate(x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Random rotation of each image by up to ``degrees`` either way."""
    return affine(x, degrees, 0.0, generator)


def noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise of standard deviation ``sigma``."""
    return x + sigma * torch.randn(x.shape, generator=generator).to(x)


def blur(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (separable, zero padding)."""
    _need_images(x, "blur")
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    out = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def contrast(x: Tensor, factor: float, generator: torch.Generator | None = None) -> Tensor:
    """Scale each image's deviation from its mean by ``factor`` (below 1 lowers contrast)."""
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return (x - mean) * factor + mean


CORRUPTIONS: dict[str, Callable[..., Tensor]] = {"rotate": rotate, "noise": noise, "blur": blur, "contrast": contrast}


def parse(spec: str) -> list[tuple[str, float]]:
    """``"kind:severity+kind:severity"`` as (kind, severity) pairs; raises ValueError naming the bad part and the
    accepted kinds."""
    steps = []
    for part in spec.split("+"):
        kind, _, value = part.partition(":")
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r} in {spec!r}; expected one of {sorted(CORRUPTIONS)}")
        try:
            steps.append((kind, float(value)))
        except ValueError:
            raise ValueError(f"corruption {part!r} needs a number after ':', e.g. 'noise:0.25'") from None
    return steps


def check_spec(name: str, spec: str) -> str:
    """A declared check (``labkit.config.Check``) of a corruption spec held in parameter ``name``."""
    try:
        parse(spec)
    except ValueError as err:
        raise ValueError(f"parameter {name!r}: {err}") from None
    return spec


def corrupt(x: Tensor, spec: str, seed: int = 0, clip: bool = True) -> Tensor:
    """Apply ``spec`` = ``"kind:severity+kind:severity"`` left to right with one seeded generator.

    Kinds: rotate (degrees), noise (sigma), blur (sigma in pixels), contrast (factor). ``clip`` clamps the result
    to [0, 1] (images); pass False for signals on another scale (MNIST-1D).
    """
    generator = torch.Generator().manual_seed(seed)
    for kind, severity in parse(spec):
        x = CORRUPTIONS[kind](x, severity, generator)
    return x.clamp(0, 1) if clip else x
