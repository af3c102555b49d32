"""The merge methods: linear, slerp, task arithmetic, TIES and DARE as registered per-tensor functions.

Each method is a small pure function of fp32 tensors, ``fn(tensors, base, *, <parameters>) -> Tensor``, registered
with its paper by :func:`merge_method`. Its signature is the one place its parameters are stated: the registry reads
their names, defaults and checks from it (a plain ``float``, ``bool`` or ``Literal``, or ``Annotated`` with an
:class:`Interval` or a :class:`Check`), whether it needs a base model (``base: Tensor``) and how many items it takes
(``tensors: tuple[Tensor, Tensor]``), and the public functions of the task-vector methods are generated from it
(:func:`public_function`). :func:`merge` checks the parameters and hands the function to the driver in
:mod:`labkit.merge.io`, which walks the keys, loads and streams checkpoints, copies integer buffers and restores
dtypes. The design follows mergekit's ``merge_methods``.
"""

from __future__ import annotations

import inspect
import numbers
import typing
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

import labkit.merge.io as merge_io
from labkit.config import Check, Interval, number_in_range
from labkit.merge.io import Item

StateDict = dict[str, Tensor]


def check_weights(n: int, weights: Sequence[float] | Tensor | None) -> list[float]:
    """``weights`` as ``n`` finite floats, one per item (default uniform 1/n): a sequence or a 1-D tensor."""
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, Tensor):
        if weights.dim() != 1:
            raise ValueError(f"weights must be 1-D (one per item), got a tensor of shape {tuple(weights.shape)}")
        weights = weights.tolist()
    if isinstance(weights, str | bytes | Mapping) or not isinstance(weights, Iterable):
        raise TypeError(f"weights must be a sequence or 1-D tensor of {n} numbers (one per item), got {weights!r}")
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"expected {n} weights (one per item), got {len(weights)}")
    return [number_in_range(f"weights[{i}]", w) for i, w in enumerate(weights)]


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


INTERNAL = Check(lambda name, value: value)  # marks a parameter merge() fills in per tensor, never the caller
Weights = Sequence[float] | Tensor | None  # one finite number per item; checked against the item count by merge()
Fraction = Annotated[float, Interval("[0, 1]")]
Density = Annotated[float, Interval("(0, 1]")]
DropRate = Annotated[float, Interval("[0, 1)")]
Seed = Annotated[int, Check(_non_negative_int)]
TensorKey = Annotated[str, INTERNAL]


def _check_for(name: str, hint: Any) -> Callable[[str, Any], Any] | None:
    """The check of a parameter, read from its type hint: ``Annotated`` metadata, a ``Literal``, bool or float."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if callable(m)), None)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)

        def choice(name: str, value: Any) -> Any:
            if value not in choices:
                raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
            return value

        return choice
    if hint is bool:

        def flag(name: str, value: Any) -> bool:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
            return value

        return flag
    if hint is float:
        return number_in_range
    return None


@dataclass(frozen=True)
class MergeMethod:
    """A per-tensor merge ``fn(tensors, base, **params) -> Tensor`` over fp32 tensors of one key, as registered.

    Everything but ``name`` and ``reference`` is read from ``fn``'s signature by :func:`merge_method`.
    """

    name: str  # registry name
    fn: Callable[..., Tensor]  # the math
    params: dict[str, Any] = field(default_factory=dict)  # caller-facing parameters and their defaults
    reference: str = ""  # the paper
    needs_base: bool = False  # True: task-vector methods (``base: Tensor`` in the signature)
    n_items: int | None = None  # the exact number of items (``tensors: tuple[Tensor, Tensor]``: 2); None = any
    checks: dict[str, Callable[[str, Any], Any]] = field(default_factory=dict)  # parameter -> check(name, value)
    internal: tuple[str, ...] = ()  # parameters merge() fills in per tensor (the key name)


METHODS: dict[str, MergeMethod] = {}


def _describe(name: str, fn: Callable[..., Tensor], reference: str) -> MergeMethod:
    """A :class:`MergeMethod` read from ``fn(tensors, base, *, params...)``'s signature and type hints."""
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    tensors, base, *rest = signature.parameters.values()
    if (tensors.name, base.name) != ("tensors", "base"):
        raise TypeError(f"merge method {name!r}: {fn.__name__} must take (tensors, base, ...) first")
    missing = [p.name for p in rest if p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"merge method {name!r}: parameters {missing} of {fn.__name__} need defaults")
    item_hint = hints.get("tensors")
    item_args = typing.get_args(item_hint) if typing.get_origin(item_hint) is tuple else ()
    n_items = len(item_args) if item_args and Ellipsis not in item_args else None
    params = {p.name: p.default for p in rest}
    checks = {n: c for n in params if (c := _check_for(n, hints.get(n))) is not None}
    internal = tuple(n for n in params if checks.get(n) is INTERNAL)
    return MergeMethod(name, fn, params, reference, hints.get("base") is Tensor, n_items, checks, internal)


