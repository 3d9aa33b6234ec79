"""ConvNeXt V2 ("Co-designing and Scaling ConvNets with Masked Autoencoders", Woo et al., CVPR 2023).

Same macro design as V1 and the same :class:`~convnext.models.convnext.Block`: V2 drops layer scale and adds
Global Response Normalization after the expansion, i.e. ``ConvNeXt(use_grn=True,
layer_scale_init_value=None)``. Parameter names follow the official facebookresearch/ConvNeXt-V2 checkpoints.
"""

from __future__ import annotations

from .convnext import Block
from .layers import GRN

__all__ = ["GRN", "BlockV2"]


class BlockV2(Block):
    """The V2 block as a class: ``BlockV2(dim)`` is ``Block(dim, layer_scale_init_value=None, use_grn=True)``.

    Public (``convnext.models.BlockV2``) for code that builds a V2 block by itself. The networks build
    :class:`Block` with ``use_grn=True`` instead, so that the fast paths and rewrites, which check for
    ``Block``, see one class whatever the family (a ``BlockV2`` is a ``Block`` for them too)."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__(dim, drop_path, layer_scale_init_value=None, use_grn=True)
