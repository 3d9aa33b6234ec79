"""Mask R-CNN and Faster R-CNN on a ConvNeXt backbone: the paper's COCO detection models, from torchvision.

``maskrcnn_<backbone>`` / ``fasterrcnn_<backbone>`` are torchvision's ``MaskRCNN`` / ``FasterRCNN`` with
our ``features_only`` ConvNeXt (its four stages, each through its own LayerNorm ``norm{i}``, as the official
mmdet backbone ``object_detection/mmdet/models/backbones/convnext.py``) under torchvision's
``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` (five levels, strides 4-64, 256 channels). Reused from
torchvision as they are: ``GeneralizedRCNNTransform`` (resize to ``min_size``/``max_size``, normalise,
batch), ``AnchorGenerator`` (sizes 32-512, ratios 0.5/1/2), ``RPNHead`` + ``RegionProposalNetwork``,
``MultiScaleRoIAlign``, ``RoIHeads`` with ``TwoMLPHead`` + ``FastRCNNPredictor`` and, for Mask R-CNN,
``MaskRCNNHeads`` (4 convs) + ``MaskRCNNPredictor``. Only the backbone wrapper below is ours.

Where the official mmdet config (``mask_rcnn_convnext_fpn.py``) differs: its Mask R-CNN heads have the same
shapes (mmdet's ``Shared2FCBBoxHead`` is torchvision's ``TwoMLPHead``, its ``FCNMaskHead`` 4 convs + deconv
the mask heads), RoIs go to pyramid levels by the same rule (mmdet's ``finest_scale=56`` is torchvision's
canonical 224 at level 4) and the samplers, IoU thresholds and test-time limits are the same numbers (the
RPN's 1000 training proposals per image are set here: torchvision's default is 2000). What differs: mmdet's
RoIAlign is ``aligned=True`` with adaptive sampling (torchvision's ``MultiScaleRoIAlign``: ``aligned=False``,
2 samples), torchvision rounds the base anchors to integers (mmdet does not), its box losses are smooth L1
(beta 1/9; mmdet's L1) and its RoI matcher takes no low-quality matches; mmdet's classifier puts the
background last and predicts no box for it (torchvision: first, with one), and labels here count the
background (``num_classes`` 91 is torchvision's COCO, category ids as labels; the official 80 classes are
81). The Cascade Mask R-CNN configs (``4conv1fc`` box heads with SyncBN, GIoU loss, three stages) have no
torchvision counterpart and are not built here.

The backbone takes the official detection settings unless told otherwise: layer scale initialised to 1.0
(V1) and the drop-path rate of the official COCO config for its size (:func:`official_drop_path`);
``layer_ids()`` gives the official layer-wise ids (the decay rate is the recipe's: 0.95 in the official
Mask R-CNN tiny config, 0.7-0.8 in the Cascade ones).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .base import ConvNeXtBase, Family
from .layer_ids import LayerIds

__all__ = [
    "ConvNeXtFPN",
    "ConvNeXtFasterRCNN",
    "ConvNeXtMaskRCNN",
    "DETECTORS",
    "detection_builder",
    "official_drop_path",
]

DETECTORS = ("maskrcnn", "fasterrcnn")

# The backbone's stochastic depth in the official COCO configs (object_detection/configs/convnext/: tiny's
# Mask R-CNN and Cascade Mask R-CNN 0.4; small 0.6, base 0.7, large 0.7, xlarge 0.8 for Cascade in1k/in22k);
# sizes the official code never trained take 0.1 below tiny and 0.8 above xlarge.
_OFFICIAL_DROP_PATH = {"tiny": 0.4, "small": 0.6, "base": 0.7, "large": 0.7, "xlarge": 0.8}


def official_drop_path(backbone: str) -> float:
    """The backbone's drop-path rate for COCO detection training, by its size (``convnext_tiny``: 0.4)."""
    size = backbone.removeprefix("convnextv2_").removeprefix("convnext_").partition("_")[0]
    if size in _OFFICIAL_DROP_PATH:
        return _OFFICIAL_DROP_PATH[size]
    return 0.8 if size in ("huge", "xxlarge") else 0.1


