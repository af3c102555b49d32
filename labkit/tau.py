"""Translator blocks for the forecasters: TAU (Tan et al., CVPR 2023), its compact stand-in, and stochastic depth.

The Temporal Attention Unit is the block of SimVPv2/OpenSTL's TAU model and the FFN inside every block of Met²Net's
translator (``CIMidNet`` calls OpenSTL's ``TAUSubBlock``, Li et al., ICCV 2025). Its attention is the product of a
*statical* part (a large depthwise kernel decomposed as depthwise 5x5 -> depthwise 7x7 with dilation 3 -> 1x1, a
21x21 receptive field at the cost of two small kernels) and a *dynamical* part (squeeze-and-excitation weights per
channel from global average pooling), applied to its input. All blocks here map ``N x C x h x w`` to the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("conv", "tau")  # ConvFeedForward, TAUBlock
NORMS = ("batch", "group")  # BatchNorm2d as in OpenSTL; GroupNorm(1, C) keeps samples independent in training


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming parameter ``name`` and the ``allowed`` values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_drop_path(drop_path: float) -> None:
    """A drop-path rate is a probability below 1 (at 1 every residual branch would be dropped)."""
    if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be a number in [0, 1), got {drop_path!r}")


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016): in training, zero a residual branch for each sample with probability
    ``p`` and scale the kept ones by ``1 / (1 - p)`` so the expectation is unchanged; the identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        check_drop_path(p)
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvFeedForward(nn.Module):
    """Per-map spatial mixing: 1x1 expand by ``ratio``, depthwise 3x3, GELU, 1x1 project; returns the residual branch.

    A compact stand-in for the TAU sub-block the official Met²Net translator uses as its FFN; ``drop_path`` drops the
    branch per sample in training (the caller adds it to its input).
    """

    def __init__(self, d_model: int, ratio: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        inner = d_model * ratio
        self.net = nn.Sequential(
            nn.Conv2d(d_model, inner, 1),
            nn.Conv2d(inner, inner, 3, padding=1, groups=inner),
            nn.GELU(),
            nn.Conv2d(inner, d_model, 1),
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.net(x))


class TemporalAttention(nn.Module):
    """TAU's attention branch: 1x1, GELU, then statical x dynamical attention times the features, 1x1, plus the input.

    Statical: depthwise 5x5 -> depthwise 7x7 dilation 3 -> 1x1 (intra-frame, spatial). Dynamical: squeeze-excitation
    over channels (inter-frame, since channels stack frames), bottleneck ``max(dim // reduction, 4)`` as in TAU.
    """

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.mix = nn.Conv2d(dim, dim, 1)
        squeeze = max(dim // reduction, 4)
        self.excite = nn.Sequential(
            nn.Linear(dim, squeeze, bias=False), nn.ReLU(), nn.Linear(squeeze, dim, bias=False), nn.Sigmoid()
        )
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.gelu(self.proj_in(x))
        statical = self.mix(self.dilated(self.local(u)))
        dynamical = self.excite(u.mean(dim=(2, 3)))[:, :, None, None]
        return self.proj_out(statical * dynamical * u) + x


class TAUBlock(nn.Module):
    """One TAU block (Tan et al., CVPR 2023): ``x + dp(s1 * attention(norm(x)))``, then ``x + dp(s2 * mlp(norm(x)))``.

    ``mlp`` is 1x1 expand by ``mlp_ratio``, depthwise 3x3, GELU, 1x1; ``s1, s2`` are per-channel layer scales started
    at ``layer_scale`` (so the block starts near the identity); ``dp`` is :class:`DropPath`. Returns the full output
    (residuals included), like OpenSTL's ``TAUSubBlock``. ``norm="batch"`` follows OpenSTL, but in training its
    statistics pool over the batch (in Met²Net's translator: over all variables); ``"group"`` keeps maps independent.
    """

    def __init__(
        self, dim: int, mlp_ratio: int = 4, drop_path: float = 0.0, norm: str = "batch", layer_scale: float = 1e-2
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("mlp_ratio", mlp_ratio)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TAUBlock {name} must be an int >= 1, got {value!r}")
        check_choice("norm", norm, NORMS)
        check_drop_path(drop_path)
        hidden = dim * mlp_ratio

        def make_norm() -> nn.Module:
            return nn.BatchNorm2d(dim) if norm == "batch" else nn.GroupNorm(1, dim)

        self.norm_attn, self.attn = make_norm(), TemporalAttention(dim)
        self.norm_mlp = make_norm()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        self.scale_attn = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.scale_mlp = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale_attn[:, None, None] * self.attn(self.norm_attn(x)))
        return x + self.drop_path(self.scale_mlp[:, None, None] * self.mlp(self.norm_mlp(x)))


def translator_block(kind: str, dim: int, ratio: int, drop_path: float = 0.0) -> nn.Module:
    """A :class:`ConvFeedForward` (``"conv"``, returns the residual branch) or a :class:`TAUBlock` (``"tau"``, returns
    the full output); ``ratio`` is the expansion of the inner MLP in both."""
    check_choice("block", kind, BLOCKS)
    check_drop_path(drop_path)
    if kind == "conv":
        return ConvFeedForward(dim, ratio, drop_path)
    return TAUBlock(dim, mlp_ratio=ratio, drop_path=drop_path)
