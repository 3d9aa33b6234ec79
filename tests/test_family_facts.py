"""Issue 19: what differs between model families is asked of the model (``family``, ``reduction``,
``feature_info``, ``layer_ids()``), not guessed from its attribute names or tested by family string outside
models/ and the weights' key layouts (weights/formats.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import convnext
from convnext.bench.models import build_ours
from convnext.engine.optim import param_groups
from convnext.errors import UserError
from convnext.recipe.layer_ids import layer_ids

PKG = Path(convnext.__file__).parent
FAMILY_NAMES = {"v1", "v2", "isotropic"}
LAYOUT_ATTRS = {"stages", "blocks", "downsample_layers", "stem"}
# where family names and module layouts are the subject: the networks themselves and the peers' key layouts
OWNERS = ("models/", "weights/formats.py")


def _is_str(node: ast.AST, values: set[str]) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values


def test_no_module_outside_models_tests_a_family_by_name_or_attribute() -> None:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                _is_str(n, FAMILY_NAMES) for n in [node.left, *node.comparators]
            ):
                found.append(f"{rel}:{node.lineno} compares with a family name")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2
                and _is_str(node.args[1], LAYOUT_ATTRS)
            ):
                found.append(f"{rel}:{node.lineno} looks for the attribute {node.args[1].value!r}")  # type: ignore[attr-defined]
    assert not found, found


class _Staged(nn.Module):
    """Named like a hierarchical ConvNeXt (four ``stages``, ``downsample_layers``) but no ConvNeXt."""

    def __init__(self) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(4))
        self.stages = nn.ModuleList(nn.Sequential(nn.Linear(2, 2)) for _ in range(4))


class _OwnOrder(nn.Module):
    """A family of its own that says which layer each parameter is in."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def layer_ids(self) -> tuple:
        return (lambda name: 0 if name.startswith("a.") else 1), 1


def test_layer_decay_asks_the_model_for_its_layer_order() -> None:
    with pytest.raises(UserError, match="no layer order"):
        layer_ids(_Staged())  # attribute names are no answer
    groups = param_groups(_OwnOrder(), 0.05, 0.5)
    scales = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scales == {"a.weight": 0.5, "a.bias": 0.5, "b.weight": 1.0, "b.bias": 1.0}
    for arch, head in (("convnext_atto", 6), ("convnext_isotropic_small", 19)):
        with torch.device("meta"):
            model = convnext.models.build_model(arch, num_classes=3)
        assert layer_ids(model)[1] == head == model.layer_ids()[1]


def test_benchmark_makes_layer_scale_non_trivial_where_the_model_has_it() -> None:
    cpu = torch.device("cpu")
    v1, v2 = build_ours("convnext_atto", cpu), build_ours("convnextv2_atto", cpu)
    assert not all(torch.all(b.gamma == 1e-6) for b in v1.stages[0])  # V1's layer scale made non-trivial
    assert all(torch.all(b.grn.gamma == 0) for b in v2.stages[0])  # V2 has none: left as built


def test_the_models_verb_takes_its_families_from_the_shipped_table() -> None:
    from convnext.cli.models import _families

    assert set(_families()) == set(convnext.models.FAMILIES)
