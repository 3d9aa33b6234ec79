"""DataLoaders: one epoch-aware training sampler for every launch, per-sample augmentation seeds, unpadded
eval shards.

Exactness: a training sample's augmentation is a function of (seed, epoch, dataset index) only, never of
the process that happens to load it. The sampler yields ``(index, seed, epoch)`` keys (a DataLoader hands
whatever its sampler yields to ``dataset[key]``, in persistent workers too, which otherwise never learn the
epoch), and :class:`SeededSamples` seeds the RNG the transforms draw from around that one sample. So a run
is the same with 0 or 8 workers, persistent or not, launched by ``python`` or by ``torchrun`` with one
process, and a resume (at an epoch boundary or mid-epoch) replays exactly the samples the straight run saw.
"""

from __future__ import annotations

import itertools
import random
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, get_worker_info

from .config import DataConfig

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample of one epoch: SplitMix64 chained over the three numbers, so neighbouring
    (epoch, index) pairs get unrelated streams (``seed + epoch * n + index`` would make epoch e + 1's
    sample i the same stream as epoch e's sample i + n). Hand-written: a few integer ops, far cheaper per
    sample than numpy's SeedSequence."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _M64) ^ (epoch & _M64)) ^ (index & _M64))


class SeededSamples(Dataset):
    """``dataset`` whose item ``(index, seed, epoch)`` is drawn with its RNGs seeded from
    :func:`sample_seed`; a plain int index reads the item as it is.

    The CPU torch generator (every torchvision v2 transform and our RandAugment draw from it) is seeded
    before the sample is loaded and transformed and restored after it, so with ``workers=0`` the main
    process's stream (MixUp/CutMix, RandomErasing on the device batch, stochastic depth, all restored from
    a checkpoint on resume) is untouched. Only the CPU generator: ``torch.manual_seed`` would also reseed
    the training GPU's. Costs little against even a 32 px digit's decode and transform (BENCHMARKS.md,
    "Per-sample augmentation seed"). In a loader worker Python's ``random`` and numpy's global RNG are
    seeded too (for a custom transform that uses them; nothing in this package does): there nothing else
    draws from them, so they need no restoring. The main process leaves them alone, because saving and
    restoring their states costs about a small image's whole transform per sample (BENCHMARKS.md); their
    streams are in the checkpoint, so a ``workers=0`` resume stays exact, but such a transform would give
    another run with 0 workers than with N.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # .classes, .skipped, .path(i), ... of the wrapped dataset
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed, epoch = key
        return with_sample_seed(
            sample_seed(seed, epoch, index),
            lambda: self.dataset[index],
            in_worker=get_worker_info() is not None,
        )


def with_sample_seed(s: int, load: Callable[[], Any], *, in_worker: bool) -> Any:
    """``load()`` with the RNGs seeded from ``s`` as :class:`SeededSamples` does (and the tar shards'
    reader, convnext.data.shards): the CPU torch generator restored after, Python's and numpy's seeded in
    a worker only."""
    if in_worker:
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(s)
    try:
        return load()
    finally:
        gen.set_state(saved)


class EpochSampler(Sampler[tuple[int, int, int]]):
    """The training order: a permutation of the dataset that depends on (seed, epoch) only, sharded
    ``[rank::world]``, yielding ``(index, seed, epoch)`` keys for :class:`SeededSamples`.

    One sampler whether the run was started by ``python`` (world 1) or by ``torchrun`` with any number of
    processes, so a launch method never changes a run (RandomSampler and DistributedSampler shuffle
    differently). Every rank gets ``n // world`` samples (the tail of the permutation is dropped, as
    DistributedSampler(drop_last=True)), so with the loader's drop_last every rank runs the same number of
    batches; and with batch B per rank the global batch k is the same set of samples (with the same
    augmentation) as batch k of one process at batch B * world. ``start`` skips the first samples of the
    rank's shard (a mid-epoch resume) without drawing anything different. Hand-written because torch's
    samplers can neither carry the epoch to the workers nor start mid-epoch.
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch the next ``iter()`` gives, from its ``start``-th sample on (this rank's count)."""
        self.epoch, self.start = epoch, start

    @property
    def num_samples(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1) & ((1 << 63) - 1))
        order = torch.randperm(self.n, generator=g)[: self.num_samples * self.world]
        seed, epoch = self.seed, self.epoch
        for i in order[self.rank :: self.world][self.start :].tolist():
            yield (i, seed, epoch)

    def __len__(self) -> int:
        # the whole epoch even while ``start`` > 0: ``len(loader)`` (the loop's steps per epoch, hence the
        # LR schedule) must not change because one epoch was resumed mid-way
        return self.num_samples


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
    derive numpy's and Python's streams from it too, so that randomness outside a training sample (a
    custom collate_fn, an eval-time transform) is reproducible as well."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    # Ctrl-C, and the SIGTERM / SIGUSR1 of a scheduler (`timeout`, Slurm, Kubernetes signal the whole process
    # group), reach the workers too; the main process decides (training checkpoints first and needs the
    # batches meanwhile) and shuts the workers down itself. A worker whose main process died exits by
    # itself (torch's watchdog), so ignoring them never leaves one behind.
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        sig = getattr(signal, name, None)  # no SIGUSR1 on Windows
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


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
    """Train: :class:`EpochSampler` over :class:`SeededSamples` (a function of (seed, epoch) only, for any
    worker count and launch), drop_last; eval: in order, sharded without padding when distributed.

    pin_memory only when CUDA is there; workers, prefetch and persistent_workers as ``cfg`` says.
    """
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    make = getattr(dataset, "make_loader", None)  # a streamed dataset (tar shards) brings its own loader
    if make is not None:
        return make(
            batch_size, train=train, cfg=cfg, seed=seed, rank=rank, world=world, collate_fn=collate_fn
        )
    sampler: Sampler
    if train:
        sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world=world)  # type: ignore[arg-type]
        dataset = SeededSamples(dataset)
    elif distributed:
        sampler = EvalShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
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
        generator=torch.Generator().manual_seed(seed + 1),  # workers' base seed, never the global RNG
        **kw,
    )


