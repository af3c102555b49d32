"""Per-variable encoders/decoders, variable attention and two-stage training (Met²Net, Li et al., ICCV 2025).

Met²Net (arXiv 2507.17189, code ShremG/Met2Net) gives each meteorological variable its own SimVP-style encoder
and decoder, fuses variables in latent space by self-attention across the variable axis, and trains with an
"implicit two-stage" scheme: every step the encoders/decoders learn through a frozen (EMA) copy of the
translator, and the translator learns a latent loss through frozen copies of the encoders.

Tensor conventions: one frame batch is ``N x V x H x W`` (V variables); latents are ``N x V x C x h x w``.
The per-variable modules exist in two layouts that compute the same function: ``"modulelist"`` (V separate
networks) and ``"grouped"`` (one convolution with ``groups=V``, GroupNorm with ``2V`` groups, PixelShuffle on
contiguous channel blocks), which is one kernel call instead of V. :func:`to_layout` converts between them;
:func:`resolve_layout` picks the faster one for a device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.tau import BLOCKS, check_choice, check_drop_path, translator_block
from labkit.tau import ConvFeedForward as ConvFeedForward  # re-exported: it lived here before

LAYOUTS = ("grouped", "modulelist")
MIXINGS = ("attention", "none")  # how VariableAttention's blocks mix variables; "none" is the paper's ablation


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def resolve_layout(layout: str, device: str | torch.device | None = None) -> str:
    """``"auto"`` -> the faster layout for ``device`` (None: CUDA when available): ``"grouped"`` on CUDA (one kernel
    per layer instead of V), ``"modulelist"`` elsewhere (faster per training step on CPU, where small grouped
    convolutions are slow: ``benchmarks/met2net_step.py``). Explicit layouts pass through."""
    if layout == "auto":
        cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        return "grouped" if cuda else "modulelist"
    _check_layout(layout)
    return layout


def _check_sizes(**sizes: int) -> None:
    """Each keyword is an int >= 1 (``n_blocks`` >= 0); raises naming the first that is not."""
    for name, value in sizes.items():
        minimum = 0 if name == "n_blocks" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Inputs and targets of a loss must agree on the batch: MSE would broadcast a batch of 1 silently."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}")


def _mse(pred: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    """MSE that refuses to broadcast: a shape mismatch is a wiring error, never a loss."""
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return F.mse_loss(pred, target)


class ConvNormAct(nn.Module):
    """SimVP's ``ConvSC``: 3x3 conv (stride 2 to down-sample, or conv + PixelShuffle(2) to up-sample), GroupNorm, SiLU.

    ``groups`` > 1 runs ``groups`` independent copies side by side on contiguous channel blocks.
    """

    def __init__(
        self, c_in: int, c_out: int, *, stride: int = 1, upsample: bool = False, groups: int = 1, norm_groups: int = 2
    ) -> None:
        super().__init__()
        self.upsample = upsample
        conv_out = c_out * 4 if upsample else c_out
        self.conv = nn.Conv2d(c_in, conv_out, 3, stride=stride, padding=1, groups=groups)
        self.norm = nn.GroupNorm(norm_groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.upsample:
            y = F.pixel_shuffle(y, 2)
        return F.silu(self.norm(y))


def _strides(n_layers: int) -> list[int]:
    """SimVP's sampling pattern: stride 1, 2, 1, 2, ... (so the latent is H / 2^(n_layers // 2))."""
    return [2 if i % 2 == 1 else 1 for i in range(n_layers)]


def _single_encoder(c_in: int, hid: int, n_layers: int) -> nn.Sequential:
    layers = [ConvNormAct(c_in if i == 0 else hid, hid, stride=s) for i, s in enumerate(_strides(n_layers))]
    return nn.Sequential(*layers)


class PointwiseConv(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1)`` (same parameters) computed as one matrix product: on CPU, oneDNN's convolution
    with a single output channel (the per-variable readout) takes several times longer, forward and backward."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (n, c, h, w), o = x.shape, self.out_channels
        y = torch.baddbmm(self.bias.view(1, o, 1), self.weight.view(1, o, c).expand(n, o, c), x.reshape(n, c, h * w))
        return y.view(n, o, h, w)


def _single_decoder(hid: int, c_out: int, n_layers: int) -> nn.Sequential:
    ups = [s == 2 for s in reversed(_strides(n_layers))]
    return nn.Sequential(*[ConvNormAct(hid, hid, upsample=u) for u in ups], PointwiseConv(hid, c_out))


