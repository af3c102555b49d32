"""Where a Hugging Face decoder keeps its layers and branches, found by structure rather than a list of model types.

GateSkip (:mod:`labkit.gate`) wraps the attention and MLP branch of every decoder layer; which attribute holds them,
and how their outputs reach the residual stream, differ between families. :func:`architecture` finds the first
``nn.ModuleList`` of identical blocks that each hold an attention and an MLP child, then runs a probe forward with
hooks on the first block to read what the code does not name: post-branch norms (Gemma2/3, OLMo2), a parallel
residual (GPT-NeoX), a branch that adds the residual itself (Bloom, MPT), a container that does so around its
pre-norm and branch (CPM-Ant's residual sub-blocks: the branch inside is gated), a module beside the MLP
(Granite-MoE's ``shared_mlp``). A layer that runs its feed-forward inline (OPT, XGLM, BioGPT) has its entry linear
gated and its exit linear's output scaled. A layer whose output is not its input plus the two branch contributions is
refused, with what the probe saw, because gating its branches would not scale what they add.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

RESIDUAL = "residual"  # the argument through which a branch takes a residual it adds itself (Bloom, MPT)


@dataclass(frozen=True)
class Architecture:
    """Where a decoder keeps its layers and branches, as :func:`architecture` finds them by structure."""

    layers: tuple[str, ...]  # attribute path from the given model to the ModuleList of decoder layers
    attention: str  # attribute of a decoder layer holding the self-attention branch (dotted where nested: DBRX)
    mlp: str  # attribute of a decoder layer holding the MLP branch (dotted where nested)
    attention_norm: str | None = None  # norm applied to the attention output before the residual add (Gemma2/3, OLMo2)
    # the same for the MLP output; for an inline feed-forward (OPT, XGLM, BioGPT) its exit linear, not a norm: either
    # way the gate scales what the module at this name returns, which is what the residual receives
    mlp_norm: str | None = None
    parallel: bool = False  # the MLP reads the layer input, not the attention's result (GPT-NeoX parallel residual)
    mlp_sibling: str | None = None  # a child reading the MLP's input, added to its output (Granite-MoE's shared_mlp)


ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")  # else: the one child class named *Attention
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")  # else: the one child class named *MLP
# A layer that runs its feed-forward inline (OPT, XGLM, BioGPT): the entry linear is the gated branch (its input the
# normed hidden state, as any MLP's), the exit linear returns the MLP output, which the gate scales
INLINE_FFN = ("fc1", "fc2")
ARCH_ATTR = "_labkit_architecture"  # where add_gates keeps the detected layout on the model (not saved)


class ResidualSubBlock(ValueError):
    """A layer's branch returns the residual stream itself (it adds the residual inside: CPM-Ant's ``ffn``, a
    container of its pre-norm and feed-forward); ``branch`` names it, so that the branch inside can be gated."""

    def __init__(self, message: str, branch: str) -> None:
        super().__init__(message)
        self.branch = branch


class BranchWrapper(nn.Module):
    """A module that wraps a decoder branch as ``.branch`` (:mod:`labkit.gate`'s gated branches): the layout is read
    through it, so a model with gates has the layout it had without them."""

    branch: nn.Module


def architecture(model: nn.Module) -> Architecture:
    """Where ``model``'s decoder layers and branches are, found by structure (no list of model types).

    Decoder layers: the first ``nn.ModuleList`` of identical blocks that each hold an attention and an MLP child (or
    grandchild, DBRX); post-branch norms and a parallel residual are read from a probe forward (:func:`_probe`),
    which also finds a branch that returns the residual stream itself: the branch it holds is gated instead. A
    model with gates returns the layout found when they were added. ValueError naming the class and what was looked
    for otherwise.
    """
    found = model.__dict__.get(ARCH_ATTR)
    if found is not None:
        return found
    path, attention, mlp = _find_layers(model)
    try:
        return _probe(model, path, attention, mlp)
    except ResidualSubBlock as error:  # CPM-Ant's `ffn` adds the residual itself: gate the branch it holds
        role = (ATTENTION_NAMES, "Attention") if error.branch == attention else (MLP_NAMES, "MLP")
        inner = _child_branch(submodule(at_path(model, path)[0], error.branch), *role)
        if inner is None:
            raise
        nested = f"{error.branch}.{inner}"
        return _probe(model, path, *((nested, mlp) if error.branch == attention else (attention, nested)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (or its base model)."""
    found = model.__dict__.get(ARCH_ATTR)
    return at_path(model, found.layers if found is not None else _find_layers(model)[0])


def _find_layers(model: nn.Module) -> tuple[tuple[str, ...], str, str]:
    """The first ModuleList of identical blocks that each hold an attention and an MLP child, or grandchild inside one
    child (breadth first)."""
    inline = ""  # why blocks with attention but no MLP child were passed over
    for path, module in sorted(model.named_modules(), key=lambda item: item[0].count(".") if item[0] else -1):
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(layer) for layer in module}) != 1:
            continue
        attrs = [(_branch_attr(layer, ATTENTION_NAMES, "Attention"), _branch_attr(layer, MLP_NAMES, "MLP"))
                 for layer in module]
        if all(a is not None and m is None for a, m in attrs) and all(_inline_ffn(layer) for layer in module):
            attrs = [(a, INLINE_FFN[0]) for a, _ in attrs]
        if all(a is not None and m is not None for a, m in attrs) and len(set(attrs)) == 1:
            return tuple(path.split(".")), attrs[0][0], attrs[0][1]
        if not inline and all(a is not None and m is None for a, m in attrs):
            inline = _inline_mlp(module[0], attrs[0][0])
    raise ValueError(
        f"no decoder layer ModuleList with attention and MLP submodules found in {type(model).__name__}; {inline}"
        f"looked for an nn.ModuleList of identical blocks each with an attention child (named one of {ATTENTION_NAMES} "
        f"or the one child class named *Attention) and an MLP child (named one of {MLP_NAMES} or the one class named "
        "*MLP)"
    )


