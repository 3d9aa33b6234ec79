"""The official ConvNeXt layer ids for layer-wise lr decay (which layer each parameter is in), generalised to
every depth. Below engine/: the recipe check (``optim.layer_decay`` on a model without a layer order) and
the optimizer's parameter groups both need them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from torch import nn

NUM_LAYER_GROUPS = 12  # the official split of a [3, 3, 27, 3] ConvNeXt: stem 0, body 1..12, head 13


def num_layers_hierarchical(depths: tuple[int, ...] | list[int]) -> int:
    """Body layers of a four-stage ConvNeXt: stage 0, stage 1, stage 2 in groups of three blocks, stage 3.

    The official code (optim_factory.get_num_layer_for_convnext) hard-codes 12 for the 27-block stage 2 of
    S/B/L/XL and refuses layer decay for T; 9 groups of three blocks + 3 gives the same 12 there, and for
    T's 9 blocks 3 + 3 = 6, so that every depth gets consecutive ids (no jump between neighbours).
    """
    return 3 + math.ceil(depths[2] / 3)


def layer_id_hierarchical(name: str, depths: tuple[int, ...] | list[int] = (3, 3, 27, 3)) -> int:
    """Layer id of a parameter of a four-stage ConvNeXt (V1 or V2): stem 0, stage 0 -> 1, downsampling 1 and
    stage 1 -> 2, downsampling 2 and stage 2 in groups of three blocks from 3, downsampling 3 and stage 3
    -> L, final norm and head L + 1 (L = :func:`num_layers_hierarchical`, 12 for [3, 3, 27, 3]: exactly
    the official ids)."""
    last = num_layers_hierarchical(depths)
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: last}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        if stage < 2:
            return stage + 1
        if stage == 2:
            return 3 + block // 3
        return last
    return last + 1


def layer_id_isotropic(name: str, depth: int) -> int:
    """Isotropic ConvNeXt, BEiT-style: stem 0, block i -> i + 1, norm and head depth + 1."""
    parts = name.split(".")
    if parts[0] == "stem":
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return depth + 1


def layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """The layer-id function of ``model``'s parameters and the head's id (the largest); one sentence for a
    model whose layers have no defined order."""
    from torch import nn

    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages) == 4 and hasattr(model, "downsample_layers"):
        depths = tuple(len(s) for s in stages)
        return (lambda n: layer_id_hierarchical(n, depths)), num_layers_hierarchical(depths) + 1
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(model, "stem"):
        depth = len(blocks)
        return (lambda n: layer_id_isotropic(n, depth)), depth + 1
    raise UserError(
        f"config key optim.layer_decay: {type(model).__name__} has no layer order for layer-wise lr decay; "
        "set optim.layer_decay=null"
    )
