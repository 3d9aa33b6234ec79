"""Images on disk: :class:`FileDataset`, the image-folder layout (scanning, class folders, each real file
once) and the raw layouts of Tiny-ImageNet-200, mini-ImageNet, ImageNet-1k and Caltech-101/256 read as they
are (``convnext prepare`` turns those into an ImageFolder).

A file that turns out unreadable at load time (truncated, over the pixel limit, ...) is, by ``on_error``:
- ``"substitute"`` (training): replaced by the next readable sample, so batch shapes and the epoch length
  stay; said once per file across all loader workers. ``data.strict=true`` makes it fatal.
- ``"drop"`` (evaluation): returned as a placeholder image with target ``-1 - index`` (see
  :func:`split_unreadable`), which the default collate batches like any sample; the evaluation loop removes
  it from every metric and names the file (:func:`explain_unreadable`). A marker inside the target, not a
  special collate_fn, so any loader (workers, torchrun shards, the training loop's own) carries it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..messages import note, warn
from .classes import resolve_class_list
from .config import DEFAULT_MAX_PIXELS, DataConfig
from .images import ImageError, check_file, dir_key, load_image, strict_error, unique_files, walk_files

if TYPE_CHECKING:
    from .catalog import DatasetSpec

Transform = Callable[[torch.Tensor], torch.Tensor] | None
_MAX_SUBSTITUTES = 64
ON_ERROR = ("substitute", "drop")


def _warn_skipped(skipped: Sequence[tuple[str, str]], where: str) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p} ({r})" for p, r in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warn(f"{where}: skipped {len(skipped)} unusable file(s): {shown}{more}")


class FileDataset(Dataset):
    """Images on disk: ``samples`` is a list of (path, class index).

    Paths and targets are kept in numpy arrays, not Python lists: loader workers are forked, and touching
    a list of 1.28M Python strings copies it into every worker (reference counts are writes), which costs
    gigabytes with 8-16 workers; one numpy buffer stays shared.

    ``on_error`` says what an unreadable file becomes at load time (see the module docstring). Which files
    failed is one byte per sample in shared memory, so every loader worker (persistent or not, forked or
    spawned) sees what the others found: each file is warned about once, and never decoded twice.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Transform = None,
        *,
        strict: bool = False,
        skipped: list[tuple[str, str]] | None = None,
        root: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_error: str = "substitute",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self._paths = np.array([os.fsencode(p) for p, _ in samples], dtype=np.bytes_)
        self._targets = np.array([t for _, t in samples], dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.strict = strict
        self.skipped = list(skipped or [])
        self.root = root
        self.max_pixels = int(max_pixels)
        self.on_error = on_error
        self._failed = torch.zeros(len(self._targets), dtype=torch.uint8)
        if len(self._targets):
            self._failed.share_memory_()
        self._blank: torch.Tensor | None = None

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, target) of every image, built on each access: in a loop use ``path(i)``."""
        return [(os.fsdecode(p), int(t)) for p, t in zip(self._paths, self._targets)]

    def path(self, index: int) -> str:
        """The file of sample ``index`` (e.g. to name a misclassified image)."""
        return os.fsdecode(self._paths[index])

    @property
    def targets(self) -> list[int]:
        return self._targets.tolist()

    @property
    def load_failures(self) -> int:
        """Distinct files found unreadable so far, by any loader worker."""
        return int(self._failed.sum())

    def failed_files(self) -> list[str]:
        return [self.path(int(i)) for i in torch.nonzero(self._failed).flatten()]

    def __len__(self) -> int:
        return len(self._targets)

    def _read(self, index: int) -> torch.Tensor:
        path = self.path(index)
        try:
            return load_image(path, max_pixels=self.max_pixels)
        except ImageError as e:
            if self.strict:
                raise strict_error(path, e.why) from None
            first = not self._failed[index]
            self._failed[index] = 1
            if first and self.on_error == "substitute":
                warn(f"{e}; training uses another image in its place (data.strict=true makes this an error)")
            raise

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """The decoded image of ``index`` or, if it is unreadable, of the next readable sample (never raises
        mid-epoch unless ``strict``). Files already known to be unreadable are not decoded again."""
        n = len(self._targets)
        for k in range(_MAX_SUBSTITUTES):
            i = (index + k) % n
            if self._failed[i]:
                continue
            try:
                return self._read(i), int(self._targets[i])
            except ImageError:
                continue
        raise UserError(f"{_MAX_SUBSTITUTES} images in a row under {self.root} cannot be decoded")

    def _placeholder(self) -> torch.Tensor:
        """What an unreadable sample's image is in "drop" mode: the transform of a black image, so it has
        the shape of the others in a batch (it never reaches a metric)."""
        if self._blank is None:
            blank = torch.zeros(3, 32, 32, dtype=torch.uint8)
            self._blank = self.transform(blank) if self.transform is not None else blank
        return self._blank

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.on_error == "drop":
            try:
                img, target = self._read(index), int(self._targets[index])
            except ImageError:
                return self._placeholder(), unreadable_target(index)
        else:
            img, target = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def unreadable_target(index: int) -> int:
    """The target a "drop"-mode dataset gives an unreadable sample: negative, carrying its index."""
    return -1 - int(index)


def split_unreadable(targets: torch.Tensor) -> tuple[torch.Tensor | None, list[int]]:
    """(mask of the readable samples, dataset indices of the unreadable ones) of a batch of class-index
    targets; (None, []) when all are readable (the common case costs one comparison)."""
    if targets.ndim != 1 or targets.is_floating_point():
        return None, []
    bad = targets < 0
    if not bool(bad.any()):
        return None, []
    return ~bad, [-1 - int(t) for t in targets[bad].tolist()]


def find_file_dataset(ds: Dataset) -> FileDataset | None:
    """The FileDataset under any wrappers (Relabeled, Subset, a seeding wrapper): they keep its indices."""
    for _ in range(8):
        if isinstance(ds, FileDataset):
            return ds
        inner = next(
            (
                getattr(ds, a)
                for a in ("ds", "dataset", "base", "inner")
                if isinstance(getattr(ds, a, None), Dataset)
            ),
            None,
        )
        if inner is None:
            return None
        ds = inner
    return None


def explain_unreadable(ds: Dataset, index: int) -> tuple[str, str]:
    """(file, why) of the unreadable sample ``index`` of ``ds`` (a "drop"-mode dataset or a wrapper of
    one). The cause is found again here, in the calling process (the worker that met it has only the
    target to send back); it is cheap: unreadable files are few, and a file over the pixel limit is
    refused from its header."""
    fd = find_file_dataset(ds)
    if fd is None:
        return f"sample {index}", "unreadable"
    path = fd.path(index)
    try:
        load_image(path, max_pixels=fd.max_pixels)
    except ImageError as e:
        return path, e.why
    return path, "unreadable while evaluating (readable now: changed on disk?)"


# ------------------------------------------------------------------------------------------ image folder
def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _class_files(split_dir: Path, folders: list[str], index: dict[str, int]) -> list[tuple[str, int]]:
    """(file, class index) under each class folder, each real folder walked once and each real file
    counted once: a link loop (``cat/loop -> ..``) or a link into another class folder adds nothing (the
    split folder and every class folder are claimed before the walk), a second link to the same file
    neither, symbolic or hard (the first in walk order counts, in its class). A class folder that is a link
    to another class folder gets no files. FIFOs and devices are listed, for the scan to name them."""
    keys = {c: dir_key(split_dir / c) for c in folders}
    seen = {dir_key(split_dir), *keys.values()}
    walked: set[tuple[int, int]] = set()
    entries: list[tuple[str, str, bool, tuple[int, int, int] | None]] = []
    targets: list[int] = []
    for c in folders:
        if keys[c] in walked:
            continue
        walked.add(keys[c])
        for entry in walk_files(split_dir / c, seen):
            entries.append(entry)
            targets.append(index[c])
    return [(entries[i][0], targets[i]) for i in unique_files(entries)]


def scan_files(
    files: Sequence[tuple[str, int]],
    *,
    strict: bool,
    check_headers: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Keep the files that look like images; the others come back as (file, reason).

    Reading 32 bytes of each file is I/O-bound (1.28M files for ImageNet), so large folders are checked by a
    thread pool, with a progress bar. PNG/GIF/BMP headers declaring more than ``max_pixels`` are left out
    here already (the load-time check covers the other formats)."""
    paths = [p for p, _ in files]
    check = partial(check_file, headers=check_headers, max_pixels=max_pixels)
    if len(paths) > 2000:
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
            it = pool.map(check, paths, chunksize=256)
            reasons = list(
                tqdm(it, total=len(paths), desc="checking images", unit="file", disable=len(paths) < 50_000)
            )
    else:
        reasons = [check(p) for p in paths]
    good, bad = [], []
    for (path, target), reason in zip(files, reasons):
        if reason is None:
            good.append((path, target))
        elif strict:
            raise strict_error(path, reason)
        else:
            bad.append((path, reason))
    return good, bad