def epoch_iterator(loader: DataLoader, seed: int, epoch: int, skip: int = 0) -> Iterator:
    """The batches of ``epoch`` (a function of (seed, epoch) only), after the first ``skip`` ones: the
    training loop's exact mid-epoch restart.

    On a loader from :func:`build_loader` the skipped batches are never loaded (the sampler starts after
    them) and the loader, persistent workers included, is reused. Any other loader: ``set_epoch`` if its
    sampler has one, and the skipped batches are loaded and dropped.
    """
    if hasattr(loader, "epoch_batches"):  # tar shards (convnext.data.shards.ShardLoader)
        return loader.epoch_batches(seed, epoch, skip)
    sampler = loader.sampler
    if loader.generator is not None:  # workers' seeds per epoch (non-persistent workers restart each epoch)
        loader.generator.manual_seed(sample_seed(seed, epoch, -2) & ((1 << 63) - 1))
    if isinstance(sampler, EpochSampler):
        sampler.seed = seed
        sampler.set_epoch(epoch, skip * (loader.batch_size or 1))
        return iter(loader)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return itertools.islice(iter(loader), skip, None)


def close_loader(loader: Any) -> None:
    """Stop ``loader``'s worker processes now. Persistent workers otherwise live as long as the loader's
    iterator; when something still holds it at interpreter exit, multiprocessing stops its children with
    SIGTERM, which the workers ignore (:func:`seed_worker`: a scheduler signals the whole group), and waits
    for them forever. torch has no public call for this: its iterator's own shutdown is used."""
    it = getattr(loader, "_iterator", None)
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
