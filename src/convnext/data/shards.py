"""Data in WebDataset-format tar shards: ``convnext prepare shards`` writes them, ``data.dataset=shards``
reads them (a folder, an fsspec URL of one, or a URL pattern like ``pipe:cat /x/train-{0..3}.tar``).

A shard is a plain tar of ``<key>.<ext>`` members grouped by key (WebDataset's format, which timm, OpenCLIP
and torchvision-style pipelines read): ``<key>.jpg``/``.png``/... holds the image's bytes exactly as they
were on disk (never re-encoded; the extension is the bytes' real format), ``<key>.cls`` the class index in
ASCII. The key is the sample's index in the image folder's order (the train split is written shuffled with
``--seed``: a shuffle buffer cannot mix a tar that holds one class). Beside the shards: ``classes.txt`` (one
class per line, as prepare writes for folders) and ``shards.json`` (per split: each shard's file, sample
count and class indices), which gives the epoch length, the per-shard offsets and ``targets`` without
opening a tar.

Reading: the tar stream is webdataset's (its ``gopen`` opens ``pipe:``, http(s), gs, ... URLs; its
``tar_file_expander``/``group_by_keys`` turn a stream into samples; its ``shuffle`` is the shuffle buffer):
a kept, widely used reader of exactly this format that already handles pipes, retries of ``pipe:`` exit
codes and odd tar members, where our own would have to relearn them. Other ``scheme://`` URLs are opened
with fsspec when it is installed. We do not use ``WebDataset``/``WebLoader`` as a whole: their splitting
and shuffling are seeded per process and their epoch length is approximate, so a resumed run would see
other samples; the pieces below make the order a function of the run instead.

Exact resume (the same samples, the same augmentation, the same order after a kill, for a fixed number of
processes and loader workers), and why this way:

* The epoch's shard order is a permutation drawn from (seed, epoch); rank r of W takes ``order[r::W]``,
  worker w of N of that ``[w::N]`` (no shard read twice: the I/O scales with ranks and workers).
* Each worker streams its shards through a shuffle buffer whose RNG is seeded from (seed, epoch, rank,
  worker), and seeds each sample's transform from (seed, epoch, the sample's index in the split), as the
  folders' loader does (:func:`convnext.data.loader.sample_seed`): which process decodes a sample never
  matters.
* Every rank yields the same number of batches, fixed for the whole run: the fewest samples any rank can
  get in any epoch (its ``floor(shards / W)`` smallest shards), in whole batches; the rest of an epoch's
  stream is dropped, as the folders' sampler drops its tail. So DDP ranks stay in step and the schedule's
  steps per epoch never change.
* Workers yield chunks on their own grid of ``batch`` samples, and the DataLoader merges them round-robin
  (deterministic: a worker that runs out is skipped, in any timing); the main process re-cuts the merged
  stream into batches. That merge is a function of the per-worker sample counts, which shards.json gives,
  so a resume after k batches computes where every worker stood: each worker skips (reads, never decodes)
  what it had delivered, and the workers are rotated so the one that was next goes first. Mid-epoch
  resume costs reading the skipped part of the shards once; the alternative, random access into the tars,
  is impossible through a pipe or object storage, which is what shards are for.
* Workers are not persistent (a fresh DataLoader per epoch): a persistent worker's dataset copy would
  never learn the epoch and the skip.

The order depends on (seed, processes, workers): a run resumed with another ``data.workers`` is not the
straight run. Evaluation reads every shard in its order, rank r the shards ``[r::W]``: each sample is
counted once across ranks, with the same numbers as the same images in a folder.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from ..errors import UserError
from ..messages import warn
from .config import DataConfig
from .file_datasets import Transform, unreadable_target
from .images import ImageError, decode_image_bytes, sniff_image
from .loader import sample_seed, seed_worker, with_sample_seed

INDEX = "shards.json"
FORMAT = "convnext-shards/1"
SHUFFLE_BUFFER = 1000  # samples held by each worker's shuffle buffer (webdataset's usual size)
EXTENSIONS = {
    "jpeg": "jpg",
    "png": "png",
    "gif": "gif",
    "webp": "webp",
    "bmp": "bmp",
    "tiff": "tif",
    "pnm": "ppm",
}
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm"})


def _wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise UserError(
            "tar shards need the webdataset package: pip install 'convnext[shards]' (or webdataset)"
        ) from None
    return webdataset


# ---------------------------------------------------------------------------------------------- writing
def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def write_shards(
    splits: dict[str, Iterable[tuple[int, bytes, int]]],
    sizes: dict[str, int],
    classes: list[str],
    dst: str | Path,
    *,
    shard_size: int = 1000,
    progress: bool = True,
) -> dict[str, int]:
    """Write each split's (key, image bytes, class index) as ``DST/<split>-NNNNNN.tar`` of ``shard_size``
    samples, then classes.txt and shards.json; returns the samples per split.

    Each tar is written under a temporary name and renamed, the index last: a killed run leaves no torn
    shard and no index naming a missing one; a failed run removes what it wrote. DST must be new or empty
    (shards of another preparation beside ours would be read as part of the dataset by a glob pattern)."""
    from tqdm import tqdm

    wds = _wds()
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 sample, got {shard_size}")
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UserError(f"destination {dst} must be a new or empty folder")
    created_dir = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: dict[str, Any] = {"format": FORMAT, "classes": list(classes), "splits": {}}
    try:
        for split, samples in splits.items():
            shards: list[dict[str, Any]] = []
            writer, f, tmp = None, None, None
            with tqdm(
                total=sizes.get(split), desc=f"shards {split}", unit="img", disable=not progress
            ) as bar:
                for key, data, target in samples:
                    if writer is None:
                        name = shard_name(split, len(shards))
                        tmp = dst / f".{name}.tmp"
                        f = open(tmp, "wb")
                        writer = wds.TarWriter(f, encoder=False, mtime=0.0)
                        shards.append({"file": name, "count": 0, "targets": []})
                    kind = sniff_image(data[:32])
                    if kind is None:
                        raise UserError(f"sample {key} of the {split!r} split is not an image we can read")
                    writer.write(
                        {"__key__": f"{key:08d}", EXTENSIONS[kind]: data, "cls": str(target).encode()}
                    )
                    shards[-1]["count"] += 1
                    shards[-1]["targets"].append(int(target))
                    bar.update(1)
                    if shards[-1]["count"] == shard_size:
                        writer.close()
                        f.close()
                        written.append(dst / shards[-1]["file"])
                        os.replace(tmp, written[-1])
                        writer = None
                if writer is not None:
                    writer.close()
                    f.close()
                    written.append(dst / shards[-1]["file"])
                    os.replace(tmp, written[-1])
                    writer = None
            index["splits"][split] = {"count": sum(s["count"] for s in shards), "shards": shards}
        for name, text in (
            ("classes.txt", "".join(f"{c}\n" for c in classes)),
            (INDEX, json.dumps(index, separators=(",", ":"))),
        ):
            written.append(dst / name)
            tmp = dst / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, dst / name)
    except BaseException:
        for p in [*written, *dst.glob(".*.tmp")]:
            p.unlink(missing_ok=True)
        if created_dir:
            try:
                dst.rmdir()
            except OSError:
                pass
        raise
    return {s: v["count"] for s, v in index["splits"].items()}


# ---------------------------------------------------------------------------------------------- sources
def _is_url(root: str) -> bool:
    return "://" in root or root.startswith("pipe:")


def _is_pattern(root: str) -> bool:
    return root.startswith("pipe:") or "{" in root or "::" in root


def open_shard(url: str) -> Any:
    """A readable binary stream of one shard: a local file, webdataset's gopen (``pipe:``, http(s), gs,
    ...), else fsspec for any other ``scheme://`` (s3, gcs, az, hf, ...) when it is installed."""
    if not _is_url(url) or url.startswith("file://"):
        return open(url[7:] if url.startswith("file://") else url, "rb")
    _wds()
    from webdataset.gopen import gopen, gopen_schemes

    scheme = url.split(":", 1)[0]
    if scheme in gopen_schemes:
        return gopen(url, "rb")
    try:
        import fsspec
    except ImportError:
        raise UserError(f"{url}: reading {scheme}:// URLs needs fsspec (pip install fsspec)") from None
    return fsspec.open(url, "rb").open()


