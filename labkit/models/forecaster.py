"""Small spatio-temporal forecasters for multi-variable fields (``B x T x V x H x W``): SimVP-like and Met²Net.

``StackedForecaster`` is SimVP-like (Gao et al., CVPR 2022): one encoder over all variables as channels, a
convolutional translator over frames x channels, one decoder, and the encoder-to-decoder skip.
``PerVariableForecaster`` is Met²Net's network (Li et al., ICCV 2025) built from :mod:`labkit.stage` pieces:
per-variable encoders/decoders (no skip) and the variable-attention translator. Both return
``(prediction, attention or None)``. ``Persistence`` repeats the last input frame. Translator blocks are the
compact conv FFN or TAU (:mod:`labkit.tau`), with optional drop path.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit.stage import (
    ConvNormAct,
    PerVariableDecoder,
    PerVariableEncoder,
    VariableAttention,
    resolve_layout,
    to_layout,
)
from labkit.tau import BLOCKS, check_choice, check_drop_path, translator_block


class SequenceEncoder(nn.Module):
    """Apply a :class:`PerVariableEncoder` to every frame: ``B x T x V x H x W -> B x V x (T*hid) x h x w``."""

    def __init__(self, encoder: PerVariableEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected B x T x V x H x W, got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        z = self.encoder(x.flatten(0, 1))  # (B T) x V x hid x h x w
        z = z.view(b, t, *z.shape[1:]).transpose(1, 2)  # B x V x T x hid x h x w
        return z.flatten(2, 3)


class SequenceDecoder(nn.Module):
    """Inverse plumbing of :class:`SequenceEncoder` around a :class:`PerVariableDecoder`."""

    def __init__(self, decoder: PerVariableDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, n_vars, c, h, w = z.shape
        hid = self.decoder.hid
        if c % hid:
            raise ValueError(f"latent channels {c} are not a multiple of the decoder width {hid}")
        t = c // hid
        frames = z.view(b, n_vars, t, hid, h, w).transpose(1, 2).flatten(0, 1)  # (B T) x V x hid x h x w
        out = self.decoder(frames)
        return out.view(b, t, *out.shape[1:])


class PerVariableForecaster(nn.Module):
    """Met²Net's network: per-variable encoders, variable attention over ``t_in*hid`` latents, per-variable decoders.

    ``layout="auto"`` runs the layout :func:`~labkit.stage.resolve_layout` picks for this machine (``self.layout``),
    with weights drawn as in the grouped layout and converted, so a seed gives the same function on CPU and CUDA.
    ``ffn``, ``drop_path`` and ``mixing`` go to :class:`~labkit.stage.VariableAttention`; with ``mixing="none"``
    the forecaster returns ``(prediction, None)``.
    """

    def __init__(
        self,
        n_vars: int,
        t_in: int,
        t_out: int,
        hid: int = 8,
        n_layers: int = 2,
        d_model: int = 32,
        heads: int = 4,
        n_blocks: int = 2,
        layout: str = "auto",
        ffn: str = "conv",
        drop_path: float = 0.0,
        mixing: str = "attention",
    ) -> None:
        super().__init__()
        self.n_vars, self.t_in, self.t_out = n_vars, t_in, t_out
        self.layout = resolve_layout(layout)
        drawn = "grouped" if layout == "auto" else self.layout
        self.encoder = SequenceEncoder(PerVariableEncoder(n_vars, hid, n_layers, drawn))
        self.translator = VariableAttention(
            t_in * hid,
            t_out * hid,
            d_model=d_model,
            heads=heads,
            n_blocks=n_blocks,
            ffn=ffn,
            drop_path=drop_path,
            mixing=mixing,
        )
        self.decoder = SequenceDecoder(PerVariableDecoder(n_vars, hid, n_layers, drawn))
        if self.layout != drawn:  # to_layout leaves the global RNG as it was
            self.encoder.encoder = to_layout(self.encoder.encoder, self.layout)
            self.decoder.decoder = to_layout(self.decoder.decoder, self.layout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_input(x, self.n_vars, self.t_in)
        z, attn = self.translator(self.encoder(x))
        return self.decoder(z), attn


class StackedForecaster(nn.Module):
    """SimVP-like: variables stacked as channels, conv translator over ``t*hid`` channels, skip from encoder layer 1.

    ``block="conv"``: [conv FFN, residual + GroupNorm] blocks; ``block="tau"``: TAU blocks as in SimVPv2 (Tan et al.,
    CVPR 2023), each residual and normalised inside. ``drop_path``: stochastic depth on the blocks' branches.
    """

    def __init__(
        self,
        n_vars: int,
        t_in: int,
        t_out: int,
        hid: int = 16,
        n_layers: int = 2,
        hid_t: int = 64,
        n_blocks: int = 2,
        skip: bool = True,
        block: str = "conv",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCKS)
        check_drop_path(drop_path)
        self.n_vars, self.t_in, self.t_out, self.hid, self.skip, self.block = n_vars, t_in, t_out, hid, skip, block
        strides = [2 if i % 2 == 1 else 1 for i in range(n_layers)]
        self.enc = nn.ModuleList([ConvNormAct(n_vars if i == 0 else hid, hid, stride=s) for i, s in enumerate(strides)])
        self.proj_in = nn.Conv2d(t_in * hid, hid_t, 1)
        self.blocks = nn.ModuleList([translator_block(block, hid_t, 2, drop_path) for _ in range(n_blocks)])
        self.norms = nn.ModuleList([nn.GroupNorm(1, hid_t) for _ in range(n_blocks if block == "conv" else 0)])
        self.proj_out = nn.Conv2d(hid_t, t_out * hid, 1)
        self.dec = nn.ModuleList([ConvNormAct(hid, hid, upsample=s == 2) for s in reversed(strides)])
        self.readout = nn.Conv2d(hid, n_vars, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_input(x, self.n_vars, self.t_in)
        b = x.shape[0]
        z = x.flatten(0, 1)
        first = None
        for i, layer in enumerate(self.enc):
            z = layer(z)
            if i == 0:
                first = z
        h, w = z.shape[-2:]
        z = self.proj_in(z.view(b, -1, h, w))
        for i, block in enumerate(self.blocks):
            z = self.norms[i](z + block(z)) if self.block == "conv" else block(z)
        z = self.proj_out(z).view(b * self.t_out, self.hid, h, w)
        for layer in self.dec[:-1]:
            z = layer(z)
        if self.skip:  # SimVP adds the first encoder layer's output before the last decoder layer
            first = first.view(b, self.t_in, *first.shape[1:])
            if self.t_out == self.t_in:
                first = first.flatten(0, 1)
            else:  # horizons differ: reuse the last input frame's features for every output frame
                first = first[:, -1:].expand(b, self.t_out, *first.shape[2:]).flatten(0, 1)
            z = z + first
        z = self.readout(self.dec[-1](z))
        return z.view(b, self.t_out, self.n_vars, *z.shape[-2:]), None


class Persistence(nn.Module):
    """The last input frame repeated for every lead time (the floor every model must beat)."""

    def __init__(self, n_vars: int, t_in: int, t_out: int) -> None:
        super().__init__()
        self.n_vars, self.t_in, self.t_out = n_vars, t_in, t_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_input(x, self.n_vars, self.t_in)
        return x[:, -1:].expand(-1, self.t_out, -1, -1, -1), None


def _check_input(x: torch.Tensor, n_vars: int, t_in: int) -> None:
    if x.dim() != 5 or x.shape[1] != t_in or x.shape[2] != n_vars:
        raise ValueError(
            f"expected input B x {t_in} x {n_vars} x H x W (frames x variables), got shape {tuple(x.shape)}"
        )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; frozen copies of :class:`labkit.stage.ImplicitTwoStage` are excluded."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
