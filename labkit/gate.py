"""Residual gates on the attention and MLP branches of any Hugging Face decoder LM (GateSkip).

Laitenberger et al., "What Layers When: Learning to Skip Compute in LLMs with Residual Gates", arXiv 2510.13876.
Each branch F of every decoder layer is wrapped so that it returns ``g * F(u)`` with ``g = sigmoid(W stopgrad(u) + b)``
read from the branch input ``u``; the token's importance for that branch is ``mean(g)``. Wrapping (not replacing
``forward``) keeps ``generate`` and ``save_pretrained`` working: the saved keys of the original weights are unchanged,
so plain ``from_pretrained`` loads the backbone and warns about the gate keys, and :func:`from_pretrained` here
restores the gates too. Where each family keeps its layers and branches is found by :mod:`labkit.layout`;
skipping itself (budgets, compact execution) lives in :mod:`labkit.skip`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from labkit import layout
from labkit.config import Count, check_value, number_in_range, renamed
from labkit.layout import RESIDUAL, BranchWrapper

GATE_KINDS = ("vector", "scalar", "none")
PENALTY_KINDS = ("l2", "l1", "kl")
CONFIG_KEY = "labkit_gates"  # attribute added to the HF config so a saved gated model says how to rebuild its gates
GATE_ATTR = "residual_gate"  # submodule name of the gate inside a wrapped branch (and in saved keys)


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

    def token_shape(self) -> tuple[int, int]:
        """(batch, tokens) of the current forward, for a branch handed its tokens flattened (OPT's feed-forward)."""

    def compact(
        self, branch: GatedBranch | SiblingBranch, hidden: torch.Tensor, keep: torch.Tensor, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, tuple]:
        """Run the branch on the kept tokens only: its output (zeros elsewhere) and the trailing other outputs the
        compact path computed too: all of the branch's own where it ran whole, a sparse attention's top-k, else ()."""

    def after(self, branch: GatedBranch, keep: torch.Tensor | None, kwargs: dict) -> None:
        """Called after the branch ran (e.g. to copy a skipped token's K/V forward)."""


class GatedBranch(BranchWrapper):
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
        self.last_keep: torch.Tensor | None = None  # keep mask of the latest forward, kept only for a SiblingBranch
        self.has_sibling = False  # a SiblingBranch reads last_keep (set when one is made beside this branch)
        self.post_norm_hook: Any = None  # handle of the hook on the family's post-branch norm, if it has one
        self.pending_scale: torch.Tensor | None = None  # gate x keep waiting for that post-norm
        self.arity: int | None = None  # the branch returns a tensor (0) or a tuple of this length (Llama4's MoE: 2)
        self.own_extras: tuple[str | None, ...] = ()  # names of the branch's parameters among its extra outputs
        self.record_probe = False  # set by add_gates around its probe forward
        self.probe: tuple[torch.Tensor, tuple, dict] | None = None  # (input, arguments, keyword arguments) of it
        self.compact_error: str | None = None  # why compact execution cannot reproduce this branch (None: it can)
        self.compact_checked = False  # compact execution was compared with the probe (labkit.skip does it once)
        self.residual_at = layout.residual_position(type(branch))  # it returns residual + F(u) itself (Bloom, MPT)
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
        return output if scale is None else output * scale.reshape(*output.shape[:-1], -1)  # OPT's: flattened tokens

    def _compact_extras(self, arity: int) -> tuple:
        """What a compact branch returns after its output: a parameter of the branch where its own forward returned
        one (GPT-NeoX-Japanese's output bias, which its layer adds), else None (attention weights and router logits
        are not computed)."""
        names = self.own_extras or (None,) * (arity - 1)
        return tuple(None if name is None else self.branch.get_parameter(name) for name in names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        residual = None
        if self.residual_at is not None:  # the branch gets a zero residual, so that F(u) alone is gated and masked
            args, kwargs, residual = _zero_residual(self.branch, args, kwargs, self.residual_at)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        policy = self.policy
        flat = hidden.shape if hidden.dim() == 2 and policy is not None else None
        if flat is not None:  # OPT flattens its tokens before the inline feed-forward: decide on (batch, tokens)
            hidden = hidden.view(*policy.token_shape(), -1)
        gate = self.residual_gate
        g = gate.forward(hidden) if gate is not None else None  # a gate has no hooks: skip the module-call overhead
        object.__setattr__(self, "last_gate", g)  # as Module.__setattr__ would, without its ~9 us of checks per call
        keep = None
        if policy is not None:
            importance = None if g is None else g.squeeze(-1) if g.shape[-1] == 1 else g.mean(-1)  # scalar: a view
            keep = policy.decide(self, importance, hidden)
        if self.has_sibling:  # only a SiblingBranch reads it: one write less per call in every other branch
            object.__setattr__(self, "last_keep", keep)
        out: Any = None
        compact = keep is not None and policy.execution == "compact"
        if compact:
            y, tail = policy.compact(self, hidden, keep, args, kwargs)
            arity = self.arity if self.arity is not None else 2 if self.role == "attn" else 0
            rest: tuple | None = (*self._compact_extras(arity)[: arity - 1 - len(tail)], *tail) if arity else None
        else:
            out = self.branch(*args, **kwargs)
            y, rest = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, None)
            if self.arity is None:
                self.arity = 0 if rest is None else len(out)
                self.own_extras = _parameter_names(self.branch, rest or ())
            if self.record_probe:  # an input compact execution is checked on (by labkit.skip, before first use)
                self.probe = (hidden.detach(), *map_tensors(torch.Tensor.detach, (args, kwargs)))
        if y.shape[:-1] != hidden.shape[:-1]:  # Llama4's MoE returns tokens flattened (also run whole on a kept step)
            y = y.view(*hidden.shape[:-1], -1)
        if keep is not None and not compact:  # masked execution: the branch ran on every token
            y = y * keep.unsqueeze(-1).to(y.dtype)
        if self.post_norm_hook is not None:  # the post-norm's output is what the residual receives: scale that
            mask = keep.unsqueeze(-1).to(y.dtype) if keep is not None else None
            self.pending_scale = g if mask is None else mask if g is None else g * mask
        elif g is not None:
            y = y * g
        if residual is not None:
            y = residual + y
        if flat is not None:
            y = y.reshape(*flat[:-1], -1)
        if keep is not None:
            policy.after(self, keep, args, kwargs)
        if rest is None:
            return y
        return layout.with_first(out, y) if out is not None else (y, *rest)  # the branch's own container (named tuples)


def _parameter_names(module: nn.Module, values: tuple) -> tuple[str | None, ...]:
    """For each of ``values``, its name if it is a parameter of ``module``, else None."""
    names = {id(p): name for name, p in module.named_parameters()}
    return tuple(names.get(id(v)) if isinstance(v, nn.Parameter) else None for v in values)


class SiblingBranch(BranchWrapper):
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
        leader.has_sibling = True  # so the leader keeps its keep mask for this module's forward
        self.register_state_dict_post_hook(_flatten_branch_keys)
        self.register_load_state_dict_pre_hook(_nest_branch_keys)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        keep, g, policy = self.leader.last_keep, self.leader.last_gate, self.leader.policy
        if keep is not None and policy.execution == "compact":
            y, _ = policy.compact(self, hidden, keep, (hidden,), {})
        else:
            y = self.branch(hidden)
            y = y if keep is None else y * keep.unsqueeze(-1).to(y.dtype)
        return y if g is None else y * g


def _zero_residual(branch: nn.Module, args: tuple, kwargs: dict, at: int) -> tuple[tuple, dict, torch.Tensor]:
    """A call of ``branch``'s arguments with its residual (position ``at``, or by keyword) replaced in place by a zero
    that broadcasts, and that residual: the branch then returns its own contribution alone."""
    residual, by_keyword = layout.residual_argument(args, kwargs, at)
    if residual is None:
        raise ValueError(f"{type(branch).__name__} adds the residual it is given (argument {RESIDUAL!r}, position "
                         f"{at}), but this call hands it none: labkit cannot gate its contribution alone")
    zero = residual.new_zeros(())
    if by_keyword:
        return args, {**kwargs, RESIDUAL: zero}, residual
    return (*args[:at], zero, *args[at + 1 :]), kwargs, residual


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
    arch = layout.architecture(model)
    if kind != "none":
        _check_init(init_bias, init_std)
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    ref = next(model.parameters())
    for index, layer in enumerate(layout.at_path(model, arch.layers)):
        for role, attr, norm in (("attn", arch.attention, arch.attention_norm), ("mlp", arch.mlp, arch.mlp_norm)):
            gate = None
            if kind != "none":
                gate = ResidualGate(hidden, kind, init_bias, init_std, detach_input).to(ref.device, ref.dtype)
            wrapped = GatedBranch(layout.submodule(layer, attr), gate, index, role).train(layer.training)
            if norm is not None:
                wrapped.attach_post_norm(getattr(layer, norm))
            layout.replace_submodule(layer, attr, wrapped)
        if arch.mlp_sibling is not None:
            sibling = SiblingBranch(layout.submodule(layer, arch.mlp_sibling), layout.submodule(layer, arch.mlp))
            layout.replace_submodule(layer, arch.mlp_sibling, sibling)
    model.__dict__[layout.ARCH_ATTR] = arch
    branches = gated_branches(model)
    for b in branches:
        b.record_probe = True
    try:  # every branch sees one forward: it knows what it returns, and what compact execution must reproduce
        with torch.no_grad():
            layout.probe_forward(model)
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
    arch = layout.architecture(model)
    for layer in layout.at_path(model, arch.layers):
        for attr in (arch.attention, arch.mlp, arch.mlp_sibling):
            wrapped = layout.submodule(layer, attr) if attr is not None else None
            if isinstance(wrapped, GatedBranch):
                wrapped.detach_post_norm()
            if isinstance(wrapped, (GatedBranch, SiblingBranch)):
                layout.replace_submodule(layer, attr, wrapped.branch)
    model.__dict__.pop(layout.ARCH_ATTR, None)
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
    """Every tensor saved at ``path``: one ``.safetensors`` file, or a model folder (single file or shards)."""
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"no gate weights file {path}")
        return load_file(str(path))
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
    """Load the gate weights saved at ``path`` into a model that already has matching gates: a saved gated model's
    folder, or a ``.safetensors`` file of gate weights (a GateSkip stage-1 report's ``artefacts.safetensors``)."""
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
