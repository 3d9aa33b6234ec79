"""ConvNeXt V2 ("Co-designing and Scaling ConvNets with Masked Autoencoders", Woo et al., CVPR 2023).

Same macro design as V1; the block drops layer scale and adds Global Response Normalization (GRN) after the
expansion. Parameter names follow the official facebookresearch/ConvNeXt-V2 checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth


class GRN(nn.Module):
    """Global Response Normalization on channels-last input: features compete across channels.

    ``gamma`` and ``beta`` start at zero, so GRN starts as the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # spatial L2 norm per channel
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)  # divisive normalization across channels
        return self.gamma * (x * nx) + self.beta + x


class BlockV2(nn.Module):
    """7x7 depthwise conv -> LN -> 1x1 expand 4x -> GELU -> GRN -> 1x1 project, residual."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))
