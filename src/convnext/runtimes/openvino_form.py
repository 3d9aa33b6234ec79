"""The form of a ConvNeXt that OpenVINO's CPU plugin runs fastest: the same function, other ops.

Our blocks (like the official code) run the two 1x1 convolutions as ``nn.Linear`` on channels-last data, with
a permute on each side; PyTorch likes that. OpenVINO converts those permutes into Transpose nodes and the
Linear layers into FullyConnected ones, and then reorders between its blocked NCHW layout and plain NHWC
around every block: in an int8 model those moves and the LayerNorm around them took much of the time.
Here each block is written as the paper draws it, in NCHW: 7x7 depthwise conv -> LayerNorm over channels
(the official "channels_first" mean/variance formula) -> 1x1 conv -> GELU -> [GRN] -> 1x1 conv, with layer
scale folded into the last conv. The network then stays in OpenVINO's blocked layout end to end and the
int8 1x1 convolutions take most of the time, as they should (BENCHMARKS.md, "The channels-first OpenVINO
graph").

Only the OpenVINO conversion uses it; ONNX keeps the plain model (one LayerNormalization op per norm). The
converted file is checked against the plain PyTorch model, as every export is.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..models.convnext import Block
from ..models.layers import GRN, LayerNorm2d


def _norm_channels_first(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over dim 1 of (N, C, H, W): what OpenVINO runs in place, without a transpose."""
    d = x - x.mean(1, keepdim=True)
    x = d / torch.sqrt((d * d).mean(1, keepdim=True) + norm.eps)
    return norm.weight[:, None, None] * x + norm.bias[:, None, None]


def _conv1x1(linear: nn.Linear, scale: Tensor | None = None) -> nn.Conv2d:
    """``linear`` as a 1x1 convolution; ``scale`` (layer scale) multiplies its outputs, folded in."""
    weight, bias = linear.weight.detach(), linear.bias.detach()
    if scale is not None:
        weight, bias = weight * scale.detach()[:, None], bias * scale.detach()
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1)
    conv.weight.data = weight[:, :, None, None].clone()
    conv.bias.data = bias.clone()
    return conv


class ChannelsFirstLayerNorm(nn.Module):
    """A :class:`LayerNorm2d` (stem, downsampling) without its two permutes."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return _norm_channels_first(x, self.norm)


class ChannelsFirstGRN(nn.Module):
    """:class:`GRN` on (N, C, H, W)."""

    def __init__(self, grn: GRN) -> None:
        super().__init__()
        self.gamma = nn.Parameter(grn.gamma.detach().reshape(1, -1, 1, 1).clone())
        self.beta = nn.Parameter(grn.beta.detach().reshape(1, -1, 1, 1).clone())
        self.eps = grn.eps

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class ChannelsFirstBlock(nn.Module):
    """An eval :class:`Block` in NCHW: 1x1 convs instead of Linear layers, layer scale folded in."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.dwconv, self.norm, self.act = block.dwconv, block.norm, block.act
        self.pwconv1 = _conv1x1(block.pwconv1)
        self.grn = ChannelsFirstGRN(block.grn) if isinstance(block.grn, GRN) else nn.Identity()
        self.pwconv2 = _conv1x1(block.pwconv2, block.gamma)

    def forward(self, x: Tensor) -> Tensor:
        y = _norm_channels_first(self.dwconv(x), self.norm)
        return x + self.pwconv2(self.grn(self.act(self.pwconv1(y))))


def openvino_form(model: nn.Module) -> nn.Module:
    """An eval copy of ``model`` with every :class:`Block` and :class:`LayerNorm2d` in channels-first form
    (stochastic depth is the identity in eval, so it is dropped)."""

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, Block):
                setattr(module, name, ChannelsFirstBlock(child))
            elif isinstance(child, LayerNorm2d):
                setattr(module, name, ChannelsFirstLayerNorm(child))
            else:
                swap(child)

    out = copy.deepcopy(model).eval()
    swap(out)
    return out.requires_grad_(False)
