"""COCO box and mask mAP of a detector's predictions, computed by pycocotools' ``COCOeval`` itself.

The metrics are pycocotools' (the COCO leaderboard's and mmdet's): nothing here re-implements matching or
the 101-point interpolation; this module only turns torchvision-style predictions (``boxes`` xyxy,
``labels``, ``scores``, ``masks`` as probabilities) into COCO results as they come (xywh boxes, masks as
RLE through ``pycocotools.mask``), gathers those compact results across ranks so that each image counts
once (a distributed sampler pads by repeating images), and names ``COCOeval.stats`` as torchmetrics does
(``map``, ``map_50``, ...).
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

__all__ = ["STAT_NAMES", "CocoEvaluator", "coco_results", "evaluate_coco", "load_coco"]

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


class CocoEvaluator:
    """COCO results accumulated batch by batch (``update``: boxes to xywh, masks to RLE at once, so no
    full-size mask is kept or sent between ranks), then ``compute``: every rank's results gathered
    (``all_gather_object``), each image counted once (a padded sampler's repeat is dropped), and COCOeval."""

    def __init__(
        self,
        gt: Any,
        iou_types: Sequence[str] = ("bbox", "segm"),
        label_to_category: Mapping[int, int] | Sequence[int] | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        bad = [t for t in iou_types if t not in ("bbox", "segm")]
        if bad:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', not {bad}")
        self.coco_gt = load_coco(gt)
        self.iou_types = tuple(iou_types)
        self.label_to_category = label_to_category
        self.mask_threshold = mask_threshold
        self.results: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}

    def update(self, predictions: Predictions) -> None:
        """Add ``predictions``: image id -> torchvision's output dict (``boxes``, ``labels``, ``scores``,
        ``masks`` for a Mask R-CNN). An image already added keeps its first predictions."""
        known = set(self.coco_gt.getImgIds())
        unknown = sorted(int(k) for k in predictions if int(k) not in known)
        if unknown:
            raise UserError(f"image ids {unknown[:5]} are not in the COCO ground truth")
        for image_id, pred in predictions.items():
            if int(image_id) in self.results:
                continue
            boxes, masks = coco_results({int(image_id): pred}, self.label_to_category, self.mask_threshold)
            self.results[int(image_id)] = (boxes, masks if "masks" in pred else None)

    def _gathered(self, gather: bool) -> dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
        import torch.distributed as dist

        if not gather or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self.results)
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.results)
        merged: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}
        for part in parts:  # rank order: an image on two ranks keeps the lower rank's copy
            for k, v in part.items():
                merged.setdefault(k, v)
        return merged

    def compute(self, gather: bool = True) -> dict[str, dict[str, float]]:
        """``{"bbox": {"map": ..., "map_50": ..., ...}, "segm": {...}}`` by ``COCOeval`` over the images
        added (on every rank when ``gather``, each rank getting the same numbers)."""
        from pycocotools.cocoeval import COCOeval

        results = self._gathered(gather)
        out: dict[str, dict[str, float]] = {}
        for iou_type in self.iou_types:
            if iou_type == "segm" and results and all(m is None for _, m in results.values()):
                raise UserError(
                    "mask mAP needs predicted masks (a Mask R-CNN's); this model predicts boxes only"
                )
            dets = [r for b, m in results.values() for r in (b if iou_type == "bbox" else (m or []))]
            res = _results_coco(self.coco_gt, dets)
            ev = COCOeval(self.coco_gt, res, iou_type)
            ev.params.imgIds = sorted(results)
            with contextlib.redirect_stdout(io.StringIO()):
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            out[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
        return out


def evaluate_coco(
    gt: Any,
    predictions: Predictions,
    iou_types: Sequence[str] = ("bbox", "segm"),
    label_to_category: Mapping[int, int] | Sequence[int] | None = None,
    gather: bool = True,
) -> dict[str, dict[str, float]]:
    """:class:`CocoEvaluator` in one call: ``predictions`` (image id -> torchvision's output dict) against
    the COCO ground truth ``gt`` (a json file, its dict or a ``COCO``); with ``gather`` every rank calls it
    and gets the numbers of all ranks' images together."""
    ev = CocoEvaluator(gt, iou_types, label_to_category)
    ev.update(predictions)
    return ev.compute(gather)