def _read_text(url: str) -> str | None:
    try:
        with open_shard(url) as f:
            return f.read().decode("utf-8")
    except (OSError, FileNotFoundError):
        return None


@dataclass
class ShardList:
    """One split's shards: their URLs, sample counts and class indices (None where unknown)."""

    urls: list[str]
    counts: list[int]
    targets: list[list[int]]
    classes: list[str]

    @property
    def offsets(self) -> list[int]:
        out, n = [], 0
        for c in self.counts:
            out.append(n)
            n += c
        return out


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _is_url(root) else str(Path(root).expanduser() / name)


def _from_index(root: str, split: str, text: str) -> ShardList:
    try:
        index = json.loads(text)
        if not split:  # `convnext evaluate --data DIR` names no split: the validation one, or the only one
            split = (
                "val"
                if "val" in index["splits"] or len(index["splits"]) != 1
                else next(iter(index["splits"]))
            )
        entry = index["splits"][split]
        shards = entry["shards"]
        classes = list(index["classes"])
    except KeyError:
        known = ", ".join(json.loads(text).get("splits", {}))
        raise UserError(f"{_join(root, INDEX)} has no {split!r} split (it has: {known})") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{_join(root, INDEX)} is not a shards index: {e}") from None
    return ShardList(
        [_join(root, s["file"]) for s in shards],
        [int(s["count"]) for s in shards],
        [list(map(int, s["targets"])) for s in shards],
        classes,
    )


