"""A detector over a loader of (images, targets) batches, scored by COCOeval (evaluation/coco.py): what the
training loop's epoch end and ``convnext evaluate`` both run, so both report the same numbers.

Each rank predicts its shard; :class:`~convnext.evaluation.coco.CocoEvaluator` gathers the COCO results
of all ranks and every rank gets the numbers of all images, each image once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .coco import CocoEvaluator

__all__ = ["detector_inputs", "evaluate_detector", "percent_metrics"]


def detector_inputs(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) images (tv_tensors or plain) as the float 0..1 tensors torchvision's detectors take,
    on ``device`` (they normalise and resize themselves)."""
    return [im.as_subclass(torch.Tensor).to(device, non_blocking=True).float().div_(255) for im in images]


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable[tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]]],
    device: torch.device,
    coco_gt: Any,
    *,
    label_to_category: Mapping[int, int] | None,
    iou_types: Sequence[str] = ("bbox", "segm"),
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``{"bbox": {map, map_50, ...}, "segm": {...}, "n": images, "images_per_s": ...}`` (pycocotools'
    fractions) of ``model`` on ``loader`` (targets carry ``image_id``); the model is left in the mode it
    came in."""
    import torch.distributed as tdist
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    ev = CocoEvaluator(coco_gt, iou_types, label_to_category)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    n = 0
    t0 = time.perf_counter()
    try:
        for images, targets in tqdm(loader, disable=not progress, desc="evaluate", leave=False):
            with autocast:
                outputs = model(detector_inputs(images, device))
            preds = {}
            for t, o in zip(targets, outputs):
                preds[int(t["image_id"])] = {
                    k: v.float() if v.is_floating_point() else v for k, v in o.items()
                }
            ev.update(preds)
            n += len(images)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - t0
    count = torch.tensor([n], dtype=torch.float64)
    if tdist.is_available() and tdist.is_initialized():
        count = count.to(device)
        tdist.all_reduce(count)
    out: dict[str, Any] = dict(ev.compute(gather=True))
    out["n"] = int(count.item())
    out["images_per_s"] = out["n"] / max(elapsed, 1e-9)
    return out


def percent_metrics(res: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The training record's numbers: box ``map``, ``map_50``, ``map_75`` and the masks' ``mask_map...``
    in percent; COCOeval's -1 (no ground truth of a size) is left out."""
    out: dict[str, float] = {}
    for iou_type, tag in (("bbox", ""), ("segm", "mask_")):
        for name in ("map", "map_50", "map_75"):
            v = res.get(iou_type, {}).get(name)
            if v is not None and v >= 0:
                out[f"{prefix}{tag}{name}"] = 100.0 * float(v)
    return out
