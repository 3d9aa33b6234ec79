"""UperNet (Xiao et al., ECCV 2018) on a ConvNeXt backbone: the paper's ADE20K segmentation model.

torchvision has no UperNet, so the head is ours, written after mmsegmentation's ``UPerHead`` and
``FCNHead`` (the official facebookresearch/ConvNeXt ``semantic_segmentation/`` configs) and transformers'
``UperNetForSemanticSegmentation``, which compute the same function. Parameter names are mmsegmentation's
(``backbone.``: the official backbone's ``downsample_layers``/``stages``/``norm{i}``; ``decode_head.``:
``psp_modules``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``;
``auxiliary_head.``: ``convs``, ``conv_seg``; every ConvModule a ``conv`` + ``bn``), so an official mmseg
checkpoint loads without renaming; ``weights/upernet.py`` maps transformers' names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ConvNeXtBase, Family
from .chunked_mlp import _capturing
from .layer_ids import LayerIds

__all__ = ["ConvModule", "FCNHead", "UPerHead", "UperNet", "official_drop_path", "upernet_builder"]

# The backbone's stochastic depth in the official ADE20K configs (upernet_convnext_*_160k_ade20k_*.py), V1
# and V2 alike. Sizes the official code never trained: huge/xxlarge take the large sizes' 0.4; the light
# ones (atto..nano, zepto) 0.1, our choice (timm trains them with little or none).
_OFFICIAL_DROP_PATH = {"tiny": 0.4, "small": 0.3, "base": 0.4, "large": 0.4, "xlarge": 0.4}


#: the options of ``upernet_*`` that go to the heads (the rest go to the backbone)
HEAD_OPTIONS = ("channels", "pool_scales", "aux", "aux_channels", "aux_index", "dropout")

_HEAD_ID = 7  # the official LearningRateDecayOptimizerConstructor's num_layers (6) + 2 - 1


def official_drop_path(backbone: str) -> float:
    """The backbone's drop-path rate for UperNet training, by its size (``convnext_tiny``: 0.4)."""
    size = backbone.removeprefix("convnextv2_").removeprefix("convnext_").partition("_")[0]
    if size in _OFFICIAL_DROP_PATH:
        return _OFFICIAL_DROP_PATH[size]
    return 0.4 if size in ("huge", "xxlarge") else 0.1


class ConvModule(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU: mmcv's ``ConvModule`` with its names (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)  # SyncBN in the official configs (nn.SyncBatchNorm under DDP)
        self.activate = nn.ReLU(inplace=True)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _resize_inside(x: Tensor, size: Sequence[int]) -> Tensor:
    """:func:`_resize` for a map the head adds or concatenates at once (so its layout goes no further): on
    CPU from channels_last memory, where ATen's bilinear kernel vectorises over channels and is several times
    faster than on (N, C, H, W) rows (BENCHMARKS.md, "Detection and segmentation"); the same values. Graph
    capture (export, compile) records the plain op."""
    if x.device.type == "cpu" and not _capturing():
        x = x.contiguous(memory_format=torch.channels_last)
    return _resize(x, size)


class UPerHead(nn.Module):
    """Pyramid pooling on the last feature map, then an FPN that fuses all four at the first's resolution."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(top, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        top = feats[-1]
        psp = [top] + [_resize_inside(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(torch.cat(psp, 1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level plus the coarser one upsampled
            laterals[i - 1] = laterals[i - 1] + _resize_inside(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize_inside(o, size) for o in outs[1:]], 1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head on one stage (the third): a 3x3 ConvModule and a classifier (``num_convs=1``)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


def _init_head(module: nn.Module) -> None:
    """mmseg's init: the classifiers normal(0, 0.01), the other convs Kaiming (mmcv ConvModule's)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            if name.endswith("conv_seg"):
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UperNet(nn.Module):
    """A ``features_only`` ConvNeXt (its four stages, each through its own LayerNorm ``norm{i}``, as the
    official mmseg backbone and transformers' ``ConvNextBackbone``), ``UPerHead`` over all four and, with
    ``aux``, ``FCNHead`` on ``aux_index`` (training's 0.4-weighted second loss; inference ignores it).

    ``forward`` gives the decode head's logits resized to the input (bilinear, ``align_corners=False``),
    for any H, W the backbone takes; :meth:`forward_all` gives the auxiliary logits too.
    """

    def __init__(
        self,
        backbone: ConvNeXtBase,
        num_classes: int = 150,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        aux: bool = True,
        aux_channels: int = 256,
        aux_index: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not getattr(backbone, "features_only", False) or len(backbone.feature_info) < 2:
            raise ValueError("UperNet needs a features_only backbone with at least two outputs")
        self.backbone = backbone
        self.num_classes = num_classes
        chs = backbone.feature_info.channels()
        self.decode_head = UPerHead(chs, channels, num_classes, pool_scales, dropout)
        self.aux_index = aux_index
        self.auxiliary_head = FCNHead(chs[aux_index], aux_channels, num_classes, dropout) if aux else None
        _init_head(self)

    @property
    def family(self) -> Family:
        return self.backbone.family

    @property
    def reduction(self) -> int:
        return self.backbone.reduction

    def layer_ids(self) -> LayerIds:
        """The official segmentation layer decay (``stage_wise``, ``num_layers`` 6 in every official ADE20K
        config, decay 0.9): downsampling 0, stage i -> i + 1, the rest (per-stage norms, heads) 7; ids 5
        and 6 are unused there too, so stage 3 decays by 0.9 ** 3."""

        def layer_of(name: str) -> int:
            if name.startswith("backbone.downsample_layers."):
                return 0
            if name.startswith("backbone.stages."):
                return int(name.split(".")[2]) + 1
            return _HEAD_ID

        return layer_of, _HEAD_ID

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits, auxiliary logits or None), both (N, num_classes, H, W)."""
        feats = self.backbone(x)
        logits = _resize(self.decode_head(feats), x.shape[2:])
        if self.auxiliary_head is None:
            return logits, None
        return logits, _resize(self.auxiliary_head(feats[self.aux_index]), x.shape[2:])

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """The logits; with ``aux`` (training under DDP calls the wrapper, never a method of the module)
        :meth:`forward_all`'s pair."""
        if aux:
            return self.forward_all(x)
        feats = self.backbone(x)
        return _resize(self.decode_head(feats), x.shape[2:])


def upernet_builder(backbone_name: str, build_backbone: Callable[..., nn.Module]) -> Callable[..., UperNet]:
    """The constructor of ``upernet_<backbone_name>``: head options go to :class:`UperNet`, the rest to the
    backbone, which takes the official ADE20K settings unless told otherwise (drop path by size, layer
    scale initialised to 1.0 in V1) and is always ``features_only`` over its four stages."""
    head_keys = HEAD_OPTIONS

    def build(num_classes: int = 150, **options: Any) -> UperNet:
        head = {k: options.pop(k) for k in head_keys if k in options}
        options.setdefault("drop_path_rate", official_drop_path(backbone_name))
        if not options.get("use_grn"):
            options.setdefault("layer_scale_init_value", 1.0)
        options.pop("num_classes", None)
        backbone = build_backbone(num_classes=0, features_only=True, out_indices=(0, 1, 2, 3), **options)
        return UperNet(backbone, num_classes=num_classes, **head)  # type: ignore[arg-type]

    return build
