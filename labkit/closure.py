"""The import closure of a notebook within labkit: which labkit source files can change its results.

A report is stale when code it ran has changed, and only then: hashing the whole package reran every notebook after
any edit. The closure is computed statically with ``ast`` over the sources (imports inside functions count, so a
lazily imported module is in it too), which is deterministic, fast and imports nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name  # "labkit"


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of the labkit module ``name`` (``labkit.x.y`` -> ``x/y.py`` or ``x/y/__init__.py``), or None
    when ``name`` is not a labkit module (a class or function imported from one, or another package)."""
    parts = name.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def module_name(path: Path, package_dir: Path) -> str:
    """``labkit/x/y.py`` -> ``labkit.x.y``; ``labkit/x/__init__.py`` -> ``labkit.x``."""
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [package_dir.name, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Every module name ``source`` may import, anywhere in it: ``import a.b`` -> ``a.b``; ``from a import b`` ->
    ``a`` and ``a.b`` (``b`` may be a submodule); relative imports resolved against ``module``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@functools.lru_cache(maxsize=1024)
def _imports_of(path: str, module: str, mtime_ns: int, size: int) -> frozenset[str]:
    """``imported_names`` of one source file, parsed once per version of the file (a sweep hashes every point)."""
    return frozenset(imported_names(Path(path).read_text(), module, Path(path).name == "__init__.py"))


def _with_parents(name: str) -> list[str]:
    """``labkit.x.y`` -> ``labkit``, ``labkit.x``, ``labkit.x.y``: importing a module runs its packages' inits."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(
    roots: set[str], package_dir: Path = PACKAGE_DIR, assembly: frozenset[str] = frozenset()
) -> list[Path]:
    """The labkit source files that importing the modules ``roots`` can execute, transitively, sorted.

    ``assembly`` names packages whose ``__init__`` only assembles its modules (an experiment package wires its compute
    to its judgement): it is neither counted nor followed, so the compute closure does not include judgement code.
    """
    seen: dict[str, Path] = {}
    todo = [n for root in roots for n in _with_parents(root)]
    while todo:
        name = todo.pop()
        if name in seen or name in assembly:
            continue
        path = module_file(name, package_dir)
        if path is None:
            continue
        seen[name] = path
        stat = path.stat()
        found = _imports_of(str(path), name, stat.st_mtime_ns, stat.st_size)
        todo.extend(n for imported in found for n in _with_parents(imported) if n not in seen)
    return sorted(set(seen.values()))


def notebook_imports(notebook: Path) -> set[str]:
    """Module names the notebook's code cells import (IPython magics and shell lines are skipped)."""
    cells = json.loads(notebook.read_text()).get("cells", [])
    names: set[str] = set()
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            names |= imported_names("\n".join(lines))
        except SyntaxError:  # a cell that is not plain Python (a cell magic): it imports nothing we can see
            continue
    return names


def closure_files(experiment: str, notebook: Path | None = None, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a notebook run depends on: the labkit closure of its experiment module and of the notebook's own
    imports, plus the experiment module's file when it lives outside labkit (a test fixture)."""
    roots = {experiment} | (notebook_imports(notebook) if notebook is not None else set())
    files = import_closure(roots, package_dir)
    if module_file(experiment, package_dir) is None:
        spec = importlib.util.find_spec(experiment)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.append(Path(spec.origin))
    return files


def compute_files(experiment: str, package_dir: Path = PACKAGE_DIR) -> list[Path] | None:
    """The files an experiment's *training* can run: the closure of its ``arms`` module (``<experiment>.arms``),
    leaving out the experiment package's own ``__init__`` (assembly only). None when the experiment has no ``arms``
    room (an experiment outside the contract): then every change retrains."""
    if module_file(f"{experiment}.arms", package_dir) is None:
        return None
    return import_closure({f"{experiment}.arms"}, package_dir, assembly=frozenset({experiment}))


def source_hash(files: list[Path], package_dir: Path = PACKAGE_DIR) -> str:
    """A sha256 over the files' names (relative to the package where inside it) and bytes."""
    digest = hashlib.sha256()
    for path in files:
        label = path.relative_to(package_dir) if path.is_relative_to(package_dir) else Path(path.name)
        digest.update(str(label).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
