"""Layer-wise lr decay asks the model which layer each parameter is in (``model.layer_ids()``: the official
ConvNeXt ids of models/layer_ids.py for our families). Below engine/: the recipe check (``optim.layer_decay``
on a model without a layer order) and the optimizer's parameter groups both need it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from torch import nn


def layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """The layer-id function of ``model``'s parameters and the head's id (the largest); one sentence for a
    model whose layers have no defined order (one that does not answer ``layer_ids()``, or answers None)."""
    ask = getattr(model, "layer_ids", None)
    ids = ask() if callable(ask) else None
    if ids is None:
        raise UserError(
            f"config key optim.layer_decay: {type(model).__name__} has no layer order for layer-wise lr "
            "decay; set optim.layer_decay=null"
        )
    return ids