def default_class_list(cfg: DataConfig, root: Path) -> str | None:
    """cfg.class_list, else a classes.txt next to the splits (``convnext prepare`` writes one), else auto."""
    if cfg.class_list:
        return cfg.class_list
    if (root / "classes.txt").is_file():
        return str(root / "classes.txt")
    return None


def image_folder(
    cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
) -> FileDataset:
    """``<root>/<split>/<class>/**/<image>``; class index from the class list (see classes.py)."""
    root = Path(cfg.root).expanduser()
    split_dir = root / split if split else root
    if not split_dir.is_dir():
        raise UserError(
            f"split folder {split_dir} does not exist (data.root={cfg.root!r} needs one sub-folder per "
            f"split, e.g. {split}/<class>/<image>)"
        )
    folders = _class_folders(split_dir)
    if not folders:
        raise UserError(
            f"split folder {split_dir} has no class folders (expected {split_dir}/<class>/<image>)"
        )
    classes = resolve_class_list(default_class_list(cfg, root), folders)
    index = {c: i for i, c in enumerate(classes)}
    good, bad = _scan(_class_files(split_dir, folders, index), cfg)
    present = {t for _, t in good}
    empty = [c for c in folders if index[c] not in present]
    if empty:
        raise UserError(
            f"class folder {split_dir / empty[0]} has no usable images "
            f"({len(empty)} class folder(s) are empty)"
        )
    _warn_skipped(bad, str(split_dir))
    return _file_dataset(good, bad, classes, transform, cfg, split_dir, on_error)


