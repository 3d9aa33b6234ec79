"""Evaluation: top-1/top-5, mean loss and throughput, counting every sample exactly once across ranks, and
every unreadable file not at all (named and counted instead)."""

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

from ..data.file_datasets import explain_unreadable, split_unreadable
from ..errors import UserError
from ..messages import warn
from .metrics import correct_topk, hard_targets, topk_indices

_warned_dropped: set[str] = set()  # files already named by a warning in this process (once per file)


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrappers: evaluation needs no gradient sync, so call the plain module.
    return getattr(model, "module", model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample_indices(loader: DataLoader) -> list[int] | None:
    """The dataset index of each sample in the order the loader yields them, when the loader is a plain
    in-order one (its sampler's order, batched as is: our eval loaders); None otherwise (an iterable
    dataset, a custom batch sampler, a sampler that shuffles)."""
    from torch.utils.data import BatchSampler, SequentialSampler

    from ..data.loader import EvalShardSampler

    sampler, batches = getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, SequentialSampler | EvalShardSampler):
        return None
    if not isinstance(batches, BatchSampler) or batches.sampler is not sampler:
        return None
    return list(sampler)


def _dataset_order(parts: list[torch.Tensor], loader: DataLoader) -> torch.Tensor:
    """Per-rank results back in dataset order when the loader shards as indices[rank::world] (our eval
    loader); any other sampler keeps rank order."""
    from ..data.loader import EvalShardSampler

    if not isinstance(getattr(loader, "sampler", None), EvalShardSampler) or not parts:
        return torch.cat(parts)
    world, n = len(parts), sum(len(p) for p in parts)
    if any(len(p) != len(range(r, n, world)) for r, p in enumerate(parts)):
        return torch.cat(parts)
    out = parts[0].new_empty((n, *parts[0].shape[1:]))
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


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
    warn_dropped: bool = True,
    label_smoothing: float = 0.0,
    confusion: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader`` (this rank's shard under torch.distributed).

    Returns top1, top5 (percent), loss (mean cross-entropy), loss_smoothed (mean cross-entropy with
    ``label_smoothing``, the training criterion's: a validation loss on the same basis as the training
    loss, which curves.png plots it against; equal to loss when 0), n (samples), images_per_s, world_size,
    dropped (unreadable files, left out of every number) and dropped_files ([(file, why)], from every
    rank, sorted); with ``return_predictions`` also ``predictions`` (N, topk class indices, best first)
    and ``targets`` (N,), gathered from every rank and put back in dataset order (each prediction stays
    with its target), ``probs`` (N, topk: the softmax probability of each predicted class),
    ``target_probs`` (N,: of the true class) and ``indices`` (N,: each sample's dataset index; absent when
    the loader's order is not known, see ``_sample_indices``). With ``confusion``, ``confusion`` is the
    (C, C) int64 count of (true class, top-1 class) over every counted sample, all-reduced like the sums:
    exact under any number of ranks; per-class precision/recall/F1 come from it
    (:func:`convnext.evaluation.metrics.class_metrics`).

    Unreadable files come from a "drop"-mode dataset (convnext.data.build_dataset for a split other than
    the training one) as a negative target; they are removed from the batch before the model sees it.
    With ``warn_dropped`` rank 0 warns once per file per process (the training loop's validation); the
    evaluate verb prints them itself.

    Sums (correct@1, correct@k, loss x n, n) are all-reduced, so with an eval loader that shards without
    padding every sample counts once. Accuracy is computed on all the model's logits, whatever subset of
    classes the data holds. images_per_s excludes the first batch (warm-up: allocator, cuDNN autotune,
    loader start-up) when there is more than one batch, and includes data loading for the rest: it is
    the world's throughput, samples after the first batch over the slowest rank's wall time.
    """
    device = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    # correct1, correct5, loss_sum, n, n timed (after the first batch), smoothed loss_sum
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    preds, targs, probs_k, probs_t, positions = [], [], [], [], []
    cm: torch.Tensor | None = None
    order = _sample_indices(loader) if return_predictions else None
    seen = 0  # samples of this rank so far, readable or not: where each batch sits in ``order``
    distributed = dist.is_available() and dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    try:
        total = len(loader.sampler)  # type: ignore[arg-type]  # this rank's samples
    except TypeError:
        total = None
    bar = tqdm(total=total, desc="eval", unit="img", disable=not (progress and main), leave=False)
    first_start, start = None, None
    n_local, n_after_first = 0, 0  # Python ints: no device sync per batch
    dropped: list[int] = []  # dataset indices of this rank's unreadable samples
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    for i, (images, targets) in enumerate(loader):
        if first_start is None:
            first_start = time.perf_counter()
        elif start is None:  # the first batch is done: warm-up over
            _sync(device)
            start = time.perf_counter()
        keep, bad = split_unreadable(targets)
        where = torch.arange(seen, seen + len(targets))
        seen += len(targets)
        if bad:
            dropped.extend(bad)
            bar.update(len(bad))
            images, targets, where = images[keep], targets[keep], where[keep]
            if not len(targets):
                continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = hard_targets(targets.to(device, non_blocking=True))
        with autocast:
            logits = net(images)
        logits = logits.float()
        if n_local == 0 and targets.numel() and int(targets.max()) >= logits.shape[1]:
            raise UserError(
                f"the data has class index {int(targets.max())} but the model has only {logits.shape[1]} "
                f"outputs; evaluate with the model's own class list (or a checkpoint with more classes)"
            )
        c1, c5 = correct_topk(logits, targets, (1, topk))
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        smoothed = (
            F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)
            if label_smoothing
            else loss_sum
        )
        sums[[0, 1, 2, 5]] += torch.stack([c1.double(), c5.double(), loss_sum.double(), smoothed.double()])
        if confusion:
            k = logits.shape[1]
            if cm is None:
                cm = torch.zeros(k * k, dtype=torch.int64, device=device)
            top1 = topk_indices(logits, 1)[:, 0]
            cm.index_add_(0, targets.long() * k + top1, torch.ones_like(top1))  # no (k*k) bincount per batch
        n_local += len(targets)
        n_after_first += len(targets) if i > 0 else 0
        bar.update(len(targets))
        if return_predictions:
            top = topk_indices(logits, topk)
            p = logits.softmax(dim=1)
            preds.append(top.cpu())
            targs.append(targets.cpu())
            probs_k.append(p.gather(1, top).cpu())
            probs_t.append(p.gather(1, targets.long()[:, None])[:, 0].cpu())
            positions.append(where)
    bar.close()
    _sync(device)
    end = time.perf_counter()
    if start is not None:
        elapsed, n_timed = end - start, n_after_first
    else:  # one batch (or none): time it whole
        elapsed, n_timed = (end - first_start) if first_start is not None else 0.0, n_local
    sums[3], sums[4] = n_local, n_timed
    t = torch.tensor([elapsed], dtype=torch.float64, device=device)
    if confusion:
        width = torch.tensor([0 if cm is None else int(cm.numel() ** 0.5)], device=device)
        if distributed:  # a rank whose shard was empty (or all unreadable) saw no logits
            dist.all_reduce(width, op=dist.ReduceOp.MAX)
        if cm is None:
            cm = torch.zeros(int(width) ** 2, dtype=torch.int64, device=device)
    if distributed:
        dist.all_reduce(sums)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if cm is not None:
            dist.all_reduce(cm)
    c1, c5, loss_sum, n, n_timed, smoothed_sum = sums.tolist()
    elapsed = float(t.item())
    world = dist.get_world_size() if distributed else 1
    named = [explain_unreadable(loader.dataset, i) for i in dropped]
    if distributed:
        every: list[Any] = [None] * world
        dist.all_gather_object(every, named)
        named = [x for part in every for x in part]
    named.sort()
    if warn_dropped and main and named:
        new = [f"{p} ({why})" for p, why in named if p not in _warned_dropped]
        _warned_dropped.update(p for p, _ in named)
        if new:
            more = f"; and {len(new) - 10} more" if len(new) > 10 else ""
            warn(f"evaluation: left out {len(new)} unreadable file(s): {'; '.join(new[:10])}{more}")
    out: dict[str, Any] = {
        "top1": 100.0 * c1 / max(n, 1),
        "top5": 100.0 * c5 / max(n, 1),
        "loss": loss_sum / max(n, 1),
        "loss_smoothed": smoothed_sum / max(n, 1),
        "n": int(n),
        "images_per_s": n_timed / elapsed if elapsed > 0 else 0.0,
        "world_size": world,
        "dropped": len(named),
        "dropped_files": named,
    }
    if confusion:
        w = int(cm.numel() ** 0.5) if cm is not None else 0
        out["confusion"] = cm.view(w, w).cpu() if cm is not None else torch.zeros(0, 0, dtype=torch.int64)
    if return_predictions:
        parts = {
            "predictions": torch.cat(preds) if preds else torch.empty(0, topk, dtype=torch.long),
            "targets": torch.cat(targs) if targs else torch.empty(0, dtype=torch.long),
            "probs": torch.cat(probs_k) if probs_k else torch.empty(0, topk),
            "target_probs": torch.cat(probs_t) if probs_t else torch.empty(0),
        }
        if order is not None:
            pos = torch.cat(positions) if positions else torch.empty(0, dtype=torch.long)
            parts["indices"] = torch.tensor(order, dtype=torch.long)[pos]
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, parts)
            if all("indices" in g for g in gathered):  # each sample by its dataset index
                # a rank without a readable sample has (0, topk) placeholders; the others (n, min(topk, C))
                some = [g for g in gathered if len(g["targets"])] or gathered[:1]
                parts = {k: torch.cat([g[k] for g in some]) for k in parts}
                by = parts["indices"].argsort(stable=True)
                parts = {k: v[by] for k, v in parts.items()}
            else:
                parts.pop("indices", None)
                parts = {k: _dataset_order([g[k] for g in gathered], loader) for k in parts}
        out.update(parts)
    net.train(was_training)
    return out
