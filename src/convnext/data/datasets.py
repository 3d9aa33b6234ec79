"""Datasets by name: ``build_dataset(cfg, split)`` for an ImageFolder layout, scikit-learn's digits,
MNIST/CIFAR, the raw layouts of Tiny-ImageNet-200, mini-ImageNet, ImageNet-1k and Caltech-101/256, and
"folders" (root/<class>/<image> with no split: a seeded per-class split) (file_datasets.py,
array_datasets.py), and :func:`relabel` (targets in a model's class order).

Every dataset yields ``(image, target)`` with image a uint8 (3, H, W) RGB tensor before the transform, and
has ``.classes`` (class names in index order) and ``.skipped`` (list of (file, reason) left out at scan).
Unreadable files at load time: see file_datasets.py (``on_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError
from . import layouts
from .array_datasets import cifar10, cifar100, digits, mnist
from .config import DataConfig
from .file_datasets import ON_ERROR, Transform, image_folder, raw_layout


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


# -------------------------------------------------------------------------------------------- registry
Builder = Callable[..., Dataset]  # (cfg, split, transform, on_error)
_SAID: set[str] = set()


def _notes_once(layout: Callable[..., layouts.RawSplit]) -> Callable[..., layouts.RawSplit]:
    """The layout with each of its notes given once per process: training builds a split up to three
    times (the class list, train, val), and the same note (e.g. mini-ImageNet's pooling) three times is
    noise."""

    def once(*args: Any, **kwargs: Any) -> layouts.RawSplit:
        raw = layout(*args, **kwargs)
        fresh = [n for n in raw.notes if n not in _SAID]
        _SAID.update(fresh)
        return layouts.RawSplit(raw.samples, raw.classes, fresh)

    return once


DATASETS: dict[str, Builder] = {
    "imagefolder": image_folder,
    "digits": digits,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "tiny-imagenet": raw_layout(layouts.tiny_imagenet),
    "mini-imagenet": raw_layout(_notes_once(layouts.mini_imagenet), needs_split=True),
    "imagenet": raw_layout(layouts.imagenet),
    "caltech101": raw_layout(layouts.caltech, needs_split=True, version=101),
    "caltech256": raw_layout(layouts.caltech, needs_split=True, version=256),
    "folders": raw_layout(layouts.class_folders, needs_split=True),  # root/<class>/<image>, no split
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
    "class-folders": "folders",
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
