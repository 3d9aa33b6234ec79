"""Top-k accuracy, the number every ImageNet table reports."""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["accuracy", "correct_topk", "hard_targets", "topk_indices"]
