"""Semantic segmentation metrics as mmsegmentation defines them (``mmseg.core.evaluation.metrics``:
``intersect_and_union``, ``total_area_to_metrics``; its datasets' ``evaluate`` takes the ``nanmean``).

Four per-class histograms over the whole dataset (intersection, union, predicted and ground-truth area),
counted exactly in int64 with ``torch.bincount``, so that ranks sum theirs with one ``all_reduce`` and
the figures are the same for any number of processes. From them: aAcc = sum(intersection) / sum(label
area), per-class IoU = intersection / union and Acc = intersection / label area, and mIoU / mAcc their
means over the classes that are not NaN (0/0: for IoU a class absent from both prediction and ground
truth, for Acc one absent from the ground truth), mmseg's ``np.nanmean``. Figures are fractions; mmseg's
tables print them x100, rounded to two places. mmseg counts with ``torch.histc`` on floats; ``bincount``
counts the same pixels (labels outside ``[0, num_classes)`` are left out by both) without float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["SegmentationMeter", "intersect_and_union", "reduce_zero_label", "segmentation_metrics"]

INTERSECT, UNION, PRED, LABEL = range(4)  # the rows of the histograms


def reduce_zero_label(label: Tensor, ignore_index: int = 255) -> Tensor:
    """ADE20K's convention: 0 ("other") becomes ignored and every class shifts down by one (mmseg's
    ``reduce_zero_label``)."""
    label = label.long() - 1
    return label.masked_fill((label == -1) | (label == ignore_index - 1), ignore_index)


def intersect_and_union(
    pred: Tensor,
    label: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero: bool = False,
) -> Tensor:
    """The (4, num_classes) int64 histograms of one prediction (or a batch of them) against its labels:
    intersection, union, predicted area, label area. Pixels labelled ``ignore_index`` count nowhere."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    label = reduce_zero_label(label, ignore_index) if reduce_zero else label.long()
    keep = label != ignore_index
    pred, label = pred.long()[keep], label[keep]

    def hist(x: Tensor) -> Tensor:
        return torch.bincount(x[(x >= 0) & (x < num_classes)], minlength=num_classes)

    inter, area_pred, area_label = hist(pred[pred == label]), hist(pred), hist(label)
    return torch.stack([inter, area_pred + area_label - inter, area_pred, area_label])


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


def segmentation_metrics(hist: Tensor) -> dict[str, Any]:
    """aAcc, mIoU, mAcc and the per-class IoU and Acc (NaN where undefined) of summed histograms."""
    h = hist.double()
    iou, acc = h[INTERSECT] / h[UNION], h[INTERSECT] / h[LABEL]
    return {
        "aAcc": float(h[INTERSECT].sum() / h[LABEL].sum()),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


class SegmentationMeter:
    """Histograms accumulated over a dataset: ``update`` per batch, ``all_reduce`` once across ranks (a
    no-op in one process), then ``compute``. ``hist`` is the raw (4, num_classes) int64 counts."""

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero: bool = False) -> None:
        self.num_classes, self.ignore_index, self.reduce_zero = num_classes, ignore_index, reduce_zero
        self.hist = torch.zeros(4, num_classes, dtype=torch.long)

    def update(self, pred: Tensor, label: Tensor) -> None:
        """``pred``: class indices (or (N, C, H, W) logits, arg-maxed here) for ``label``'s pixels."""
        if pred.is_floating_point() and pred.dim() == label.dim() + 1:
            pred = pred.argmax(1)
        h = intersect_and_union(pred, label, self.num_classes, self.ignore_index, self.reduce_zero)
        self.hist = self.hist.to(h.device) + h

    def all_reduce(self) -> Tensor:
        """Sum the histograms of every rank (exact: integer counts); returns them."""
        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
            h = self.hist.to(device)
            dist.all_reduce(h)
            self.hist = h.cpu()
        return self.hist

    def compute(self) -> dict[str, Any]:
        return segmentation_metrics(self.hist.cpu())
