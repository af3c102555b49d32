"""DSIR over files: write the selected lines of a jsonl pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_selected(raw_path: str | Path, indices: np.ndarray, out_path: str | Path) -> int:
    """Copy the lines of jsonl ``raw_path`` at ``indices`` (document order) to ``out_path``; returns the count.

    Blank lines are not documents, as in :func:`~labkit.select.features.iter_documents`. Written to a temporary
    file and renamed into place: an existing ``out_path`` is replaced, never nested, and nothing is half-written.
    """
    raw_path, out_path = Path(raw_path), Path(out_path)
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
    with open(raw_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            if not line.strip():
                continue
            if doc < len(wanted) and wanted[doc]:
                dst.write(line if line.endswith("\n") else line + "\n")
                written += 1
            doc += 1
    if doc < len(wanted):
        tmp.unlink()
        raise ValueError(f"{raw_path}: has {doc} documents, but index {len(wanted) - 1} was selected")
    tmp.replace(out_path)
    return written