def _inline_ffn(layer: nn.Module) -> bool:
    """Whether ``layer`` holds an inline feed-forward's entry and exit linears (:data:`INLINE_FFN`)."""
    return all(isinstance(getattr(layer, name, None), nn.Linear) for name in INLINE_FFN)


def _inline_mlp(layer: nn.Module, attention: str) -> str:
    """Why a block with an attention child but no MLP child has no MLP branch to gate."""
    others = [n for n in dict(layer.named_children()) if n != attention.partition(".")[0]]
    return (f"{type(layer).__name__} has attention {attention!r} but no MLP child: its own forward runs the "
            f"feed-forward inline, and not through linears named {INLINE_FFN} (the entry a gate decides at, the exit "
            f"whose output it scales); its other children are {others}; ")


def _branch_attr(layer: nn.Module, names: tuple[str, ...], suffix: str) -> str | None:
    """The child of ``layer`` named one of ``names``, else the single child whose class name ends in ``suffix``;
    else that branch one level down, as ``"child.branch"``, in the one child holding it (DBRX keeps its attention in
    ``norm_attn_norm``, a container of the pre-norms and the attention)."""
    found = _child_branch(layer, names, suffix)
    if found is not None:
        return found
    nested = [f"{n}.{b}" for n, c in layer.named_children() if not isinstance(c, BranchWrapper)
              for b in [_child_branch(c, names, suffix)] if b is not None]
    return nested[0] if len(nested) == 1 else None


def _child_branch(layer: nn.Module, names: tuple[str, ...], suffix: str) -> str | None:
    """The child of ``layer`` named one of ``names``, else the single child whose class name ends in ``suffix``."""
    children = dict(layer.named_children())
    for name in names:
        if name in children:
            return name
    by_class = [n for n, c in children.items() if type(_unwrap(c)).__name__.endswith(suffix)]
    return by_class[0] if len(by_class) == 1 else None


def _unwrap(module: nn.Module) -> nn.Module:
    """The branch a gate wrapper holds, else ``module`` itself."""
    return module.branch if isinstance(module, BranchWrapper) else module


