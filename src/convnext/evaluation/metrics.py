"""Top-k accuracy, the number every ImageNet table reports, and the per-class numbers a small or unbalanced
dataset needs (precision, recall, F1, macro F1, balanced accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def hard_targets(targets: Tensor) -> Tensor:
    """Class indices from index targets or from soft/one-hot (N, C) targets (MixUp/CutMix), by argmax."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


def topk_indices(logits: Tensor, k: int) -> Tensor:
    """The k best classes per row, best first; among equal logits the lower class index ranks first.

    A stable sort instead of ``torch.topk``, whose order among ties is unspecified (and differs between
    CPU and CUDA): the same logits always give the same accuracy. Sorting 1000 logits is negligible next
    to the forward pass.
    """
    k = min(k, logits.shape[1])
    return logits.sort(dim=1, descending=True, stable=True).indices[:, :k]


def correct_topk(logits: Tensor, targets: Tensor, topk: Sequence[int] = (1, 5)) -> list[Tensor]:
    """How many samples have their true class among the k highest logits, for each k (on device, no sync).

    Ties: the lower class index ranks first (``topk_indices``), so a tie with a lower-index class is a top-1
    miss. k is capped at the number of classes, so top-5 of a 3-class head is top-3 (always 100%), as timm
    reports it. Soft or one-hot targets (N, C) count their argmax class.
    """
    targets = hard_targets(targets)
    kmax = min(max(topk), logits.shape[1])
    pred = topk_indices(logits, kmax)  # (N, kmax)
    hit = pred.eq(targets[:, None])
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in topk]


def accuracy(logits: Tensor, targets: Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent."""
    n = max(logits.shape[0], 1)
    return [100.0 * float(c) / n for c in correct_topk(logits, targets, topk)]


def class_metrics(confusion: Tensor) -> dict[str, Any]:
    """Per-class precision, recall and F1, macro F1 and balanced accuracy (percent) from confusion counts
    (rows: true class, columns: top-1 class), so that they are exact wherever the counts are (all-reduced
    across ranks, :func:`convnext.evaluation.loop.evaluate` with ``confusion=True``).

    The numbers of ``sklearn.metrics`` with its defaults (``precision_recall_fscore_support``,
    ``f1_score(average="macro")``, ``balanced_accuracy_score``; a test checks): the classes are those in the
    data or in the predictions (a 1000-class head on a 10-class folder is judged on those 10 and on any
    class it wrongly predicts); a class never predicted has precision 0, one not in the data recall 0
    (``zero_division=0``); balanced accuracy is the mean recall over the classes in the data. Returns
    ``classes`` (indices), ``support`` (true images per class), ``predicted`` (images predicted as it),
    ``precision``, ``recall``, ``f1`` (lists, one per class), ``macro_f1``, ``balanced_accuracy``
    (None without a single image).
    """
    cm = confusion.double()
    tp, support, predicted = cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)
    classes = torch.nonzero((support > 0) | (predicted > 0)).flatten()
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp_min(1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-300), 0.0)
    in_data = support > 0
    return {
        "classes": classes.tolist(),
        "support": support[classes].long().tolist(),
        "predicted": predicted[classes].long().tolist(),
        "precision": (100 * precision[classes]).tolist(),
        "recall": (100 * recall[classes]).tolist(),
        "f1": (100 * f1[classes]).tolist(),
        "macro_f1": float(100 * f1[classes].mean()) if len(classes) else None,
        "balanced_accuracy": float(100 * recall[in_data].mean()) if bool(in_data.any()) else None,
    }


__all__ = ["accuracy", "class_metrics", "correct_topk", "hard_targets", "topk_indices"]
