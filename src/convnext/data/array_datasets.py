"""Images in memory: :class:`ArrayDataset`, scikit-learn's digits, and the MNIST (idx files, read here) and
CIFAR-10/100 (through torchvision, checksums checked) readers."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .config import DataConfig
from .file_datasets import Transform


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


# ------------------------------------------------------------------------------------------------ digits
DIGITS_SIZE = 32  # 8x8 upscaled once at load (bilinear): the transforms then work at a useful size
DIGITS_N, DIGITS_CLASSES = 1797, 10


def digits_val_fraction_problem(val_fraction: float) -> str | None:
    """Why ``data.val_fraction`` cannot split the digits (stratified: scikit-learn puts ceil(fraction x 1797)
    images in val and needs at least one of each of the 10 classes on both sides), or None."""
    import math

    n_val = math.ceil(val_fraction * DIGITS_N)
    if DIGITS_CLASSES <= n_val <= DIGITS_N - DIGITS_CLASSES:
        return None
    lo, hi = (DIGITS_CLASSES - 1) / DIGITS_N, (DIGITS_N - DIGITS_CLASSES) / DIGITS_N
    return (
        f"gives {n_val} validation and {DIGITS_N - n_val} training images of the digits' {DIGITS_N}; the "
        f"stratified split needs at least one of each of the {DIGITS_CLASSES} classes on both sides "
        f"(a fraction above {lo:.4f} and at most {hi:.4f})"
    )


def digits(
    cfg: DataConfig, split: str, transform: Transform = None, on_error: str = "substitute"
) -> ArrayDataset:
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 0..16 ink), upscaled to 32x32 uint8 RGB,
    split 80/20 stratified with a fixed seed (data.split_seed, data.val_fraction)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    why = digits_val_fraction_problem(cfg.val_fraction)
    if why is not None:
        raise UserError(f"config key data.val_fraction={cfg.val_fraction:g} {why}")
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


def mnist_split(root: Path, train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """(images, targets, class names) of the train or test files: what ``convnext prepare`` writes."""
    images, labels = mnist_arrays(root, train)
    return images, labels.tolist(), [str(i) for i in range(10)]


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


def cifar10_split(root: Path, train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """(images, targets, class names): what ``convnext prepare`` writes."""
    data, targets, classes = cifar_arrays(root, "CIFAR10", train)
    return np.asarray(data), list(targets), classes


def cifar100_split(root: Path, train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """(images, targets, class names): what ``convnext prepare`` writes."""
    data, targets, classes = cifar_arrays(root, "CIFAR100", train)
    return np.asarray(data), list(targets), classes