class ConvNeXtFPN(nn.Module):
    """A ``features_only`` ConvNeXt (``body``) under torchvision's FPN (``fpn``), named as torchvision's
    ``BackboneWithFPN``; ``out_channels`` is what torchvision's detectors read."""

    def __init__(self, body: ConvNeXtBase, out_channels: int = 256) -> None:
        super().__init__()
        if not getattr(body, "features_only", False):
            raise ValueError("ConvNeXtFPN needs a features_only backbone")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    @property
    def family(self) -> Family:
        return self.body.family

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class _ConvNeXtDetector:
    """What every family answers (``family``, ``reduction``, ``layer_ids()``), for torchvision's detectors."""

    backbone: ConvNeXtFPN

    @property
    def family(self) -> Family:
        return self.backbone.body.family

    @property
    def reduction(self) -> int:
        return self.backbone.body.reduction

    def layer_ids(self) -> LayerIds | None:
        """The official detection layer decay (``layer_wise``: the classifier's ids, ``num_layers`` 6 for
        tiny and 12 for the 27-block sizes as the official COCO configs set it); the per-stage norms, FPN and
        heads take the last id (no decay), as mmdet's ``get_num_layer_layer_wise`` gives everything else."""
        ids = self.backbone.body.layer_ids()
        if ids is None:
            return None
        of_body, head = ids

        def layer_of(name: str) -> int:
            if name.startswith("backbone.body."):
                return of_body(name[len("backbone.body.") :])
            return head

        return layer_of, head


class ConvNeXtMaskRCNN(_ConvNeXtDetector, MaskRCNN):
    """torchvision's ``MaskRCNN`` over :class:`ConvNeXtFPN`."""


class ConvNeXtFasterRCNN(_ConvNeXtDetector, FasterRCNN):
    """torchvision's ``FasterRCNN`` over :class:`ConvNeXtFPN`."""


def head_options(detector: str) -> tuple[str, ...]:
    """The options of ``<detector>_*`` that go to torchvision's detector (and ``fpn_channels`` to the FPN)."""
    base = MaskRCNN if detector == "maskrcnn" else FasterRCNN
    keys = {p for c in {base, FasterRCNN} for p in inspect.signature(c.__init__).parameters}
    return ("fpn_channels", *sorted(keys - {"self", "backbone", "num_classes", "kwargs"}))


def detection_builder(
    detector: str, backbone_name: str, build_backbone: Callable[..., nn.Module]
) -> Callable[..., nn.Module]:
    """The constructor of ``<detector>_<backbone_name>``: backbone options (``depths``, ``drop_path_rate``,
    ``layer_scale_init_value``, ...) go to the ConvNeXt, ``fpn_channels`` to the FPN and every other
    option to torchvision's ``MaskRCNN``/``FasterRCNN`` (``min_size``, ``max_size``, ``image_mean``,
    ``box_detections_per_img``, ...)."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; known: {', '.join(DETECTORS)}")
    cls = ConvNeXtMaskRCNN if detector == "maskrcnn" else ConvNeXtFasterRCNN
    head_keys = set(head_options(detector)) - {"fpn_channels"}

    def build(num_classes: int = 91, **options: Any) -> nn.Module:
        head = {k: options.pop(k) for k in list(options) if k in head_keys}
        head.setdefault("rpn_post_nms_top_n_train", 1000)  # the official config's (torchvision: 2000)
        fpn_channels = int(options.pop("fpn_channels", 256))
        options.setdefault("drop_path_rate", official_drop_path(backbone_name))
        if not options.get("use_grn"):
            options.setdefault("layer_scale_init_value", 1.0)
        options.pop("num_classes", None)
        body = build_backbone(num_classes=0, features_only=True, out_indices=(0, 1, 2, 3), **options)
        return cls(ConvNeXtFPN(body, fpn_channels), num_classes=num_classes, **head)

    return build
