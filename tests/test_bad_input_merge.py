"""Bad inputs to labkit.merge, labkit.merge.io and labkit.prune: each must raise, naming the offending thing.

One row per case: a call on tiny in-memory tensors (or on the files of the ``files`` fixture), the exception type it
must raise, and a regex its message must match (the key, item, file, parameter or index, and what was expected).
"""

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from labkit import merge, prune
from labkit.merge import io as merge_io


def sd(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny state dict: a 4x3 weight, a bias and an integer buffer."""
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen), "n": torch.tensor(3)}


def changed(d: dict, **updates) -> dict:
    return {**d, **updates}


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def nan_at(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


A, B, BASE = sd(1), sd(2), sd(0)
P = {"fc.weight": A["w"], "fc.bias": A["b"]}  # a state dict with one prunable weight
BOOL_W = torch.ones(4, 3, dtype=torch.bool)
HALF_W = torch.full((4, 3), 0.5)
ONLY_1D = {"norm.weight": torch.ones(4), "fc.bias": torch.ones(4)}
PRUNED_SD = {"0.weight_orig": torch.randn(4, 3), "0.weight_mask": torch.ones(1, 3), "0.bias": torch.zeros(4)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Good and broken checkpoint files, written once for the whole table."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f = SimpleNamespace(dir=d, empty_dir=d / "empty", missing=d / "nope.safetensors")
    f.empty_dir.mkdir()
    f.good = d / "good.safetensors"
    save_file({k: v.contiguous() for k, v in A.items()}, str(f.good))
    raw = f.good.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])

    def write(name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    def with_header(name: str, new_header: object) -> Path:
        text = json.dumps(new_header).encode()
        return write(name, struct.pack("<Q", len(text)) + text + raw[8 + size :])

    f.truncated = write("truncated.safetensors", raw[:-24])
    f.random = write("random.safetensors", bytes(range(7, 250)) * 3)
    f.tiny = write("tiny.safetensors", b"abc")
    f.non_json = write("nonjson.safetensors", struct.pack("<Q", 16) + b"{not json at all" + raw[8 + size :])
    f.header_list = with_header("list_header.safetensors", [1, 2])
    f.bad_offsets = with_header("offsets.safetensors", {**header, "w": {**header["w"], "data_offsets": [0, 8]}})
    f.bad_dtype = with_header("dtype.safetensors", {**header, "w": {**header["w"], "dtype": "X9"}})
    f.pt_garbage = write("garbage.pt", b"definitely not a pickle")
    f.pt_list = d / "list.pt"
    torch.save([torch.ones(2)], f.pt_list)
    for name, weight_map in [("missing_shard", {"w": "gone.safetensors"}), ("missing_key", {"zzz": "good.bin"})]:
        folder = d / name
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in A.items()}, str(folder / "good.bin"))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    f.missing_shard, f.missing_key = d / "missing_shard", d / "missing_key"
    f.bad_index = d / "bad_index"
    f.bad_index.mkdir()
    (f.bad_index / "model.safetensors.index.json").write_text("{oops")
    f.masks_dir = d / "masks_dir"
    f.masks_dir.mkdir()
    return f


def shrink_after_open(f: SimpleNamespace) -> list[torch.Tensor]:
    """Open a good file, then cut 24 bytes off it before the tensors are read."""
    path = f.dir / "shrinks.safetensors"
    path.write_bytes(f.good.read_bytes())
    reader = merge_io.SafetensorsReader(path)
    path.write_bytes(path.read_bytes()[:-24])
    return [reader.get(k) for k in reader.keys()]


def bn_loader(n: int) -> list[torch.Tensor]:
    return [torch.randn(4, 3) for _ in range(n)]


def case(name: str, call, error: type[BaseException], pattern: str):
    return pytest.param(call, error, pattern, id=name)


CASES = [
    # --- merge.io: files ---
    case(
        "file truncated by 24 bytes",
        lambda f: merge.average([f.good, f.truncated]),
        ValueError,
        r"truncated\.safetensors.*'[wbn]'.*truncated.*data section has \d+ bytes",
    ),
    case(
        "file of random bytes",
        lambda f: merge.average([f.random]),
        ValueError,
        r"random\.safetensors.*header length says \d+ bytes.*only \d+",
    ),
    case("file shorter than 8 bytes", lambda f: merge.average([f.tiny]), ValueError, r"tiny\.safetensors.*at least 8"),
    case("non-JSON header", lambda f: merge.average([f.non_json]), ValueError, r"nonjson\.safetensors.*not JSON"),
    case(
        "header is a JSON list",
        lambda f: merge.average([f.header_list]),
        ValueError,
        r"list_header\.safetensors.*JSON list, expected an object",
    ),
    case(
        "offsets disagree with shape",
        lambda f: merge.average([f.bad_offsets]),
        ValueError,
        r"offsets\.safetensors.*'w'.*8 bytes, expected 48",
    ),
    case(
        "unknown dtype in header",
        lambda f: merge.average([f.bad_dtype]),
        ValueError,
        r"dtype\.safetensors.*'w'.*dtype X9, expected one of",
    ),
    case(
        "missing file",
        lambda f: merge.average([f.good, f.missing]),
        FileNotFoundError,
        r"item 1.*nope\.safetensors.*does not exist",
    ),
    case(
        "folder without weights",
        lambda f: merge.average([f.empty_dir]),
        FileNotFoundError,
        r"no model\.safetensors.*in .*empty",
    ),
    case(
        "torch file that is not a pickle",
        lambda f: merge.average([f.pt_garbage]),
        ValueError,
        r"garbage\.pt.*torch checkpoint",
    ),
    case(
        "torch file holding a list",
        lambda f: merge.average([f.pt_list]),
        TypeError,
        r"list\.pt holds a list, expected a state dict",
    ),
    case(
        "index names a missing shard",
        lambda f: merge.average([f.missing_shard]),
        FileNotFoundError,
        r"maps 'w' to .*gone\.safetensors.*does not exist",
    ),
    case(
        "index names a key the shard lacks",
        lambda f: merge.average([f.missing_key]),
        ValueError,
        r"maps 'zzz' to .*good\.bin.*no such tensor",
    ),
    case(
        "index that is not JSON",
        lambda f: merge.average([f.bad_index]),
        ValueError,
        r"index\.json is not a safetensors index",
    ),
    case(
        "file truncated after it was opened",
        shrink_after_open,
        ValueError,
        r"shrinks\.safetensors: tensor '[wbn]' expected \d+ bytes at offset \d+, read \d+",
    ),
    case(
        "dtype safetensors cannot hold, with out=",
        lambda f: merge.average([changed(A, u=torch.ones(2, dtype=torch.uint16))] * 2, out=f.dir / "u.safetensors"),
        ValueError,
        r"'u' is torch\.uint16, which cannot be written to safetensors",
    ),
    case("out= is a directory", lambda f: merge.average([A, B], out=f.dir), IsADirectoryError, r"out=.*is a directory"),
    case(
        "out= not .safetensors",
        lambda f: merge.average([A, B], out=f.dir / "soup.pt"),
        ValueError,
        r"out=.*soup\.pt must end in \.safetensors",
    ),
    # --- merge: inputs ---
    case(
        "NaN in base",
        lambda f: merge.task_arithmetic(changed(BASE, w=nan_at(BASE["w"])), [A]),
        ValueError,
        r"base has non-finite values in 'w'",
    ),
    case(
        "NaN in an item",
        lambda f: merge.average([A, changed(B, w=nan_at(B["w"]))]),
        ValueError,
        r"item 1 has non-finite values in 'w'",
    ),
    case(
        "inf in an item",
        lambda f: merge.average([A, changed(B, b=nan_at(B["b"], float("inf")))]),
        ValueError,
        r"item 1 has non-finite values in 'b'",
    ),
    case("empty list", lambda f: merge.average([]), ValueError, r"empty list"),
    case("one dict instead of a list", lambda f: merge.average(A), TypeError, r"single dict.*list"),
    case("one path instead of a list", lambda f: merge.average(str(f.good)), TypeError, r"single str.*list"),
    case("item of a wrong type", lambda f: merge.average([A, 3]), TypeError, r"item 1.*expected an nn\.Module"),
    case("empty state dict", lambda f: merge.average([A, {}]), ValueError, r"item 1 has no tensors"),
    case("non-tensor value", lambda f: merge.average([changed(A, epoch=3)]), TypeError, r"'epoch' is int.*Tensor"),
    case("non-string key", lambda f: merge.average([{3: torch.ones(2)}]), TypeError, r"key 3 is int, expected str"),
    case(
        "key duplicated by prefix",
        lambda f: merge.average([changed(A, **{"module.w": A["w"]})]),
        ValueError,
        r"'w' and 'module\.w' both name 'w'",
    ),
    case(
        "meta tensor",
        lambda f: merge.average([changed(A, w=torch.empty(4, 3, device="meta"))]),
        ValueError,
        r"'w' is on the meta device",
    ),
    case(
        "complex tensor",
        lambda f: merge.average([changed(A, w=A["w"] * 1j), changed(B, w=B["w"] * 1j)]),
        ValueError,
        r"'w' is a complex tensor",
    ),
    case(
        "key missing in item 1",
        lambda f: merge.average([A, without(B, "b")]),
        ValueError,
        r"'b' is missing from item 1 \(present in item 0\)",
    ),
    case(
        "key missing in base",
        lambda f: merge.task_arithmetic(without(BASE, "b"), [A, B]),
        ValueError,
        r"'b' is missing from base \(present in item 0, item 1\)",
    ),
    case(
        "shape mismatch",
        lambda f: merge.average([A, changed(B, w=torch.ones(3, 4))]),
        ValueError,
        r"'w' has shapes \[\(4, 3\), \(3, 4\)\]",
    ),
    case(
        "float in one, int in another",
        lambda f: merge.average([A, changed(B, w=torch.ones(4, 3, dtype=torch.long))]),
        ValueError,
        r"'w' has dtypes \['torch\.float32', 'torch\.int64'\]",
    ),
    case(
        "no common key with strict=False",
        lambda f: merge.average([{"x": torch.ones(2)}, {"y": torch.ones(2)}], strict=False),
        ValueError,
        r"no key is shared",
    ),
    case("strict not a bool", lambda f: merge.average([A, B], strict="no"), TypeError, r"strict must be True or False"),
    # --- merge: weights ---
    case("weights wrong length", lambda f: merge.average([A, B], weights=[1.0]), ValueError, r"expected 2 weights"),
    case(
        "tensor weights wrong length",
        lambda f: merge.task_arithmetic(BASE, [A, B], weights=torch.ones(3)),
        ValueError,
        r"expected 2 weights",
    ),
    case(
        "2-D tensor weights",
        lambda f: merge.ties(BASE, [A, B], weights=torch.ones(1, 2)),
        ValueError,
        r"weights must be 1-D.*\(1, 2\)",
    ),
    case(
        "NaN weight", lambda f: merge.average([A, B], weights=[1.0, float("nan")]), ValueError, r"weights.*finite.*nan"
    ),
    case(
        "NaN weight in a tensor",
        lambda f: merge.dare(BASE, [A, B], drop=0.0, weights=torch.tensor([1.0, torch.nan])),
        ValueError,
        r"weights.*finite.*nan",
    ),
    case(
        "weights a scalar",
        lambda f: merge.task_arithmetic(BASE, [A, B], weights=0.5),
        TypeError,
        r"weights must be a sequence",
    ),
    case(
        "weights strings",
        lambda f: merge.ties(BASE, [A, B], weights=["a", "b"]),
        TypeError,
        r"weights\[0\] must be a finite number",
    ),
    case(
        "average weights sum to 2",
        lambda f: merge.average([A, B], weights=[1.0, 1.0]),
        ValueError,
        r"average weights must be >= 0 and sum to 1.*sum 2",
    ),
    case(
        "average negative weight",
        lambda f: merge.average([A, B], weights=[1.5, -0.5]),
        ValueError,
        r"average weights must be >= 0",
    ),
    # --- merge: masks ---
    case(
        "mask broadcastable shape",
        lambda f: merge.average([A, B], masks={"w": torch.ones(1, 3, dtype=torch.bool)}),
        ValueError,
        r"mask 'w' has shape \(1, 3\), expected .*\(4, 3\)",
    ),
    case(
        "mask of 0.5",
        lambda f: merge.average([A, B], masks={"w": HALF_W}),
        ValueError,
        r"mask 'w' must be bool or exactly 0/1",
    ),
    case(
        "mask of 0.5 via merge()",
        lambda f: merge.merge("linear", [A, B], masks={"w": HALF_W}),
        ValueError,
        r"mask 'w' must be bool or exactly 0/1",
    ),
    case(
        "mask not a tensor",
        lambda f: merge.average([A, B], masks={"w": [[1, 0, 1]] * 4}),
        TypeError,
        r"mask 'w' is a list",
    ),
    case(
        "mask for an unknown key",
        lambda f: merge.average([A, B], masks={"nope": BOOL_W}),
        ValueError,
        r"(?=.*'nope')(?=.*not merged)",
    ),
    case(
        "mask for an integer buffer",
        lambda f: merge.average([A, B], masks={"n": torch.tensor(True)}),
        ValueError,
        r"'n'.*copied, not merged",
    ),
    case(
        "one mask list for two items",
        lambda f: merge.average([A, B], masks=[{"w": BOOL_W}]),
        ValueError,
        r"one mask dict per item \(2\), got 1",
    ),
    case(
        "empty mask list", lambda f: merge.average([A, B], masks=[]), ValueError, r"one mask dict per item \(2\), got 0"
    ),
    case(
        "mask list of non-dicts",
        lambda f: merge.average([A, B], masks=[1, 2]),
        TypeError,
        r"masks\[0\] is a int, expected a dict",
    ),
    case(
        "masks='zeros' without prunable weights",
        lambda f: merge.average([ONLY_1D, ONLY_1D], masks="zeros"),
        ValueError,
        r"no prunable weights found",
    ),
    case(
        "masks='prune' without prune masks",
        lambda f: merge.average([A, B], masks="prune"),
        ValueError,
        r"items \[0, 1\] have no torch\.nn\.utils\.prune",
    ),
    # --- merge: method parameters ---
    case("slerp t > 1", lambda f: merge.slerp(A, B, 1.5), ValueError, r"t must be in \[0, 1\], got 1\.5"),
    case(
        "slerp t NaN",
        lambda f: merge.slerp(A, B, float("nan")),
        ValueError,
        r"t must be a finite number in \[0, 1\], got nan",
    ),
    case("lerp t NaN", lambda f: merge.lerp(A, B, float("nan")), ValueError, r"\bt must be a finite number, got nan"),
    case("lerp t a string", lambda f: merge.lerp(A, B, "0.5"), TypeError, r"\bt must be a finite number"),
    case(
        "slerp of 3 items",
        lambda f: merge.merge("slerp", [A, B, A]),
        ValueError,
        r"'slerp' takes exactly 2 items, got 3",
    ),
    case("slerp of 1 item", lambda f: merge.merge("slerp", [A]), ValueError, r"'slerp' takes exactly 2 items, got 1"),
    case(
        "base given to linear",
        lambda f: merge.merge("linear", [A, B], base=BASE),
        ValueError,
        r"'linear' takes no base=",
    ),
    case(
        "internal parameter key=",
        lambda f: merge.merge("dare", [A], base=BASE, key="w"),
        ValueError,
        r"unknown parameter\(s\) \['key'\]",
    ),
    case("unknown method", lambda f: merge.merge("fisher", [A]), ValueError, r"unknown merge method 'fisher'"),
    case(
        "unknown parameter",
        lambda f: merge.merge("linear", [A], alpha=2),
        ValueError,
        r"unknown parameter\(s\) \['alpha'\]",
    ),
    case("ties without base", lambda f: merge.merge("ties", [A, B]), ValueError, r"'ties' needs base="),
    case(
        "ties density 2 via merge()",
        lambda f: merge.merge("ties", [A, B], base=BASE, density=2.0),
        ValueError,
        r"density must be in \(0, 1\], got 2",
    ),
    case(
        "ties density 0",
        lambda f: merge.ties(BASE, [A, B], density=0.0),
        ValueError,
        r"density must be in \(0, 1\], got 0",
    ),
    case(
        "ties density a string",
        lambda f: merge.ties(BASE, [A, B], density="0.5"),
        TypeError,
        r"density must be a finite number",
    ),
    case(
        "ties normalize not a bool",
        lambda f: merge.ties(BASE, [A, B], normalize="no"),
        TypeError,
        r"normalize must be True or False",
    ),
    case(
        "scale NaN",
        lambda f: merge.task_arithmetic(BASE, [A], scale=float("nan")),
        ValueError,
        r"scale must be a finite number, got nan",
    ),
    case(
        "scale inf",
        lambda f: merge.ties(BASE, [A], scale=float("inf")),
        ValueError,
        r"scale must be a finite number, got inf",
    ),
    case(
        "scale overflows fp16",
        lambda f: merge.task_arithmetic(
            {k: v.half() for k, v in BASE.items()}, [{k: v.half() for k, v in A.items()}], scale=1e6
        ),
        ValueError,
        r"merged 'w' has non-finite values",
    ),
    case("dare drop 1", lambda f: merge.dare(BASE, [A], drop=1.0), ValueError, r"drop must be in \[0, 1\), got 1\.0"),
    case(
        "dare drop negative",
        lambda f: merge.dare(BASE, [A], drop=-0.1),
        ValueError,
        r"drop must be in \[0, 1\), got -0\.1",
    ),
    case(
        "dare drop 1 via merge()",
        lambda f: merge.merge("dare", [A], base=BASE, drop=1.0),
        ValueError,
        r"drop must be in \[0, 1\), got 1\.0",
    ),
    case(
        "dare then unknown",
        lambda f: merge.dare(BASE, [A], then="TIES"),
        ValueError,
        r"then must be 'linear' or 'ties', got 'TIES'",
    ),
    case(
        "dare density with then=linear",
        lambda f: merge.dare(BASE, [A], density=0.5),
        ValueError,
        r"density=0\.5.*then='ties'",
    ),
    case(
        "dare-ties density 0",
        lambda f: merge.dare(BASE, [A], then="ties", density=0.0),
        ValueError,
        r"density must be in \(0, 1\], got 0",
    ),
    case("dare seed negative", lambda f: merge.dare(BASE, [A], seed=-1), ValueError, r"seed must be an integer >= 0"),
    case("dare seed 1.5", lambda f: merge.dare(BASE, [A], seed=1.5), ValueError, r"seed must be an integer >= 0"),
    # --- merge: soups, BN, EMA, diagnostics ---
    case(
        "greedy evaluate returns None",
        lambda f: merge.greedy_soup([A, B], lambda sd: None),
        TypeError,
        r"evaluate returned None.*item 0",
    ),
    case(
        "greedy evaluate returns NaN",
        lambda f: merge.greedy_soup([A, B], lambda sd: float("nan")),
        ValueError,
        r"evaluate returned nan for item 0.*finite",
    ),
    case(
        "greedy evaluate not callable",
        lambda f: merge.greedy_soup([A, B], 0.5),
        TypeError,
        r"evaluate must be a function",
    ),
    case("greedy of an empty list", lambda f: merge.greedy_soup([], lambda sd: 1.0), ValueError, r"empty list"),
    case(
        "recalibrate on an empty loader",
        lambda f: merge.recalibrate_bn(mlp(), []),
        ValueError,
        r"loader yielded no batches",
    ),
    case(
        "recalibrate max_batches 0",
        lambda f: merge.recalibrate_bn(mlp(), bn_loader(2), max_batches=0),
        ValueError,
        r"max_batches must be an integer >= 1, got 0",
    ),
    case(
        "recalibrate max_batches -1",
        lambda f: merge.recalibrate_bn(mlp(), bn_loader(2), max_batches=-1),
        ValueError,
        r"max_batches must be an integer >= 1, got -1",
    ),
    case(
        "recalibrate frac and max_batches",
        lambda f: merge.recalibrate_bn(mlp(), bn_loader(2), frac=0.5, max_batches=1),
        ValueError,
        r"frac or max_batches, not both",
    ),
    case(
        "recalibrate frac 1.5",
        lambda f: merge.recalibrate_bn(mlp(), bn_loader(2), frac=1.5),
        ValueError,
        r"frac must be in \(0, 1\], got 1\.5",
    ),
    case(
        "recalibrate frac on a generator",
        lambda f: merge.recalibrate_bn(mlp(), iter(bn_loader(2)), frac=0.5),
        TypeError,
        r"frac needs a loader with len\(\)",
    ),
    case(
        "recalibrate a state dict",
        lambda f: merge.recalibrate_bn(A, bn_loader(2)),
        TypeError,
        r"model must be an nn\.Module, got dict",
    ),
    case(
        "ema decay 1.5", lambda f: merge.ema_model(mlp(), decay=1.5), ValueError, r"(?=.*decay)(?=.*1\.5)(?=.*\[0, ?1)"
    ),
    case(
        "ema decay NaN",
        lambda f: merge.ema_model(mlp(), decay=float("nan")),
        ValueError,
        r"decay must be a finite number",
    ),
    case("distances of an empty list", lambda f: merge.soup_distances([]), ValueError, r"empty list"),
    case(
        "distances, shape mismatch",
        lambda f: merge.soup_distances([A, changed(B, w=torch.ones(3, 4))]),
        ValueError,
        r"item 1 has 'w' of shape \(3, 4\), item 0 \(4, 3\)",
    ),
    case(
        "distances, same size other keys",
        lambda f: merge.soup_distances([A, {"v": B["w"], "b": B["b"]}]),
        ValueError,
        r"item 1 lacks \['w'\] and has extra \['v'\]",
    ),
    case(
        "distances, NaN",
        lambda f: merge.soup_distances([A, changed(B, w=nan_at(B["w"]))]),
        ValueError,
        r"item 1 has non-finite values in 'w'",
    ),
    case(
        "curve alphas=1",
        lambda f: merge.interpolation_curve(A, B, lambda sd: 0.0, alphas=1),
        ValueError,
        r"alphas must be a count >= 2",
    ),
    case(
        "curve alphas=0",
        lambda f: merge.interpolation_curve(A, B, lambda sd: 0.0, alphas=0),
        ValueError,
        r"alphas must be a count >= 2",
    ),
    case(
        "curve alphas=[]",
        lambda f: merge.interpolation_curve(A, B, lambda sd: 0.0, alphas=[]),
        ValueError,
        r"alphas is empty",
    ),
    case(
        "curve alpha NaN",
        lambda f: merge.interpolation_curve(A, B, lambda sd: 0.0, alphas=[0.0, float("nan")]),
        ValueError,
        r"alphas\[1\] must be a finite number",
    ),
    case(
        "curve evaluate returns None",
        lambda f: merge.interpolation_curve(A, B, lambda sd: None, alphas=2),
        TypeError,
        r"evaluate returned None.*alpha=0\.0",
    ),
    # --- prune ---
    case(
        "magnitude_masks NaN weight",
        lambda f: prune.magnitude_masks(changed(P, **{"fc.weight": nan_at(P["fc.weight"])}), 0.5),
        ValueError,
        r"weight 'fc\.weight' has 1 non-finite",
    ),
    case(
        "magnitude_masks inf weight",
        lambda f: prune.magnitude_masks(changed(P, **{"fc.weight": nan_at(P["fc.weight"], -float("inf"))}), 0.5),
        ValueError,
        r"weight 'fc\.weight' has 1 non-finite",
    ),
    case("sparsity 1.5", lambda f: prune.magnitude_masks(P, 1.5), ValueError, r"sparsity must be .*\[0, 1\], got 1\.5"),
    case(
        "sparsity NaN",
        lambda f: prune.magnitude_masks(P, float("nan")),
        ValueError,
        r"sparsity must be .*\[0, 1\], got nan",
    ),
    case(
        "sparsity a string",
        lambda f: prune.magnitude_masks(P, "0.5"),
        TypeError,
        r"sparsity must be .*\[0, 1\], got '0\.5'",
    ),
    case(
        "granularity unknown",
        lambda f: prune.magnitude_masks(P, 0.5, granularity="row"),
        ValueError,
        r"granularity must be 'global' or 'layer', got 'row'",
    ),
    case(
        "magnitude_masks of a list",
        lambda f: prune.magnitude_masks([P["fc.weight"]], 0.5),
        TypeError,
        r"expected an nn\.Module or a state dict, got list",
    ),
    case(
        "prev_masks of 0.5",
        lambda f: prune.magnitude_masks(P, 0.5, prev_masks={"fc.weight": HALF_W}),
        ValueError,
        r"mask 'fc\.weight' must be bool or exactly 0/1",
    ),
    case(
        "prev_masks wrong shape",
        lambda f: prune.magnitude_masks(P, 0.5, prev_masks={"fc.weight": torch.ones(3, 4)}),
        ValueError,
        r"mask 'fc\.weight' has shape \(3, 4\), expected .*\(4, 3\)",
    ),
    case(
        "prev_masks not a dict",
        lambda f: prune.magnitude_masks(P, 0.5, prev_masks=[BOOL_W]),
        TypeError,
        r"prev_masks must be a dict",
    ),
    case(
        "prev_masks unknown key",
        lambda f: prune.magnitude_masks(P, 0.5, prev_masks={"fc.bias": torch.ones(4)}),
        ValueError,
        r"prev_masks has keys that are not prunable weights: \['fc\.bias'\]",
    ),
    case("no prunable weights", lambda f: prune.magnitude_masks(ONLY_1D, 0.5), ValueError, r"no prunable weights"),
    case("imp phases 2.5", lambda f: prune.imp_schedule(0.9, 2.5), ValueError, r"phases must be an integer >= 1"),
    case("imp phases 0", lambda f: prune.imp_schedule(0.9, 0), ValueError, r"phases must be .*>= 1, got 0"),
    case("imp goal 1", lambda f: prune.imp_schedule(1.0, 3), ValueError, r"goal sparsity must be .*\[0, 1\), got 1"),
    case(
        "imp goal NaN",
        lambda f: prune.imp_schedule(float("nan"), 3),
        ValueError,
        r"goal sparsity must be .*\[0, 1\), got nan",
    ),
    case(
        "apply_masks of 0.5",
        lambda f: prune.apply_masks(mlp(), {"0.weight": torch.full((4, 3), 0.5)}),
        ValueError,
        r"mask '0\.weight' must be bool or exactly 0/1",
    ),
    case(
        "apply_masks broadcastable",
        lambda f: prune.apply_masks(mlp(), {"0.weight": torch.ones(1, 3)}),
        ValueError,
        r"mask '0\.weight' has shape \(1, 3\), expected .*\(4, 3\)",
    ),
    case(
        "apply_masks unknown key",
        lambda f: prune.apply_masks(mlp(), {"9.weight": BOOL_W}),
        KeyError,
        r"parameters the model does not have: \['9\.weight'\]",
    ),
    case("apply_masks list of masks", lambda f: prune.apply_masks(mlp(), [BOOL_W]), TypeError, r"masks must be a dict"),
    case(
        "apply_masks mask not a tensor",
        lambda f: prune.apply_masks(mlp(), {"0.weight": [[True] * 3] * 4}),
        TypeError,
        r"mask '0\.weight' is a list",
    ),
    case(
        "apply_masks optimizer wrong type",
        lambda f: prune.apply_masks(mlp(), {"0.weight": BOOL_W}, optimizer=0.1),
        TypeError,
        r"optimizer must be a torch\.optim\.Optimizer",
    ),
    case("sparsity without prunable weights", lambda f: prune.sparsity(ONLY_1D), ValueError, r"no prunable weights"),
    case(
        "layer_sparsity without prunable weights",
        lambda f: prune.layer_sparsity(ONLY_1D),
        ValueError,
        r"no prunable weights",
    ),
    case(
        "mask_of_zeros without prunable weights",
        lambda f: prune.mask_of_zeros(ONLY_1D),
        ValueError,
        r"no prunable weights",
    ),
    case(
        "mask_iou shapes differ",
        lambda f: prune.mask_iou({"w": BOOL_W}, {"w": torch.ones(1, 3, dtype=torch.bool)}),
        ValueError,
        r"mask 'w' has shape \(1, 3\), expected .*\(4, 3\)",
    ),
    case(
        "mask_iou of 0.5",
        lambda f: prune.mask_iou({"w": HALF_W}, {"w": BOOL_W}),
        ValueError,
        r"mask 'w' must be bool or exactly 0/1",
    ),
    case("mask_iou empty", lambda f: prune.mask_iou({}, {}), ValueError, r"masks are empty"),
    case(
        "mask_iou different keys",
        lambda f: prune.mask_iou({"w": BOOL_W}, {"v": BOOL_W}),
        ValueError,
        r"only in first \['w'\], only in second \['v'\]",
    ),
    case(
        "to_torch_prune of 0.5",
        lambda f: prune.to_torch_prune(mlp(), {"0.weight": torch.full((4, 3), 0.5)}),
        ValueError,
        r"mask '0\.weight' must be bool or exactly 0/1",
    ),
    case(
        "from_torch_prune mask shape",
        lambda f: prune.from_torch_prune(PRUNED_SD),
        ValueError,
        r"mask '0\.weight_mask' has shape \(1, 3\), expected .*\(4, 3\)",
    ),
    case(
        "from_torch_prune mask 0.5",
        lambda f: prune.from_torch_prune(changed(PRUNED_SD, **{"0.weight_mask": torch.full((4, 3), 0.5)})),
        ValueError,
        r"mask '0\.weight_mask' must be bool or exactly 0/1",
    ),
    case(
        "from_torch_prune of a list",
        lambda f: prune.from_torch_prune([A]),
        TypeError,
        r"expected an nn\.Module or a state dict, got list",
    ),
    case(
        "save_masks of 0.5",
        lambda f: prune.save_masks({"w": HALF_W}, f.dir / "half.safetensors"),
        ValueError,
        r"mask 'w' must be bool or exactly 0/1",
    ),
    case(
        "save_masks to a directory",
        lambda f: prune.save_masks({"w": BOOL_W}, f.masks_dir),
        IsADirectoryError,
        r"masks_dir is a directory",
    ),
    case(
        "load_masks of a weights file",
        lambda f: prune.load_masks(f.good),
        ValueError,
        r"good\.safetensors does not hold pruning masks.*mask '[wbn]'",
    ),
    case(
        "load_masks of a missing file",
        lambda f: prune.load_masks(f.missing),
        FileNotFoundError,
        r"(?=.*nope\.safetensors)(?=.*(not a file|No such file))",
    ),
    case(
        "load_masks of random bytes",
        lambda f: prune.load_masks(f.random),
        ValueError,
        r"random\.safetensors is not a readable safetensors file",
    ),
]


@pytest.mark.parametrize("call, error, pattern", CASES)
def test_bad_input_raises_naming_the_offending_thing(files, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(files)


def test_failed_checks_leave_no_output_file(files, tmp_path):
    out = tmp_path / "soup.safetensors"
    with pytest.raises(ValueError, match="truncated"):
        merge.average([files.good, files.truncated], out=out)
    with pytest.raises(ValueError, match="non-finite"):
        merge.task_arithmetic(changed(BASE, w=nan_at(BASE["w"])), [A], out=out)
    assert list(tmp_path.iterdir()) == []
