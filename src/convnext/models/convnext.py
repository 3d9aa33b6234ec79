"""ConvNeXt V1, as in "A ConvNet for the 2020s" (Liu et al., CVPR 2022).

Parameter names follow the official facebookresearch/ConvNeXt checkpoints
(``downsample_layers.{i}.{j}``, ``stages.{i}.{j}.dwconv|norm|pwconv1|pwconv2|gamma``, ``norm``, ``head``),
so an official state dict loads with ``strict=True`` and no renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .chunked_mlp import chunked_mlp, use_chunked_mlp


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor.

    Moving C last and using the fused ``F.layer_norm`` is faster than the official mean/var formula, and exact
    to float rounding. Under ``channels_last`` memory format both permutes are free views.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """The ConvNeXt block: 7x7 depthwise conv -> LN -> 1x1 expand 4x -> GELU -> 1x1 project, residual.

    The 1x1 convs are ``nn.Linear`` on channels-last data, as in the official code (same math, faster).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # Layer scale (Touvron et al. 2021): a learnable per-channel gain, initialised tiny so that each
        # residual branch starts close to the identity.
        self.gamma = (
            nn.Parameter(torch.full((dim,), layer_scale_init_value)) if layer_scale_init_value > 0 else None
        )
        self.drop_path = StochasticDepth(drop_path, "row")
        self.chunked = True  # False runs the plain ops everywhere (the reference the tests compare with)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        if self.chunked and use_chunked_mlp(x):  # CPU fp32: the same math in row chunks (chunked_mlp.py)
            x = chunked_mlp(x, self.norm, self.pwconv1, self.pwconv2, self.gamma)
        else:
            x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
            if self.gamma is not None:
                x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


def to_channels_last(x: Tensor) -> Tensor:
    """The network runs in channels_last memory whatever the input's layout (same values, same shapes).

    Then the block's permutes to (N, H, W, C) are free views, the Linear layers read the data in place, and
    the 7x7 depthwise conv takes oneDNN's NHWC kernel: on CPU 2x faster forward and backward than NCHW
    (measured, BENCHMARKS.md); on GPU it is the layout cuDNN prefers under mixed precision. Costs one copy of
    the image.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 at the first block to ``drop_path_rate`` at the last."""
    n = sum(depths)
    rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def init_weights(module: nn.Module) -> None:
    """The paper's init: truncated normal (std 0.02) for conv and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvNeXt(nn.Module):
    """Hierarchical ConvNeXt: a 4x4 patchify stem, four stages, and downsampling between them.

    ``block`` is swapped for ConvNeXt V2's GRN block; everything else is shared.
    ``features_only=True`` builds the detection/segmentation backbone: no head, and ``forward`` returns the
    four stage outputs (strides 4, 8, 16, 32), each passed through its own LayerNorm (``norm0``..``norm3``,
    the official backbone's names).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        head_init_scale: float = 1.0,
        features_only: bool = False,
        block: type[nn.Module] = Block,
        **block_kwargs: float,
    ) -> None:
        super().__init__()
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.features_only = features_only
        self.grad_checkpointing = False

        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6)
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)
                )
            )
        if block is Block:
            block_kwargs = {"layer_scale_init_value": layer_scale_init_value, **block_kwargs}
        self.stages = nn.ModuleList(
            nn.Sequential(*[block(dims[i], drop_path=p, **block_kwargs) for p in rates])
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))
        )
        if features_only:
            for i, dim in enumerate(dims):
                self.add_module(f"norm{i}", LayerNorm2d(dim, eps=1e-6))
        else:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_weights)
        if isinstance(getattr(self, "head", None), nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory, about 30% more compute."""
        self.grad_checkpointing = enable

    def _run_stage(self, i: int, x: Tensor) -> Tensor:
        x = self.downsample_layers[i](x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.stages[i]:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.stages[i](x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The four stage outputs, strides 4/8/16/32; normed in a ``features_only`` backbone."""
        x = to_channels_last(x)
        feats = []
        for i in range(4):
            x = self._run_stage(i, x)
            feats.append(getattr(self, f"norm{i}")(x) if self.features_only else x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, (N, C, H/32, W/32)."""
        x = to_channels_last(x)
        for i in range(4):
            x = self._run_stage(i, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, LayerNorm, then the classifier; ``pre_logits`` stops before the classifier."""
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for fine-tuning on ``num_classes`` classes (0 leaves the pooled embedding)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))
