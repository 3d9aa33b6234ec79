"""Isotropic ConvNeXt (paper section 3.4 / appendix): a ViT-style non-hierarchical stack of ConvNeXt blocks.

A 16x16 patchify stem, then ``depth`` blocks at one resolution and width. Names follow the official
``convnext_isotropic.py`` checkpoints (``stem``, ``blocks.{i}``, ``norm``, ``head``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import ConvNeXtBase, Family, drop_path_rates, to_channels_last
from .convnext import Block
from .layer_ids import LayerIds, isotropic_ids


class ConvNeXtIsotropic(ConvNeXtBase):
    """``features_only=True``: the outputs of the blocks in ``out_indices``, all at stride 16. The default
    takes the last block of each quarter of the depth (blocks 3, 8, 12, 17 of 18), the four evenly spaced
    taps ViT detection backbones use, so a neck gets four maps as from a hierarchical model. There is no
    official isotropic backbone, so the outputs are the raw blocks' (no extra norms), as timm's ViTs give.
    """

    def __init__(
        self,
        depth: int = 18,
        dim: int = 384,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 0.0,
        head_init_scale: float = 1.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=16, stride=16)
        (rates,) = drop_path_rates(drop_path_rate, [depth])
        self.blocks = nn.Sequential(*[Block(dim, p, layer_scale_init_value) for p in rates])
        taps = [{"num_chs": dim, "reduction": 16, "module": f"blocks.{i}"} for i in range(depth)]
        if features_only and out_indices is None:
            out_indices = sorted({max((q + 1) * depth // 4 - 1, 0) for q in range(4)})
        self._finish(taps, num_classes, head_init_scale, features_only, out_indices, backbone_norms=False)

    @property
    def family(self) -> Family:
        return "isotropic"

    def layer_ids(self) -> LayerIds:
        return isotropic_ids(len(self.blocks))

    def _tap(self, i: int, x: Tensor) -> Tensor:
        return self._blocks(self.blocks[i], self.stem(x) if i == 0 else x)

    def _features(self, x: Tensor) -> Tensor:
        # The stack as one module call, so that hooks on ``blocks`` see it (and on each block, Grad-CAM's).
        return self._blocks(self.blocks, self.stem(to_channels_last(x)))