def _count(urls: list[str]) -> tuple[list[int], list[list[int]]]:
    """Sample counts and class indices of shards without an index: one pass over their tar headers."""
    counts, targets = [], []
    for url in urls:
        ts = [_target(s, url) for s in _samples(url)]
        counts.append(len(ts))
        targets.append(ts)
    return counts, targets


def _tar_word(url: str) -> str | None:
    """The shard file a URL names: the URL, or the last word of a ``pipe:`` command ending in .tar."""
    words = [w for w in re.split(r"\s+", url.removeprefix("pipe:")) if w.endswith(".tar")]
    return words[-1] if words else None


def resolve(root: str, split: str, class_list: str | None = None) -> ShardList:
    """The shards of ``split`` under ``root``: a folder (or fsspec URL of one) holding shards.json, or a
    webdataset URL pattern (brace ranges, ``pipe:``, ``::``-joined lists) in which ``{split}`` is replaced
    by the split's name. A pattern's counts and classes come from a shards.json beside its shards when
    they are local files, else from one pass over the shards (classes from data.class_list, or numbered)."""
    if not root:
        raise UserError("config key data.root is required for dataset shards (a folder or a URL pattern)")
    if not _is_pattern(root):
        text = _read_text(_join(root, INDEX))
        if text is None:
            raise UserError(
                f"data.root={root} holds no {INDEX}; write shards with `convnext prepare shards SRC DST`, or "
                "give a URL pattern such as 'pipe:cat /data/train-{000000..000009}.tar'"
            )
        return _from_index(root, split, text)
    wds = _wds()
    urls = wds.shardlists.expand_urls(root.replace("{split}", split))
    # a local index beside the shards: the folder of the .tar each URL names (``pipe:cmd /x/a.tar``)
    paths = [_tar_word(u) for u in urls]
    if all(paths) and not _is_url(paths[0]):
        folder = str(Path(paths[0]).parent)
        text = _read_text(str(Path(folder) / INDEX))
        if text is not None:
            try:
                known = _from_index(folder, split, text)
            except UserError:
                known = None
            if known is not None:
                by_name = {
                    os.path.basename(u): (c, t) for u, c, t in zip(known.urls, known.counts, known.targets)
                }
                names = [os.path.basename(p) for p in paths]
                if all(n in by_name for n in names):
                    return ShardList(
                        urls, [by_name[n][0] for n in names], [by_name[n][1] for n in names], known.classes
                    )
    counts, targets = _count(urls)
    if class_list and Path(class_list).expanduser().is_file():
        classes = [ln.strip() for ln in Path(class_list).expanduser().read_text().splitlines() if ln.strip()]
    else:
        classes = [str(i) for i in range(max((max(t) for t in targets if t), default=-1) + 1)]
    return ShardList(urls, counts, targets, classes)


