"""Detection checkpoints into ``maskrcnn_<backbone>`` / ``fasterrcnn_<backbone>`` (``models/detection.py``):
ours (torchvision's names), the official mmdet ones (facebookresearch/ConvNeXt ``object_detection/``), and
any classification checkpoint ``prepare`` reads, which initialises the backbone alone.

The official mmdet Mask R-CNN (``mask_rcnn_convnext_fpn.py``) maps onto torchvision's where the two compute
the same thing, and no library ships the translation:

- ``backbone.*`` (``downsample_layers``, ``stages``, ``norm{i}``: our names) -> ``backbone.body.*``;
- ``neck.lateral_convs.{i}.conv`` / ``neck.fpn_convs.{i}.conv`` -> the FPN's ``inner_blocks.{i}.0`` /
  ``layer_blocks.{i}.0`` (mmdet's ``num_outs=5`` without extra convs is torchvision's ``LastLevelMaxPool``);
- ``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg`` -> ``rpn.head.conv.0.0`` / ``cls_logits`` /
  ``bbox_pred``: mmdet's sigmoid RPN has one logit per anchor as torchvision's does, both order the three
  anchors of a location by ratio (0.5, 1, 2; sizes 32-512 on strides 4-64) and the deltas anchor-major, so
  the tensors carry over as they are;
- ``roi_head.bbox_head.shared_fcs.{0,1}`` -> ``roi_heads.box_head.fc6`` / ``fc7``; ``fc_cls`` (background
  last) -> ``box_predictor.cls_score`` with the background row moved first; ``fc_reg`` (no background box)
  -> ``bbox_pred`` with zero rows for the background (both decode with stds 0.1/0.1/0.2/0.2);
- ``roi_head.mask_head.convs.{i}.conv`` -> ``mask_head.{i}.0``; ``upsample`` -> ``mask_predictor.conv5_mask``;
  ``conv_logits`` -> ``mask_fcn_logits`` with a zero background row.

Labels then count the background first (80 COCO classes become 81). What does not map: Cascade Mask
R-CNN's heads (``roi_head.bbox_head.{0,1,2}``, ``4conv1fc`` with SyncBN/GN; torchvision has no cascade) —
such a checkpoint gives its backbone, FPN and RPN, and a warning names what is dropped. The numbers
still differ slightly from mmdet's (RoIAlign ``aligned``, rounded anchors: ``models/detection.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from . import containers, formats
from .fetch import is_run_dir, resolve, run_checkpoint
from .files import read_file
from .formats import StateDict
from .load import CheckpointInfo, Prepared, load_backbone, load_fitting, prepare

MMDET, OURS = "mmdet", "torchvision-detection"
_MMDET_PARTS = ("neck.", "rpn_head.", "roi_head.")
_OUR_PARTS = ("backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.")
# the classifiers, which start fresh when the class count differs
_CLASSIFIERS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)

__all__ = [
    "MMDET",
    "OURS",
    "detection_format",
    "detection_options",
    "is_detection",
    "load_detection",
    "mmdet_to_ours",
    "prepare_detection",
]


def is_detection(sd: StateDict) -> bool:
    """Whether these are a detector's weights (mmdet's neck/heads or ours)."""
    return any(k.startswith(_MMDET_PARTS) or k.startswith(_OUR_PARTS) for k in sd)


def detection_format(sd: StateDict) -> str:
    return MMDET if any(k.startswith(_MMDET_PARTS) for k in sd) else OURS


def _background_first(t: torch.Tensor) -> torch.Tensor:
    """mmdet's classifier rows (classes, then background) in torchvision's order (background, classes)."""
    return torch.cat([t[-1:], t[:-1]])


def _with_background(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A class-wise output without background rows (mmdet's box deltas, mask logits) with zero ones first."""
    return torch.cat([t.new_zeros((rows, *t.shape[1:])), t])


_RENAMES = (  # (mmdet pattern, ours); \1 is a stage/level/conv index
    (r"^backbone\.(.*)$", r"backbone.body.\1"),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"^rpn_head\.rpn_conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    (r"^rpn_head\.rpn_cls\.(weight|bias)$", r"rpn.head.cls_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(weight|bias)$", r"rpn.head.bbox_pred.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)$", r"roi_heads.box_head.fc6.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)$", r"roi_heads.box_head.fc7.\1"),
    (r"^roi_head\.bbox_head\.fc_cls\.(weight|bias)$", r"roi_heads.box_predictor.cls_score.\1"),
    (r"^roi_head\.bbox_head\.fc_reg\.(weight|bias)$", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)$", r"roi_heads.mask_head.\1.0.\2"),
    (r"^roi_head\.mask_head\.upsample\.(weight|bias)$", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"^roi_head\.mask_head\.conv_logits\.(weight|bias)$", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
)


