"""DSIR over files: read documents from jsonl / parquet / text shards and write the selected ones.

Formats by suffix: ``.parquet`` (column ``text_field``, read in record batches with pyarrow), ``.txt`` / ``.txt.gz``
(one document per non-blank line), anything else jsonl (one JSON object per non-blank line, optionally gzipped).
Documents are numbered in file order, then within a file; blank lines are not documents.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

PARQUET_BATCH_ROWS = 4096  # rows per pyarrow record batch: bounds the memory of reading a parquet shard


def file_format(path: str | Path) -> str:
    """``"parquet"``, ``"text"`` or ``"jsonl"``, from the file name's suffixes."""
    suffixes = Path(path).suffixes
    if suffixes[-1:] == [".parquet"]:
        return "parquet"
    if suffixes[-1:] == [".txt"] or suffixes[-2:] == [".txt", ".gz"]:
        return "text"
    return "jsonl"


def iter_file(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of one jsonl, parquet or text file (see the module docstring), streaming."""
    path = Path(path)
    kind = file_format(path)
    if kind == "parquet":
        yield from _iter_parquet(path, text_field)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            yield line.rstrip("\n") if kind == "text" else _jsonl_text(path, line_no, line, text_field)


def _jsonl_text(path: Path, line_no: int, line: str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{line_no}: corrupt jsonl line ({err.msg})") from None
    if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"{path}:{line_no}: expected an object with a {text_field!r} field")
    text = record[text_field]
    if not isinstance(text, str):
        raise TypeError(f"{path}:{line_no}: field {text_field!r} is {type(text).__name__}, expected str")
    return text


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: expected a column {text_field!r}, found columns {parquet.schema_arrow.names}")
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise TypeError(f"{path}: row {row} of column {text_field!r} is {type(text).__name__}, expected str")
            row += 1
            yield text


def write_selected(
    raw_path: str | Path | Sequence[str | Path], indices: np.ndarray, out_path: str | Path, text_field: str = "text"
) -> int:
    """Write the documents of ``raw_path`` (one file or several, numbered in order) at ``indices`` to ``out_path``.

    Output is jsonl in document order: jsonl lines are copied as they are (no parse), text lines and parquet rows
    become ``{text_field: document}``. Returns the count. Written to a temporary file and renamed into place: an
    existing ``out_path`` is replaced, never nested, and nothing is half-written.
    """
    paths = [Path(raw_path)] if isinstance(raw_path, (str, Path)) else [Path(p) for p in raw_path]
    out_path = Path(out_path)
    indices = np.asarray(indices)
    if indices.size and (indices.dtype == bool or indices.dtype.kind not in "iu"):
        raise TypeError(f"indices must be integer document positions, got dtype {indices.dtype}")
    if indices.size and indices.min() < 0:
        raise ValueError(f"indices must be >= 0 (document positions in {raw_path}), got {indices.min()}")
    wanted = np.zeros(int(np.max(indices)) + 1 if len(indices) else 0, dtype=bool)
    wanted[np.asarray(indices, dtype=np.int64)] = True
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    written, doc = 0, 0
    with open(tmp, "w", encoding="utf-8") as dst:
        for path in paths:
            for line in _iter_records(path, text_field):
                if doc < len(wanted) and wanted[doc]:
                    dst.write(line if line.endswith("\n") else line + "\n")
                    written += 1
                doc += 1
    if doc < len(wanted):
        tmp.unlink()
        raise ValueError(f"{raw_path}: has {doc} documents, but index {len(wanted) - 1} was selected")
    tmp.replace(out_path)
    return written


def _iter_records(path: Path, text_field: str) -> Iterator[str]:
    """Each document of ``path`` as one jsonl line: the original line for jsonl, an encoded record otherwise."""
    if file_format(path) == "jsonl":
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            yield from (line for line in f if line.strip())
        return
    for text in iter_file(path, text_field):
        yield json.dumps({text_field: text}, ensure_ascii=False)
