"""Datasets by name: ``build_dataset(cfg, split)`` for every entry of catalog.py (an ImageFolder layout,
scikit-learn's digits, MNIST/CIFAR, the raw layouts of Tiny-ImageNet-200, mini-ImageNet, ImageNet-1k,
Caltech-101/256 and "folders"; the readers in file_datasets.py, array_datasets.py and layouts.py), and
:func:`relabel` (targets in a model's class order).

Every dataset yields ``(image, target)`` with image a uint8 (3, H, W) RGB tensor before the transform, and
has ``.classes`` (class names in index order) and ``.skipped`` (list of (file, reason) left out at scan).
Unreadable files at load time: see file_datasets.py (``on_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError
from .catalog import CATALOG, find_dataset
from .config import DataConfig
from .file_datasets import ON_ERROR, Transform, raw_layout


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
    if hasattr(ds, "relabeled"):  # tar shards: relabelled as they stream
        return ds.relabeled({t: index[own[t]] for t in used}, names)
    return Relabeled(ds, {t: index[own[t]] for t in used}, names)


# -------------------------------------------------------------------------------------------- registry
Builder = Callable[..., Dataset]  # (cfg, split, transform, on_error)

# name -> builder, one per catalog entry (catalog.py is the one list of datasets and their spellings)
DATASETS: dict[str, Builder] = {
    s.name: s.builder if s.layout is None else raw_layout(s)  # type: ignore[misc]
    for s in CATALOG
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
    ds = DATASETS[find_dataset(cfg.dataset).name](cfg, split, transform, on_error)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise UserError(
            f"the {split!r} split of dataset {cfg.dataset} ({cfg.root or 'built in'}) has no images"
        )
    return ds
