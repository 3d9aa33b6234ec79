"""Datasets: an ImageFolder layout, scikit-learn's digits, torchvision's MNIST/CIFAR, and the raw layouts of
Tiny-ImageNet-200, mini-ImageNet, ImageNet-1k and Caltech-101/256 (``convnext prepare`` turns those into an
ImageFolder; reading them raw works too).

Every dataset yields ``(image, target)`` with image a uint8 (3, H, W) RGB tensor before the transform, and
has ``.classes`` (class names in index order) and ``.skipped`` (list of (file, reason) left out).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import layouts
from .classes import resolve_class_list
from .config import DataConfig
from .images import check_file, load_image, strict_error

Transform = Callable[[torch.Tensor], torch.Tensor] | None
_MAX_SUBSTITUTES = 64


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
    ) -> None:
        self._paths = np.array([os.fsencode(p) for p, _ in samples], dtype=np.bytes_)
        self._targets = np.array([t for _, t in samples], dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.strict = strict
        self.skipped = list(skipped or [])
        self.root = root
        self.load_failures = 0  # in this process (each loader worker counts its own)
        self._warned: set[str] = set()

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

    def __len__(self) -> int:
        return len(self._targets)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """The decoded image of ``index`` or, if it is corrupt, of the next good sample (never raises
        mid-epoch unless ``strict``)."""
        n = len(self._targets)
        for k in range(_MAX_SUBSTITUTES):
            i = (index + k) % n
            path, target = self.path(i), int(self._targets[i])
            try:
                return load_image(path), target
            except ValueError as e:
                if self.strict:
                    raise strict_error(path, str(e).rsplit("(", 1)[-1].rstrip(")")) from None
                self.load_failures += 1
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(
                        f"{e}; using another image in its place (data.strict=true makes this an error)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        raise UserError(f"{_MAX_SUBSTITUTES} images in a row under {self.root} cannot be decoded")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


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


def _files_under(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


def scan_files(
    files: Sequence[tuple[str, int]], *, strict: bool, check_headers: bool
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Keep the files that look like images; the others come back as (file, reason).

    Reading 16 bytes of each file is I/O-bound (1.28M files for ImageNet), so large folders are checked by a
    thread pool, with a progress bar."""
    paths = [p for p, _ in files]
    check = partial(check_file, headers=check_headers)
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


def image_folder(cfg: DataConfig, split: str, transform: Transform = None) -> FileDataset:
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
    files = [(f, index[c]) for c in folders for f in _files_under(split_dir / c)]
    good, bad = scan_files(files, strict=cfg.strict, check_headers=cfg.check_headers)
    present = {t for _, t in good}
    empty = [c for c in folders if index[c] not in present]
    if empty:
        raise UserError(
            f"class folder {split_dir / empty[0]} has no usable images "
            f"({len(empty)} class folder(s) are empty)"
        )
    _warn_skipped(bad, str(split_dir))
    return FileDataset(good, classes, transform, strict=cfg.strict, skipped=bad, root=str(split_dir))


# ------------------------------------------------------------------------------------------------ digits
DIGITS_SIZE = 32  # 8x8 upscaled once at load (bilinear): the transforms then work at a useful size


def digits(cfg: DataConfig, split: str, transform: Transform = None) -> ArrayDataset:
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
def _offline_error(name: str, root: Path, files: str, tried_download: bool) -> UserError:
    how = "the download failed (offline?)" if tried_download else "data.download=true downloads it"
    return UserError(f"dataset {name} is not in {root}: put {files} there ({how})")


def _torchvision(cls_name: str, files: str) -> Callable[[DataConfig, str, Transform], ArrayDataset]:
    def build(cfg: DataConfig, split: str, transform: Transform = None) -> ArrayDataset:
        import torchvision.datasets as tvd

        root = Path(cfg.root or f"data/{cls_name.lower()}").expanduser()
        train = _pick_split(split, {"train": True, "val": False, "test": False})
        try:
            ds = getattr(tvd, cls_name)(str(root), train=train, download=cfg.download)
        except RuntimeError as e:  # "Dataset not found or corrupted" / failed download
            raise _offline_error(cls_name, root, files, cfg.download) from e
        except OSError as e:  # no network
            raise _offline_error(cls_name, root, files, cfg.download) from e
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else ds.data
        targets = ds.targets.tolist() if isinstance(ds.targets, torch.Tensor) else ds.targets
        classes = [str(i) for i in range(10)] if cls_name == "MNIST" else list(ds.classes)
        return ArrayDataset(data, targets, classes, transform)

    return build


_TORCHVISION_FILES = {
    "MNIST": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "CIFAR10": "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "CIFAR100": "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
}
mnist = _torchvision("MNIST", _TORCHVISION_FILES["MNIST"])
cifar10 = _torchvision("CIFAR10", _TORCHVISION_FILES["CIFAR10"])
cifar100 = _torchvision("CIFAR100", _TORCHVISION_FILES["CIFAR100"])


# ---------------------------------------------------------------------------------------- raw layouts
def _raw(
    layout: Callable[..., layouts.RawSplit], needs_split: bool = False, **fixed: object
) -> Callable[[DataConfig, str, Transform], FileDataset]:
    def build(cfg: DataConfig, split: str, transform: Transform = None) -> FileDataset:
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
        good, bad = scan_files(files, strict=cfg.strict, check_headers=cfg.check_headers)
        _warn_skipped(bad, f"{cfg.dataset} {split}")
        return FileDataset(good, classes, transform, strict=cfg.strict, skipped=bad, root=str(root))

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
Builder = Callable[[DataConfig, str, Transform], Dataset]
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


def build_dataset(cfg: DataConfig, split: str, transform: Transform = None) -> Dataset:
    """The ``split`` ("train", "val", ...) of cfg.dataset; the dataset has ``.classes`` and ``.skipped``.

    Raises UserError (one sentence) for a missing folder, an empty dataset or an empty class folder.
    """
    name = cfg.dataset.lower().replace("_", "-")
    builder = (
        DATASETS.get(name) or DATASETS.get(name.replace("-", "")) or DATASETS.get(_ALIASES.get(name, ""))
    )
    if builder is None:
        raise UserError(f"config key data.dataset: {cfg.dataset!r} is not one of {', '.join(DATASETS)}")
    ds = builder(cfg, split, transform)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise UserError(
            f"the {split!r} split of dataset {cfg.dataset} ({cfg.root or 'built in'}) has no images"
        )
    return ds


def check_num_classes(dataset: Dataset, num_classes: int, *, what: str = "the model") -> None:
    """One clear sentence, before any training, when the model's head does not fit the dataset's classes."""
    classes = list(dataset.classes)  # type: ignore[attr-defined]
    if len(classes) != num_classes:
        raise UserError(
            f"{what} has {num_classes} outputs but the dataset has {len(classes)} classes "
            f"({', '.join(map(str, classes[:3]))}, ...); set model.num_classes={len(classes)} "
            f"or fix data.class_list"
        )