@torch.no_grad()
def _probe(model: nn.Module, path: tuple[str, ...], attention: str, mlp: str) -> Architecture:
    """Run two 3-token eval forwards with hooks on the first decoder layer to see how its branches reach the residual.

    A child norm whose input is a branch's output is that branch's post-norm; if replacing the attention output
    leaves the MLP input unchanged the layer is parallel; and the layer output must equal its input plus the two
    branch contributions, otherwise the branches are not added to the residual stream and gating them would be wrong.
    Where it does not, a child run after the MLP on the MLP's input whose output completes the sum is the MLP's
    sibling (Granite-MoE-shared's ``shared_mlp``), gated with the MLP (:class:`~labkit.gate.SiblingBranch`).
    """
    layer = at_path(model, path)[0]
    record: dict[str, Any] = {}
    branches = {attention.partition(".")[0], mlp.partition(".")[0]}  # DBRX's attention: its container's child
    other = [(n, c) for n, c in layer.named_children() if n not in branches]

    def first(args: tuple, kwargs: dict) -> Any:
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def tensor(out: Any) -> Any:
        """The output's leading tensor as it is now (a copy: Falcon adds the attention output to the MLP's in place)."""
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"a branch or layer of {type(model).__name__} returns {type(out).__name__}; labkit gates "
                             "decoder layers whose branches return a tensor or a tuple/list starting with one")
        return out.clone()

    def on_child(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if args or "hidden_states" in kwargs:
                record.setdefault("children", []).append((name, first(args, kwargs), tensor(out), "mlp" in record))

        return hook

    def on_residual(role: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            residual = given_residual(module, args, kwargs)
            if residual is not None:
                record[f"{role}_residual"] = residual.clone()

        return hook

    def on_attn(module: nn.Module, args: tuple, out: Any) -> Any:
        record["attn"] = tensor(out)
        if record.get("perturb"):
            return with_first(out, tensor(out) + 1.0) if isinstance(out, (tuple, list)) else out + 1.0
        return None

    handles = [
        layer.register_forward_pre_hook(lambda m, a, k: record.__setitem__("in", first(a, k)), with_kwargs=True),
        layer.register_forward_hook(lambda m, a, out: record.__setitem__("out", tensor(out))),
        submodule(layer, attention).register_forward_hook(on_attn),
        submodule(layer, mlp).register_forward_hook(lambda m, a, out: record.__setitem__("mlp", tensor(out))),
        submodule(layer, mlp).register_forward_pre_hook(
            lambda m, a, k: record.__setitem__("mlp_in", first(a, k).clone()), with_kwargs=True
        ),
        *(c.register_forward_hook(on_child(n), with_kwargs=True) for n, c in other),
        *(submodule(layer, attr).register_forward_pre_hook(on_residual(role), with_kwargs=True)
          for role, attr in (("attn", attention), ("mlp", mlp))),
    ]
    try:
        probe_forward(model)
        found = dict(record)
        record.clear()
        record["perturb"] = True
        probe_forward(model)
    except Exception as error:
        raise ValueError(f"could not run a probe forward of {type(model).__name__} on three tokens to find how its "
                         f"branches reach the residual stream: {error}") from error
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in ("in", "out", "attn", "mlp", "mlp_in") if k not in found]
    if missing:
        raise ValueError(f"the probe forward of {type(model).__name__} never ran {missing} of {type(layer).__name__} "
                         f"as single modules (its {attention!r} / {mlp!r} children are containers, not branches)")
    for role in ("attn", "mlp"):  # a branch that adds the residual it is given (Bloom, MPT): its contribution alone
        if f"{role}_residual" in found:
            found[role] = found[role] - found[f"{role}_residual"]
    children = found.get("children", [])
    attention_norm = next((n for n, x, _, _ in children if _same(x, found["attn"]) and "norm" in n.lower()), None)
    mlp_norm = next((n for n, x, _, _ in children if _same(x, found["mlp"]) and "norm" in n.lower()), None)
    if mlp == INLINE_FFN[0]:  # the exit linear returns the MLP output (OPT's with the tokens flattened)
        mlp_norm = INLINE_FFN[1]
    outputs = {n: y for n, _, y, _ in children}
    a = outputs[attention_norm] if attention_norm else found["attn"]
    m = outputs[mlp_norm] if mlp_norm else found["mlp"]
    h_in, h_out = found["in"], found["out"]
    a, m = (x.reshape(h_out.shape) if x.numel() == h_out.numel() else x for x in (a, m))  # Llama4's MoE: flattened
    if not h_in.shape == h_out.shape == a.shape == m.shape:
        raise ValueError(
            f"{type(layer).__name__} in {type(model).__name__} does not map one residual stream to one: layer input "
            f"{tuple(h_in.shape)}, output {tuple(h_out.shape)}, {attention!r} {tuple(a.shape)}, {mlp!r} "
            f"{tuple(m.shape)} (several residual streams, e.g. hyper-connections, are not supported)")
    side = _side_branches(children, h_out)
    fit, error, exact = _residual_fit(h_in, a, m, h_out, tuple(side.values()))
    sibling = None
    if error is not None and mlp_norm is None:  # a module beside the MLP, run after it on its input (shared_mlp)
        beside = [(n, y) for n, x, y, after in children
                  if after and "norm" not in n.lower() and _same(x, found["mlp_in"]) and y.shape == m.shape]
        if len(beside) == 1 and _residual_fit(h_in, a, m + beside[0][1], h_out, tuple(side.values()))[1] is None:
            sibling, error = beside[0][0], None
    if error is not None:
        message = (
            f"{type(layer).__name__} in {type(model).__name__} does not add its {attention!r} and {mlp!r} outputs "
            f"(after post-norms {attention_norm!r}, {mlp_norm!r}) to a kept residual stream: "
            f"{_fit_hint(found, fit, exact, attention, mlp)}"
            f"the best fit h_out = {fit[0]:.3g} h_in + {fit[1]:.3g} attention + {fit[2]:.3g} mlp"
            + "".join(f" + {c:.3g} {n}" for n, c in zip(side, fit[3:].tolist(), strict=True))
            + f" misses by {error:.3g}; looked for h_out = α h_in + β attention + γ mlp (+ post-normed side "
            "branches) with scalars α, β, γ != 0"
        )
        block = _sub_block(fit, exact, attention, mlp)
        raise ValueError(message) if block is None else ResidualSubBlock(message, block)
    parallel = torch.equal(record["mlp_in"], found["mlp_in"])
    return Architecture(path, attention, mlp, attention_norm, mlp_norm, parallel, sibling)


def _same(x: Any, y: torch.Tensor) -> bool:
    """Whether a probe's recorded input ``x`` holds the values of tensor ``y``."""
    return isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)


