"""No two files of the package import each other, directly or round a loop, even inside functions.

tests/test_layers.py keeps the parts (weights/, data/, ...) in layers; this keeps the files inside a part in
an order too. A cycle hidden in a function import works at run time, but it means neither file can be
read, tested or moved without the other: the piece both need belongs in a file below both. The graph is
read from the source (every ``import``/``from ... import``, also inside functions, relative imports
resolved), not from ``sys.modules``, so an import on a path no test takes still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "convnext"

# Loops that may remain: none. Each entry would be a set of modules one loop may run through; a loop
# outside every entry fails, and an entry no loop needs any more fails too. Keep it empty: untie a new
# loop by moving what both files need to a file below both.
ALLOWED: list[frozenset[str]] = []


def _modules() -> dict[str, Path]:
    """Dotted name below ``convnext`` (a package as ``pkg.__init__``) -> file."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        if "__pycache__" not in p.parts:
            out[".".join(p.relative_to(PKG).with_suffix("").parts)] = p
    return out


def _target(dotted: str, modules: dict[str, Path]) -> str | None:
    """The file an import of ``dotted`` (below ``convnext``; "" is the package itself) runs."""
    if dotted in modules:
        return dotted
    init = f"{dotted}.__init__" if dotted else "__init__"
    return init if init in modules else None


def _edges(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Imported module -> first line, for every import of the package in the file ``name``."""
    pkg = name.split(".")[:-1]  # the package the file sits in, for relative imports
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [
                (a.name.removeprefix("convnext").lstrip("."), node.lineno)
                for a in node.names
                if a.name == "convnext" or a.name.startswith("convnext.")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not node.module or not (node.module == "convnext" or node.module.startswith("convnext.")):
                    continue
                base = node.module.removeprefix("convnext").lstrip(".")
            else:
                parent = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*parent, *(node.module.split(".") if node.module else [])])
            for a in node.names:  # ``from pkg import sub`` imports the submodule; any other name: pkg's file
                sub = f"{base}.{a.name}" if base else a.name
                found.append((sub if sub in modules else base, node.lineno))
    out: dict[str, int] = {}
    for dotted, line in found:
        t = _target(dotted, modules)
        if t is not None and t != name:
            out.setdefault(t, line)
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _components(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components of two or more files (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _a_cycle(comp: set[str], graph: dict[str, dict[str, int]]) -> str:
    """One loop through the component, each step with the line of its import: what to untie."""
    start = min(comp)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:  # breadth first inside the component: the shortest way back to start
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in comp:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                path.reverse()
                steps = [f"{a} (line {graph[a][b]})" for a, b in zip(path, [*path[1:], start], strict=True)]
                return " -> ".join([*steps, start])
            if w not in prev and w != start:
                prev[w] = v
                queue.append(w)
    return ", ".join(sorted(comp))


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = _graph()
    assert "data.transforms" in graph["weights.registry"]  # `from ..data.transforms import` in a method
    assert "data.config" in graph["data.preprocessing"]  # `from .config import` at the top
    assert {"weights.containers", "weights.formats"} <= set(graph["weights.load"])  # `from . import a, b`
    assert "weights.registry" in graph["weights.fetch"]
    assert "weights.__init__" not in graph["weights.fetch"]  # a submodule import is not its package's file


def test_no_import_cycle_between_files() -> None:
    graph = _graph()
    loops = [c for c in _components(graph) if not any(c <= allowed for allowed in ALLOWED)]
    assert not loops, "import cycles between files (move what both need to a file below both):\n" + "\n".join(
        _a_cycle(c, graph) for c in loops
    )


def test_the_allow_list_only_names_cycles_that_still_exist() -> None:
    comps = _components(_graph())
    stale = [sorted(a) for a in ALLOWED if not any(len(c & a) > 1 for c in comps)]
    assert not stale, (
        f"these cycles are gone: remove them from ALLOWED in tests/test_import_cycles.py: {stale}"
    )
