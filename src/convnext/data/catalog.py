"""Every dataset that ``data.dataset`` and ``convnext prepare`` know, one :class:`DatasetSpec` each: its name
and other spellings, how build_dataset reads it, whether and how ``convnext prepare`` writes it as an image
folder, and one line for the help. build_dataset, prepare, ``convnext prepare --help`` and the config check
all read :data:`CATALOG`, so the lists of names cannot drift apart: a new layout is one entry here plus its
reader (a function in layouts.py, or a builder).

Imports no torch (``convnext prepare --help`` and the config check read it): the builders that need torch
are imported when first called (:func:`_lazy`).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import imagenet_archives, layouts

if TYPE_CHECKING:
    from .imagenet_archives import Source


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset. Read either from a raw ``layout`` (a function of layouts.py that checks the layout's
    signature and lists (file, class name) per split: build_dataset reads the files in place, ``prepare``
    links them into class folders) or by a ``builder`` (images in memory or an image folder already);
    ``arrays`` makes it preparable as PNG files."""

    name: str
    description: str  # one line for `convnext prepare --help`
    aliases: tuple[str, ...] = ()  # other spellings (case, "-" and "_" never matter)
    layout: Callable[..., layouts.RawSplit] | None = None  # (root, split, **options) -> RawSplit
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed keyword arguments of layout/download
    seeded_split: bool = False  # no split of its own: layout takes val_fraction and seed
    builder: Callable[..., Any] | None = None  # (cfg, split, transform, on_error) -> Dataset, when no layout
    arrays: Callable[[Path, bool], tuple[Any, list[int], list[str]]] | None = None  # (root, train) -> PNGs
    archives: Callable[[Path], dict[str, Source]] | None = None  # prepare: splits read from archives
    splits: Callable[[Path], tuple[str, ...]] | None = None  # prepare: the splits present (default both)
    download: Callable[..., None] | None = None  # (root, **options) when data.download is set
    # what its samples are for: "classify" ((image, class index)), "segmentation" ((image, label map)) or
    # "detection" ((image, target dict)); a recipe's model must be of the same task (recipe/validate.py)
    task: str = "classify"

    @property
    def preparable(self) -> bool:
        """``convnext prepare`` writes it: its files are linked (layout) or its arrays become PNG files."""
        return self.layout is not None or self.arrays is not None

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def read(
        self, root: Path, split: str, *, val_fraction: float = 0.2, seed: int = 0, **extra: Any
    ) -> layouts.RawSplit:
        """The split's (file, class name) from the layout, with its fixed options and, when the layout has
        no split of its own, the per-class split's fraction and seed (build_dataset and prepare alike)."""
        if self.layout is None:
            raise TypeError(f"dataset {self.name} has no raw layout")
        kw = {**self.options, **extra}
        if self.seeded_split:
            kw.update(val_fraction=val_fraction, seed=seed)
        return self.layout(root, split, **kw)


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` imported on the first call: the modules holding the builders import torch."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f".{module}", __package__), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


CATALOG: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "imagefolder",
        "ROOT/<split>/<class>/<image> (what prepare writes; classes.txt beside the splits if any)",
        builder=_lazy("file_datasets", "image_folder"),
    ),
    DatasetSpec(
        "digits", "scikit-learn's 1797 8x8 digits, built in", builder=_lazy("array_datasets", "digits")
    ),
    DatasetSpec(
        "mnist",
        "the four MNIST idx files, gzipped or not",
        builder=_lazy("array_datasets", "mnist"),
        arrays=_lazy("array_datasets", "mnist_split"),
    ),
    DatasetSpec(
        "cifar10",
        "cifar-10-batches-py/ (MD5s checked)",
        ("cifar-10",),
        builder=_lazy("array_datasets", "cifar10"),
        arrays=_lazy("array_datasets", "cifar10_split"),
    ),
    DatasetSpec(
        "cifar100",
        "cifar-100-python/ (MD5s checked)",
        ("cifar-100",),
        builder=_lazy("array_datasets", "cifar100"),
        arrays=_lazy("array_datasets", "cifar100_split"),
    ),
    DatasetSpec(
        "tiny-imagenet",
        "tiny-imagenet-200/: wnids.txt, train/<wnid>/images/, val/val_annotations.txt",
        ("tinyimagenet", "tiny-imagenet-200"),
        layout=layouts.tiny_imagenet,
    ),
    DatasetSpec(
        "mini-imagenet",
        "images/ with train.csv, val.csv, test.csv (few-shot csvs pooled and split per class)",
        ("miniimagenet",),
        layout=layouts.mini_imagenet,
        seeded_split=True,
    ),
    DatasetSpec(
        "imagenet",
        "ILSVRC2012: train/<wnid>/, val/ with the devkit or LOC labels, or the archives as downloaded",
        ("imagenet1k", "imagenet-1k"),
        layout=layouts.imagenet,
        archives=imagenet_archives.find_archives,
        splits=layouts.imagenet_splits,
    ),
    DatasetSpec(
        "caltech101",
        "101_ObjectCategories/<class>/ (split per class)",
        ("caltech-101",),
        layout=layouts.caltech,
        options={"version": 101},
        seeded_split=True,
        download=_lazy("file_datasets", "download_caltech"),
    ),
    DatasetSpec(
        "caltech256",
        "256_ObjectCategories/<NNN.class>/ (split per class)",
        ("caltech-256",),
        layout=layouts.caltech,
        options={"version": 256},
        seeded_split=True,
        download=_lazy("file_datasets", "download_caltech"),
    ),
    DatasetSpec(
        "shards",
        "WebDataset tar shards: a folder with shards.json (convnext prepare shards) or a URL pattern",
        ("webdataset", "wds"),
        builder=_lazy("shards", "shards_dataset"),
    ),
    DatasetSpec(
        "folders",
        "ROOT/<class>/<image> with no split (split per class)",
        ("class-folders",),
        layout=layouts.class_folders,
        seeded_split=True,
    ),
    DatasetSpec(
        "images",
        "ROOT/**/<image>, flat or nested, unlabelled (one class; split as folders): for pretrain",
        ("unlabeled", "unlabelled"),
        layout=layouts.image_files,
        seeded_split=True,
    ),
    DatasetSpec(
        "ade20k",
        "ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png (150 classes)",
        ("ade20k-150", "adechallengedata2016"),
        builder=_lazy("segmentation", "ade20k"),
        task="segmentation",
    ),
    DatasetSpec(
        "segmentation-folder",
        "images/<split>/x.jpg with masks/<split>/x.png (class index per pixel, 255 ignored), classes.txt",
        ("seg-folder", "masks"),
        builder=_lazy("segmentation", "segmentation_folder"),
        task="segmentation",
    ),
    DatasetSpec(
        "digit-scenes-seg",
        "scikit-learn digits on coloured backgrounds, a class per pixel (background + 10 digits), built in",
        builder=_lazy("segmentation", "digit_scenes_seg"),
        task="segmentation",
    ),
    DatasetSpec(
        "coco",
        "detection: COCO 2017 layout, train2017/, val2017/, annotations/instances_{train,val}2017.json",
        ("coco2017", "coco-detection"),
        builder=_lazy("coco", "coco_folder"),
        task="detection",
    ),
    DatasetSpec(
        "digit-scenes",
        "detection: scikit-learn's digits pasted on coloured backgrounds (boxes + masks), built in",
        builder=_lazy("coco", "digit_scenes"),
        task="detection",
    ),
)


def _key(name: str) -> str:
    """What a spelling is compared by: case, "-" and "_" never matter (CIFAR_10 is cifar-10 is cifar10)."""
    return name.lower().replace("_", "").replace("-", "")


def _index(catalog: tuple[DatasetSpec, ...]) -> dict[str, DatasetSpec]:
    """Every spelling's key -> its dataset; refuses two datasets claiming one spelling (a name that would
    mean one dataset to build_dataset and another to prepare)."""
    out: dict[str, DatasetSpec] = {}
    for spec in catalog:
        for spelling in spec.spellings:
            other = out.setdefault(_key(spelling), spec)
            if other is not spec:
                raise ValueError(f"dataset spelling {spelling!r} of {spec.name} is already {other.name}'s")
    return out


_BY_KEY = _index(CATALOG)


def names(*, preparable: bool = False) -> list[str]:
    """The datasets' names (those ``convnext prepare`` writes), in catalog order."""
    return [s.name for s in CATALOG if s.preparable or not preparable]


def aliases(*, preparable: bool = False) -> list[str]:
    """The other spellings, sorted (for help texts)."""
    return sorted(a for s in CATALOG if s.preparable or not preparable for a in s.aliases)


def lookup(name: str) -> DatasetSpec | None:
    """The dataset ``name`` spells, or None."""
    return _BY_KEY.get(_key(name))


def _did_you_mean(name: str, allowed: list[DatasetSpec]) -> str:
    keys = {_key(s): spec.name for spec in allowed for s in spec.spellings}
    close = difflib.get_close_matches(_key(name), list(keys), n=1, cutoff=0.75)
    return f"; did you mean {keys[close[0]]}?" if close else ""


def find_dataset(name: str) -> DatasetSpec:
    """The dataset ``data.dataset`` names; UserError naming the known ones otherwise."""
    spec = lookup(name)
    if spec is None:
        raise UserError(
            f"config key data.dataset: {name!r} is not one of {', '.join(names())}"
            + _did_you_mean(name, list(CATALOG))
        )
    return spec


def find_preparable(name: str) -> DatasetSpec:
    """The dataset ``convnext prepare`` is asked for; UserError naming those it writes otherwise."""
    spec = lookup(name)
    if spec is None or not spec.preparable:
        allowed = [s for s in CATALOG if s.preparable]
        hint = _did_you_mean(name, allowed) if spec is None else f" ({spec.name} needs no preparation)"
        raise UserError(
            f"dataset {name!r} cannot be prepared; choose one of {', '.join(names(preparable=True))}{hint}"
        )
    return spec
