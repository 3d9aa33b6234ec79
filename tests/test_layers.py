"""The package's layering, read from its own imports (every ``import``, also inside functions).

cli/ -> (inference/, engine/, bench/, export/, serve/, hub) -> (evaluation/, recipe/, runtimes/, dist)
-> (weights/, data/, device) -> models/; ``errors`` is a utility below everything (``device`` re-exports
``models.cpu``, so it sits beside weights and data). A module may import its own layer or lower ones, never a
higher one, the top-level packages may not import each other in a cycle, and the parts of one layer import
each other only as ``SIBLINGS`` allows: running trained weights (inference/) never imports training
(engine/); what both need lives in the floor below them. ARCHITECTURE.md explains why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "convnext"

LAYERS: dict[str, int] = {
    "errors": 0,
    "telemetry": 0,
    "messages": 0,  # a message to the user (logging, stdlib only): every layer but models/ uses it
    "lazy": 0,
    "device": 2,
    "models": 1,
    "weights": 2,
    "data": 2,
    # the floor that training and inference share: the recipe a run records, the evaluation loop with its
    # metrics and figures, torch.distributed plumbing
    "recipe": 3,
    "evaluation": 3,
    "dist": 3,
    "runtimes": 3,  # the table of backends with their runners and writers (export, serve, bench, inference)
    "inference": 4,
    "engine": 4,
    "bench": 4,
    "export": 4,
    "serve": 4,
    "hub": 4,
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
}

# The imports allowed between two parts of one layer (importer, imported); any other is an error. Absent on
# purpose: (inference, engine): evaluate, predict and load_for_inference run without the training code.
SIBLINGS: set[tuple[str, str]] = {
    ("weights", "data"),  # a checkpoint's eval preset becomes the data pipeline's DataConfig
    ("bench", "engine"),  # the CPU allocator tuning a training process gets, for fair timings
    ("bench", "export"),
    ("bench", "inference"),
    ("export", "inference"),  # an exported file is checked against the PyTorch runner
    ("serve", "inference"),
    ("engine", "hub"),  # a training run starts from create_model (pretrained weights)
    ("inference", "hub"),  # a detector or segmenter to predict with is create_model's (inference/dense.py)
}


def _part(module: str) -> str:
    """The top-level part of the package a dotted module name (below ``convnext``) belongs to."""
    return module.split(".")[0] if module else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module below ``convnext``, line) for every import of the package in ``path``."""
    here = list(path.relative_to(PKG).parts[:-1])  # the package the module sits in (relative imports)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "convnext" or a.name.startswith("convnext."):
                    out.append((a.name.removeprefix("convnext").lstrip("."), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and (node.module == "convnext" or node.module.startswith("convnext.")):
                    base = node.module.removeprefix("convnext").lstrip(".")
                else:
                    continue
            else:
                parent = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join([*parent, *(node.module.split(".") if node.module else [])])
            if base:
                out.append((base, node.lineno))
            else:  # ``from convnext import x`` / ``from .. import x``: the names are submodules or re-exports
                out.extend((a.name, node.lineno) for a in node.names)
    return out


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(str(p.relative_to(PKG).with_suffix("")).replace("/", ".")) for p in _modules()}
    assert parts <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    me = _part(str(path.relative_to(PKG).with_suffix("")).replace("/", "."))
    wrong = [
        f"line {line}: {me} (layer {LAYERS[me]}) imports {mod} (layer {LAYERS[_part(mod)]})"
        for mod, line in _imports(path)
        if _part(mod) in LAYERS and LAYERS[_part(mod)] > LAYERS[me]
    ]
    assert not wrong, "; ".join(wrong)


def test_parts_of_one_layer_import_each_other_only_as_allowed() -> None:
    wrong = [
        f"{p.relative_to(PKG)} line {line}: {me} imports {mod} ({_part(mod)}, the same layer {LAYERS[me]}); "
        "move what both need to the layer below, or list the pair in SIBLINGS with its reason"
        for p in _modules()
        for me in [_part(str(p.relative_to(PKG).with_suffix("")).replace("/", "."))]
        for mod, line in _imports(p)
        if _part(mod) != me
        and _part(mod) in LAYERS
        and LAYERS[_part(mod)] == LAYERS[me]
        and (me, _part(mod)) not in SIBLINGS
    ]
    assert not wrong, "; ".join(wrong)


def test_models_import_nothing_of_the_package_but_themselves() -> None:
    wrong = [
        f"{p.relative_to(PKG)} line {line} imports {mod}"
        for p in _modules()
        if p.relative_to(PKG).parts[0] == "models"
        for mod, line in _imports(p)
        if _part(mod) != "models"
    ]
    assert not wrong, "; ".join(wrong)


def test_no_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = {}
    for p in _modules():
        me = _part(str(p.relative_to(PKG).with_suffix("")).replace("/", "."))
        graph.setdefault(me, set()).update(_part(m) for m, _ in _imports(p) if _part(m) != me)
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if seen.get(m) == 1:
                cycle = [*stack[stack.index(m) :], m]
                raise AssertionError("import cycle between parts: " + " -> ".join(cycle))
            if m not in seen:
                visit(m)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)