def _residual_fit(
    h_in: torch.Tensor, a: torch.Tensor, m: torch.Tensor, h_out: torch.Tensor, side: tuple[torch.Tensor, ...] = ()
) -> tuple[torch.Tensor, float | None, bool]:
    """Least-squares scalars (α, β, γ, then one per ``side`` branch) of h_out = α h_in + β a + γ m + ..., the miss
    where the fit fails (None: it holds), and whether the miss is within 1e-3 of the terms' scale (the sum is right
    though a coefficient may be 0: what :func:`_fit_hint` reads to tell a residual sub-block).

    1, 1, 1 in most families; β = γ = a residual multiplier (Granite's muP, MiniCPM's depth scale); Gemma 4 scales the
    whole sum by a per-layer scalar. Gating a branch scales its term whatever β or γ, and a skipped one adds nothing.
    Ungated side branches add terms of their own (any coefficient).
    """
    terms = torch.stack([x.double().flatten() for x in (h_in, a, m, *side)], dim=1)
    fit = torch.linalg.lstsq(terms, h_out.double().flatten()[:, None]).solution.flatten()
    error = (h_out.double().flatten() - terms @ fit).abs().max()
    scale = h_in.abs().max() + a.abs().max() + m.abs().max()
    holds = error <= max(1e-4, 32 * torch.finfo(h_out.dtype).eps) * scale and (fit[:3].abs() > 1e-3).all()
    miss = float(error)
    return fit, None if holds else miss, miss <= 1e-3 * float(scale)


def _sub_block(fit: torch.Tensor, exact: bool, attention: str, mlp: str) -> str | None:
    """The branch whose output alone is the layer output (h_out = 1 · it exactly, α ≈ 0 and the other's coefficient ≈
    0): it returns the residual stream itself, adding the residual inside (a residual sub-block); else None."""
    one = [name for name, c in ((attention, fit[1]), (mlp, fit[2])) if abs(float(c) - 1) <= 1e-3]
    flat = abs(float(fit[0])) <= 1e-3 and min(abs(float(fit[1])), abs(float(fit[2]))) <= 1e-3
    return one[0] if exact and flat and len(one) == 1 else None