# ---------------------------------------------------------------------------------------------- reading
class _Failure:
    """A shard that cannot be read, sent from a worker as data: the main process raises it as one sentence
    (an exception raised in a worker reaches the main process wrapped in its traceback)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as webdataset groups them ({"__key__", "jpg": bytes, "cls": bytes}); a
    truncated or corrupt tar is a UserError naming it."""
    _wds()
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def fail(exn: Exception) -> bool:
        raise UserError(
            f"shard {url} cannot be read (truncated or not a tar: {exn.args[0] if exn.args else exn})"
        )

    try:
        stream = open_shard(url)
    except OSError as e:
        raise UserError(f"shard {url} cannot be opened: {e.strerror or e}") from None
    whole = False
    try:
        yield from group_by_keys(
            tar_file_expander([{"url": url, "stream": stream}], handler=fail), handler=fail
        )
        whole = True
    finally:
        try:
            stream.close()
        except Exception as e:  # a pipe: command that failed says so when closed
            if whole:
                raise UserError(f"shard {url} cannot be read: {e}") from None


def _target(sample: dict[str, Any], url: str) -> int:
    try:
        return int(sample["cls"])
    except (KeyError, ValueError):
        raise UserError(f"sample {sample.get('__key__')} of shard {url} has no class index (.cls)") from None


def _image(sample: dict[str, Any], url: str) -> bytes:
    for k, v in sample.items():
        if k.rsplit(".", 1)[-1] in IMAGE_EXTS:
            return v
    raise UserError(f"sample {sample.get('__key__')} of shard {url} has no image (.jpg, .png, ...)")


class ShardDataset(IterableDataset):
    """One split of a shard set. ``len`` is its sample count, ``classes`` and ``targets`` (split order) come
    from the index; iterated by :class:`ShardLoader` (``build_loader`` makes one), which sets what the
    workers need (epoch, skip, rank) before each pass."""

    def __init__(
        self,
        shards: ShardList,
        transform: Transform = None,
        *,
        on_error: str = "substitute",
        strict: bool = False,
        max_pixels: int = 0,
        root: str = "",
    ) -> None:
        self.shards, self.transform, self.on_error = shards, transform, on_error
        self.strict, self.max_pixels, self.root = strict, max_pixels, root
        self.classes = list(shards.classes)
        self.skipped: list[tuple[str, str]] = []
        self.mapping: dict[int, int] | None = None
        self.plan: dict[str, Any] = {}  # set by ShardLoader: what this pass reads, per worker
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return sum(self.shards.counts)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """One sample by its index in the split, for a few (``run.export_samples``): the shard holding it is
        read up to it. Training and evaluation stream instead."""
        offsets = self.shards.offsets
        sid = bisect.bisect_right(offsets, index) - 1
        if not 0 <= index < len(self) or sid < 0:
            raise IndexError(index)
        url = self.shards.urls[sid]
        for pos, sample in enumerate(_samples(url)):
            if offsets[sid] + pos == index:
                item = self._decode(sample, url, index)
                return item if item is not None else (self._placeholder(), unreadable_target(index))
        raise UserError(f"shard {url} holds fewer samples than its index says: truncated or replaced")

    @property
    def targets(self) -> list[int]:
        return [t for ts in self.shards.targets for t in ts]

    def relabeled(self, mapping: dict[int, int], classes: list[str]) -> ShardDataset:
        """The same shards with targets in another class order (:func:`convnext.data.datasets.relabel`)."""
        out = ShardDataset(
            self.shards,
            self.transform,
            on_error=self.on_error,
            strict=self.strict,
            max_pixels=self.max_pixels,
            root=self.root,
        )
        out.mapping, out.classes = dict(mapping), list(classes)
        return out

    def make_loader(
        self,
        batch_size: int,
        *,
        train: bool,
        cfg: DataConfig,
        seed: int,
        rank: int,
        world: int,
        collate_fn: Callable | None = None,
    ) -> ShardLoader:
        return ShardLoader(
            self, batch_size, train=train, cfg=cfg, seed=seed, rank=rank, world=world, collate_fn=collate_fn
        )

    # ------------------------------------------------------------------------------------------- workers
    def _placeholder(self) -> torch.Tensor:
        if self._blank is None:
            blank = torch.zeros(3, 32, 32, dtype=torch.uint8)
            self._blank = self.transform(blank) if self.transform is not None else blank
        return self._blank

    def _decode(self, sample: dict[str, Any], url: str, index: int) -> tuple[Any, int] | None:
        """(image, target) of one sample, transformed; None when its image is unreadable and training
        substitutes it; an eval split gives the placeholder and a negative target (see file_datasets.py)."""
        target = _target(sample, url)
        if self.mapping is not None:
            target = self.mapping[target]
        name = f"{url}:{sample.get('__key__')}"
        try:
            img = decode_image_bytes(_image(sample, url), max_pixels=self.max_pixels, name=name)
        except ImageError as e:
            if self.strict:
                raise UserError(f"{e} (data.strict=true)") from None
            if self.on_error == "drop":
                return self._placeholder(), unreadable_target(index)
            warn(f"{e}; training uses another image in its place")  # convnext/messages.py
            return None
        return (self.transform(img) if self.transform is not None else img), target

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        role = self.plan["roles"][info.id if info is not None else 0]
        try:
            yield from self._chunks(role, in_worker=info is not None)
        except UserError as e:
            yield _Failure(str(e))

    def _stream(self, shard_ids: list[int], rng_seed: int | None) -> Iterator[tuple[dict, str, int]]:
        """(sample, url, index in the split) of the shards, through webdataset's shuffle buffer when
        ``rng_seed`` is set."""
        offsets = self.shards.offsets

        def raw() -> Iterator[tuple[dict, str, int]]:
            for sid in shard_ids:
                url, n = self.shards.urls[sid], 0
                for pos, s in enumerate(_samples(url)):
                    n += 1
                    yield s, url, offsets[sid] + pos
                if n != self.shards.counts[sid]:
                    raise UserError(
                        f"shard {url} holds {n} samples but its index says {self.shards.counts[sid]}: "
                        "truncated or replaced since it was written"
                    )

        if rng_seed is None:
            return raw()
        wds = _wds()
        return wds.filters._shuffle(
            raw(), bufsize=SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER, rng=random.Random(rng_seed)
        )

    def _chunks(self, role: dict[str, Any], in_worker: bool) -> Iterator[Any]:
        """This worker's part: skip ``role['skip']`` samples undecoded, then decode ``role['take']`` (None:
        all) and yield them collated in chunks on the worker's grid of ``plan['chunk']`` samples."""
        if not role["shards"]:
            return
        plan = self.plan
        chunk, seed, epoch = plan["chunk"], plan["seed"], plan["epoch"]
        collate = plan.get("collate") or default_collate
        pos, skip, take = 0, role["skip"], role["take"]
        end = None if take is None else skip + take
        buf: list[Any] = []
        last_good: tuple[Any, int] | None = None
        for sample, url, index in self._stream(role["shards"], role["rng"]):
            if pos < skip:
                pos += 1
                continue
            if end is not None and pos >= end:
                break
            if plan["train"]:
                item = with_sample_seed(
                    sample_seed(seed, epoch, index),
                    lambda s=sample, u=url, i=index: self._decode(s, u, i),
                    in_worker=in_worker,
                )
                if item is None:
                    item = last_good if last_good is not None else (self._placeholder(), _target(sample, url))
                last_good = item
            else:
                item = self._decode(sample, url, index)
            buf.append(item)
            pos += 1
            if pos % chunk == 0:
                yield collate(buf)
                buf = []
        if buf:
            yield collate(buf)


