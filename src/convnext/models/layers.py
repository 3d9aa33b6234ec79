"""The two layers ConvNeXt adds to torch's: LayerNorm over channels (V1) and Global Response Norm (V2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor.

    Moving C last and using the fused ``F.layer_norm`` is faster than the official mean/var formula, and exact
    to float rounding. Under ``channels_last`` memory format both permutes are free views.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on channels-last input: features compete across channels.

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
        # gamma * (x * nx) + beta + x, the paper's formula, as one pass over x: the per-sample factor
        # 1 + gamma * nx is small, x is the block's largest activation (4C wide). What it gained on CPU:
        # BENCHMARKS.md, "ConvNeXt V2 on CPU".
        return torch.addcmul(self.beta, x, 1 + self.gamma * nx)
