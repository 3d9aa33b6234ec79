"""Evaluation: top-1/top-5, mean loss and throughput, counting every sample exactly once across ranks."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .metrics import correct_topk, hard_targets


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrappers: evaluation needs no gradient sync, so call the plain module.
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = True,
    return_predictions: bool = False,
    topk: int = 5,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader`` (this rank's shard under torch.distributed).

    Sums (correct@1, correct@5, loss x n, n) are all-reduced, so with an eval loader that shards without
    padding every sample counts once. images_per_s is measured over the whole pass, data loading included,
    from the first batch's arrival (the loader's start-up is not counted). With ``return_predictions``, rank 0
    also gets ``predictions`` (N, topk class indices) and ``targets`` (N,), gathered in rank order.
    """
    device = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, n
    preds, targs = [], []
    distributed = dist.is_available() and dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not (progress and main), leave=False)
    start = None
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    for images, targets in bar:
        if start is None:
            start = time.perf_counter()
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = hard_targets(targets.to(device, non_blocking=True))
        with autocast:
            logits = net(images)
        logits = logits.float()
        c1, c5 = correct_topk(logits, targets, (1, topk))
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        sums += torch.stack([c1.double(), c5.double(), loss_sum.double(), sums.new_tensor(len(targets))])
        if return_predictions:
            preds.append(logits.topk(min(topk, logits.shape[1]), dim=1).indices.cpu())
            targs.append(targets.cpu())
    if distributed:
        dist.all_reduce(sums)
    elapsed = time.perf_counter() - start if start is not None else 0.0
    c1, c5, loss_sum, n = sums.tolist()
    n_int = int(n)
    world = dist.get_world_size() if distributed else 1
    out: dict[str, Any] = {
        "top1": 100.0 * c1 / max(n, 1),
        "top5": 100.0 * c5 / max(n, 1),
        "loss": loss_sum / max(n, 1),
        "n": n_int,
        # each rank timed its own shard concurrently: the world's throughput is n over the (shared) wall time
        "images_per_s": n / elapsed if elapsed > 0 else 0.0,
        "world_size": world,
    }
    if return_predictions:
        p = torch.cat(preds) if preds else torch.empty(0, topk, dtype=torch.long)
        t = torch.cat(targs) if targs else torch.empty(0, dtype=torch.long)
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (p, t))
            p = torch.cat([g[0] for g in gathered])
            t = torch.cat([g[1] for g in gathered])
        out["predictions"], out["targets"] = p, t
    net.train(was_training)
    return out
