"""Residual gates on the attention and MLP branches of Hugging Face decoder LMs (GateSkip).

Laitenberger et al., "What Layers When: Learning to Skip Compute in LLMs with Residual Gates", arXiv 2510.13876.
Each branch F of every decoder layer is wrapped so that it returns ``g * F(u)`` with ``g = sigmoid(W stopgrad(u) + b)``
read from the branch input ``u``; the token's importance for that branch is ``mean(g)``. Wrapping (not replacing
``forward``) keeps ``generate`` and ``save_pretrained`` working: the saved keys of the original weights are unchanged,
so plain ``from_pretrained`` loads the backbone and warns about the gate keys, and :func:`from_pretrained` here
restores the gates too. Skipping itself (budgets, compact execution) lives in :mod:`labkit.skip`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

GATE_KINDS = ("vector", "scalar", "none")
PENALTY_KINDS = ("l2", "l1", "kl")
CONFIG_KEY = "labkit_gates"  # attribute added to the HF config so a saved gated model says how to rebuild its gates
GATE_ATTR = "residual_gate"  # submodule name of the gate inside a wrapped branch (and in saved keys)


@dataclass(frozen=True)
class Architecture:
    """Where a decoder family keeps its layers and branch modules (a small per-architecture adapter)."""

    layers: tuple[str, ...]  # attribute path from the causal-LM (or base) model to the ModuleList of decoder layers
    attention: str  # attribute of a decoder layer holding the self-attention branch
    mlp: str  # attribute of a decoder layer holding the MLP branch


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(("model", "layers"), "self_attn", "mlp"),
    "qwen2": Architecture(("model", "layers"), "self_attn", "mlp"),
    "gpt2": Architecture(("transformer", "h"), "attn", "mlp"),
}


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
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be an int >= 1, got {hidden_size!r}")
        _check_init(init_bias, init_std)
        self.kind = kind
        self.detach_input = detach_input
        self.linear = nn.Linear(hidden_size, hidden_size if kind == "vector" else 1)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, init_std)
            self.linear.bias.fill_(init_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(u.detach() if self.detach_input else u))


def _check_init(init_bias: float, init_std: float) -> None:
    """Gate initialisation: a finite bias and a finite std >= 0 (NaN would silently make every gate NaN)."""
    if not (isinstance(init_bias, (int, float)) and math.isfinite(init_bias)):
        raise ValueError(f"init_bias must be a finite number, got {init_bias!r}")
    if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
        raise ValueError(f"init_std must be a finite number >= 0, got {init_std!r}")


class SkipPolicy(Protocol):
    """What a wrapped branch asks while a skip context (``labkit.skip.budget``) is active."""

    execution: str

    def decide(self, branch: GatedBranch, importance: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """Boolean keep mask (batch, tokens), or None to keep every token."""

    def compact(
        self, branch: GatedBranch, hidden: torch.Tensor, keep: torch.Tensor, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """Run the branch on the kept tokens only; zeros elsewhere, shape of ``hidden``."""

    def after(self, branch: GatedBranch, keep: torch.Tensor | None, kwargs: dict) -> None:
        """Called after the branch ran (e.g. to copy a skipped token's K/V forward)."""


class GatedBranch(nn.Module):
    """A decoder branch (attention or MLP) with a residual gate on its output.

    Returns what the branch returns, with the hidden-state output multiplied by the gate (and by the keep mask
    when a skip policy is active). Saved under the original key names; the gate adds ``<name>.residual_gate.*``.
    """

    def __init__(self, branch: nn.Module, gate: ResidualGate | None, layer_index: int, role: str) -> None:
        super().__init__()
        self.branch = branch
        self.residual_gate = gate
        self.layer_index = layer_index
        self.role = role  # "attn" or "mlp"
        self.policy: SkipPolicy | None = None  # set only inside a labkit.skip context
        self.last_gate: torch.Tensor | None = None  # gate values of the latest forward, for gate_penalty
        self.register_state_dict_post_hook(_flatten_branch_keys)
        self.register_load_state_dict_pre_hook(_nest_branch_keys)

    @property
    def name(self) -> str:
        return f"{self.layer_index}.{self.role}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        g = self.residual_gate(hidden) if self.residual_gate is not None else None
        self.last_gate = g
        importance = g.mean(-1) if g is not None else None
        policy = self.policy
        keep = policy.decide(self, importance, hidden) if policy is not None else None
        if keep is not None and policy.execution == "compact":
            y = policy.compact(self, hidden, keep, args, kwargs)
            rest: tuple | None = (None,) if self.role == "attn" else None
        else:
            out = self.branch(*args, **kwargs)
            y, rest = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, None)
            if keep is not None:
                y = y * keep.unsqueeze(-1).to(y.dtype)
        if g is not None:
            y = y * g
        if policy is not None:
            policy.after(self, keep, kwargs)
        return (y, *rest) if rest is not None else y