def _round_robin(
    totals: list[int], chunk: int, stop: int | None, at: int
) -> tuple[list[int], list[int], int]:
    """The DataLoader's round-robin merge of the workers' chunk streams (worker v delivers ``totals[v]``
    samples in chunks on its grid of ``chunk``; one that runs out is skipped), cut at ``stop`` samples.
    Returns (samples each worker delivers before ``stop``, samples each delivered before ``at``, the
    worker whose chunk holds sample ``at``, or -1 when ``at`` is the end)."""
    n = len(totals)
    given, before = [0] * n, [0] * n
    merged, nxt, v = 0, -1, 0
    left = list(totals)
    while any(left) and (stop is None or merged < stop):
        if left[v]:
            size = min(chunk - given[v] % chunk, left[v])
            if stop is not None:
                size = min(size, stop - merged)
            if merged + size <= at:
                before[v] += size
            elif merged < at:  # ``at`` falls inside this chunk: its rest comes first on resume
                before[v] += at - merged
                nxt = v
            elif nxt < 0:
                nxt = v
            given[v] += size
            left[v] -= size
            merged += size
        v = (v + 1) % n
    return given, before, nxt


class ShardLoader:
    """What ``build_loader`` returns for shards: iterates a fresh DataLoader (non-persistent workers, see
    the module docstring) over the dataset with this pass's plan, and re-cuts the merged chunks into
    batches. ``len`` is the batches per epoch (training: the same on every rank and every epoch)."""

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        *,
        train: bool,
        cfg: DataConfig,
        seed: int,
        rank: int = 0,
        world: int = 1,
        collate_fn: Callable | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.train = dataset, int(batch_size), train
        self.cfg, self.seed, self.rank, self.world, self.collate_fn = cfg, seed, rank, world, collate_fn
        self.workers = max(int(cfg.workers), 0)
        self.sampler = None  # the evaluation loop asks; an iterable dataset has none
        self.generator = None
        counts = dataset.shards.counts
        if train:
            per_rank = len(counts) // world
            if per_rank == 0:
                raise UserError(
                    f"{len(counts)} shard(s) cannot feed {world} processes (each needs at least one): "
                    "write smaller shards (convnext prepare shards --shard-size)"
                )
            least = sum(sorted(counts)[:per_rank])
            self.steps = least // self.batch_size
        else:
            mine = sum(counts[rank::world])
            self.steps = -(-mine // self.batch_size)

    def __len__(self) -> int:
        return self.steps

    def _plan(self, epoch: int, skip: int) -> dict[str, Any]:
        counts, n = self.dataset.shards.counts, max(self.workers, 1)
        if self.train:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -3) & ((1 << 63) - 1))
            order = torch.randperm(len(counts), generator=g).tolist()
        else:
            order = list(range(len(counts)))
        mine = order[self.rank :: self.world]
        per_worker = [mine[v::n] for v in range(n)]
        totals = [sum(counts[s] for s in sh) for sh in per_worker]
        roles: list[dict[str, Any]] = []
        if not self.train:
            roles = [{"shards": sh, "skip": 0, "take": None, "rng": None} for sh in per_worker]
        else:
            stop = self.steps * self.batch_size
            given, before, nxt = _round_robin(totals, self.batch_size, stop, skip * self.batch_size)
            base = sample_seed(sample_seed(self.seed, epoch, -4), self.rank, 0)
            virtual = [
                {
                    "shards": per_worker[v],
                    "skip": before[v],
                    "take": given[v] - before[v],
                    "rng": sample_seed(base, v, 0) & ((1 << 63) - 1),
                }
                for v in range(n)
            ]
            start = nxt if nxt >= 0 else 0
            for k in range(n):  # the worker that was next goes first, the others in their cyclic order
                v = (start + k) % n
                if virtual[v]["take"] > 0:
                    roles.append(virtual[v])
        roles += [{"shards": [], "skip": 0, "take": 0, "rng": None}] * (n - len(roles))
        return {
            "roles": roles,
            "train": self.train,
            "chunk": self.batch_size,
            "seed": self.seed,
            "epoch": epoch,
            "collate": self.collate_fn,
        }

    def _chunks(self, plan: dict[str, Any]) -> Iterator[Any]:
        d = self.dataset
        d.plan = plan
        if self.workers == 0:
            return iter(d)
        return iter(
            DataLoader(
                d,
                batch_size=None,
                num_workers=self.workers,
                worker_init_fn=seed_worker,
                prefetch_factor=self.cfg.prefetch_factor,
                pin_memory=bool(self.cfg.pin_memory) and torch.cuda.is_available(),
                persistent_workers=False,
            )
        )

    def epoch_batches(self, seed: int, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` after the first ``skip`` (the training loop's exact mid-epoch restart)."""
        self.seed = seed
        return self._batches(self._chunks(self._plan(epoch, skip)), self.steps - skip if self.train else None)

    def __iter__(self) -> Iterator[Any]:
        return self.epoch_batches(self.seed, 0, 0)

    def _batches(self, chunks: Iterator[Any], limit: int | None) -> Iterator[Any]:
        try:
            yield from self._cut(chunks, limit)
        finally:  # an epoch cut at its batch count, or a shard error: the workers go now, not at GC
            shutdown = getattr(chunks, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _cut(self, chunks: Iterator[Any], limit: int | None) -> Iterator[Any]:
        b, buf, have, done = self.batch_size, [], 0, 0
        if limit is not None and limit <= 0:
            return
        for ch in chunks:
            if isinstance(ch, _Failure):
                raise UserError(ch.message)
            buf.append(ch)
            have += len(ch[1])
            while have >= b:
                whole = [torch.cat(parts) if len(buf) > 1 else parts[0] for parts in zip(*buf)]
                yield tuple(x[:b] for x in whole)
                have -= b
                buf = [tuple(x[b:] for x in whole)] if have else []
                done += 1
                if limit is not None and done >= limit:
                    return
        if have and limit is None:
            yield tuple(torch.cat(parts) for parts in zip(*buf))


def shards_dataset(cfg: DataConfig, split: str, transform: Transform, on_error: str) -> ShardDataset:
    """The catalog's builder for ``data.dataset=shards``."""
    return ShardDataset(
        resolve(cfg.root, split, cfg.class_list),
        transform,
        on_error=on_error,
        strict=cfg.strict,
        max_pixels=cfg.max_pixels,
        root=cfg.root,
    )


def encode_png(arr: Any) -> bytes:
    """An in-memory image array (MNIST/CIFAR) as PNG bytes, as ``convnext prepare`` writes it to a file."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- prepare
def _sources(
    src: Path, layout: str | None, val_fraction: float, seed: int
) -> tuple[dict[str, list], list[str], str]:
    """Per split, what to write ([(file, target)] or [(array, target)]), the class names and the layout
    read. The files are those build_dataset would read for the layout (same scan, same class index), so
    shards and the folder give the same samples."""
    from .catalog import find_dataset, find_preparable
    from .datasets import build_dataset
    from .file_datasets import find_file_dataset
    from .prepare import _safe

    if layout is None:
        if not any((src / s).is_dir() for s in ("train", "val")):
            raise UserError(
                f"{src} has no train/ or val/ folder; name its layout with --from (one of the datasets of "
                "`convnext prepare --help`)"
            )
    folder = find_dataset(DataConfig().dataset)  # the default dataset: an image folder
    spec = folder if layout is None else find_dataset(layout)
    if spec is not folder:
        spec = find_preparable(layout)  # type: ignore[arg-type]  # one sentence naming those it reads
    if spec.archives is not None and spec.archives(src):
        raise UserError(
            f"{src} holds {spec.name}'s archives: write the image folder first (convnext prepare {spec.name} "
            f"{src} DIR), then shards from DIR"
        )
    if spec.arrays is not None:
        out, classes = {}, []
        for split, train in (("train", True), ("val", False)):
            images, targets, classes = spec.arrays(src, train)
            out[split] = [(images[i], int(t)) for i, t in enumerate(targets)]
        return out, [_safe(c) for c in classes], spec.name
    out, classes = {}, []
    splits = [s for s in ("train", "val") if spec is not folder or (src / s).is_dir()]
    for split in splits:
        cfg = DataConfig(
            dataset=spec.name, root=str(src), val_fraction=val_fraction, split_seed=seed, workers=0
        )
        ds = build_dataset(cfg, split, None)
        fd = find_file_dataset(ds)
        assert fd is not None
        out[split] = fd.samples
        classes = list(ds.classes)  # type: ignore[attr-defined]
    return out, classes, spec.name


def prepare_shards(
    src: str | Path,
    dst: str | Path,
    *,
    layout: str | None = None,
    shard_size: int = 1000,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """``convnext prepare shards``: any layout ``convnext prepare`` reads (``layout``; default: an image
    folder, SRC/train and SRC/val) as tar shards in DST; returns the samples per split. Files are stored
    byte for byte; MNIST/CIFAR arrays as PNG, as prepare writes them."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    dst = Path(dst).expanduser()
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError(f"destination {dst} must not be the source folder {src} or inside it")
    plan, classes, _ = _sources(src, layout, val_fraction, seed)

    def read(split: str, items: list) -> Iterator[tuple[int, bytes, int]]:
        order = list(range(len(items)))
        if split == "train":  # mixed classes in every shard: a shuffle buffer cannot mix a class-sorted tar
            random.Random(seed).shuffle(order)
        for i in order:
            x, target = items[i]
            if isinstance(x, str):
                with open(x, "rb") as f:
                    yield i, f.read(), target
            else:
                yield i, encode_png(x), target

    return write_shards(
        {split: read(split, items) for split, items in plan.items()},
        {split: len(items) for split, items in plan.items()},
        classes,
        dst,
        shard_size=shard_size,
        progress=progress,
    )
