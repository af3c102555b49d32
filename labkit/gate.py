"""Residual gates on the attention and MLP branches of any Hugging Face decoder LM (GateSkip).

Laitenberger et al., "What Layers When: Learning to Skip Compute in LLMs with Residual Gates", arXiv 2510.13876.
Each branch F of every decoder layer is wrapped so that it returns ``g * F(u)`` with ``g = sigmoid(W stopgrad(u) + b)``
read from the branch input ``u``; the token's importance for that branch is ``mean(g)``. Wrapping (not replacing
``forward``) keeps ``generate`` and ``save_pretrained`` working: the saved keys of the original weights are unchanged,
so plain ``from_pretrained`` loads the backbone and warns about the gate keys, and :func:`from_pretrained` here
restores the gates too. Skipping itself (budgets, compact execution) lives in :mod:`labkit.skip`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from labkit.config import Count, check_value, number_in_range, renamed

GATE_KINDS = ("vector", "scalar", "none")
PENALTY_KINDS = ("l2", "l1", "kl")
CONFIG_KEY = "labkit_gates"  # attribute added to the HF config so a saved gated model says how to rebuild its gates
GATE_ATTR = "residual_gate"  # submodule name of the gate inside a wrapped branch (and in saved keys)
RESIDUAL = "residual"  # the argument through which a branch takes a residual it adds itself (Bloom, MPT)


@dataclass(frozen=True)
class Architecture:
    """Where a decoder keeps its layers and branches, as :func:`architecture` finds them by structure."""

    layers: tuple[str, ...]  # attribute path from the given model to the ModuleList of decoder layers
    attention: str  # attribute of a decoder layer holding the self-attention branch (dotted where nested: DBRX)
    mlp: str  # attribute of a decoder layer holding the MLP branch (dotted where nested)
    attention_norm: str | None = None  # norm applied to the attention output before the residual add (Gemma2/3, OLMo2)
    mlp_norm: str | None = None  # the same for the MLP output
    parallel: bool = False  # the MLP reads the layer input, not the attention's result (GPT-NeoX parallel residual)
    mlp_sibling: str | None = None  # a child reading the MLP's input, added to its output (Granite-MoE's shared_mlp)


ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")  # else: the one child class named *Attention
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")  # else: the one child class named *MLP
ARCH_ATTR = "_labkit_architecture"  # where add_gates keeps the detected layout on the model (not saved)


class ResidualGate(nn.Module):
    """``g = sigmoid(W stopgrad(u) + b)``: d outputs ("vector") or 1 ("scalar"); init b = 5, W ~ N(0, std)."""

    def __init__(
        self,
        hidden_size: int,
        kind: str = "vector",
        init_bias: float = 5.0,
        init_std: float = 0.01,
        detach_input: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("vector", "scalar"):
            raise ValueError(f"gate kind must be 'vector' or 'scalar', got {kind!r}")
        check_value("hidden_size", hidden_size, Count)
        _check_init(init_bias, init_std)
        self.kind = kind
        self.detach_input = detach_input
        self.linear = nn.Linear(hidden_size, hidden_size if kind == "vector" else 1)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, init_std)
            self.linear.bias.fill_(init_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # F.linear on the weights, not self.linear(...), and no detach where u carries no gradient: every op counts
        # at one branch and one decoding step (labkit's gated decode is within ~1-2 % of the ungated model's)
        stop = self.detach_input and u.requires_grad
        return torch.sigmoid(F.linear(u.detach() if stop else u, self.linear.weight, self.linear.bias))


def _check_init(init_bias: float, init_std: float) -> None:
    """Gate initialisation: a finite bias and a finite std >= 0 (NaN would silently make every gate NaN)."""
    number_in_range("init_bias", init_bias)
    number_in_range("init_std", init_std, 0.0)


class SkipPolicy(Protocol):
    """What a wrapped branch asks while a skip context (``labkit.skip.budget``) is active."""

    execution: str

    def decide(self, branch: GatedBranch, importance: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """Boolean keep mask (batch, tokens), or None to keep every token."""

    def compact(
        self, branch: GatedBranch | SiblingBranch, hidden: torch.Tensor, keep: torch.Tensor, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """Run the branch on the kept tokens only; zeros elsewhere, shape of ``hidden``."""

    def after(self, branch: GatedBranch, keep: torch.Tensor | None, kwargs: dict) -> None:
        """Called after the branch ran (e.g. to copy a skipped token's K/V forward)."""


class GatedBranch(nn.Module):
    """A decoder branch (attention or MLP) with a residual gate on its output.

    Returns what the branch returns, with the hidden-state output multiplied by the gate (and by the keep mask
    when a skip policy is active). Where the family normalises the branch output before the residual add (Gemma2/3,
    OLMo2), the branch output is only masked here and the gate multiplies the post-norm's output instead (a forward
    hook on that norm, see :meth:`attach_post_norm`), so the gate always scales what is added to the residual.
    A branch that takes the residual and adds it itself (Bloom, MPT) is handed zero in its place; the residual is
    added after the gate. Saved under the original key names; the gate adds ``<name>.residual_gate.*``.
    """

    def __init__(self, branch: nn.Module, gate: ResidualGate | None, layer_index: int, role: str) -> None:
        super().__init__()
        self.branch = branch
        self.residual_gate = gate
        self.layer_index = layer_index
        self.role = role  # "attn" or "mlp"
        self.policy: SkipPolicy | None = None  # set only inside a labkit.skip context
        self.last_gate: torch.Tensor | None = None  # gate values of the latest forward, for gate_penalty
        self.last_keep: torch.Tensor | None = None  # keep mask of the latest forward, for a SiblingBranch
        self.post_norm_hook: Any = None  # handle of the hook on the family's post-branch norm, if it has one
        self.pending_scale: torch.Tensor | None = None  # gate x keep waiting for that post-norm
        self.arity: int | None = None  # the branch returns a tensor (0) or a tuple of this length (Llama4's MoE: 2)
        self.own_extras: tuple[str | None, ...] = ()  # names of the branch's parameters among its extra outputs
        self.record_probe = False  # set by add_gates around its probe forward
        self.probe: tuple[torch.Tensor, tuple, dict] | None = None  # (input, arguments, keyword arguments) of it
        self.compact_error: str | None = None  # why compact execution cannot reproduce this branch (None: it can)
        self.compact_checked = False  # compact execution was compared with the probe (labkit.skip does it once)
        self.residual_at = _residual_position(branch)  # the branch returns residual + F(u) itself (Bloom, MPT)
        self.register_state_dict_post_hook(_flatten_branch_keys)
        self.register_load_state_dict_pre_hook(_nest_branch_keys)

    @property
    def name(self) -> str:
        return f"{self.layer_index}.{self.role}"

    def attach_post_norm(self, norm: nn.Module) -> None:
        """Scale ``norm``'s output (the branch's contribution to the residual) by this branch's gate and keep mask."""
        self.post_norm_hook = norm.register_forward_hook(self._scale_post_norm)

    def detach_post_norm(self) -> None:
        if self.post_norm_hook is not None:
            self.post_norm_hook.remove()
            self.post_norm_hook = None

    def _scale_post_norm(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        scale, self.pending_scale = self.pending_scale, None
        return output if scale is None else output * scale

    def _compact_extras(self, arity: int) -> tuple:
        """What a compact branch returns after its output: a parameter of the branch where its own forward returned
        one (GPT-NeoX-Japanese's output bias, which its layer adds), else None (attention weights and router logits
        are not computed)."""
        names = self.own_extras or (None,) * (arity - 1)
        return tuple(None if name is None else self.branch.get_parameter(name) for name in names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        residual = None
        if self.residual_at is not None:  # the branch gets a zero residual, so that F(u) alone is gated and masked
            args, kwargs, residual = _zero_residual(args, kwargs, self.residual_at)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        gate = self.residual_gate
        g = gate.forward(hidden) if gate is not None else None  # a gate has no hooks: skip the module-call overhead
        object.__setattr__(self, "last_gate", g)  # as Module.__setattr__ would, without its ~9 us of checks per call
        policy = self.policy
        keep = None
        if policy is not None:
            importance = None if g is None else g.squeeze(-1) if g.shape[-1] == 1 else g.mean(-1)  # scalar: a view
            keep = policy.decide(self, importance, hidden)
        object.__setattr__(self, "last_keep", keep)
        out: Any = None
        if keep is not None and policy.execution == "compact":
            y = policy.compact(self, hidden, keep, args, kwargs)
            arity = self.arity if self.arity is not None else 2 if self.role == "attn" else 0
            rest: tuple | None = self._compact_extras(arity) if arity else None
        else:
            out = self.branch(*args, **kwargs)
            y, rest = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, None)
            if self.arity is None:
                self.arity = 0 if rest is None else len(out)
                self.own_extras = _parameter_names(self.branch, rest or ())
            y = y.view(hidden.shape) if y.shape != hidden.shape else y  # Llama4's MoE returns tokens flattened
            if self.record_probe:  # an input compact execution is checked on (by labkit.skip, before first use)
                self.probe = (hidden.detach(), *map_tensors(torch.Tensor.detach, (args, kwargs)))
            if keep is not None:
                y = y * keep.unsqueeze(-1).to(y.dtype)
        if self.post_norm_hook is not None:  # the post-norm's output is what the residual receives: scale that
            mask = keep.unsqueeze(-1).to(y.dtype) if keep is not None else None
            self.pending_scale = g if mask is None else mask if g is None else g * mask
        elif g is not None:
            y = y * g
        if residual is not None:
            y = residual + y
        if keep is not None:
            policy.after(self, keep, kwargs)
        if rest is None:
            return y
        return with_first(out, y) if out is not None else (y, *rest)  # the branch's own container (named tuples)


def _parameter_names(module: nn.Module, values: tuple) -> tuple[str | None, ...]:
    """For each of ``values``, its name if it is a parameter of ``module``, else None."""
    names = {id(p): name for name, p in module.named_parameters()}
    return tuple(names.get(id(v)) if isinstance(v, nn.Parameter) else None for v in values)


class SiblingBranch(nn.Module):
    """A module beside a layer's MLP that reads the MLP's input and whose output the layer adds to the MLP's
    (Granite-MoE-shared's ``shared_mlp``), run under that MLP branch's gate and keep mask: the gated branch is the sum.

    The layer runs it after the MLP on the same input, so the MLP's latest gate and keep mask are this token's; under
    compact execution it runs on the kept tokens only. Saved under the original key names; it has no gate of its own.
    """

    role = "mlp"  # what a skip policy's compact execution reads of a branch, besides ``branch``

    def __init__(self, branch: nn.Module, leader: GatedBranch) -> None:
        super().__init__()
        self.branch = branch
        object.__setattr__(self, "leader", leader)  # not a submodule: the MLP's weights stay under its own name
        self.register_state_dict_post_hook(_flatten_branch_keys)
        self.register_load_state_dict_pre_hook(_nest_branch_keys)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        keep, g, policy = self.leader.last_keep, self.leader.last_gate, self.leader.policy
        if keep is not None and policy.execution == "compact":
            y = policy.compact(self, hidden, keep, (hidden,), {})
        else:
            y = self.branch(hidden)
            y = y if keep is None else y * keep.unsqueeze(-1).to(y.dtype)
        return y if g is None else y * g


def _residual_position(module: nn.Module) -> int | None:
    """Where ``module``'s forward takes a ``residual`` argument it adds to its output (Bloom, MPT), else None."""
    return _residual_position_in(type(module))


@functools.cache
def _residual_position_in(cls: type) -> int | None:
    """:func:`_residual_position` of a module class (its forward's signature, read once per class)."""
    parameters = list(inspect.signature(cls.forward).parameters)[1:]  # without self
    return parameters.index(RESIDUAL) if RESIDUAL in parameters else None


def given_residual(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The residual a call hands a branch that adds it to its output itself (Bloom, MPT; wrapped or not), else None."""
    at = _residual_position(_unwrap(module))
    if at is None:
        return None
    return kwargs[RESIDUAL] if RESIDUAL in kwargs else args[at] if len(args) > at else None


def _zero_residual(args: tuple, kwargs: dict, at: int) -> tuple[tuple, dict, torch.Tensor]:
    """A branch call's arguments with its residual (position ``at``, or by keyword) replaced in place by a zero that
    broadcasts, and that residual: the branch then returns its own contribution alone."""
    if RESIDUAL in kwargs:
        residual = kwargs[RESIDUAL]
        return args, {**kwargs, RESIDUAL: residual.new_zeros(())}, residual
    residual = args[at]
    return (*args[:at], residual.new_zeros(()), *args[at + 1 :]), kwargs, residual


def with_first(out: tuple | list, first: torch.Tensor) -> tuple | list:
    """A branch's output container (tuple, list or named tuple) with ``first`` in place of its leading tensor."""
    if hasattr(out, "_fields"):
        return type(out)(first, *out[1:])
    return type(out)([first, *out[1:]])


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, through tuples (positional arguments, rotary cos/sin) and
    dicts (keyword arguments): how a branch's recorded probe call is detached or widened."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def _flatten_branch_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "branch.")]:
        state_dict[prefix + key[len(prefix + "branch.") :]] = state_dict.pop(key)


def _nest_branch_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if not rest.startswith((GATE_ATTR + ".", "branch.")):
            state_dict[prefix + "branch." + rest] = state_dict.pop(key)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.branch if isinstance(module, (GatedBranch, SiblingBranch)) else module


def _branch_attr(layer: nn.Module, names: tuple[str, ...], suffix: str) -> str | None:
    """The child of ``layer`` named one of ``names``, else the single child whose class name ends in ``suffix``;
    else that branch one level down, as ``"child.branch"``, in the one child holding it (DBRX keeps its attention in
    ``norm_attn_norm``, a container of the pre-norms and the attention)."""
    found = _child_branch(layer, names, suffix)
    if found is not None:
        return found
    nested = [f"{n}.{b}" for n, c in layer.named_children() if not isinstance(c, GatedBranch)
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


def submodule(layer: nn.Module, attr: str) -> nn.Module:
    """The module at ``attr`` of ``layer``: a child's name, or a dotted path to a grandchild (DBRX's attention)."""
    return _get(layer, tuple(attr.split(".")))


def _replace(layer: nn.Module, attr: str, module: nn.Module) -> None:
    """Put ``module`` at ``attr`` of ``layer`` (a child name or a dotted path)."""
    parent, _, name = attr.rpartition(".")
    setattr(submodule(layer, parent) if parent else layer, name, module)


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


def _inline_mlp(layer: nn.Module, attention: str) -> str:
    """Why a block with an attention child but no MLP child has no MLP branch to gate (OPT, BioGPT, XGLM)."""
    others = [n for n in dict(layer.named_children()) if n != attention.partition(".")[0]]
    return (f"{type(layer).__name__} has attention {attention!r} but no MLP child: its own forward runs the "
            "feed-forward inline, so no module returns the MLP output for a gate to scale (gating it would mean "
            f"rewriting that forward); its other children are {others}; ")


@torch.no_grad()
def _probe(model: nn.Module, path: tuple[str, ...], attention: str, mlp: str) -> Architecture:
    """Run two 3-token eval forwards with hooks on the first decoder layer to see how its branches reach the residual.

    A child norm whose input is a branch's output is that branch's post-norm; if replacing the attention output
    leaves the MLP input unchanged the layer is parallel; and the layer output must equal its input plus the two
    branch contributions, otherwise the branches are not added to the residual stream and gating them would be wrong.
    Where it does not, a child run after the MLP on the MLP's input whose output completes the sum is the MLP's
    sibling (Granite-MoE-shared's ``shared_mlp``), gated with the MLP (:class:`SiblingBranch`).
    """
    layer = _get(model, path)[0]
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
        _probe_forward(model)
        found = dict(record)
        record.clear()
        record["perturb"] = True
        _probe_forward(model)
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
    fit, error = _residual_fit(h_in, a, m, h_out, tuple(side.values()))
    sibling = None
    if error is not None and mlp_norm is None:  # a module beside the MLP, run after it on its input (shared_mlp)
        beside = [(n, y) for n, x, y, after in children
                  if after and "norm" not in n.lower() and _same(x, found["mlp_in"]) and y.shape == m.shape]
        if len(beside) == 1 and _residual_fit(h_in, a, m + beside[0][1], h_out, tuple(side.values()))[1] is None:
            sibling, error = beside[0][0], None
    if error is not None:
        raise ValueError(
            f"{type(layer).__name__} in {type(model).__name__} does not add its {attention!r} and {mlp!r} outputs "
            f"(after post-norms {attention_norm!r}, {mlp_norm!r}) to a kept residual stream: "
            f"{_fit_hint(found, fit, error <= 1e-3 * float(sum(x.abs().max() for x in (h_in, a, m))), attention, mlp)}"
            f"the best fit h_out = {fit[0]:.3g} h_in + {fit[1]:.3g} attention + {fit[2]:.3g} mlp"
            + "".join(f" + {c:.3g} {n}" for n, c in zip(side, fit[3:].tolist(), strict=True))
            + f" misses by {error:.3g}; looked for h_out = α h_in + β attention + γ mlp (+ post-normed side "
            "branches) with scalars α, β, γ != 0"
        )
    parallel = torch.equal(record["mlp_in"], found["mlp_in"])
    return Architecture(path, attention, mlp, attention_norm, mlp_norm, parallel, sibling)


def _same(x: Any, y: torch.Tensor) -> bool:
    """Whether a probe's recorded input ``x`` holds the values of tensor ``y``."""
    return isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)


def _residual_fit(
    h_in: torch.Tensor, a: torch.Tensor, m: torch.Tensor, h_out: torch.Tensor, side: tuple[torch.Tensor, ...] = ()
) -> tuple[torch.Tensor, float | None]:
    """Least-squares scalars (α, β, γ, then one per ``side`` branch) of h_out = α h_in + β a + γ m + ..., and the miss
    where the fit fails (None: it holds).

    1, 1, 1 in most families; β = γ = a residual multiplier (Granite's muP, MiniCPM's depth scale); Gemma 4 scales the
    whole sum by a per-layer scalar. Gating a branch scales its term whatever β or γ, and a skipped one adds nothing.
    Ungated side branches add terms of their own (any coefficient).
    """
    terms = torch.stack([x.double().flatten() for x in (h_in, a, m, *side)], dim=1)
    fit = torch.linalg.lstsq(terms, h_out.double().flatten()[:, None]).solution.flatten()
    error = (h_out.double().flatten() - terms @ fit).abs().max()
    scale = h_in.abs().max() + a.abs().max() + m.abs().max()
    holds = error <= max(1e-4, 32 * torch.finfo(h_out.dtype).eps) * scale and (fit[:3].abs() > 1e-3).all()
    return fit, None if holds else float(error)


def _fit_hint(found: dict, fit: torch.Tensor, exact: bool, attention: str, mlp: str) -> str:
    """What the probe saw that breaks h_out = α h_in + β attention + γ mlp, as clauses ending in "; " (or "")."""
    hints = []
    if abs(float(fit[0])) <= 1e-3:
        one = [name for name, c in ((attention, fit[1]), (mlp, fit[2])) if abs(float(c) - 1) <= 1e-3]
        if exact and len(one) == 1 and min(abs(float(fit[1])), abs(float(fit[2]))) <= 1e-3:
            hints.append(f"{one[0]!r} returns the residual stream itself (it adds the residual inside: a residual "
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


def _probe_forward(model: nn.Module) -> None:
    """One eval forward of three tokens (0, 1, 2) without a cache; training flags restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    vocab = getattr(model.config, "vocab_size", None) or 2
    try:
        model(input_ids=(torch.arange(3, device=next(model.parameters()).device) % vocab)[None], use_cache=False)
    finally:
        for m, training in modes.items():
            m.training = training


def _get(model: nn.Module, path: tuple[str, ...]) -> Any:
    node = model
    for attr in path:
        node = getattr(node, attr)
    return node


def architecture(model: nn.Module) -> Architecture:
    """Where ``model``'s decoder layers and branches are, found by structure (no list of model types).

    Decoder layers: the first ``nn.ModuleList`` of identical blocks that each hold an attention and an MLP child (or
    grandchild, DBRX); post-branch norms and a parallel residual are read from a probe forward (:func:`_probe`). A
    model with gates returns the layout found when they were added. ValueError naming the class and what was looked
    for otherwise.
    """
    found = model.__dict__.get(ARCH_ATTR)
    if found is not None:
        return found
    path, attention, mlp = _find_layers(model)
    return _probe(model, path, attention, mlp)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (or its base model)."""
    found = model.__dict__.get(ARCH_ATTR)
    return _get(model, found.layers if found is not None else _find_layers(model)[0])


def gated_branches(model: nn.Module) -> list[GatedBranch]:
    """The wrapped branches in execution order (layer 0 attention, layer 0 MLP, layer 1 attention, ...)."""
    return [m for m in model.modules() if isinstance(m, GatedBranch)]


def add_gates(
    model: nn.Module, kind: str = "vector", init_bias: float = 5.0, init_std: float = 0.01, detach_input: bool = True
) -> nn.Module:
    """Wrap every attention and MLP branch with a residual gate (GateSkip §3); returns ``model``.

    ``kind``: "vector" (d outputs, the paper's default), "scalar" (1 output, far cheaper) or "none" (a wrapper
    without gate, used by random and static skipping). Gates start nearly open (sigmoid(5) = 0.993).
    """
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind must be one of {GATE_KINDS}, got {kind!r}")
    if gated_branches(model):
        raise ValueError(f"{type(model).__name__} already has gates; call remove_gates(model) first")
    arch = architecture(model)
    if kind != "none":
        _check_init(init_bias, init_std)
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    ref = next(model.parameters())
    for index, layer in enumerate(_get(model, arch.layers)):
        for role, attr, norm in (("attn", arch.attention, arch.attention_norm), ("mlp", arch.mlp, arch.mlp_norm)):
            gate = None
            if kind != "none":
                gate = ResidualGate(hidden, kind, init_bias, init_std, detach_input).to(ref.device, ref.dtype)
            wrapped = GatedBranch(submodule(layer, attr), gate, index, role).train(layer.training)
            if norm is not None:
                wrapped.attach_post_norm(getattr(layer, norm))
            _replace(layer, attr, wrapped)
        if arch.mlp_sibling is not None:
            sibling = SiblingBranch(submodule(layer, arch.mlp_sibling), submodule(layer, arch.mlp))
            _replace(layer, arch.mlp_sibling, sibling)
    model.__dict__[ARCH_ATTR] = arch
    branches = gated_branches(model)
    for b in branches:
        b.record_probe = True
    try:  # every branch sees one forward: it knows what it returns, and what compact execution must reproduce
        with torch.no_grad():
            _probe_forward(model)
    finally:
        for b in branches:
            b.record_probe = False
    setattr(
        model.config,
        CONFIG_KEY,
        {"kind": kind, "init_bias": init_bias, "init_std": init_std, "detach_input": detach_input},
    )
    return model


def remove_gates(model: nn.Module) -> nn.Module:
    """Undo :func:`add_gates`: put the original branch modules back (their trained weights kept)."""
    if not gated_branches(model):
        raise ValueError(f"{type(model).__name__} has no gates to remove")
    arch = architecture(model)
    for layer in _get(model, arch.layers):
        for attr in (arch.attention, arch.mlp, arch.mlp_sibling):
            wrapped = submodule(layer, attr) if attr is not None else None
            if isinstance(wrapped, GatedBranch):
                wrapped.detach_post_norm()
            if isinstance(wrapped, (GatedBranch, SiblingBranch)):
                _replace(layer, attr, wrapped.branch)
    model.__dict__.pop(ARCH_ATTR, None)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model


@renamed(kind="penalty", target_keep="keep_fraction")
def gate_penalty(model: nn.Module, penalty: str = "l2", keep_fraction: float = 0.8) -> torch.Tensor:
    """Mean over branches of the gate penalty of the latest forward: l2 mean(g^2) (paper), l1 mean(g), or
    kl = KL(Bernoulli(g) || Bernoulli(keep_fraction)) as in the official ablations."""
    if penalty not in PENALTY_KINDS:
        raise ValueError(f"penalty must be one of {PENALTY_KINDS}, got {penalty!r}")
    if penalty == "kl":  # at 0 or 1 the KL is infinite
        number_in_range("keep_fraction (the kl penalty's target keep rate)", keep_fraction, 0.0, 1.0, "()")
    values = [b.last_gate for b in gated_branches(model) if b.last_gate is not None]
    if not values:
        raise ValueError("no gate values recorded: add_gates(model, kind='vector'|'scalar') and run a forward first")
    terms = []
    for g in values:
        if penalty == "l2":
            terms.append(g.pow(2).mean())
        elif penalty == "l1":
            terms.append(g.abs().mean())
        else:
            p = g.clamp(1e-6, 1 - 1e-6)
            q = torch.as_tensor(keep_fraction, dtype=g.dtype, device=g.device)
            terms.append((p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean())
    return torch.stack(terms).mean()


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every residual gate of ``model`` (none for a model without gates)."""
    return [p for b in gated_branches(model) if b.residual_gate is not None for p in b.residual_gate.parameters()]


def parameter_groups(model: nn.Module, lr: float, gate_lr: float = 0.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: the residual gates' parameters at peak ``gate_lr`` (0: ``lr``), all others at ``lr``.

    The paper trains the gates alone at lr 1e-4 against 3e-6 for the full fine-tune; with AdamW each parameter moves
    about lr per step, so a short fine-tune at the backbone's lr hardly moves the gate bias from its init of 5.
    A model without gates gets one group.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(gate_lr, (int, float)) and math.isfinite(gate_lr) and gate_lr >= 0):
        raise ValueError(f"gate_lr must be a finite number >= 0 (0: the same as lr), got {gate_lr!r}")
    gate_ids = {id(p) for p in gate_parameters(model)}
    rest = [p for p in model.parameters() if id(p) not in gate_ids]
    gates = [p for p in model.parameters() if id(p) in gate_ids]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": lr}]
    if gates:
        groups.append({"params": gates, "lr": gate_lr if gate_lr > 0 else lr})
    return groups


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if not index.exists():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        tensors.update(load_file(str(path / shard)))
    return tensors


def _checkpoint_renamings(model: nn.Module) -> list[tuple[str, str]]:
    """transformers' checkpoint-to-model key renamings for this model class, as (regex, replacement) pairs: a family
    such as EXAONE is saved under its original checkpoint names (``transformer.h.N.attn.attention``), gate keys too.
    None on a transformers without conversion mappings."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:
        return []
    pairs = []
    for r in get_model_conversion_mapping(model):
        if isinstance(r, WeightRenaming):  # several sources may share one target
            targets = r.target_patterns if len(r.target_patterns) == len(r.source_patterns) else r.target_patterns[:1]
            pairs += [(source, targets[min(i, len(targets) - 1)]) for i, source in enumerate(r.source_patterns)]
    return pairs


def _model_key(key: str, expected: set[str], renamings: list[tuple[str, str]]) -> str:
    """A saved gate key under the model's name, after transformers' renamings where it is not one already."""
    if key in expected:
        return key
    for source, target in renamings:
        key = re.sub(source, lambda _, target=target: target, key)
    return key


def _renamed_branch(key: str, saved: dict, expected: set[str]) -> str:
    """The model's name of a saved gate key. transformers may save a branch under its checkpoint name (Mixtral's
    ``mlp`` as ``block_sparse_moe``): within one layer, the one saved branch name the model lacks is the one model
    branch name the checkpoint lacks."""
    if key in expected:
        return key
    head, _, tail = key.partition(f".{GATE_ATTR}.")
    layer, _, branch = head.rpartition(".")
    ours = {k.partition(f".{GATE_ATTR}.")[0].rpartition(".")[2] for k in expected if k.startswith(layer + ".")}
    theirs = {k.partition(f".{GATE_ATTR}.")[0].rpartition(".")[2] for k in saved if k.startswith(layer + ".")}
    lacking, extra = ours - theirs, theirs - ours
    if len(lacking) == 1 and extra == {branch}:
        return f"{layer}.{lacking.pop()}.{GATE_ATTR}.{tail}"
    return key


def load_gates(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the gate weights saved at ``path`` into a model that already has matching gates."""
    branches = gated_branches(model)
    if not branches or all(b.residual_gate is None for b in branches):
        raise ValueError(
            f"{type(model).__name__} has no gates to load into; call add_gates(model, kind=...) first, "
            "or use labkit.gate.from_pretrained(path) to rebuild the gated model"
        )
    expected = {k for k in model.state_dict() if f".{GATE_ATTR}." in k}
    renamings = _checkpoint_renamings(model)
    saved = {_model_key(k, expected, renamings): v for k, v in _checkpoint_tensors(Path(path)).items()
             if f".{GATE_ATTR}." in k}
    gate_state = {_renamed_branch(k, saved, expected): v for k, v in saved.items()}
    missing = sorted(expected - set(gate_state))
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks gate weights {missing[:4]} (of {len(missing)} missing); "
            "was it saved from a gated model?"
        )
    model.load_state_dict(gate_state, strict=False)
    return model


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a gated model saved with ``save_pretrained``: the backbone via transformers, then the gates.

    Plain ``AutoModelForCausalLM.from_pretrained`` only warns about the unknown gate keys; this rebuilds them.
    ``path`` must be a local folder (a saved gated model is never on the Hub): nothing is downloaded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (Path(path) / "config.json").is_file():
        what = "is not a folder" if not Path(path).is_dir() else "has no config.json"
        raise FileNotFoundError(f"{str(path)!r} {what}; expected a local folder written by save_pretrained "
                                "(with config.json), e.g. a gated model saved with model.save_pretrained(folder)")
    kwargs.setdefault("local_files_only", True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    spec = getattr(config, CONFIG_KEY, None)
    if not spec:
        raise ValueError(
            f"{path} holds no labkit gates (config has no {CONFIG_KEY!r}); "
            "load it with transformers' AutoModelForCausalLM.from_pretrained"
        )
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the gate keys are expected to be "unexpected" for the plain model
    import transformers

    saved_as = next((getattr(transformers, name, None) for name in getattr(config, "architectures", None) or []), None)
    try:  # the class it was saved from where transformers has it (Emu3's text model has no auto-mapping entry)
        model = (saved_as or AutoModelForCausalLM).from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    add_gates(model, **spec)
    if spec["kind"] != "none":
        load_gates(model, path)
    return model
