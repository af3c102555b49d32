"""The merge driver: reads checkpoints key by key, checks them, calls a per-tensor method, writes the result.

Inputs may mix ``nn.Module``s, state dicts, safetensors files, ``.pt``/``.bin`` files and Hugging Face model
folders. Safetensors are read with plain file I/O (no mmap), one tensor per input at a time, and ``out=PATH``
streams the result into a safetensors file whose header is written first, so a merge of N checkpoints holds
about one tensor per input in memory. The per-tensor math lives in :mod:`labkit.merge.methods`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labkit.prune import check_mask

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
    """Random access to one safetensors file by plain reads: the header is parsed once, tensors on demand.

    The header is checked against the file when it is opened (every tensor's dtype, shape and byte range must fit
    the data that is there), so a truncated or foreign file raises naming the file instead of merging zeros.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        file_size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(
                    f"{self.path}: not a safetensors file: it has {file_size} bytes, expected at least 8 "
                    "(the header length)"
                )
            (size,) = struct.unpack("<Q", prefix)
            if size > file_size - 8:
                raise ValueError(
                    f"{self.path}: not a safetensors file or truncated: the header length says {size} bytes, but "
                    f"only {file_size - 8} bytes follow it (file size {file_size})"
                )
            raw = f.read(size)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{self.path}: not a safetensors file: its {size}-byte header is not JSON ({error})"
            ) from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: safetensors header is a JSON {type(header).__name__}, expected an object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + size
        self.entries = header
        for key, entry in header.items():
            self._check_entry(key, entry, file_size - self.data_start)

    def _check_entry(self, key: str, entry: Any, data_size: int) -> None:
        where = f"{self.path}: tensor {key!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise ValueError(f"{where}: header entry is {entry!r}, expected {{'dtype', 'shape', 'data_offsets'}}")
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{where} has dtype {entry['dtype']}, expected one of {list(_DTYPES)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{where} has shape {shape!r}, expected a list of integers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{where} has data_offsets {offsets!r}, expected [begin, end] integers")
        begin, end = offsets
        nbytes = math.prod(shape) * torch.empty((), dtype=_DTYPES[entry["dtype"]]).element_size()
        if not 0 <= begin <= end or end - begin != nbytes:
            raise ValueError(
                f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes, expected {nbytes} "
                f"for shape {shape} {entry['dtype']}"
            )
        if end > data_size:
            raise ValueError(
                f"{where} needs bytes [{begin}, {end}) of the data section, but the file is truncated: its data "
                f"section has {data_size} bytes (file size {self.data_start + data_size})"
            )

    def keys(self) -> list[str]:
        return list(self.entries)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self.entries[key]
        return tuple(entry["shape"]), _DTYPES[entry["dtype"]]

    def get(self, key: str) -> Tensor:
        shape, dtype = self.meta(key)
        begin, end = self.entries[key]["data_offsets"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            buffer = bytearray(end - begin)
            got = f.readinto(buffer)
        if got != end - begin:
            raise ValueError(
                f"{self.path}: tensor {key!r} expected {end - begin} bytes at offset {self.data_start + begin}, "
                f"read {got} (was the file truncated after it was opened?)"
            )
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
            if dtype not in _NAMES:
                raise ValueError(
                    f"{key!r} is {dtype}, which cannot be written to safetensors here; expected {list(_NAMES)}"
                )
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
        self.label = f"{label} ({item})" if isinstance(item, str | os.PathLike) else label  # "item 1 (a.pt)"
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
        original: dict[str, str] = {}
        for raw_key, value in sd.items():
            if not isinstance(raw_key, str):
                raise TypeError(f"{self.label}: state dict key {raw_key!r} is {type(raw_key).__name__}, expected str")
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{self.label}: state dict value {raw_key!r} is {type(value).__name__}, expected Tensor"
                )
            if value.device.type == "meta":
                raise ValueError(f"{self.label}: {raw_key!r} is on the meta device (shape only, no values to merge)")
            key = strip_prefix(raw_key)
            if key in original or key in self._where:
                raise ValueError(
                    f"{self.label}: keys {original.get(key, key)!r} and {raw_key!r} both name {key!r} once "
                    "'module.'/'_orig_mod.' prefixes are dropped; expected one tensor per name"
                )
            original[key] = raw_key
            self._tensors[key] = value.detach()
            if value.numel() and value.device.type != "meta":
                ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
                if ident in seen:
                    self.shared[key] = seen[ident]
                seen.setdefault(ident, key)

    def _open_path(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{self.label} does not exist")
        if path.is_dir():
            index = path / "model.safetensors.index.json"
            single = path / "model.safetensors"
            if index.exists():
                self._open_index(index)
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
            self._load_torch_file(path)

    def _load_torch_file(self, path: Path) -> None:
        try:
            try:
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as error:  # a legacy (non-zip) torch.save file cannot be memory-mapped
                if "mmap" not in str(error):
                    raise
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError) for a foreign file
            raise ValueError(
                f"{self.label}: cannot read {path} as a torch checkpoint (expected a .safetensors file, a "
                f"torch.save'd state dict or a model folder): {type(error).__name__}: {str(error)[:200]}"
            ) from error
        if not isinstance(loaded, Mapping):
            raise TypeError(f"{self.label}: {path} holds a {type(loaded).__name__}, expected a state dict")
        self._load_mapping(loaded)

    def _open_index(self, index: Path) -> None:
        """A sharded Hugging Face checkpoint: ``weight_map`` from key to shard file, every key checked present."""
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{self.label}: {index} is not a safetensors index (expected JSON with a 'weight_map' object): "
                f"{type(error).__name__}: {error}"
            ) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{self.label}: {index} has weight_map {weight_map!r}, expected a non-empty object")
        for key, name in weight_map.items():
            shard = index.parent / str(name)
            if not shard.is_file():
                raise FileNotFoundError(f"{self.label}: {index} maps {key!r} to {shard}, which does not exist")
            reader = self._readers.get(str(name)) or self._readers.setdefault(str(name), SafetensorsReader(shard))
            if key not in reader.entries:
                raise ValueError(f"{self.label}: {index} maps {key!r} to {shard}, which has no such tensor")
            self._where[strip_prefix(key)] = reader

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


