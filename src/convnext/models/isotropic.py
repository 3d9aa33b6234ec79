"""Isotropic ConvNeXt (paper section 3.4 / appendix): a ViT-style non-hierarchical stack of ConvNeXt blocks.

A 16x16 patchify stem, then ``depth`` blocks at one resolution and width. Names follow the official
``convnext_isotropic.py`` checkpoints (``stem``, ``blocks.{i}``, ``norm``, ``head``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .convnext import Block, drop_path_rates, init_weights, to_channels_last


class ConvNeXtIsotropic(nn.Module):
    def __init__(
        self,
        depth: int = 18,
        dim: int = 384,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        head_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, dim
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=16, stride=16)
        (rates,) = drop_path_rates(drop_path_rate, [depth])
        self.blocks = nn.Sequential(*[Block(dim, p, layer_scale_init_value) for p in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(to_channels_last(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
