"""``convnext prepare``: a raw dataset layout -> ImageFolder (DST/{train,val}/<class>/<file>, classes.txt).

JPEGs are never decoded: files are hard-linked (default; instant, no extra space, falls back to a copy
across file systems), copied, or symlinked. MNIST/CIFAR (pickled arrays) are written as PNG. Files already
in DST with the same size are kept, so an interrupted run can simply be started again. classes.txt holds
the class list in index order; build_dataset reads it, so the prepared folder keeps the dataset's own
class index (e.g. Tiny-ImageNet's 200 wnids are not re-mapped to ImageNet-1k's 1000).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from . import layouts
from .config import DataConfig

PREPARABLE = (
    "imagenet",
    "tiny-imagenet",
    "mini-imagenet",
    "caltech101",
    "caltech256",
    "mnist",
    "cifar10",
    "cifar100",
)
MODES = ("link", "copy", "symlink")


def _place(src: str, dst: Path, mode: str) -> None:
    if dst.exists():
        if dst.stat().st_size == os.path.getsize(src):
            return
        dst.unlink()
    if mode == "link":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return
    shutil.copy2(src, dst)


def _safe(name: str) -> str:
    """A class name usable as a folder name ("T-shirt/top" -> "T-shirt_top")."""
    return "".join("_" if ch in '/\\:*?"<>|' else ch for ch in name).strip() or "_"


def _write_classes(dst: Path, classes: list[str]) -> None:
    (dst / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def _check_dst(src: Path, dst: Path) -> None:
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError(f"destination {dst} must not be the source folder {src} or inside it")
    dst.mkdir(parents=True, exist_ok=True)


def _files_layout(dataset: str, src: Path, split: str, val_fraction: float, seed: int) -> layouts.RawSplit:
    if dataset == "imagenet":
        return layouts.imagenet(src, split)
    if dataset == "tiny-imagenet":
        return layouts.tiny_imagenet(src, split)
    if dataset == "mini-imagenet":
        return layouts.mini_imagenet(src, split, val_fraction=val_fraction, seed=seed)
    return layouts.caltech(src, split, version=int(dataset[-3:]), val_fraction=val_fraction, seed=seed)


def prepare(
    dataset: str,
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "link",
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write the ImageFolder; returns the number of images per split."""
    dataset = dataset.lower().replace("_", "-")
    dataset = {"caltech-101": "caltech101", "caltech-256": "caltech256", "tinyimagenet": "tiny-imagenet",
               "miniimagenet": "mini-imagenet", "imagenet1k": "imagenet", "cifar-10": "cifar10",
               "cifar-100": "cifar100"}.get(dataset, dataset)  # fmt: skip
    if dataset not in PREPARABLE:
        raise UserError(f"dataset {dataset!r} cannot be prepared; choose one of {', '.join(PREPARABLE)}")
    if mode not in MODES:
        raise UserError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    _check_dst(src, dst)
    counts: dict[str, int] = {}
    if dataset in ("mnist", "cifar10", "cifar100"):
        return _prepare_arrays(dataset, src, dst, progress)
    classes: list[str] | None = None
    for split in ("train", "val"):
        if dataset == "imagenet" and split == "train" and layouts._imagenet_dir(src, "train") is None:
            continue  # val only is fine (evaluation)
        raw = _files_layout(dataset, src, split, val_fraction, seed)
        for note in raw.notes:
            print(f"convnext prepare: {note}")
        classes = raw.classes
        made: set[Path] = set()
        for path, c in tqdm(raw.samples, desc=f"{dataset} {split}", unit="img", disable=not progress):
            if not os.path.exists(path):
                raise UserError(f"{dataset}: {path} is listed but does not exist")
            folder = dst / split / _safe(c)
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            _place(path, folder / os.path.basename(path), mode)
        counts[split] = len(raw.samples)
    assert classes is not None
    _write_classes(dst, classes)
    return counts


def _prepare_arrays(dataset: str, src: Path, dst: Path, progress: bool) -> dict[str, int]:
    from PIL import Image

    from .datasets import DATASETS

    counts = {}
    for split in ("train", "val"):
        ds = DATASETS[dataset](DataConfig(dataset=dataset, root=str(src)), split, None)
        names = [_safe(c) for c in ds.classes]
        for t in sorted(set(ds.targets)):  # only classes with images: an empty class folder is an error
            (dst / split / names[t]).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(len(ds)), desc=f"{dataset} {split}", unit="img", disable=not progress):
            out = dst / split / names[ds.targets[i]] / f"{i:05d}.png"
            if not out.exists():
                img = ds.images[i]
                arr = img[0].numpy() if dataset == "mnist" else img.permute(1, 2, 0).numpy()
                Image.fromarray(arr).save(out)
        counts[split] = len(ds)
    _write_classes(dst, [_safe(c) for c in ds.classes])
    return counts
