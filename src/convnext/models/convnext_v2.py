"""ConvNeXt V2 ("Co-designing and Scaling ConvNets with Masked Autoencoders", Woo et al., CVPR 2023).

Same macro design as V1 and the same :class:`~convnext.models.convnext.Block`: V2 drops layer scale and adds
Global Response Normalization after the expansion, i.e. ``ConvNeXt(use_grn=True,
layer_scale_init_value=None)``. Parameter names follow the official facebookresearch/ConvNeXt-V2 checkpoints.
"""

from __future__ import annotations

from .convnext import Block
from .layers import GRN

__all__ = ["GRN", "BlockV2"]


def BlockV2(dim: int, drop_path: float = 0.0) -> Block:  # named like the class it replaced
    """The V2 block: kept for code that built ``BlockV2(dim)``; it is the one ``Block`` with GRN."""
    return Block(dim, drop_path, layer_scale_init_value=None, use_grn=True)
