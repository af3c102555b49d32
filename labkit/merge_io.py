"""The merge driver: reads checkpoints key by key, checks them, calls a per-tensor method, writes the result.

Inputs may mix ``nn.Module``s, state dicts, safetensors files, ``.pt``/``.bin`` files and Hugging Face model
folders. Safetensors are read with plain file I/O (no mmap), one tensor per input at a time, and ``out=PATH``
streams the result into a safetensors file whose header is written first, so a merge of N checkpoints holds
about one tensor per input in memory. The per-tensor math lives in ``labkit.merge``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

Item = nn.Module | Mapping[str, Tensor] | str | os.PathLike
PerTensor = Callable[[str, list[Tensor], "Tensor | None"], Tensor]

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def strip_prefix(key: str) -> str:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes from a state-dict key."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


class SafetensorsReader:
    """Random access to one safetensors file by plain reads: the header is parsed once, tensors on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + size
        self.entries = header

    def keys(self) -> list[str]:
        return list(self.entries)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self.entries[key]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {key!r} has dtype {entry['dtype']}, expected one of {list(_DTYPES)}")
        return tuple(entry["shape"]), _DTYPES[entry["dtype"]]

    def get(self, key: str) -> Tensor:
        shape, dtype = self.meta(key)
        begin, end = self.entries[key]["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            buffer = bytearray(end - begin)
            f.readinto(buffer)
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor: the header (all shapes and offsets) first, then the data.

    Data goes to ``<path>.partial`` and is renamed on ``close()``; ``abort()`` deletes it, so a failed merge
    leaves nothing half-written.
    """

    def __init__(
        self,
        path: str | Path,
        plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        offset, self.expected = 0, []
        for key, shape, dtype in plan:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((key, tuple(shape), dtype))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.position = 0

    def write(self, key: str, tensor: Tensor) -> None:
        name, shape, dtype = self.expected[self.position]
        if key != name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"writer expected {name!r} {shape} {dtype}, got {key!r} {tuple(tensor.shape)} {tensor.dtype}"
            )
        data = tensor.detach().contiguous().cpu()
        if data.numel():
            self.file.write(data.reshape(-1).view(torch.uint8).numpy().data)  # no extra copy
        self.position += 1

    def close(self) -> Path:
        self.file.close()
        if self.position != len(self.expected):
            self.abort()
            raise ValueError(f"only {self.position} of {len(self.expected)} tensors were written to {self.path}")
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


class Source:
    """One merge input with lazy per-key access; keys are stripped of ``module.`` prefixes."""

    def __init__(self, item: Item, label: str) -> None:
        self.label = label
        self.shared: dict[str, str] = {}  # key -> first key aliasing the same storage (tied weights)
        self._readers: dict[str, SafetensorsReader] = {}
        self._tensors: dict[str, Tensor] = {}
        self._where: dict[str, SafetensorsReader] = {}
        if isinstance(item, nn.Module):
            self._load_mapping(item.state_dict())
        elif isinstance(item, Mapping):
            self._load_mapping(item)
        elif isinstance(item, str | os.PathLike):
            self._open_path(Path(item))
        else:
            raise TypeError(f"{label}: expected an nn.Module, a state dict or a path, got {type(item).__name__}")
        self._orig = {k[: -len("_orig")] for k in self.keys() if k.endswith("_orig") and k[:-5] + "_mask" in self}

    def __contains__(self, key: str) -> bool:
        return key in self._tensors or key in self._where

    def _load_mapping(self, sd: Mapping[str, Tensor]) -> None:
        seen: dict[tuple, str] = {}
        for key, value in sd.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{self.label}: state dict value {key!r} is {type(value).__name__}, expected Tensor")
            key = strip_prefix(key)
            self._tensors[key] = value.detach()
            if value.numel() and value.device.type != "meta":
                ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
                if ident in seen:
                    self.shared[key] = seen[ident]
                seen.setdefault(ident, key)

    def _open_path(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{self.label}: {path} does not exist")
        if path.is_dir():
            index = path / "model.safetensors.index.json"
            single = path / "model.safetensors"
            if index.exists():
                weight_map = json.loads(index.read_text())["weight_map"]
                for key, name in weight_map.items():
                    reader = self._readers.setdefault(name, SafetensorsReader(path / name))
                    self._where[strip_prefix(key)] = reader
                return
            if single.exists():
                path = single
            else:
                bins = sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.pt"))
                if not bins:
                    raise FileNotFoundError(
                        f"{self.label}: no model.safetensors(.index.json) or pytorch_model*.bin in {path}"
                    )
                for b in bins:
                    self._load_mapping(torch.load(b, map_location="cpu", mmap=True, weights_only=True))
                return
        if path.suffix == ".safetensors":
            reader = SafetensorsReader(path)
            for key in reader.keys():
                self._where[strip_prefix(key)] = reader
            self._readers[str(path)] = reader
        else:
            self._load_mapping(torch.load(path, map_location="cpu", mmap=True, weights_only=True))

    def _raw_keys(self) -> list[str]:
        return list(self._tensors) + [k for k in self._where if k not in self._tensors]

    def keys(self) -> list[str]:
        """Keys in checkpoint order, with ``torch.nn.utils.prune``'s ``X_orig``/``X_mask`` pairs shown as ``X``."""
        raw = self._raw_keys()
        orig = getattr(self, "_orig", set())
        out = []
        for k in raw:
            if k.endswith("_orig") and k[:-5] in orig:
                out.append(k[:-5])
            elif not (k.endswith("_mask") and k[:-5] in orig):
                out.append(k)
        return out

    def _raw_meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if key in self._tensors:
            t = self._tensors[key]
            return tuple(t.shape), t.dtype
        return self._where[key].meta(key)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._raw_meta(key + "_orig" if key in self._orig else key)

    def _raw_get(self, key: str) -> Tensor:
        return self._tensors[key] if key in self._tensors else self._where[key].get(key)

    def get(self, key: str) -> Tensor:
        """One tensor (a pruned ``X`` comes back as ``X_orig * X_mask``), on the CPU."""
        if key in self._orig:
            orig = self._raw_get(key + "_orig")
            return (orig * self._raw_get(key + "_mask").to(orig.device)).to(orig.dtype)
        tensor = self._raw_get(key)
        return tensor if tensor.device.type == "cpu" else tensor.to("cpu")

    def pruning_masks(self) -> dict[str, Tensor]:
        """Masks stored the ``torch.nn.utils.prune`` way, if any."""
        return {k: self._raw_get(k + "_mask").to(torch.bool) for k in self._orig}


def open_sources(
    items: Sequence[Item] | Iterator[Item], base: Item | None = None
) -> tuple[list[Source], Source | None]:
    items = list(items)
    if not items:
        raise ValueError("nothing to merge: expected at least one model, state dict or path, got an empty list")
    sources = [Source(item, f"item {i}") for i, item in enumerate(items)]
    return sources, (Source(base, "base") if base is not None else None)


def plan_keys(sources: Sequence[Source], base: Source | None, strict: bool) -> list[str]:
    """Keys to merge, in the first input's order; mismatches raise (``strict``) or are skipped with a warning."""
    everyone = list(sources) + ([base] if base is not None else [])
    order = everyone[0].keys()
    common = set(order)
    for s in everyone[1:]:
        common &= set(s.keys())
    problems = []
    for s in everyone:
        extra = sorted(set(s.keys()) - common)
        if extra:
            problems.append(f"{s.label} has keys the others lack: {extra[:5]}" + (" ..." if len(extra) > 5 else ""))
    missing = sorted(set().union(*[set(s.keys()) for s in everyone]) - common)
    mismatched = []
    for key in order:
        if key not in common:
            continue
        shapes = [s.meta(key)[0] for s in everyone]
        if len(set(shapes)) > 1:
            mismatched.append(key)
            problems.append(f"{key!r} has shapes {shapes} across {[s.label for s in everyone]}")
    if problems and strict:
        raise ValueError(
            "inputs do not share one architecture (first offending keys): "
            + "; ".join(problems[:6])
            + ". Pass strict=False to merge the intersection."
        )
    if problems:
        warnings.warn(
            f"merge skipped {len(missing)} key(s) missing somewhere and {len(mismatched)} with mismatched "
            f"shapes: {(sorted(missing) + mismatched)[:10]}",
            stacklevel=3,
        )
    return [k for k in order if k in common and k not in mismatched]


def run(
    per_tensor: PerTensor,
    items: Sequence[Item],
    *,
    base: Item | None = None,
    masks: Mapping[str, Tensor] | None = None,
    out: str | Path | None = None,
    strict: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Tensor] | Path:
    """Walk the keys of ``items``, merge each floating tensor with ``per_tensor(key, tensors_fp32, base_fp32)``.

    Integer and bool tensors (``num_batches_tracked``) are copied from the first item, never averaged. Floating
    results are multiplied by ``masks[key]`` where given (exactly sparse) and cast back to the first item's dtype.
    Non-finite inputs raise, naming the key and the item. With ``out`` the result streams into a safetensors file.
    """
    sources, base_source = open_sources(items, base)
    keys = plan_keys(sources, base_source, strict)
    masks = {strip_prefix(k): v for k, v in (masks or {}).items()}
    unknown = sorted(set(masks) - set(keys))
    if unknown:
        raise ValueError(f"masks name keys that are not merged: {unknown[:5]}")
    first = sources[0]
    writer = None
    if out is not None:
        plan = [(k, first.meta(k)[0], first.meta(k)[1]) for k in keys]
        writer = SafetensorsWriter(out, plan, metadata)
    result: dict[str, Tensor] = {}
    done: dict[str, Tensor] = {}
    try:
        for key in keys:
            if key in first.shared and first.shared[key] in done and writer is None:
                result[key] = done[first.shared[key]]  # tied weight: one merged tensor under both names
                continue
            shape, dtype = first.meta(key)
            if not (dtype.is_floating_point or dtype.is_complex):
                merged = first.get(key).clone()
            else:
                tensors = []
                for s in sources:
                    t = s.get(key).to(torch.float32)
                    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():  # one cheap pass first
                        raise ValueError(f"{s.label} has non-finite values in {key!r}; refusing to merge")
                    tensors.append(t)
                base_t = base_source.get(key).to(torch.float32) if base_source is not None else None
                merged = per_tensor(key, tensors, base_t)
                del tensors
                if key in masks:
                    merged = merged * masks[key].to(merged.device, torch.float32)
                merged = merged.to(dtype)
            if writer is not None:
                writer.write(key, merged)
            else:
                result[key] = merged
                done[key] = merged
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        return writer.close()
    return result


def load_state_dict(item: Item) -> dict[str, Tensor]:
    """Any supported input as an in-memory state dict (prefixes stripped, pruning reparametrisation folded)."""
    source = Source(item, "item")
    return {k: source.get(k) for k in source.keys()}