def merge_method(name: str, reference: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a per-tensor function as merge method ``name`` (its paper: ``reference``); re-registering raises."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = _describe(name, fn, reference)
        return fn

    return register


@merge_method("linear", "https://arxiv.org/abs/2203.05482 (model soups)")
def linear_tensor(tensors: list[Tensor], base: None, weights: Weights = None) -> Tensor:
    """Weighted sum sum_i w_i theta_i (uniform soup when w_i = 1/n)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out.add_(t, alpha=w)
    return out


SLERP_COLINEAR = 0.9995  # |cos| above this: lerp instead (mergekit's slerp DOT_THRESHOLD)
SLERP_ZERO_NORM = 1e-8  # a tensor with a smaller norm has no direction: lerp instead


@merge_method("slerp", "https://arxiv.org/abs/2212.04089 ; Shoemake 1985")
def slerp_tensor(tensors: tuple[Tensor, Tensor], base: None, t: Fraction = 0.5) -> Tensor:
    """Spherical interpolation of two tensors, each flattened; lerp when they are nearly colinear or opposite.

    Near an angle of 0 or pi, sin(angle) ~ 0 and the spherical weights blow up (exactly opposite tensors gave 1e7),
    so for |cos| > ``SLERP_COLINEAR`` the result is (1 - t) a + t b, as mergekit's ``slerp`` does. A zero tensor
    (norm < ``SLERP_ZERO_NORM``) has no direction and falls back to lerp too.
    """
    a, b = tensors
    na, nb = a.norm(), b.norm()
    if na < SLERP_ZERO_NORM or nb < SLERP_ZERO_NORM:
        return torch.lerp(a, b, t)
    cos = torch.clamp((a.flatten() @ b.flatten()) / (na * nb), -1.0, 1.0)
    if cos.abs() > SLERP_COLINEAR:
        return torch.lerp(a, b, t)
    omega = torch.arccos(cos)
    s = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / s) * a + (torch.sin(t * omega) / s) * b


@merge_method("task_arithmetic", "https://arxiv.org/abs/2212.04089")
def task_arithmetic_tensor(tensors: list[Tensor], base: Tensor, scale: float = 1.0, weights: Weights = None) -> Tensor:
    """base + scale * sum_i w_i (theta_i - base), the task vectors (Ilharco et al. 2023); scale < 0 removes a skill."""
    return base + scale * linear_tensor([t - base for t in tensors], None, weights)


def trim_top(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest (TIES step 1)."""
    k = round(density * delta.numel())
    if k >= delta.numel():
        return delta
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(delta.abs().flatten(), k, sorted=False).indices] = True
    return delta * keep.view_as(delta)


def ties_deltas(deltas: list[Tensor], weights: list[float], normalize: bool = True) -> Tensor:
    """Elect a sign per entry from the weighted sum, then merge only the weighted deltas that agree (TIES steps 2-3).

    ``normalize=True`` divides by the total |weight| of the agreeing deltas (the paper's disjoint mean);
    ``normalize=False`` keeps their weighted sum, as mergekit's ``normalize: false`` (merge_methods/
    generalized_task_arithmetic.py: the weights multiply the deltas either way; only the division by the agreeing
    weights is skipped). mergekit divides by the signed weight sum; the two agree for weights >= 0.
    """
    stacked = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(0)
    if not normalize:
        return total
    count = (agree * torch.tensor(weights).abs().view(-1, *[1] * deltas[0].dim())).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


@merge_method("ties", "https://arxiv.org/abs/2306.01708")
def ties_tensor(
    tensors: list[Tensor],
    base: Tensor,
    density: Density = 0.2,
    scale: float = 1.0,
    weights: Weights = None,
    *,
    normalize: bool = True,
) -> Tensor:
    """TIES-merging: trim each task vector to its top ``density``, elect signs, disjoint mean (Yadav et al. 2023).

    ``normalize=False`` sums the agreeing weighted entries instead of averaging them (mergekit's ``normalize:
    false``), so every mergekit TIES setting has an equivalent here (see ``ties_deltas``).
    """
    deltas = [trim_top(t - base, density) for t in tensors]
    return base + scale * ties_deltas(deltas, weights, normalize)


def drop_and_rescale(delta: Tensor, drop: float, generator: torch.Generator) -> Tensor:
    """DARE: zero each entry with probability ``drop``, scale survivors by 1 / (1 - drop) to keep the expectation."""
    if drop == 0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) >= drop
    return delta * keep / (1.0 - drop)


