"""Layer-wise lr decay is monotone for every depth and equals the official ids where they exist."""

from __future__ import annotations

import math

import pytest
import torch

from convnext.engine.optim import layer_ids, param_groups
from convnext.models import build_model


# -------------------------------------------------------------------------------------- layer decay
def _depth_order(model: torch.nn.Module) -> list[str]:
    """Parameter names from the input to the output (named_parameters lists all downsampling first)."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "stages"):
        ordered = []
        for i in range(4):
            ordered += [n for n in names if n.startswith(f"downsample_layers.{i}.")]
            ordered += [n for n in names if n.startswith(f"stages.{i}.")]
        return ordered + [n for n in names if n not in ordered]
    return names  # isotropic: stem, blocks, norm, head already in order


NARROW = {"dims": (8, 16, 32, 64)}
MODELS = {
    "convnext_tiny": NARROW,
    "convnext_small": NARROW,
    "convnext_base": NARROW,
    "convnext_large": NARROW,
    "convnext_atto": {"depths": (1, 1, 2, 1), **NARROW},
    "convnextv2_atto": NARROW,
    "convnextv2_tiny": NARROW,
    "convnextv2_base": NARROW,
    "convnext_isotropic_small": {"dim": 16},
}


@pytest.mark.parametrize("arch", MODELS)
def test_layer_decay_is_monotone_at_every_depth(arch: str) -> None:
    """From the stem to the head the layer id never falls and never skips, so neighbouring layers' lr differ
    by at most one factor of the decay, for every depth (ConvNeXt-T's 9-block stage gave ids 0-5, 12, 13:
    a 4.8x jump at decay 0.8)."""
    model = build_model(arch, num_classes=3, **MODELS[arch])
    layer_of, head = layer_ids(model)
    ids = [layer_of(n) for n in _depth_order(model)]
    assert ids[0] == 0 and ids[-1] == head
    assert all(0 <= b - a <= 1 for a, b in zip(ids, ids[1:]))
    assert sorted(set(ids)) == list(range(head + 1))
    d = 0.7
    groups = param_groups(model, 0.05, d)
    scales = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scales["head.weight"] == 1.0
    order = _depth_order(model)
    for a, b in zip(order, order[1:]):
        assert scales[a] <= scales[b] and scales[b] / scales[a] <= 1 / d + 1e-9


def _official_layer_id(name: str) -> int:
    """The official optim_factory.get_num_layer_for_convnext (a [3, 3, 27, 3] model), transcribed."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: 12}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 3: 12}.get(stage, 3 + block // 3)
    return 13


@pytest.mark.parametrize("arch", ["convnext_small", "convnext_base", "convnext_large", "convnextv2_base"])
def test_layer_ids_equal_the_official_ones_for_27_block_models(arch: str) -> None:
    model = build_model(arch, num_classes=3, **NARROW)
    layer_of, head = layer_ids(model)
    assert head == 13
    for name, _ in model.named_parameters():
        assert layer_of(name) == _official_layer_id(name), name
    groups = param_groups(model, 0.05, 0.8)
    for g in groups:
        assert math.isclose(g["lr_scale"], 0.8 ** (13 - g["layer_id"]))


def test_tiny_layer_ids_are_consecutive() -> None:
    model = build_model("convnext_tiny", num_classes=3, **NARROW)
    layer_of, head = layer_ids(model)
    ids = sorted({layer_of(n) for n, _ in model.named_parameters()})
    assert ids == list(range(8)) and head == 7  # stage 2's 9 blocks in three groups, then stage 3, head
    assert layer_of("stages.2.8.dwconv.weight") == 5 and layer_of("stages.3.0.dwconv.weight") == 6