class _PerVariable(nn.Module):
    """Shared plumbing of the encoder and the decoder: V networks in one of the two layouts."""

    def __init__(self, n_vars: int, hid: int, n_layers: int, layout: str) -> None:
        super().__init__()
        _check_layout(layout)
        if n_vars < 1 or hid < 2 or hid % 2 or n_layers < 1:
            raise ValueError(
                f"expected n_vars >= 1, an even hid >= 2 and n_layers >= 1; "
                f"got n_vars={n_vars}, hid={hid}, n_layers={n_layers}"
            )
        self.n_vars, self.hid, self.n_layers, self.layout = n_vars, hid, n_layers, layout

    def extra_repr(self) -> str:
        return f"n_vars={self.n_vars}, hid={self.hid}, n_layers={self.n_layers}, layout={self.layout!r}"


class PerVariableEncoder(_PerVariable):
    """One single-channel SimVP encoder per variable (Met²Net Sec. 3.1): ``N x V x H x W -> N x V x hid x h x w``.

    ``layout="grouped"`` computes all V encoders with grouped convolutions; ``"modulelist"`` keeps V modules.
    """

    def __init__(self, n_vars: int, hid: int = 16, n_layers: int = 2, layout: str = "grouped") -> None:
        super().__init__(n_vars, hid, n_layers, layout)
        if layout == "grouped":
            self.net = nn.Sequential(
                *[
                    ConvNormAct(
                        (1 if i == 0 else hid) * n_vars, hid * n_vars, stride=s, groups=n_vars, norm_groups=2 * n_vars
                    )
                    for i, s in enumerate(_strides(n_layers))
                ]
            )
        else:
            self.nets = nn.ModuleList([_single_encoder(1, hid, n_layers) for _ in range(n_vars)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_vars:
            raise ValueError(
                f"PerVariableEncoder expected input N x {self.n_vars} x H x W (one channel per "
                f"variable), got shape {tuple(x.shape)}"
            )
        if self.layout == "grouped":
            z = self.net(x)
            return z.view(z.shape[0], self.n_vars, self.hid, *z.shape[-2:])
        return torch.stack([net(x[:, v : v + 1]) for v, net in enumerate(self.nets)], dim=1)


class PerVariableDecoder(_PerVariable):
    """Mirror of :class:`PerVariableEncoder` (PixelShuffle up, 1x1 readout): ``N x V x hid x h x w -> N x V x H x W``.

    As in Met²Net there is no encoder-to-decoder skip: everything passes through the latent space.
    """

    def __init__(self, n_vars: int, hid: int = 16, n_layers: int = 2, layout: str = "grouped") -> None:
        super().__init__(n_vars, hid, n_layers, layout)
        if layout == "grouped":
            ups = [s == 2 for s in reversed(_strides(n_layers))]
            self.net = nn.Sequential(
                *[
                    ConvNormAct(hid * n_vars, hid * n_vars, upsample=u, groups=n_vars, norm_groups=2 * n_vars)
                    for u in ups
                ],
                nn.Conv2d(hid * n_vars, n_vars, 1, groups=n_vars),
            )
        else:
            self.nets = nn.ModuleList([_single_decoder(hid, 1, n_layers) for _ in range(n_vars)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.n_vars or z.shape[2] != self.hid:
            raise ValueError(
                f"PerVariableDecoder expected latents N x {self.n_vars} x {self.hid} x h x w, "
                f"got shape {tuple(z.shape)}"
            )
        if self.layout == "grouped":
            return self.net(z.flatten(1, 2))
        return torch.cat([net(z[:, v]) for v, net in enumerate(self.nets)], dim=1)


def to_layout(module: PerVariableEncoder | PerVariableDecoder, layout: str) -> PerVariableEncoder | PerVariableDecoder:
    """A copy of ``module`` in the other layout with the same weights, so both compute the same function.

    Grouped weights are the V per-variable weights concatenated along the output-channel axis. ``"auto"`` resolves
    by :func:`resolve_layout` for the module's device. The global RNG is left as it was (the copy's throw-away
    initialisation draws from a forked RNG), so converting does not shift later random draws.
    """
    if not isinstance(module, PerVariableEncoder | PerVariableDecoder):
        raise TypeError(f"expected a PerVariableEncoder or PerVariableDecoder, got {type(module).__name__}")
    device = next(module.parameters()).device
    layout = resolve_layout(layout, device)
    with torch.random.fork_rng(devices=[]):
        out = type(module)(module.n_vars, module.hid, module.n_layers, layout).to(device)
    if layout == module.layout:
        out.load_state_dict(module.state_dict())
        return out
    grouped, listed = (module, out) if module.layout == "grouped" else (out, module)
    g_params = list(grouped.net.parameters())
    per_var = [list(net.parameters()) for net in listed.nets]
    with torch.no_grad():
        for i, gp in enumerate(g_params):
            parts = [pv[i] for pv in per_var]
            if module.layout == "modulelist":
                gp.copy_(torch.cat(parts, dim=0))
            else:
                for v, part in enumerate(gp.chunk(module.n_vars, dim=0)):
                    parts[v].copy_(part)
    return out


class _VariableSelfAttention(nn.Module):
    """Multi-head attention where the tokens are the V variables and each token is a (d/heads) x h x w map."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (
            nn.Sequential(nn.Conv2d(d_model, d_model, 1), nn.GroupNorm(1, d_model)) for _ in range(3)
        )
        self.out = nn.Sequential(nn.Conv2d(d_model, d_model, 1), nn.GroupNorm(1, d_model), nn.SiLU())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n_vars, d, h, w = z.shape
        flat = z.flatten(0, 1)

        def tokens(proj: nn.Module) -> torch.Tensor:  # B x heads x V x (c h w)
            return proj(flat).view(b, n_vars, self.heads, -1).transpose(1, 2)

        q, k, v = tokens(self.q), tokens(self.k), tokens(self.v)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # scaled by sqrt(c*h*w)
        mixed = (attn @ v).transpose(1, 2).reshape(b * n_vars, d, h, w)
        return self.out(mixed).view(b, n_vars, d, h, w), attn


class VariableAttention(nn.Module):
    """Met²Net's translator (``CIMidNet``): fuse variables by self-attention across the variable axis.

    Input ``B x V x c_in x h x w`` (c_in = frames x hid); a 1x1 conv shared by all variables maps c_in to
    ``d_model``; ``n_blocks`` of [variable attention, residual + GroupNorm; FFN, residual + GroupNorm]; a 1x1 conv
    to ``c_out``. Returns ``(latents, attn)`` with ``attn`` shaped ``B x n_blocks x heads x V x V``. Variables
    interact only through the attention and carry no embedding (as in the official code).

    ``ffn``: ``"conv"`` (:class:`ConvFeedForward`) or ``"tau"`` (a :class:`~labkit.tau.TAUBlock` as in the
    official code, expansion ``ffn_ratio``; BatchNorm statistics then pool over variables in training).
    ``drop_path``: stochastic depth on the FFN branches. ``mixing="none"`` drops the attention (the paper's "without
    variable attention" ablation): every variable then passes through the same FFNs alone and ``attn`` is None.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int | None = None,
        d_model: int = 64,
        heads: int = 4,
        n_blocks: int = 2,
        ffn_ratio: int = 2,
        ffn: str = "conv",
        drop_path: float = 0.0,
        mixing: str = "attention",
    ) -> None:
        super().__init__()
        _check_sizes(c_in=c_in, d_model=d_model, heads=heads, n_blocks=n_blocks, ffn_ratio=ffn_ratio)
        if c_out is not None:
            _check_sizes(c_out=c_out)
        if d_model % heads:
            raise ValueError(f"d_model must be divisible by heads; got d_model={d_model}, heads={heads}")
        check_choice("ffn", ffn, BLOCKS)
        check_choice("mixing", mixing, MIXINGS)
        check_drop_path(drop_path)
        self.c_in, self.c_out, self.mixing = c_in, c_out or c_in, mixing
        attend = range(n_blocks if mixing == "attention" else 0)
        self.proj_in = nn.Conv2d(c_in, d_model, 1)
        self.attn = nn.ModuleList([_VariableSelfAttention(d_model, heads) for _ in attend])
        self.ffn = nn.ModuleList([translator_block(ffn, d_model, ffn_ratio, drop_path) for _ in range(n_blocks)])
        self.norm_attn = nn.ModuleList([nn.GroupNorm(1, d_model) for _ in attend])
        self.norm_ffn = nn.ModuleList([nn.GroupNorm(1, d_model) for _ in range(n_blocks)])
        self.proj_out = nn.Conv2d(d_model, self.c_out, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if z.dim() != 5 or z.shape[2] != self.c_in:
            raise ValueError(f"VariableAttention expected B x V x {self.c_in} x h x w, got {tuple(z.shape)}")
        b, n_vars, _, h, w = z.shape
        x = self.proj_in(z.flatten(0, 1))
        maps = []
        for i, (ffn, n_f) in enumerate(zip(self.ffn, self.norm_ffn, strict=True)):
            if self.mixing == "attention":
                mixed, weights = self.attn[i](x.view(b, n_vars, -1, h, w))
                x = self.norm_attn[i](x + mixed.flatten(0, 1))
                maps.append(weights)
            x = n_f(x + ffn(x))  # a TAU block is residual itself: x + tau(x) as in the official CIAttBlock
        out = self.proj_out(x).view(b, n_vars, self.c_out, h, w)
        if self.mixing == "none":
            return out, None
        attn_maps = torch.stack(maps, dim=1) if maps else z.new_zeros(b, 0, 1, n_vars, n_vars)
        return out, attn_maps


# ----------------------------------------------------------------------------------------------------------------
# Frozen copies, EMA and training modes


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never receive gradients (``requires_grad=False``)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target <- momentum * target + (1 - momentum) * online`` (momentum 0 = hard copy).

    Call after ``optimizer.step()``; updating before ``backward`` breaks autograd (the official code's pitfall).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_state, o_state = target.state_dict(keep_vars=True), online.state_dict(keep_vars=True)
    if t_state.keys() != o_state.keys():
        raise ValueError(f"target and online modules differ: {sorted(set(t_state) ^ set(o_state))[:5]}")
    shapes = {k: (tuple(t.shape), tuple(o_state[k].shape)) for k, t in t_state.items() if t.shape != o_state[k].shape}
    if shapes:
        first = dict(list(shapes.items())[:5])
        raise ValueError(f"target and online modules differ in shape (target, online): {first}")
    for name, t in t_state.items():
        o = o_state[name].detach()
        if t.dtype.is_floating_point:
            t.data.mul_(momentum).add_(o, alpha=1.0 - momentum)
        else:
            t.data.copy_(o)


def parameter_distance(a: nn.Module, b: nn.Module) -> float:
    """``||theta_a - theta_b||_2`` over all parameters (the EMA gap between online and target copies)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise ValueError(
            f"a and b must have the same parameters, got {len(pa)} and {len(pb)} tensors "
            f"({sum(p.numel() for p in pa)} and {sum(p.numel() for p in pb)} values)"
        )
    with torch.no_grad():  # a diagnostic: no autograd graph for the differences
        sq = sum(float((p - q).pow(2).sum()) for p, q in zip(pa, pb, strict=True))
    return sq**0.5


def _latents(out: Any) -> torch.Tensor:
    """Translators may return ``(latents, extras)``; keep the latents."""
    return out[0] if isinstance(out, tuple) else out


class ImplicitTwoStage(nn.Module):
    """Met²Net's implicit two-stage training: both stages in every step, one optimiser (official ``ITS`` method).

    Stage I: ``enc -> frozen translator copy -> dec``, forecast MSE in data space (grads reach enc, dec only).
    Stage II: ``frozen enc copy -> translator``, MSE against the frozen encoder's latents of the future frames
    (grads reach the translator only). After ``optimizer.step()`` call :meth:`after_step`: encoder/decoder
    copies follow by hard copy (``enc_momentum`` 0) and the translator copy by EMA with ``momentum``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        translator: nn.Module,
        decoder: nn.Module,
        momentum: float = 0.9,
        enc_momentum: float = 0.0,
        latent_weight: float = 1.0,
    ) -> None:
        super().__init__()
        for name, m in (("momentum", momentum), ("enc_momentum", enc_momentum)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {m}")
        if not (math.isfinite(latent_weight) and latent_weight >= 0):
            raise ValueError(f"latent_weight must be a finite number >= 0, got {latent_weight!r}")
        self.encoder, self.translator, self.decoder = encoder, translator, decoder
        self.encoder_k, self.translator_k, self.decoder_k = (frozen_copy(m) for m in (encoder, translator, decoder))
        self.momentum, self.enc_momentum, self.latent_weight = momentum, enc_momentum, latent_weight

    def train(self, mode: bool = True) -> ImplicitTwoStage:
        super().train(mode)
        for m in (self.encoder_k, self.translator_k, self.decoder_k):
            m.train(False)  # frozen copies run in eval mode (no dropout/drop-path noise in targets)
        return self

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"rec", "latent", "loss"}`` for inputs ``x`` and future frames ``y``; ``loss = rec + w * latent``."""
        _check_pair(x, y)
        pred = self.decoder(_latents(self.translator_k(self.encoder(x))))
        rec = _mse(pred, y, "ImplicitTwoStage forecast")
        with torch.no_grad():
            z_x, z_y = self.encoder_k(x), self.encoder_k(y)
        latent = _mse(_latents(self.translator(z_x)), z_y, "ImplicitTwoStage latent")
        return {"rec": rec, "latent": latent, "loss": rec + self.latent_weight * latent}

    @torch.no_grad()
    def after_step(self) -> None:
        """Let the frozen copies follow the online weights; call once after each ``optimizer.step()``."""
        ema_update_(self.encoder_k, self.encoder, self.enc_momentum)
        ema_update_(self.decoder_k, self.decoder, self.enc_momentum)
        ema_update_(self.translator_k, self.translator, self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reported forecast ``dec_k(trans(enc_k(x)))``, as in the official code."""
        return self.decoder_k(_latents(self.translator(self.encoder_k(x))))


def end_to_end_losses(
    encoder: nn.Module, translator: nn.Module, decoder: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Plain end-to-end training: forecast MSE through ``dec(trans(enc(x)))``; every part gets gradients."""
    _check_pair(x, y)
    rec = _mse(decoder(_latents(translator(encoder(x)))), y, "end-to-end forecast")
    return {"rec": rec, "loss": rec}


def explicit_two_stage_losses(
    encoder: nn.Module, translator: nn.Module, decoder: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str
) -> dict[str, torch.Tensor]:
    """Explicit two-stage training (the baseline Met²Net argues against).

    ``phase="autoencoder"``: reconstruct frames through ``dec(enc(.))`` (no translator). ``phase="translator"``:
    latent MSE of ``trans(enc(x))`` against ``enc(y)`` with the encoder's outputs detached. Freeze the parts a
    phase does not train with :func:`freeze_schedule`.
    """
    if phase not in ("autoencoder", "translator"):
        raise ValueError(f"unknown phase {phase!r}; expected 'autoencoder' or 'translator'")
    _check_pair(x, y)
    if phase == "autoencoder":
        both = torch.cat([x, y], dim=1)
        rec = _mse(decoder(encoder(both)), both, "autoencoder reconstruction")
        return {"rec": rec, "loss": rec}
    with torch.no_grad():
        z_x, z_y = encoder(x), encoder(y)
    latent = _mse(_latents(translator(z_x)), z_y, "translator latent")
    return {"latent": latent, "loss": latent}


def freeze_schedule(
    groups: Mapping[str, nn.Module | Iterable[nn.Parameter]], plan: Mapping[str, tuple[int, int | None]], step: int
) -> dict[str, bool]:
    """Set ``requires_grad`` of each parameter group for ``step``: group ``g`` trains iff ``start <= step < stop``.

    ``plan[g] = (start, stop)`` with ``stop=None`` for "until the end"; groups missing from ``plan`` train always.
    Returns ``{group: trainable}``. E.g. explicit two-stage: ``{"autoencoder": (0, k), "translator": (k, None)}``.
    """
    unknown = sorted(set(plan) - set(groups))
    if unknown:
        raise ValueError(f"freeze_schedule plan names unknown group(s) {unknown}; groups: {sorted(groups)}")
    state = {}
    for name, entry in plan.items():
        ok = isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], int)
        if not (ok and (entry[1] is None or isinstance(entry[1], int))):
            raise ValueError(
                f"freeze_schedule plan[{name!r}] must be (start, stop) with int start and int or None "
                f"stop, got {entry!r}"
            )
    for name, group in groups.items():
        start, stop = plan.get(name, (0, None))
        if stop is not None and stop < start:
            raise ValueError(f"freeze_schedule group {name!r} has stop {stop} < start {start}")
        trainable = start <= step and (stop is None or step < stop)
        params = group.parameters() if isinstance(group, nn.Module) else group
        for p in params:
            p.requires_grad_(trainable)
        state[name] = trainable
    return state
