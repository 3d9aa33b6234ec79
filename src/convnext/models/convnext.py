"""ConvNeXt, as in "A ConvNet for the 2020s" (Liu et al., CVPR 2022) and ConvNeXt V2 (Woo et al., CVPR 2023).

Parameter names follow the official facebookresearch/ConvNeXt and ConvNeXt-V2 checkpoints
(``downsample_layers.{i}.{j}``, ``stages.{i}.{j}.dwconv|norm|pwconv1|grn|pwconv2|gamma``, ``norm``, ``head``),
so an official state dict loads with ``strict=True`` and no renaming. This is the reference: the CPU fast
path (``chunked_mlp.py``) and the inference rewrite (``fuse.py``) replace blocks, never edit them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .base import ConvNeXtBase, Family, drop_path_rates, init_weights
from .layer_ids import LayerIds, hierarchical_ids
from .layers import GRN, LayerNorm2d, NormKind, StemKind, norm_layers, overlap_stem

__all__ = ["GRN", "Block", "ConvNeXt", "LayerNorm2d"]


class Block(nn.Module):
    """7x7 depthwise conv -> LN -> 1x1 expand 4x -> GELU -> [GRN] -> 1x1 project -> [layer scale], residual.

    V1 has layer scale (``layer_scale_init_value``, 1e-6), V2 has GRN instead (``use_grn=True``,
    ``layer_scale_init_value=None``). The 1x1 convs are ``nn.Linear`` on channels-last data, as in the
    official code (same math, faster).
    """

    chunked: ClassVar[bool] = False  # True for the CPU fast path's subclass (chunked_mlp.ChunkedBlock)

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        use_grn: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,  # timm's variants: layers.norm_layers
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        # The weight in the strides its gradient has in channels_last, (49, 1, 7, 1): the same bytes as
        # contiguous (the size-1 axis), but DDP lays its gradient buckets out like the parameter and warns on
        # every rank when a gradient's strides differ.
        w = self.dwconv.weight
        self.dwconv.weight = nn.Parameter(torch.empty_like(w, memory_format=torch.channels_last).copy_(w))
        self.norm = norm_layer(dim) if norm_layer else nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else nn.Identity()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # Layer scale (Touvron et al. 2021): a learnable per-channel gain, initialised tiny so that each
        # residual branch starts close to the identity.
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            if layer_scale_init_value
            else None
        )
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNeXt(ConvNeXtBase):
    """Hierarchical ConvNeXt: a 4x4 patchify stem, four stages, and downsampling between them.

    ``features_only=True`` builds the detection/segmentation backbone: no head, and ``forward`` returns the
    stage outputs in ``out_indices`` (strides 4, 8, 16, 32; default all four), each passed through its own
    LayerNorm (``norm0``..``norm3``, the official backbone's names). Stages after the last index are kept,
    so that any checkpoint loads, but not run.

    The options after ``out_indices`` are timm's variants (their defaults are the paper's): ``stem``
    (the ``*_ols`` overlapping 3x3 stems), ``norm`` and ``norm_eps`` (``*_rms``, ``xxlarge``'s 1e-5),
    ``head_norm_first`` (``tiny_hnf``: the norm on the map, ``norm_pre``, before pooling) and
    ``head_hidden_size`` (``large_mlp``: Linear + GELU, ``pre_logits``, before the classifier).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        use_grn: bool = False,
        head_init_scale: float = 1.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        stem: StemKind = "patch",
        norm: NormKind = "layernorm",
        norm_eps: float = 1e-6,
        head_norm_first: bool = False,
        head_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        self.depths, self.dims, self.use_grn = tuple(depths), tuple(dims), bool(use_grn)
        norm2d, norm_cl = norm_layers(norm, norm_eps)  # LayerNorm2d and nn.LayerNorm, eps 1e-6, by default
        stem_layers = (
            nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), norm2d(dims[0]))
            if stem == "patch"
            else overlap_stem(stem, in_chans, dims[0], norm2d)
        )
        self.downsample_layers = nn.ModuleList([stem_layers])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(norm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], p, layer_scale_init_value, use_grn, norm_cl) for p in rates])
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))
        )
        taps = [{"num_chs": d, "reduction": 4 * 2**i, "module": f"stages.{i}"} for i, d in enumerate(dims)]
        self._finish(taps, num_classes, head_init_scale, features_only, out_indices, backbone_norms=True)
        self.head_hidden_size = head_hidden_size
        self.norm_pre, self.pre_logits = nn.Identity(), nn.Identity()
        if not features_only:
            self._timm_head(norm2d, norm_cl, head_norm_first, head_init_scale)

    def _timm_head(
        self,
        norm2d: Callable[[int], nn.Module],
        norm_cl: Callable[[int], nn.Module],
        first: bool,
        scale: float,
    ) -> None:
        """The head's norm in the variant's kind; ``norm_pre`` or ``pre_logits`` where the variant has one."""
        self.norm = norm_cl(self.num_features)
        if first:
            self.norm_pre, self.norm = norm2d(self.num_features), nn.Identity()
        if self.head_hidden_size:
            fc = nn.Linear(self.num_features, self.head_hidden_size)
            init_weights(fc)
            self.pre_logits = nn.Sequential(OrderedDict(fc=fc, act=nn.GELU()))
            self.reset_classifier(self.num_classes)
            with torch.no_grad():
                for p in self.head.parameters():
                    p.mul_(scale)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if num_classes > 0 and self.head_hidden_size:  # the classifier reads the MLP's output
            self.head = nn.Linear(self.head_hidden_size, num_classes)
            init_weights(self.head)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, LayerNorm (``norm_pre`` ran before the pool instead, in ``head_norm_first``
        variants), the MLP of ``head_hidden_size`` variants, then the classifier."""
        x = self.pre_logits(self.norm(x.mean((-2, -1))))
        return x if pre_logits else self.head(x)

    @property
    def family(self) -> Family:
        return "v2" if self.use_grn else "v1"

    def layer_ids(self) -> LayerIds | None:
        return hierarchical_ids(self.depths)

    def _tap(self, i: int, x: Tensor) -> Tensor:
        x = self._blocks(self.stages[i], self.downsample_layers[i](x))
        return self.norm_pre(x) if i == 3 else x  # identity unless head_norm_first (timm's norm_pre)