def _flatten_branch_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "branch.")]:
        state_dict[prefix + key[len(prefix + "branch.") :]] = state_dict.pop(key)


def _nest_branch_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if not rest.startswith((GATE_ATTR + ".", "branch.")):
            state_dict[prefix + "branch." + rest] = state_dict.pop(key)


def architecture(model: nn.Module) -> Architecture:
    """The adapter for ``model``'s family; ValueError naming the class and the supported families otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {type(model).__name__} (model_type={model_type!r}); "
            f"supported model types: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM (or its base model)."""
    arch = architecture(model)
    node = model
    for attr in arch.layers:
        if hasattr(node, attr):
            node = getattr(node, attr)
        elif attr != arch.layers[-1]:
            continue  # a base model (e.g. LlamaModel) has the layers directly
        else:
            raise ValueError(f"{type(model).__name__} has no decoder layers at {'.'.join(arch.layers)}")
    return node


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
    for index, layer in enumerate(decoder_layers(model)):
        for role, attr in (("attn", arch.attention), ("mlp", arch.mlp)):
            gate = None
            if kind != "none":
                gate = ResidualGate(hidden, kind, init_bias, init_std, detach_input).to(ref.device, ref.dtype)
            wrapped = GatedBranch(getattr(layer, attr), gate, index, role).train(layer.training)
            setattr(layer, attr, wrapped)
    setattr(
        model.config,
        CONFIG_KEY,
        {"kind": kind, "init_bias": init_bias, "init_std": init_std, "detach_input": detach_input},
    )
    return model


def remove_gates(model: nn.Module) -> nn.Module:
    """Undo :func:`add_gates`: put the original branch modules back (their trained weights kept)."""
    arch = architecture(model)
    if not gated_branches(model):
        raise ValueError(f"{type(model).__name__} has no gates to remove")
    for layer in decoder_layers(model):
        for attr in (arch.attention, arch.mlp):
            wrapped = getattr(layer, attr)
            if isinstance(wrapped, GatedBranch):
                setattr(layer, attr, wrapped.branch)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model


def gate_penalty(model: nn.Module, kind: str = "l2", target_keep: float = 0.8) -> torch.Tensor:
    """Mean over branches of the gate penalty of the latest forward: l2 mean(g^2) (paper), l1 mean(g), or
    kl = KL(Bernoulli(g) || Bernoulli(target_keep)) as in the official ablations."""
    if kind not in PENALTY_KINDS:
        raise ValueError(f"penalty kind must be one of {PENALTY_KINDS}, got {kind!r}")
    if kind == "kl" and not (isinstance(target_keep, (int, float)) and 0 < target_keep < 1):
        raise ValueError(f"target_keep must be a keep rate in (0, 1) for the kl penalty (at 0 or 1 it is infinite), "
                         f"got {target_keep!r}")
    values = [b.last_gate for b in gated_branches(model) if b.last_gate is not None]
    if not values:
        raise ValueError("no gate values recorded: add_gates(model, kind='vector'|'scalar') and run a forward first")
    terms = []
    for g in values:
        if kind == "l2":
            terms.append(g.pow(2).mean())
        elif kind == "l1":
            terms.append(g.abs().mean())
        else:
            p = g.clamp(1e-6, 1 - 1e-6)
            q = torch.as_tensor(target_keep, dtype=g.dtype, device=g.device)
            terms.append((p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean())
    return torch.stack(terms).mean()


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
    gate_ids = {
        id(p) for b in gated_branches(model) if b.residual_gate is not None for p in b.residual_gate.parameters()
    }
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


def load_gates(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the gate weights saved at ``path`` into a model that already has matching gates."""
    branches = gated_branches(model)
    if not branches or all(b.residual_gate is None for b in branches):
        raise ValueError(
            f"{type(model).__name__} has no gates to load into; call add_gates(model, kind=...) first, "
            "or use labkit.gate.from_pretrained(path) to rebuild the gated model"
        )
    gate_state = {k: v for k, v in _checkpoint_tensors(Path(path)).items() if f".{GATE_ATTR}." in k}
    expected = {k for k in model.state_dict() if f".{GATE_ATTR}." in k}
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
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    add_gates(model, **spec)
    if spec["kind"] != "none":
        load_gates(model, path)
    return model
