"""The two layers ConvNeXt adds to torch's: LayerNorm over channels (V1) and Global Response Norm (V2);
then the stems and norms timm's variants use instead."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

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


# ------------------------------------------------------------------------------------------------------
# What timm's variants change (``convnext_zepto_rms``, the ``*_ols`` stems, ``convnext_xxlarge``'s eps):
# constructor options of :class:`~convnext.models.convnext.ConvNeXt`, whose defaults are the paper's.

NormKind = Literal["layernorm", "rmsnorm", "simplenorm"]
StemKind = Literal["patch", "overlap", "overlap_tiered", "overlap_act"]


class SimpleNorm(nn.Module):
    """timm's ``simplenorm`` on the last axis: ``x / sqrt(var(x) + eps) * weight``, no centring, no bias.

    Hand-written because torch has no such op; ``torch.var``'s unbiased estimate, as timm's ``simple_norm``.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.var(x, dim=-1, keepdim=True) + self.eps) * self.weight


class SimpleNorm2d(SimpleNorm):
    """:class:`SimpleNorm` over the channels of an (N, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RMSNorm2d(nn.RMSNorm):
    """torch's RMSNorm over the channels of an (N, C, H, W) tensor (timm's ``rmsnorm2d``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


_NORMS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "layernorm": (LayerNorm2d, nn.LayerNorm),
    "rmsnorm": (RMSNorm2d, nn.RMSNorm),
    "simplenorm": (SimpleNorm2d, SimpleNorm),
}


def norm_layers(kind: NormKind, eps: float) -> tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]]:
    """The norm for (N, C, H, W) maps (stem, downsampling) and for channels-last rows (blocks, head)."""
    if kind not in _NORMS:
        raise ValueError(f"norm must be one of {', '.join(_NORMS)}, not {kind!r}")
    first, last = _NORMS[kind]
    return partial(first, eps=eps), partial(last, eps=eps)


def overlap_stem(
    kind: StemKind, in_chans: int, dim: int, norm2d: Callable[[int], nn.Module]
) -> nn.Sequential:
    """timm's overlapping stem: two 3x3 stride-2 convs (stride 4, as the 4x4 patchify), then the norm.

    ``overlap_tiered`` halves the first conv's width (rounded to a multiple of 8, as timm's
    ``make_divisible``); ``overlap_act`` puts a GELU between the convs. Indices match timm's ``stem.{i}``."""
    if kind not in ("overlap", "overlap_tiered", "overlap_act"):
        raise ValueError(f"stem must be patch, overlap, overlap_tiered or overlap_act, not {kind!r}")
    mid = dim
    if kind == "overlap_tiered":
        mid = max(8, (dim // 2 + 4) // 8 * 8)
        mid += 8 if mid < 0.9 * (dim // 2) else 0
    act = [nn.GELU()] if kind == "overlap_act" else []
    return nn.Sequential(
        nn.Conv2d(in_chans, mid, kernel_size=3, stride=2, padding=1),
        *act,
        nn.Conv2d(mid, dim, kernel_size=3, stride=2, padding=1),
        norm2d(dim),
    )
