"""Model merging: soups, sparse soups, interpolation, task arithmetic, TIES and DARE, as per-tensor methods.

Public functions take ``items`` that may mix modules, state dicts and paths, and return a state dict, or the path of
a safetensors file when given ``out=PATH``. Modules: :mod:`~labkit.merge.methods` (the registered per-tensor methods
and :func:`merge`, the one entry point they share), :mod:`~labkit.merge.soups` (soups, greedy and sparse; BN
recalibration, EMA, distances between ingredients), :mod:`~labkit.merge.io` (the streaming driver over checkpoints).
"""

from labkit.merge.io import Item
from labkit.merge.methods import (
    METHODS,
    SLERP_COLINEAR,
    Check,
    Interval,
    MergeMethod,
    StateDict,
    dare,
    dare_tensor,
    drop_and_rescale,
    lerp,
    linear_tensor,
    merge,
    merge_method,
    public_function,
    slerp,
    slerp_tensor,
    task_arithmetic,
    task_arithmetic_tensor,
    ties,
    ties_deltas,
    ties_tensor,
    trim_top,
)
from labkit.merge.soups import (
    average,
    ema_model,
    greedy_soup,
    interpolation_curve,
    recalibrate_bn,
    shared_mask,
    soup_distances,
)

__all__ = [
    "METHODS",
    "SLERP_COLINEAR",
    "Check",
    "Interval",
    "Item",
    "MergeMethod",
    "StateDict",
    "average",
    "dare",
    "dare_tensor",
    "drop_and_rescale",
    "ema_model",
    "greedy_soup",
    "interpolation_curve",
    "lerp",
    "linear_tensor",
    "merge",
    "merge_method",
    "public_function",
    "recalibrate_bn",
    "shared_mask",
    "slerp",
    "slerp_tensor",
    "soup_distances",
    "task_arithmetic",
    "task_arithmetic_tensor",
    "ties",
    "ties_deltas",
    "ties_tensor",
    "trim_top",
]