def _fit_hint(found: dict, fit: torch.Tensor, exact: bool, attention: str, mlp: str) -> str:
    """What the probe saw that breaks h_out = α h_in + β attention + γ mlp, as clauses ending in "; " (or "")."""
    hints = []
    if abs(float(fit[0])) <= 1e-3:
        block = _sub_block(fit, exact, attention, mlp)
        if block is not None:
            hints.append(f"{block!r} returns the residual stream itself (it adds the residual inside: a residual "
                         "sub-block), not a branch output")
        else:
            hints.append("the output does not keep the layer input (α ≈ 0): the layer rebuilds its residual stream "
                         "from other inputs (e.g. an attention over earlier blocks' outputs)")
    for role, name in (("attn", attention), ("mlp", mlp)):
        hints += [f"its child {child!r} transforms the {name!r} output before the residual add (only a norm may)"
                  for child, x, y, _ in found.get("children", [])
                  if _same(x, found[role]) and "norm" not in child.lower() and not torch.equal(x, y)]  # not dropout
    return "".join(f"{h}; " for h in hints)


def _side_branches(children: list[tuple[str, Any, Any, bool]], h_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of a layer's post-normed side branches, by norm name: a child norm whose input is another (non-norm)
    child's output, e.g. Gemma 3n / 4's per-layer-input projection. Each adds an ungated term to the residual."""
    made = [y for n, _, y, _ in children if "norm" not in n.lower()]
    return {n: y for n, x, y, _ in children
            if "norm" in n.lower() and y.shape == h_out.shape and any(_same(x, o) for o in made)}


def probe_forward(model: nn.Module) -> None:
    """One eval forward of three tokens (0, 1, 2) without a cache; training flags restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    vocab = getattr(model.config, "vocab_size", None) or 2
    try:
        model(input_ids=(torch.arange(3, device=next(model.parameters()).device) % vocab)[None], use_cache=False)
    finally:
        for m, training in modes.items():
            m.training = training


@functools.cache
def residual_position(cls: type) -> int | None:
    """Where the forward of module class ``cls`` takes a ``residual`` argument it adds to its output (Bloom, MPT), else
    None; the signature is read once per class."""
    parameters = list(inspect.signature(cls.forward).parameters)[1:]  # without self
    return parameters.index(RESIDUAL) if RESIDUAL in parameters else None


@functools.cache
def _parameter_names(cls: type) -> tuple[str, ...]:
    """The names of the positional parameters of ``cls.forward`` after ``self``, up to any ``*args``; read once."""
    names = []
    for parameter in list(inspect.signature(cls.forward).parameters.values())[1:]:
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        names.append(parameter.name)
    return tuple(names)


def call_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The keyword arguments of a call of ``module``, with the positional ones after its first (the hidden states)
    named as its forward names them: CPM-Ant hands its attention the mask, position bias and cache by position, where
    labkit's skipping reads them. ``kwargs`` itself where there are none (no copy, on every branch call)."""
    if len(args) <= 1:
        return kwargs
    return {**dict(zip(_parameter_names(type(_unwrap(module)))[1:], args[1:], strict=False)), **kwargs}


def residual_argument(args: tuple, kwargs: dict, at: int) -> tuple[torch.Tensor | None, bool]:
    """The residual a branch call hands over, by keyword or else at position ``at`` (None where it hands none), and
    whether it came by keyword."""
    if RESIDUAL in kwargs:
        return kwargs[RESIDUAL], True
    return (args[at] if len(args) > at else None), False


def given_residual(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The residual a call hands a branch that adds it to its output itself (Bloom, MPT; wrapped or not), else None."""
    at = residual_position(type(_unwrap(module)))
    return None if at is None else residual_argument(args, kwargs, at)[0]


def with_first(out: tuple | list, first: torch.Tensor) -> tuple | list:
    """A branch's output container (tuple, list or named tuple) with ``first`` in place of its leading tensor."""
    if hasattr(out, "_fields"):
        return type(out)(first, *out[1:])
    return type(out)([first, *out[1:]])


def submodule(layer: nn.Module, attr: str) -> nn.Module:
    """The module at ``attr`` of ``layer``: a child's name, or a dotted path to a grandchild (DBRX's attention)."""
    return at_path(layer, tuple(attr.split(".")))


def replace_submodule(layer: nn.Module, attr: str, module: nn.Module) -> None:
    """Put ``module`` at ``attr`` of ``layer`` (a child name or a dotted path)."""
    parent, _, name = attr.rpartition(".")
    setattr(submodule(layer, parent) if parent else layer, name, module)


def at_path(model: nn.Module, path: tuple[str, ...]) -> Any:
    node = model
    for attr in path:
        node = getattr(node, attr)
    return node