def _scan(files: list[tuple[str, int]], cfg: DataConfig) -> tuple[list, list]:
    """:func:`scan_files` with the config's strictness, header check and pixel cap."""
    return scan_files(files, strict=cfg.strict, check_headers=cfg.check_headers, max_pixels=cfg.max_pixels)


def _file_dataset(
    good: list,
    bad: list,
    classes: list[str],
    transform: Transform,
    cfg: DataConfig,
    root: Path,
    on_error: str,
) -> FileDataset:
    return FileDataset(
        good,
        classes,
        transform,
        strict=cfg.strict,
        skipped=bad,
        root=str(root),
        max_pixels=cfg.max_pixels,
        on_error=on_error,
    )


# ---------------------------------------------------------------------------------------- raw layouts


def raw_layout(spec: DatasetSpec) -> Callable[..., FileDataset]:
    """The builder of a catalog entry read from its raw layout (the files in place, not copied). Each
    note of the layout (e.g. mini-ImageNet's pooling) is given once per process: training builds a split up
    to three times (the class list, train, val), and the same note three times is noise."""

    def build(
        cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
    ) -> FileDataset:
        if not cfg.root:
            raise UserError(f"config key data.root is required for data.dataset={cfg.dataset}")
        root = Path(cfg.root).expanduser()
        if cfg.download and spec.download is not None:
            root.mkdir(parents=True, exist_ok=True)
            spec.download(root, **spec.options)
        if not root.is_dir():
            raise UserError(f"config key data.root: folder {root} does not exist")
        raw = spec.read(root, split, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
        for line in raw.notes:
            note(line)  # once per process
        classes = raw.classes
        if cfg.class_list:
            classes = resolve_class_list(cfg.class_list, sorted({c for _, c in raw.samples}))
        index = {c: i for i, c in enumerate(classes)}
        files = [(p, index[c]) for p, c in raw.samples]
        missing = [p for p, _ in files if not os.path.exists(p)]
        if missing:
            raise UserError(
                f"{cfg.dataset}: {missing[0]} is listed but does not exist ({len(missing)} missing)"
            )
        good, bad = _scan(files, cfg)
        _warn_skipped(bad, f"{cfg.dataset} {split}")
        return _file_dataset(good, bad, classes, transform, cfg, root, on_error)

    return build


def download_caltech(root: Path, *, version: int) -> None:
    """torchvision's downloader (it extracts into root/caltech<version>/<version>_ObjectCategories)."""
    top = f"{version}_ObjectCategories"
    if (root / top).is_dir() or (root / f"caltech{version}" / top).is_dir():
        return
    import torchvision.datasets as tvd

    try:
        getattr(tvd, f"Caltech{version}")(str(root), download=True)
    except Exception as e:  # no network, Google Drive quota, ...
        raise UserError(
            f"dataset Caltech-{version} could not be downloaded ({type(e).__name__}): put the extracted "
            f"{top}/ folder in {root}"
        ) from e
