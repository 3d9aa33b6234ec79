"""A segmentation model over a dataset, as mmsegmentation's test does it: each image resized to the test
scale keeping its aspect ratio (mmcv's ``rescale_size``), normalised, the logits (whole image, or mmseg's
``slide`` windows) resized back to the image's own size (bilinear, ``align_corners=False``) and compared
with its untouched mask. ``flip`` and several ``ratios`` (the scale times each) average the softmax of
every view, flipped back, as mmseg's ``aug_test``; one view is ``simple_test`` (argmax of the logits).
Counts go to :class:`~convnext.evaluation.segmentation.SegmentationMeter` (int64, summed across ranks), so
the figures are exact for any number of processes. Used by training's epoch-end evaluation and by
``convnext evaluate``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.segmentation import IGNORE_INDEX, normalize, rescale_size
from .segmentation import SegmentationMeter

__all__ = ["evaluate_segmentation", "seg_probs", "slide_logits"]


def slide_logits(model: nn.Module, x: Tensor, crop: int, stride: int, num_classes: int) -> Tensor:
    """mmseg's ``slide_inference``: ``crop`` x ``crop`` windows every ``stride`` px (the last flush with
    the border), each window's logits summed into place and divided by how many windows cover a pixel."""
    n, _, h, w = x.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    out = x.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


def seg_probs(
    model: nn.Module,
    images: Tensor,
    *,
    scale: Sequence[float],
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    mean: Sequence[float],
    std: Sequence[float],
    slide: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """(N, C, H, W) class scores of uint8 ``images`` (N, 3, H, W, one size) at their own size: the softmax
    averaged over every (ratio, flip) view; with a single view, the logits themselves (same argmax)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    h, w = images.shape[-2:]
    views = [(r, f) for r in ratios for f in ((False, True) if flip else (False,))]
    total = None
    for r, f in views:
        size = list(rescale_size(h, w, [s * r for s in scale]))
        x = normalize(
            resize(images, size, interpolation=InterpolationMode.BILINEAR, antialias=False), mean, std
        )
        if f:
            x = x.flip(-1)
        if slide is not None:
            logits = slide_logits(model, x, slide[0], slide[1], int(num_classes or 0))
        else:
            logits = model(x).float()
        if f:
            logits = logits.flip(-1)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        if len(views) == 1:
            return logits
        p = logits.softmax(1)
        total = p if total is None else total + p
    assert total is not None
    return total / len(views)


def _same_size_groups(batch: list[tuple[Tensor, Tensor]]) -> Iterable[list[tuple[Tensor, Tensor]]]:
    groups: dict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = {}
    for img, mask in batch:
        groups.setdefault(tuple(img.shape), []).append((img, mask))
    return groups.values()


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    num_classes: int,
    *,
    scale: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    slide: tuple[int, int] | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (fractions) and per-class IoU / Acc of ``model`` over ``loader`` (lists of
    (uint8 image, int64 mask) pairs, 255 ignored), every rank's shard counted once; ``hist`` holds the
    summed counts, ``n`` the images."""
    model.eval()
    meter = SegmentationMeter(num_classes, IGNORE_INDEX)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    n = torch.zeros((), dtype=torch.long)
    t0 = time.perf_counter()
    batches = loader
    distributed = dist.is_available() and dist.is_initialized()
    if progress and (not distributed or dist.get_rank() == 0):
        from tqdm import tqdm

        batches = tqdm(loader, desc="evaluate", leave=False)
    for batch in batches:
        for group in _same_size_groups(batch):
            images = torch.stack([img for img, _ in group]).to(device)
            masks = torch.stack([m for _, m in group]).to(device)
            with autocast:
                scores = seg_probs(
                    model,
                    images,
                    scale=scale,
                    ratios=ratios,
                    flip=flip,
                    mean=mean,
                    std=std,
                    slide=slide,
                    num_classes=num_classes,
                )
            meter.update(scores.argmax(1), masks)
            n += len(group)
    elapsed = time.perf_counter() - t0
    meter.all_reduce()
    counted = n.clone()
    if distributed:
        counted = counted.to(device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(counted)
    out = meter.compute()
    out.update(
        hist=meter.hist.clone(), n=int(counted), world_size=dist.get_world_size() if distributed else 1
    )
    out["images_per_s"] = int(counted) / max(elapsed, 1e-9)
    return out
