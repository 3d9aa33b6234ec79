"""Datasets: an ImageFolder layout, scikit-learn's digits, torchvision's MNIST/CIFAR, and the raw layouts of
Tiny-ImageNet-200, mini-ImageNet, ImageNet-1k and Caltech-101/256 (``convnext prepare`` turns those into an
ImageFolder; reading them raw works too).

Every dataset yields ``(image, target)`` with image a uint8 (3, H, W) RGB tensor before the transform, and
has ``.classes`` (class names in index order) and ``.skipped`` (list of (file, reason) left out at scan).

A file that turns out unreadable at load time (truncated, over the pixel limit, ...) is, by ``on_error``:
- ``"substitute"`` (training): replaced by the next readable sample, so batch shapes and the epoch length
  stay; said once per file across all loader workers. ``data.strict=true`` makes it fatal.
- ``"drop"`` (evaluation): returned as a placeholder image with target ``-1 - index`` (see
  :func:`split_unreadable`), which the default collate batches like any sample; the evaluation loop removes
  it from every metric and names the file (:func:`explain_unreadable`). A marker inside the target, not a
  special collate_fn, so any loader (workers, torchrun shards, the training loop's own) carries it.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import layouts
from .classes import resolve_class_list
from .config import DEFAULT_MAX_PIXELS, DataConfig
from .images import ImageError, check_file, dir_key, load_image, strict_error, unique_files, walk_files

Transform = Callable[[torch.Tensor], torch.Tensor] | None
_MAX_SUBSTITUTES = 64
ON_ERROR = ("substitute", "drop")


def _warn_skipped(skipped: Sequence[tuple[str, str]], where: str) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p} ({r})" for p, r in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(
        f"{where}: skipped {len(skipped)} unusable file(s): {shown}{more}", RuntimeWarning, stacklevel=3
    )


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
                warnings.warn(
                    f"{e}; training uses another image in its place (data.strict=true makes this an error)",
                    RuntimeWarning,
                    stacklevel=3,
                )
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


class Relabeled(Dataset):
    """A dataset whose targets are re-indexed into the model's class list (matched by name); the
    unreadable-sample marker of a "drop"-mode dataset passes through."""

    def __init__(self, ds: Dataset, mapping: dict[int, int], classes: list[str]) -> None:
        self.ds, self.mapping, self.classes = ds, mapping, list(classes)
        self.targets = [mapping[t] for t in ds.targets]  # type: ignore[attr-defined]
        self.skipped = getattr(ds, "skipped", [])

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, t = self.ds[index]
        return img, (int(t) if int(t) < 0 else self.mapping[int(t)])


def relabel(ds: Dataset, names: list[str], source: str) -> Dataset:
    """``ds`` with targets in the order of ``names`` (the checkpoint's classes); one sentence when the data
    has a class the model does not know."""
    own = list(ds.classes)  # type: ignore[attr-defined]
    if own == names:
        return ds
    index = {n: i for i, n in enumerate(names)}
    used = sorted(set(ds.targets))  # type: ignore[attr-defined]
    unknown = [own[t] for t in used if own[t] not in index]
    if unknown:
        shown = ", ".join(names[:3])
        raise UserError(
            f"class {unknown[0]!r} of the data is not one of the {len(names)} classes of {source} "
            f"({shown}, ...; {len(unknown)} class(es) unknown): the head does not match this data"
        )
    return Relabeled(ds, {t: index[own[t]] for t in used}, names)


class ArrayDataset(Dataset):
    """Images in memory (digits, MNIST, CIFAR): uint8 (N, H, W) or (N, H, W, C) array, int targets."""

    def __init__(
        self, images: np.ndarray | torch.Tensor, targets: Sequence[int], classes: list[str], transform=None
    ) -> None:
        x = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2)  # N, C, H, W
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB so every dataset gives 3 channels
        self.images = x.contiguous()
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


# ------------------------------------------------------------------------------------------ image folder
def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _class_files(split_dir: Path, folders: list[str], index: dict[str, int]) -> list[tuple[str, int]]:
    """(file, class index) under each class folder, each real folder walked once and each real file
    counted once: a link loop (``cat/loop -> ..``) or a link into another class folder adds nothing (the
    split folder and every class folder are claimed before the walk), a second link to the same file
    neither. A class folder that is a link to another class folder gets no files."""
    keys = {c: dir_key(split_dir / c) for c in folders}
    seen = {dir_key(split_dir), *keys.values()}
    walked: set[tuple[int, int]] = set()
    entries: list[tuple[str, str, bool]] = []
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
    files = _class_files(split_dir, folders, index)
    good, bad = scan_files(
        files, strict=cfg.strict, check_headers=cfg.check_headers, max_pixels=cfg.max_pixels
    )
    present = {t for _, t in good}
    empty = [c for c in folders if index[c] not in present]
    if empty:
        raise UserError(
            f"class folder {split_dir / empty[0]} has no usable images "
            f"({len(empty)} class folder(s) are empty)"
        )
    _warn_skipped(bad, str(split_dir))
    return FileDataset(
        good,
        classes,
        transform,
        strict=cfg.strict,
        skipped=bad,
        root=str(split_dir),
        max_pixels=cfg.max_pixels,
        on_error=on_error,
    )


# ------------------------------------------------------------------------------------------------ digits
DIGITS_SIZE = 32  # 8x8 upscaled once at load (bilinear): the transforms then work at a useful size


def digits(
    cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
) -> ArrayDataset:
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 0..16 ink), upscaled to 32x32 uint8 RGB,
    split 80/20 stratified with a fixed seed (data.split_seed, data.val_fraction)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # N,1,8,8 in 0..255
    x = torch.nn.functional.interpolate(
        x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False
    )
    x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    idx = np.arange(len(d.target))
    tr, va = train_test_split(
        idx, test_size=cfg.val_fraction, random_state=cfg.split_seed, stratify=d.target, shuffle=True
    )
    pick = _pick_split(split, {"train": tr, "val": va, "test": va})
    return ArrayDataset(x[pick], d.target[pick], [str(i) for i in range(10)], transform)


def _pick_split(split: str, table: dict):
    if split not in table:
        raise UserError(f"split {split!r} does not exist here; use one of {', '.join(sorted(table))}")
    return table[split]


# ------------------------------------------------------------------------------ torchvision's datasets
_DOWNLOAD_HINT = "data.download=true downloads it"


def _offline_error(name: str, root: Path, files: str, tried_download: bool) -> UserError:
    how = "the download failed (offline?)" if tried_download else _DOWNLOAD_HINT
    return UserError(f"dataset {name} is not in {root}: put {files} there ({how})")


# MNIST is read here (numpy, ~30 lines) instead of through torchvision.datasets.MNIST, which accepts only
# the unzipped files under <root>/MNIST/raw and otherwise says "not found" although the files as
# downloaded (gzipped, or in a flat folder) are right there.
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_MAX_BYTES = 1 << 30  # an idx header promising more is not MNIST (and a gzip bomb is refused)


def find_mnist_file(root: Path, name: str) -> Path | None:
    """``name`` (or its Kaggle spelling ``train-images.idx3-ubyte``), gzipped or not, flat in ``root``,
    under ``root/MNIST/raw`` (torchvision's download) or under ``root/raw``."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for n in (name, name.replace("-idx", ".idx")):
            for suffix in ("", ".gz"):
                if (folder / (n + suffix)).is_file():
                    return folder / (n + suffix)
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (the MNIST format: magic 0x0000 08 <ndim>, big-endian uint32 sizes,
    the data), gzipped or not; one sentence naming the file when it is not one or is cut short."""
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
                raise UserError(f"MNIST: {path} is not an idx file of {ndim}-d unsigned bytes (bad header)")
            dims = struct.unpack(f">{ndim}I", head[4:]) if len(head) == 4 + 4 * ndim else ()
            n = int(np.prod(dims)) if dims else -1
            if n < 0 or n > _MNIST_MAX_BYTES:
                raise UserError(f"MNIST: {path} has a damaged header (sizes {dims})")
            body = f.read(n + 1)
    except (OSError, EOFError, zlib.error) as e:
        why = getattr(e, "strerror", None) or e
        raise UserError(f"MNIST: {path} cannot be read ({why}; a damaged download?)") from None
    if len(body) != n:
        raise UserError(
            f"MNIST: {path} is damaged: its header promises {n} bytes of data, it holds "
            f"{'more' if len(body) > n else len(body)}"
        )
    return np.frombuffer(bytearray(body), dtype=np.uint8).reshape(dims)  # writable, for torch


def mnist_arrays(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of the MNIST train or test files in ``root``."""
    found = []
    for name in MNIST_FILES[train]:
        f = find_mnist_file(root, name)
        if f is None:
            raise UserError(
                f"MNIST: {name}[.gz] is not in {root}, {root / 'MNIST' / 'raw'} or {root / 'raw'} "
                f"(the four idx files as downloaded, gzipped or not)"
            )
        found.append(f)
    images, labels = read_idx(found[0], 3), read_idx(found[1], 1)
    if len(images) != len(labels):
        raise UserError(f"MNIST: {found[0]} holds {len(images)} images but {found[1]} {len(labels)} labels")
    if len(labels) and int(labels.max()) > 9:
        raise UserError(f"MNIST: {found[1]} has label {int(labels.max())} (0-9 expected)")
    return images, labels


def mnist(
    cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
) -> ArrayDataset:
    root = Path(cfg.root or "data/mnist").expanduser()
    train = _pick_split(split, {"train": True, "val": False, "test": False})
    if cfg.download and not all(find_mnist_file(root, n) for n in MNIST_FILES[train]):
        import torchvision.datasets as tvd

        try:
            tvd.MNIST(str(root), train=train, download=True)  # into root/MNIST/raw
        except (RuntimeError, OSError) as e:
            raise _offline_error("MNIST", root, "the MNIST idx files", True) from e
    try:
        images, labels = mnist_arrays(root, train)
    except UserError as e:
        raise UserError(f"{e}{'' if cfg.download else f'; {_DOWNLOAD_HINT}'}") from None
    return ArrayDataset(images, labels.tolist(), [str(i) for i in range(10)], transform)


def cifar_root(root: Path, cls_name: str) -> Path:
    """The folder holding ``cifar-10-batches-py/`` (torchvision's layout); ``root`` may be that folder."""
    import torchvision.datasets as tvd

    base = getattr(tvd, cls_name).base_folder
    return root.parent if root.name == base and not (root / base).is_dir() else root


def check_cifar(root: Path, cls_name: str) -> None:
    """One sentence naming the CIFAR file that is missing or fails its MD5 checksum (the checksums
    torchvision itself checks); nothing when all are intact."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_md5

    cls = getattr(tvd, cls_name)
    base = root / cls.base_folder
    if not base.is_dir():
        archive = root / cls.filename
        how = (
            f"extract {archive} there"
            if archive.is_file()
            else f"put {cls.base_folder}/ (the extracted {cls.filename}) there"
        )
        raise UserError(f"dataset {cls_name} is not in {root}: {how}")
    for name, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]:
        f = base / name
        if not f.is_file():
            raise UserError(f"dataset {cls_name}: {f} is missing (extract {cls.filename} again)")
        if not check_md5(str(f), md5):
            raise UserError(
                f"dataset {cls_name}: {f} fails its MD5 checksum (damaged or truncated; extract "
                f"{cls.filename} again)"
            )


def cifar_arrays(root: Path, cls_name: str, train: bool, *, download: bool = False):
    """(images (N, 32, 32, 3) uint8, targets, classes) through torchvision (which checks every batch's MD5
    before unpickling it); when it refuses, :func:`check_cifar` says which file is wrong."""
    import torchvision.datasets as tvd

    root = cifar_root(root, cls_name)
    try:
        ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
    except (RuntimeError, OSError) as e:  # "Dataset not found or corrupted" / failed download
        if download:
            raise _offline_error(cls_name, root, _TORCHVISION_FILES[cls_name], True) from e
        check_cifar(root, cls_name)
        raise UserError(f"dataset {cls_name} in {root} cannot be read ({e})") from None
    return ds.data, list(ds.targets), list(ds.classes)


def _cifar(cls_name: str) -> Callable[..., ArrayDataset]:
    def build(
        cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
    ) -> ArrayDataset:
        root = Path(cfg.root or f"data/{cls_name.lower()}").expanduser()
        train = _pick_split(split, {"train": True, "val": False, "test": False})
        try:
            data, targets, classes = cifar_arrays(root, cls_name, train, download=cfg.download)
        except UserError as e:
            hint = "" if cfg.download or "download" in str(e) else f" ({_DOWNLOAD_HINT})"
            raise UserError(f"{e}{hint}") from None
        return ArrayDataset(data, targets, classes, transform)

    return build


_TORCHVISION_FILES = {
    "CIFAR10": "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "CIFAR100": "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
}
cifar10 = _cifar("CIFAR10")
cifar100 = _cifar("CIFAR100")


# ---------------------------------------------------------------------------------------- raw layouts
def _raw(
    layout: Callable[..., layouts.RawSplit], needs_split: bool = False, **fixed: object
) -> Callable[[DataConfig, str, Transform], FileDataset]:
    def build(
        cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
    ) -> FileDataset:
        if not cfg.root:
            raise UserError(f"config key data.root is required for data.dataset={cfg.dataset}")
        root = Path(cfg.root).expanduser()
        if cfg.download and "version" in fixed:
            root.mkdir(parents=True, exist_ok=True)
            _download_caltech(int(fixed["version"]), root)  # type: ignore[call-overload]
        if not root.is_dir():
            raise UserError(f"config key data.root: folder {root} does not exist")
        kw = dict(fixed)
        if needs_split:
            kw.update(val_fraction=cfg.val_fraction, seed=cfg.split_seed)
        raw = layout(root, split, **kw)
        for note in raw.notes:
            warnings.warn(note, UserWarning, stacklevel=3)
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
        good, bad = scan_files(
            files, strict=cfg.strict, check_headers=cfg.check_headers, max_pixels=cfg.max_pixels
        )
        _warn_skipped(bad, f"{cfg.dataset} {split}")
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

    return build


def _download_caltech(version: int, root: Path) -> None:
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


# -------------------------------------------------------------------------------------------- registry
Builder = Callable[..., Dataset]  # (cfg, split, transform, on_error)
DATASETS: dict[str, Builder] = {
    "imagefolder": image_folder,
    "digits": digits,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "tiny-imagenet": _raw(layouts.tiny_imagenet),
    "mini-imagenet": _raw(layouts.mini_imagenet, needs_split=True),
    "imagenet": _raw(layouts.imagenet),
    "caltech101": _raw(layouts.caltech, needs_split=True, version=101),
    "caltech256": _raw(layouts.caltech, needs_split=True, version=256),
}


_ALIASES = {
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
    "miniimagenet": "mini-imagenet",
    "imagenet1k": "imagenet",
    "imagenet-1k": "imagenet",
    "caltech-101": "caltech101",
    "caltech-256": "caltech256",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}


def build_dataset(
    cfg: DataConfig, split: str, transform: Transform = None, *, on_error: str | None = None
) -> Dataset:
    """The ``split`` ("train", "val", ...) of cfg.dataset; the dataset has ``.classes`` and ``.skipped``.

    ``on_error``: what an image found unreadable at load time becomes, "substitute" (another sample) or
    "drop" (a marker the evaluation loop removes; see the module docstring). Default: "substitute" for
    cfg.train_split, "drop" for any other split, so the training loop's validation counts only readable
    files too. Raises UserError (one sentence) for a missing folder, an empty dataset or an empty class
    folder.
    """
    if on_error is None:
        on_error = "substitute" if split == cfg.train_split else "drop"
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not isinstance(cfg.max_pixels, int) or isinstance(cfg.max_pixels, bool) or cfg.max_pixels < 0:
        raise UserError(
            f"config key data.max_pixels must be a number of pixels (0: no limit), got {cfg.max_pixels!r}"
        )
    name = cfg.dataset.lower().replace("_", "-")
    builder = (
        DATASETS.get(name) or DATASETS.get(name.replace("-", "")) or DATASETS.get(_ALIASES.get(name, ""))
    )
    if builder is None:
        raise UserError(f"config key data.dataset: {cfg.dataset!r} is not one of {', '.join(DATASETS)}")
    ds = builder(cfg, split, transform, on_error)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise UserError(
            f"the {split!r} split of dataset {cfg.dataset} ({cfg.root or 'built in'}) has no images"
        )
    return ds