def as_item_list(items: Any) -> list[Item]:
    """``items`` as a list, refusing one model, state dict or path where a list of them is expected."""
    if isinstance(items, str | os.PathLike | Mapping | nn.Module | Tensor) or not isinstance(items, Iterable):
        raise TypeError(
            f"items must be a list of models, state dicts or paths, got a single {type(items).__name__}; "
            "wrap it in a list"
        )
    items = list(items)
    if not items:
        raise ValueError("nothing to merge: expected at least one model, state dict or path, got an empty list")
    return items


def open_sources(
    items: Sequence[Item] | Iterator[Item], base: Item | None = None
) -> tuple[list[Source], Source | None]:
    """One ``Source`` per item (labelled ``item i``, plus the path where there is one) and one for ``base``."""
    sources = [Source(item, f"item {i}") for i, item in enumerate(as_item_list(items))]
    base_source = Source(base, "base") if base is not None else None
    for s in [*sources, *([base_source] if base_source else [])]:
        if not s.keys():
            raise ValueError(f"{s.label} has no tensors; expected a model, state dict or checkpoint with weights")
    return sources, base_source


def _kind(dtype: torch.dtype) -> str:
    return "floating" if dtype.is_floating_point else "complex" if dtype.is_complex else "integer/bool"


def plan_keys(sources: Sequence[Source], base: Source | None, strict: bool) -> list[str]:
    """Keys to merge, in the first input's order; mismatches raise (``strict``) or are skipped with a warning.

    Each problem names the key and the inputs that lack it (or their shapes / dtype kinds). A key that is floating
    in one input and integer in another is a mismatch too: it would be copied from the first input unmerged.
    """
    everyone = list(sources) + ([base] if base is not None else [])
    order = list(dict.fromkeys(k for s in everyone for k in s.keys()))
    key_sets = [set(s.keys()) for s in everyone]
    common = set.intersection(*key_sets)
    missing = [k for k in order if k not in common]
    problems = []
    for key in missing:
        lacking = [s.label for s, keys in zip(everyone, key_sets, strict=True) if key not in keys]
        having = [s.label for s, keys in zip(everyone, key_sets, strict=True) if key in keys]
        problems.append(f"{key!r} is missing from {', '.join(lacking)} (present in {', '.join(having)})")
    mismatched = []
    for key in order:
        if key not in common:
            continue
        metas = [s.meta(key) for s in everyone]
        shapes = [m[0] for m in metas]
        kinds = [_kind(m[1]) for m in metas]
        if len(set(shapes)) > 1:
            mismatched.append(key)
            problems.append(f"{key!r} has shapes {shapes} across {[s.label for s in everyone]}")
        elif len(set(kinds)) > 1:
            mismatched.append(key)
            problems.append(f"{key!r} has dtypes {[str(m[1]) for m in metas]} across {[s.label for s in everyone]}")
    if problems and strict:
        raise ValueError(
            "inputs do not share one architecture (first offending keys): "
            + "; ".join(problems[:6])
            + ". Pass strict=False to merge the intersection."
        )
    keys = [k for k in order if k in common and k not in mismatched]
    if not keys:
        raise ValueError(
            f"no key is shared, with one shape, by all of {[s.label for s in everyone]}: nothing to merge "
            f"(first problems: {'; '.join(problems[:3])})"
        )
    if problems:
        warnings.warn(
            f"merge skipped {len(missing)} key(s) missing somewhere and {len(mismatched)} with mismatched "
            f"shapes or dtypes: {(missing + mismatched)[:10]}",
            stacklevel=3,
        )
    return keys


