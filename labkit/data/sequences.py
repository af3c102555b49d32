"""Token-sequence data for small language models: a synthetic chain-of-thought task and byte-level text.

- Running sums (GateSkip notebook, track R): ``BOS d1 .. dN | s1 .. sN = sN EOS`` with ``s_i = (d_1+..+d_i) mod 10``.
  Every chain token needs a positional lookup of ``d_i`` plus ``s_{i-1}``, so errors compound as in long-form
  reasoning; accuracy is measurable exactly (token accuracy and exact match of the whole chain and answer).
  Train / validation / test are disjoint sets of prompts, pinned by a hash of the digits (:func:`running_sum_split`).
- Byte-level text (track T): CPython standard-library sources read from the running interpreter
  (``sysconfig.get_paths()["stdlib"]``), pinned by one file list per split; the SHA-256 of the bytes is reported
  because versions differ between machines.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

BOS, SEP, EQ, EOS, PAD = 10, 11, 12, 13, 14  # digits are tokens 0..9
VOCAB_SIZE = 16  # 15 used tokens, rounded up
SPLITS = ("train", "val", "test")
_SPLIT_BUCKETS = 10  # a prompt's hash bucket: 0 -> test, 1 -> validation, 2..9 -> train (80 / 10 / 10 %)
TOKEN_NAMES = [str(d) for d in range(10)] + ["<s>", "|", "=", "</s>", "<pad>", "?"]


def running_sum_length(n_digits: int) -> int:
    """Tokens per running-sum sequence: BOS, N digits, '|', N sums, '=', answer, EOS."""
    return 2 * n_digits + 5


def running_sum_split(digits: torch.Tensor) -> list[str]:
    """The split ("train" | "val" | "test") of each row of prompt ``digits`` (n, N): a fixed multiplicative hash of
    the digits, so the three splits never share a prompt, whatever seed draws them."""
    value = torch.zeros(digits.shape[0], dtype=torch.long)
    for column in digits.long().unbind(1):
        value = (value * 10 + column + 1) % 2_147_483_647
    buckets = (value * 2_654_435_761 % 2_147_483_647) % _SPLIT_BUCKETS
    return ["test" if b == 0 else "val" if b == 1 else "train" for b in buckets.tolist()]


def running_sum_batch(
    n: int, n_digits: int = 8, generator: torch.Generator | None = None, split: str | None = None
) -> torch.Tensor:
    """``n`` running-sum sequences (n, 2N+5) of token ids; ``split`` draws only prompts of that split (None: any)."""
    if n < 1 or n_digits < 1:
        raise ValueError(f"expected n >= 1 and n_digits >= 1, got n={n}, n_digits={n_digits}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if split is None:
        digits = torch.randint(0, 10, (n, n_digits), generator=generator)
    else:
        kept, have = [], 0
        while have < n:  # rejection sampling: each split holds >= 10 % of the prompts
            draw = torch.randint(0, 10, (2 * n, n_digits), generator=generator)
            rows = draw[[s == split for s in running_sum_split(draw)]]
            kept.append(rows)
            have += rows.shape[0]
        digits = torch.cat(kept)[:n]
    sums = digits.cumsum(1) % 10
    col = torch.full((n, 1), 0, dtype=torch.long)
    return torch.cat([col + BOS, digits, col + SEP, sums, col + EQ, sums[:, -1:], col + EOS], dim=1)


def running_sum_scored(n_digits: int) -> torch.Tensor:
    """Boolean mask over next-token predictions (length 2N+4) scored for accuracy: the chain, '=', answer, EOS.

    The first N+1 predictions (the random prompt digits and '|') carry no information and are not scored.
    """
    mask = torch.zeros(running_sum_length(n_digits) - 1, dtype=torch.bool)
    mask[n_digits + 1 :] = True
    return mask


def decode(tokens: torch.Tensor | list[int]) -> list[str]:
    """Token ids to readable symbols."""
    return [TOKEN_NAMES[int(t)] for t in tokens]


# Pinned byte-level corpus: plain-module sources present in CPython 3.11 and 3.12 (no packages that moved).
STDLIB_TRAIN_FILES: tuple[str, ...] = (
    "argparse.py",
    "ast.py",
    "base64.py",
    "bdb.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "codecs.py",
    "colorsys.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "datetime.py",
    "difflib.py",
    "dis.py",
    "enum.py",
    "filecmp.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "functools.py",
    "getopt.py",
    "gettext.py",
    "glob.py",
    "gzip.py",
    "hashlib.py",
    "hmac.py",
    "inspect.py",
    "ipaddress.py",
)
STDLIB_VAL_FILES: tuple[str, ...] = ("pprint.py", "queue.py", "sched.py", "statistics.py", "tokenize.py")
STDLIB_TEST_FILES: tuple[str, ...] = ("heapq.py", "bisect.py", "shlex.py", "textwrap.py", "string.py")
STDLIB_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": STDLIB_TRAIN_FILES,
    "val": STDLIB_VAL_FILES,
    "test": STDLIB_TEST_FILES,
}


def stdlib_dir() -> Path:
    """The running interpreter's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_bytes(files: tuple[str, ...] = STDLIB_TRAIN_FILES) -> tuple[torch.Tensor, dict[str, object]]:
    """The concatenated bytes of pinned stdlib files as a uint8 tensor, with provenance (folder, sizes, SHA-256)."""
    root = stdlib_dir()
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"stdlib files {missing} not found under {root}; pass another file list")
    blobs = [(root / f).read_bytes() for f in files]
    data = b"\n".join(blobs)
    provenance = {
        "stdlib": str(root),
        "files": list(files),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone(), provenance


def byte_windows(data: torch.Tensor, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random windows of ``length`` bytes from ``data`` as token ids (n, length), vocabulary 256."""
    if data.numel() <= length:
        raise ValueError(f"corpus of {data.numel()} bytes is shorter than one window of {length}")
    starts = torch.randint(0, data.numel() - length, (n,), generator=generator)
    return data[starts[:, None] + torch.arange(length)[None, :]].long()
