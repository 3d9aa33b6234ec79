"""The official ConvNeXt layer ids for layer-wise lr decay (which layer each parameter is in), generalised to
every depth, for the two parameter layouts: hierarchical (``downsample_layers.i``, ``stages.i.j``) and
isotropic (``stem``, ``blocks.i``). A family answers ``model.layer_ids()`` with one of them (or its own), so
the optimizer and the recipe check ask the model instead of looking for ``stages`` or ``blocks``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

#: the ids of a model's parameters (name -> id, stem 0 ... head the largest) and the head's id
LayerIds = tuple[Callable[[str], int], int]

NUM_LAYER_GROUPS = 12  # the official split of a [3, 3, 27, 3] ConvNeXt: stem 0, body 1..12, head 13


def num_layers_hierarchical(depths: Sequence[int]) -> int:
    """Body layers of a four-stage ConvNeXt: stage 0, stage 1, stage 2 in groups of three blocks, stage 3.

    The official code (optim_factory.get_num_layer_for_convnext) hard-codes 12 for the 27-block stage 2 of
    S/B/L/XL and refuses layer decay for T; 9 groups of three blocks + 3 gives the same 12 there, and for
    T's 9 blocks 3 + 3 = 6, so that every depth gets consecutive ids (no jump between neighbours).
    """
    return 3 + math.ceil(depths[2] / 3)


def layer_id_hierarchical(name: str, depths: Sequence[int] = (3, 3, 27, 3)) -> int:
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


def hierarchical_ids(depths: Sequence[int]) -> LayerIds | None:
    """The ids of a hierarchical model with these stage depths; None unless it has the paper's four."""
    if len(depths) != 4:
        return None
    d = tuple(depths)
    return (lambda n: layer_id_hierarchical(n, d)), num_layers_hierarchical(d) + 1


def isotropic_ids(depth: int) -> LayerIds:
    """The ids of an isotropic model of ``depth`` blocks."""
    return (lambda n: layer_id_isotropic(n, depth)), depth + 1