def check_out(out: str | Path) -> Path:
    """``out`` as a path for a new safetensors file: it must end in ``.safetensors`` and not be a folder."""
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"out must be a path to a .safetensors file, got {type(out).__name__}")
    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"out={path} is a directory; expected a file path such as {path / 'soup.safetensors'}")
    if path.suffix != ".safetensors":
        raise ValueError(f"out={path} must end in .safetensors (the merge writes safetensors, not {path.suffix!r})")
    return path


def _finite_or_raise(tensor: Tensor, what: str, key: str) -> None:
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():  # one cheap pass first
        raise ValueError(f"{what} has non-finite values in {key!r}; refusing to merge")


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
    Non-finite inputs (items or base) and non-finite results raise, naming the key and the input; so do complex
    tensors, and masks that are not bool/0-1 or not exactly the key's shape. With ``out`` the result streams into
    a safetensors file.
    """
    out = check_out(out) if out is not None else None
    if masks is not None and not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of key -> bool tensor, got {type(masks).__name__}")
    sources, base_source = open_sources(items, base)
    keys = plan_keys(sources, base_source, strict)
    first = sources[0]
    checked_masks: dict[str, Tensor] = {}
    for name, mask in (masks or {}).items():
        key = strip_prefix(name)
        if key not in keys:
            raise ValueError(f"masks name {key!r}, which is not merged; expected keys such as {keys[:5]}")
        shape, dtype = first.meta(key)
        if not dtype.is_floating_point:
            raise ValueError(f"masks name {key!r}, a {dtype} tensor that is copied, not merged; expected float keys")
        checked_masks[key] = check_mask(key, mask, shape)
    for key in keys:
        if first.meta(key)[1].is_complex:
            raise ValueError(f"{key!r} is a complex tensor; merging supports real floating, integer and bool tensors")
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
            if not dtype.is_floating_point:
                merged = first.get(key).clone()
            else:
                tensors = []
                for s in sources:
                    t = s.get(key).to(torch.float32)
                    _finite_or_raise(t, s.label, key)
                    tensors.append(t)
                base_t = None
                if base_source is not None:
                    base_t = base_source.get(key).to(torch.float32)
                    _finite_or_raise(base_t, base_source.label, key)
                merged = per_tensor(key, tensors, base_t)
                del tensors
                if not isinstance(merged, Tensor) or tuple(merged.shape) != shape:
                    found = tuple(merged.shape) if isinstance(merged, Tensor) else type(merged).__name__
                    raise ValueError(f"the merge method returned {found} for {key!r}, expected a tensor of {shape}")
                if key in checked_masks:
                    merged = merged * checked_masks[key].to(merged.device, torch.float32)
                merged = merged.to(dtype)
                if not torch.isfinite(merged).all():
                    raise ValueError(
                        f"merged {key!r} has non-finite values (from finite inputs: the method's parameters, e.g. "
                        f"a huge scale, or the cast to {dtype} overflowed)"
                    )
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


def load_state_dict(item: Item, name: str = "item") -> dict[str, Tensor]:
    """Any supported input as an in-memory state dict (prefixes stripped, pruning reparametrisation folded).

    ``name`` (e.g. ``"item 2"``) labels the input in error messages, with its path where it has one.
    """
    source = Source(item, name)
    return {k: source.get(k) for k in source.keys()}