@merge_method("dare", "https://arxiv.org/abs/2311.03099")
def dare_tensor(
    tensors: list[Tensor],
    base: Tensor,
    drop: DropRate = 0.9,
    then: Literal["linear", "ties"] = "linear",
    scale: float = 1.0,
    weights: Weights = None,
    density: Density = 1.0,
    seed: Seed = 0,
    *,
    key: TensorKey = "",
) -> Tensor:
    """DARE (Yu et al. 2023): randomly drop ``drop`` of each task vector and rescale, then a linear sum or TIES.

    ``density`` (< 1 trims each dropped task vector to its top entries) applies only with ``then="ties"``. The random
    drop is seeded by ``seed`` and the key name, so every tensor draws its own mask reproducibly.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    deltas = [drop_and_rescale(t - base, drop, gen) for t in tensors]
    if then == "linear":
        return base + scale * linear_tensor(deltas, None, weights)
    return base + scale * ties_deltas([trim_top(d, density) for d in deltas], weights)


def merge(
    method: str,
    items: Sequence[Item],
    *,
    base: Item | None = None,
    masks: Mapping[str, Tensor] | None = None,
    out: str | Path | None = None,
    strict: bool = True,
    **params: Any,
) -> StateDict | Path:
    """Run a registered method over every key of ``items`` (the one driver all public merges go through).

    Every parameter is checked before any file is read: its range, the weights' count, the number of items the
    method takes, and that ``base=`` is given exactly to the methods that use it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(METHODS)}")
    spec = METHODS[method]
    accepted = sorted(set(spec.params) - set(spec.internal))
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {method!r}; accepted: {accepted}")
    if spec.needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs base=, the model the items were fine-tuned from")
    if base is not None and not spec.needs_base:
        raise ValueError(
            f"merge method {method!r} takes no base= (it would be ignored); methods that use one: "
            f"{sorted(m for m, s in METHODS.items() if s.needs_base)}"
        )
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    items = merge_io.as_item_list(items)
    if spec.n_items is not None and len(items) != spec.n_items:
        raise ValueError(f"merge method {method!r} takes exactly {spec.n_items} items, got {len(items)}")
    values = {**spec.params, **params}
    for name, value in values.items():
        if name == "weights":  # the one parameter whose check needs the item count
            values[name] = check_weights(len(items), value)
        elif name in spec.checks and name not in spec.internal:
            values[name] = spec.checks[name](name, value)
    if values.get("then") == "linear" and values.get("density", 1.0) != 1.0:
        raise ValueError(f"density={values['density']} trims only with then='ties'; with then='linear' it must be 1.0")

    def per_tensor(key: str, tensors: list[Tensor], base_t: Tensor | None) -> Tensor:
        extra = {"key": key} if "key" in spec.internal else {}
        return spec.fn(tensors, base_t, **{**values, **extra})

    return merge_io.run(
        per_tensor, items, base=base, masks=masks, out=out, strict=strict, metadata={"labkit_merge": method}
    )


def lerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Linear interpolation (1 - t) a + t b, the path of a linear-mode-connectivity curve (any finite t)."""
    t = number_in_range("t", t)
    return merge("linear", [a, b], weights=[1.0 - t, t], out=out, strict=strict)


def slerp(a: Item, b: Item, t: float, *, out: str | Path | None = None, strict: bool = True) -> StateDict | Path:
    """Spherical interpolation per tensor between ``a`` (t=0) and ``b`` (t=1), t in [0, 1]."""
    return merge("slerp", [a, b], t=t, out=out, strict=strict)


def public_function(method: str) -> Callable[..., StateDict | Path]:
    """The public function of a task-vector method, generated from its per-tensor signature.

    ``fn(base, items, <the method's parameters>, *, out=None, strict=True)``; ``weights`` default to 1 per item (a
    sum of task vectors, where ``merge`` itself defaults to the uniform 1/n).
    """
    spec = METHODS[method]
    if not spec.needs_base:
        raise ValueError(f"public_function builds task-vector methods (base=); {method!r} takes no base")
    kind = inspect.Parameter
    own = [p for p in inspect.signature(spec.fn).parameters.values() if p.name in spec.params]
    signature = inspect.Signature(
        [
            kind("base", kind.POSITIONAL_OR_KEYWORD, annotation="Item"),
            kind("items", kind.POSITIONAL_OR_KEYWORD, annotation="Sequence[Item]"),
            *(p for p in own if p.name not in spec.internal),
            kind("out", kind.KEYWORD_ONLY, default=None, annotation="str | Path | None"),
            kind("strict", kind.KEYWORD_ONLY, default=True, annotation="bool"),
        ],
        return_annotation="StateDict | Path",
    )

    def public(*args: Any, **kwargs: Any) -> StateDict | Path:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        base, items, out, strict = (values.pop(k) for k in ("base", "items", "out", "strict"))
        items = merge_io.as_item_list(items)
        if values.get("weights") is None:
            values["weights"] = [1.0] * len(items)
        return merge(method, items, base=base, out=out, strict=strict, **values)

    public.__name__ = public.__qualname__ = method
    public.__module__ = __name__
    public.__doc__ = (
        f"{inspect.cleandoc(spec.fn.__doc__ or '')}\n\nGenerated from ``{spec.fn.__name__}`` ({spec.reference}): "
        "``items`` are merged onto ``base``; ``out=PATH`` streams the result into a safetensors file."
    )
    public.__signature__ = signature  # type: ignore[attr-defined]
    return public


task_arithmetic = public_function("task_arithmetic")
ties = public_function("ties")
dare = public_function("dare")
