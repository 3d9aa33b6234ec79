"""COCO box and mask mAP of a detector's predictions, computed by pycocotools' ``COCOeval`` itself.

The metrics are pycocotools' (the COCO leaderboard's and mmdet's): nothing here re-implements matching or
the 101-point interpolation; this module only turns torchvision-style predictions (``boxes`` xyxy,
``labels``, ``scores``, ``masks`` as probabilities) into COCO results (xywh boxes, masks as RLE through
``pycocotools.mask``), gathers them across ranks so that each image counts once (a distributed sampler pads
by repeating images), and names ``COCOeval.stats`` as torchmetrics does (``map``, ``map_50``, ...).
Evaluation covers the images that have predictions (an image without detections is still one: pass it
with empty tensors), as torchvision's detection reference does.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["STAT_NAMES", "coco_results", "evaluate_coco", "gather_predictions", "load_coco"]

# COCOeval.summarize()'s twelve numbers, in its order, under torchmetrics' names
STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)

Predictions = Mapping[int, Mapping[str, Tensor]]


def _require() -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - dev installs it
        raise UserError("COCO metrics need pycocotools: pip install 'convnext[dense]'") from e
    return COCO


def load_coco(gt: Any) -> Any:
    """A pycocotools ``COCO`` from a COCO-format json file, its parsed dict, or a ``COCO`` as is."""
    COCO = _require()
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, Path)):
        if not Path(gt).is_file():
            raise UserError(f"COCO annotations {gt} not found")
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(gt))
    if isinstance(gt, dict):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    raise TypeError(f"COCO ground truth must be a file, a dict or a COCO, not {type(gt).__name__}")


def _category(label: int, label_to_category: Mapping[int, int] | Sequence[int] | None) -> int:
    return int(label) if label_to_category is None else int(label_to_category[int(label)])


def coco_results(
    predictions: Predictions,
    label_to_category: Mapping[int, int] | Sequence[int] | None = None,
    mask_threshold: float = 0.5,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(box results, mask results) in COCO's result format; labels are category ids unless
    ``label_to_category`` maps them (torchvision's COCO models use the ids themselves)."""
    from pycocotools import mask as mask_util

    boxes_out: list[dict[str, Any]] = []
    masks_out: list[dict[str, Any]] = []
    for image_id, pred in predictions.items():
        boxes = pred["boxes"].detach().float().cpu()
        scores = pred["scores"].detach().float().cpu().tolist()
        labels = pred["labels"].detach().cpu().tolist()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist() if len(boxes) else []
        for box, score, label in zip(xywh, scores, labels):
            cat = _category(label, label_to_category)
            boxes_out.append({"image_id": int(image_id), "category_id": cat, "bbox": box, "score": score})
        masks = pred.get("masks")
        if masks is None:
            continue
        m = masks.detach().cpu()
        if m.ndim == 4:  # torchvision's (N, 1, H, W) probabilities
            m = m[:, 0]
        binary = (m > mask_threshold) if m.is_floating_point() else m.bool()
        arr = np.asfortranarray(binary.numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_util.encode(arr) if len(binary) else []
        for rle, score, label in zip(rles, scores, labels):
            rle["counts"] = rle["counts"].decode("ascii")  # JSON-safe, as COCO's result files have it
            cat = _category(label, label_to_category)
            masks_out.append(
                {"image_id": int(image_id), "category_id": cat, "segmentation": rle, "score": score}
            )
    return boxes_out, masks_out


def gather_predictions(predictions: Predictions) -> dict[int, Mapping[str, Tensor]]:
    """Every rank's predictions on every rank (``all_gather_object``), one entry per image: an image a
    padded sampler gave twice keeps its first copy. Without torch.distributed, the predictions as given."""
    import torch.distributed as dist

    local = {int(k): {n: t.detach().cpu() for n, t in v.items()} for k, v in predictions.items()}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[int, Mapping[str, Tensor]] = {}
    for part in parts:
        for k, v in part.items():
            merged.setdefault(k, v)
    return merged


def _results_coco(coco_gt: Any, results: list[dict[str, Any]]) -> Any:
    """``coco_gt.loadRes(results)``; with no results, an empty result set (loadRes cannot take one)."""
    COCO = _require()
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return coco_gt.loadRes(copy.deepcopy(results))
        res = COCO()
        res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": []}
        res.dataset["categories"] = copy.deepcopy(coco_gt.dataset.get("categories", []))
        res.createIndex()
        return res


def evaluate_coco(
    gt: Any,
    predictions: Predictions,
    iou_types: Sequence[str] = ("bbox", "segm"),
    label_to_category: Mapping[int, int] | Sequence[int] | None = None,
    gather: bool = True,
) -> dict[str, dict[str, float]]:
    """``{"bbox": {"map": ..., "map_50": ..., ...}, "segm": {...}}`` for ``predictions`` (image id ->
    torchvision's output dict) against the COCO ground truth ``gt``, by ``COCOeval``; ``gather`` collects
    every rank's first (each rank gets the same numbers). ``segm`` needs ``masks`` in the predictions."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco(gt)
    preds = gather_predictions(predictions) if gather else dict(predictions)
    unknown = sorted(set(preds) - set(coco_gt.getImgIds()))
    if unknown:
        raise UserError(f"image ids {unknown[:5]} are not in the COCO ground truth")
    boxes, masks = coco_results(preds, label_to_category)
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
        if iou_type == "segm" and preds and not any("masks" in p for p in preds.values()):
            raise UserError("mask mAP needs predicted masks (a Mask R-CNN's); this model predicts boxes only")
        res = _results_coco(coco_gt, boxes if iou_type == "bbox" else masks)
        ev = COCOeval(coco_gt, res, iou_type)
        ev.params.imgIds = sorted(preds)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    return out
