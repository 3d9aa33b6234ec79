"""DataLoaders: seeded shuffles and worker seeds, DistributedSampler for training, unpadded eval shards."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from .config import DataConfig


class EvalShardSampler(Sampler[int]):
    """indices[rank::world]: every sample on exactly one rank, no padding, so all-reduced sums count each
    sample once (DistributedSampler pads with repeats to equal shard sizes, which biases the metrics).
    Hand-written because torch has no unpadded distributed sampler."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def seed_worker(worker_id: int) -> None:
    """torch seeds each worker with base_seed + worker_id (base_seed drawn from the loader's generator);
    derive numpy's and Python's streams from it too so any augmentation is reproducible."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    cfg: DataConfig,
    seed: int,
    distributed: bool,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """Train: shuffled (seeded), drop_last; eval: in order, sharded without padding when distributed.

    The shuffle and the workers' seeds come from generators seeded with ``seed`` (the training loop
    reseeds them per epoch), never from the global RNG. pin_memory only when CUDA is there.
    """
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if train:
            sampler: Sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            sampler = EvalShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
    workers = max(int(cfg.workers), 0)
    kw: dict = {}
    if workers > 0:
        kw = {
            "persistent_workers": bool(cfg.persistent_workers),
            "prefetch_factor": cfg.prefetch_factor,
            "worker_init_fn": seed_worker,
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=bool(cfg.pin_memory) and torch.cuda.is_available(),
        drop_last=train,
        generator=torch.Generator().manual_seed(seed + 1),
        **kw,
    )


# ---------------------------------------------------------------------------------------------------------
# data order: a function of (seed, epoch) only, with an exact mid-epoch restart


class _SkipBatches(Sampler):
    """The batches of ``batch_sampler`` after the first ``skip`` ones (the RNG draws are the same)."""

    def __init__(self, batch_sampler: Sampler, skip: int) -> None:
        self.inner, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.inner):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)  # type: ignore[arg-type]


def _seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the epoch's shuffle (and the workers' base seed) depend only on (seed, epoch)."""
    sampler = (
        loader.batch_sampler.sampler if isinstance(loader.batch_sampler, BatchSampler) else loader.sampler
    )
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if isinstance(sampler, RandomSampler) and sampler.generator is None:
        sampler.generator = torch.Generator()  # else its shuffle would come from the global RNG stream
    for gen in {
        id(g): g for g in (loader.generator, getattr(sampler, "generator", None)) if g is not None
    }.values():
        gen.manual_seed(seed * 1_000_003 + epoch)


def epoch_iterator(loader: DataLoader, seed: int, epoch: int, skip: int = 0) -> Iterator:
    """The batches of ``epoch`` (a function of (seed, epoch) only), after the first ``skip`` ones: the
    training loop's exact mid-epoch restart."""
    _seed_epoch(loader, seed, epoch)
    if skip == 0:
        return iter(loader)
    kw: dict[str, Any] = {}
    if loader.num_workers > 0:
        kw = {
            "prefetch_factor": loader.prefetch_factor,
            "worker_init_fn": loader.worker_init_fn,
            "multiprocessing_context": loader.multiprocessing_context,
        }
    resumed = DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        **kw,
    )
    return iter(resumed)