def mmdet_to_ours(sd: StateDict) -> tuple[StateDict, list[str]]:
    """An official mmdet (Mask/Faster R-CNN) state dict in our names, and the keys that map onto nothing."""
    out: StateDict = {}
    unmapped: list[str] = []
    for k, v in sd.items():
        for pattern, repl in _RENAMES:
            if re.match(pattern, k):
                new = re.sub(pattern, repl, k)
                break
        else:
            unmapped.append(k)
            continue
        if new.startswith("roi_heads.box_predictor.cls_score."):
            v = _background_first(v)
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            v = _with_background(v, 4)
        elif new.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            v = _with_background(v, 1)
        out[new] = v
    return out, unmapped


def prepare_detection(src: str | Path | dict, *, ema: bool | None = None) -> Prepared:
    """Read a detection checkpoint (file, URL, in-memory dict, a detection training run's folder or
    checkpoint; mmdet's or ours) into our names; any other checkpoint is ``prepare``'s (a classifier, for
    the backbone). mmdet keys that map onto nothing are recorded in ``info.unexpected`` and named once on
    loading. ``ema``: a training checkpoint's EMA weights or not (None: those its run ranked best by)."""
    run_dir = None
    if isinstance(src, dict):
        obj, path, where = src, "<state dict>", "<state dict>"
    else:
        p, _ = resolve(src)
        if is_run_dir(p):  # a detection run's best.pth / last.pth (a classifier run's is prepare's)
            run_dir, p = p, run_checkpoint(p)
        elif p.is_dir():
            return prepare(src)
        obj, _ = read_file(p)
        path, where = str(p), str(src)
    sd, held = containers.unwrap(obj, path, ema=ema)
    sd = containers.strip_prefixes(sd)
    if not is_detection(sd):
        return prepare(src, ema=ema)
    containers.check_tensors(sd, path)
    fmt = detection_format(sd)
    unmapped: list[str] = []
    if fmt == MMDET:
        sd, unmapped = mmdet_to_ours(sd)
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    n = int(w.shape[0]) if w is not None else None
    class_names = None
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("CLASSES"), (list, tuple)):  # mmdet records its classes
        class_names = ["__background__", *(str(c) for c in meta["CLASSES"])]
        if len(class_names) != n:
            class_names = None
    recorded = held.get("class_names")  # a training checkpoint's (the background first)
    if isinstance(recorded, (list, tuple)) and len(recorded) == n:
        class_names = [str(c) for c in recorded]
    body = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    arch = formats.infer_arch(body)
    info = CheckpointInfo(
        source=where, path=path, format=fmt, num_classes=n, class_names=class_names, arch=arch
    )
    info.unexpected = unmapped
    info.ema = bool(held.get("ema"))
    info.run_dir = str(run_dir) if run_dir is not None else None
    return Prepared(sd, info)


def detection_options(prepared: Prepared, arch: str) -> dict[str, Any]:
    """The constructor options the weights imply: the backbone's (layer scale, shapes: as for a
    classifier) and the FPN's width."""
    sd = prepared.state_dict
    backbone_arch = arch.partition("_")[2]
    if not is_detection(sd):
        return containers.model_options_of(sd, backbone_arch)
    body = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    opts = containers.model_options_of(body, backbone_arch)
    if "backbone.fpn.inner_blocks.0.0.weight" in sd:
        opts["fpn_channels"] = int(sd["backbone.fpn.inner_blocks.0.0.weight"].shape[0])
    return opts


def load_detection(model: nn.Module, prepared: Prepared) -> CheckpointInfo:
    """Load into a detector. A classifier's weights initialise the backbone (its head and final norm
    dropped; the per-stage norms, FPN and heads start fresh: one note); a detector's must fit exactly,
    except a classifier of another class count (fine-tuning: the three class-wise outputs start fresh),
    mmdet parts torchvision has not (named once, dropped) and a mask head the model has not (Faster R-CNN
    from Mask R-CNN weights)."""
    sd, info = dict(prepared.state_dict), prepared.info
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise UserError(f"{type(model).__name__} is not a ConvNeXt detector")
    if not is_detection(sd):
        return load_backbone(body, prepared, "the per-stage norms, the FPN and the detection heads")
    target = model.state_dict()
    notes: list[str] = []
    fresh: set[str] = set()
    if info.unexpected:
        notes.append(
            f"{len(info.unexpected)} mmdet keys have no torchvision counterpart and are not used "
            f"(first: {', '.join(info.unexpected[:3])})"
        )
    if not any(k.startswith("roi_heads.mask_") for k in target) and any(
        k.startswith("roi_heads.mask_") for k in sd
    ):
        sd = {k: v for k, v in sd.items() if not k.startswith("roi_heads.mask_")}
        notes.append("the mask head is not used")
    if info.format == MMDET and not any(k.startswith("roi_heads.") for k in sd):  # Cascade: none map
        fresh |= {k for k in target if k.startswith("roi_heads.")}
        notes.append("its RoI heads are not torchvision's: they start fresh")
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    n_model = target["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if w is not None and w.shape[0] != n_model:
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIERS)}
        notes.append(f"{w.shape[0]} classes, the model {n_model}: the class-wise outputs start fresh")
        info.class_names = None
        fresh |= {k for k in target if k.startswith(_CLASSIFIERS)}
    return load_fitting(model, sd, info, fresh, notes)
