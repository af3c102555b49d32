"""The import structure docs/ARCHITECTURE.md draws: no import cycles inside labkit, and no module importing a module
of a higher layer (the layers are read from the ``layers`` block of that page, their one home)."""

from __future__ import annotations

import re

from labkit import closure

PACKAGE = closure.PACKAGE_DIR
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def _imports() -> dict[str, set[str]]:
    """labkit module -> the labkit modules its source imports anywhere (functions and ``TYPE_CHECKING`` included).

    An import of the module's own parent package (``from labkit.merge import io`` inside ``labkit.merge.soups``) is
    left out: Python has initialised the parents before the module runs, so it closes no circle."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = closure.module_name(path, PACKAGE)
        names = closure.imported_names(path.read_text(), module, path.name == "__init__.py")
        graph[module] = {n for n in names if n != module and not module.startswith(n + ".")
                         and closure.module_file(n, PACKAGE) is not None}
    return graph


def _layers() -> dict[str, int]:
    """Top-level part of labkit (``gate``, ``experiments``, ...) -> its layer, from ARCHITECTURE.md's layers block."""
    block = re.search(r"```layers\n(.*?)```", ARCHITECTURE.read_text(), re.S)
    assert block, f"{ARCHITECTURE} has no ```layers block"
    layers = {}
    for line in block.group(1).splitlines():
        number, _, parts = line.partition(":")
        layers.update({part: int(number.split()[0]) for part in parts.split()})
    return layers


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "labkit"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    cycles = _cycles(_imports())
    assert not cycles, "import cycles in labkit: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer():
    layers = _layers()
    graph = _imports()
    unplaced = sorted({_part(m) for m in graph} - set(layers))
    assert not unplaced, f"parts of labkit missing from the layers block of {ARCHITECTURE.name}: {unplaced}"
    upward = sorted(f"{m} (layer {layers[_part(m)]}) imports {d} (layer {layers[_part(d)]})"
                    for m, deps in graph.items() for d in deps if layers[_part(d)] > layers[_part(m)])
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_every_paper_package_has_only_the_contract_rooms():
    rooms = {"__init__", "config", "data", "arms", "claims", "summary"}
    papers = [p for p in (PACKAGE / "experiments").iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert papers, "no experiment packages"
    flat = sorted(p.name for p in (PACKAGE / "experiments").glob("*.py") if p.name != "__init__.py")
    assert not flat, f"flat experiment modules outside a paper package: {flat}"
    for paper in papers:
        names = {p.stem for p in paper.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
        assert names <= rooms, f"{paper.name} has rooms outside the contract: {sorted(names - rooms)}"
        assert {"__init__", "config", "arms"} <= names, f"{paper.name} lacks config.py or arms.py"


def test_compute_closure_of_a_paper_leaves_out_its_judgement():
    for paper in sorted(p.name for p in (PACKAGE / "experiments").iterdir() if (p / "arms.py").is_file()):
        files = {str(f.relative_to(PACKAGE)) for f in closure.compute_files(f"labkit.experiments.{paper}")}
        judged = {f for f in files if f.startswith(("protocol", "views/", "headline", f"experiments/{paper}/claims",
                                                    f"experiments/{paper}/summary", f"experiments/{paper}/__init__"))}
        assert not judged, f"{paper}'s training imports judgement code: {sorted(judged)}"
