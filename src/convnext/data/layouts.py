"""The raw layouts of public datasets as (file, class name) lists: read directly by build_dataset, and turned
into an ImageFolder by ``convnext prepare``.

- Tiny-ImageNet-200: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt
  (file, wnid, box); 200 classes in sorted-wnid order (their own index, not ImageNet-1k's).
- mini-ImageNet: images/*.jpg + train.csv/val.csv/test.csv ("filename,label" with label a wnid), also
  valid.csv for val, the csvs and images/ under mini_imagenet/, and images/<wnid>/<file> (mmfewshot). The
  usual (Ravi & Larochelle) csvs are a few-shot split with disjoint classes per split; a classifier needs the
  same classes in train and val, so then all 100 classes are pooled and split per class (data.val_fraction,
  data.split_seed). csvs that already share their classes are used as they are. No csv: class folders.
- ImageNet-1k: train/<wnid>/*.JPEG; val/ either wnid folders or flat ILSVRC2012_val_XXXXXXXX.JPEG labelled by
  the devkit (ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt, or the
  ILSVRC2012_devkit_t12.tar.gz it comes in: devkit ILSVRC2012_IDs, mapped to wnids through meta.mat, because
  the devkit's ID order is NOT the standard sorted-wnid order) or by Kaggle's LOC_val_solution.csv. The
  folders may be named as the archives (ILSVRC2012_img_train/, ILSVRC2012_img_val/); the Kaggle tree
  (ILSVRC/Data/CLS-LOC/{train,val}) works too. The archives themselves are read by ``convnext prepare``
  (imagenet_archives.py).
- Caltech-101 (101_ObjectCategories/<class>/*.jpg, BACKGROUND_Google left out as torchvision does) and
  Caltech-256 (256_ObjectCategories/<NNN.name>/*.jpg): no official split; a seeded per-class split.
- Any ROOT/<class>/<image> with no split ("folders"): the same seeded per-class split.
- Any folder of images, flat or nested, unlabelled ("images"): one class, the same seeded split.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .classes import imagenet1k_wnids
from .imagenet_devkit import (
    DEVKIT_TAR,
    TRAIN_TAR,
    VAL_TAR,
    devkit_archive_labels,
    parse_ground_truth,
    parse_meta_mat,
)


@dataclass
class RawSplit:
    samples: list[tuple[str, str]]  # (file, class name)
    classes: list[str]  # class names in index order
    notes: list[str] = field(default_factory=list)


def _images_in(folder: Path) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if not f.startswith(".") and (folder / f).is_file()
    )


def _need(path: Path, dataset: str, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{dataset}: {path} does not exist ({what})")
    return path


def seeded_split(
    samples: list[tuple[str, str]], val_fraction: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Per class: a seeded permutation, the first round(n * val_fraction) to val (at least one when a class
    has 2+ images), the rest to train. Depends only on (files, fraction, seed)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    by_class: dict[str, list[str]] = {}
    for path, c in sorted(samples):
        by_class.setdefault(c, []).append(path)
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    rng = np.random.default_rng(seed)
    for c in sorted(by_class):
        files = by_class[c]
        order = rng.permutation(len(files))
        n_val = min(max(int(round(len(files) * val_fraction)), 1 if len(files) > 1 else 0), len(files) - 1)
        for k, i in enumerate(order):
            out["val" if k < n_val else "train"].append((files[i], c))
    return out


# --------------------------------------------------------------------------------------- Tiny-ImageNet
def tiny_imagenet(root: Path, split: str) -> RawSplit:
    name = "Tiny-ImageNet"
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    wnids = sorted(
        _need(root / "wnids.txt", name, "the folder of the extracted tiny-imagenet-200.zip")
        .read_text()
        .split()
    )
    known = set(wnids)
    samples: list[tuple[str, str]] = []
    if split == "train":
        for w in wnids:
            folder = _need(root / "train" / w / "images", name, f"every wnid of {root / 'wnids.txt'} has one")
            samples += [(p, w) for p in _images_in(folder)]
    elif split == "val":
        ann = _need(root / "val" / "val_annotations.txt", name, "the val labels")
        _need(root / "val" / "images", name, "the val images")
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                if parts[1] not in known:
                    raise UserError(
                        f"{name}: {ann} labels {parts[0]} with {parts[1]}, which is not in wnids.txt"
                    )
                samples.append((str(root / "val" / "images" / parts[0]), parts[1]))
    else:
        raise UserError(f"{name}: split {split!r} has no labels; use train or val")
    return RawSplit(samples, wnids)


# ---------------------------------------------------------------------------------------- mini-ImageNet
def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and rows[0][:2] == ["filename", "label"]:
        rows = rows[1:]
    return [(r[0], r[1]) for r in rows]


def _mini_csv_folder(root: Path) -> Path | None:
    for cand in (root, root / "mini_imagenet", root / "mini-imagenet"):
        if (cand / "train.csv").is_file():
            return cand
    return None


def mini_imagenet(root: Path, split: str, *, val_fraction: float = 0.2, seed: int = 0) -> RawSplit:
    """The csv layouts (train.csv with val.csv or valid.csv, test.csv; images in images/ beside them or in
    mini_imagenet/images, flat or in <wnid>/ folders) or, with no csv, one folder per class."""
    name = "mini-ImageNet"
    top = _mini_csv_folder(root)
    if top is None:
        folders = root / "images" if (root / "images").is_dir() else root
        if _class_dirs(folders):
            return class_folders(folders, split, val_fraction=val_fraction, seed=seed, name=name)
        raise UserError(
            f"{name}: {root / 'train.csv'} does not exist (filename,label rows beside images/), nor "
            f"{root / 'mini_imagenet' / 'train.csv'}, and {root} has no class folders"
        )
    images = next(
        (d for d in (top / "images", root / "images", root / "mini_imagenet" / "images") if d.is_dir()), None
    )
    if images is None:
        raise UserError(f"{name}: {top / 'images'} does not exist (the images named in {top / 'train.csv'})")
    csvs = {"train": top / "train.csv"}
    for s, names in (("val", ("val.csv", "valid.csv")), ("test", ("test.csv",))):
        found = [top / n for n in names if (top / n).is_file()]
        if found:
            csvs[s] = found[0]
    rows = {s: _read_csv(p) for s, p in csvs.items()}
    first = next((r[0] for r in rows.values() if r), None)
    nested = (
        first is not None and not (images / first[0]).exists() and (images / first[1] / first[0]).exists()
    )

    def path(f: str, c: str) -> str:  # images/<file>, or images/<wnid>/<file> (mmfewshot's layout)
        return str(images / c / f) if nested else str(images / f)

    classes_of = {s: sorted({c for _, c in r}) for s, r in rows.items()}
    if all(c == classes_of["train"] for c in classes_of.values()):  # a classification split: as it is
        if split not in rows:
            raise UserError(f"{name}: {top / f'{split}.csv'} does not exist")
        return RawSplit([(path(f, c), c) for f, c in rows[split]], classes_of["train"])
    pooled = [(path(f, c), c) for r in rows.values() for f, c in r]
    if split not in ("train", "val"):
        raise UserError(f"{name}: split {split!r} does not exist; use train or val")
    parts = seeded_split(pooled, val_fraction, seed)
    classes = sorted({c for _, c in pooled})
    note = (
        f"{name}: the csv splits in {top} have disjoint classes (few-shot); pooled {len(pooled)} images of "
        f"{len(classes)} classes and split them per class ({val_fraction:g} to val, seed {seed})"
    )
    return RawSplit(parts[split], classes, [note])


# ------------------------------------------------------------------------------------ per-class folders
_SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def class_folders(
    root: Path, split: str, *, val_fraction: float = 0.2, seed: int = 0, name: str = "folders"
) -> RawSplit:
    """ROOT/<class>/<image> with no train/val split: a seeded per-class split (as Caltech's). Images
    directly in each class folder; a ROOT that is already split (train/, val/) is refused."""
    if not root.is_dir():
        raise UserError(f"{name}: {root} is not a folder")
    classes = _class_dirs(root)
    if not classes:
        raise UserError(f"{name}: {root} has no class folders (expected {root}/<class>/<image>)")
    splits = [c for c in classes if c.lower() in _SPLIT_NAMES]
    if splits:
        raise UserError(
            f"{name}: {root} is already split ({root / splits[0]}): train on it with data.root={root} "
            f"(dataset imagefolder) instead of splitting it again"
        )
    samples = [(p, c) for c in classes for p in _images_in(root / c)]
    if split not in ("train", "val"):
        raise UserError(f"{name}: split {split!r} does not exist; use train or val")
    return RawSplit(seeded_split(samples, val_fraction, seed)[split], classes)


def image_files(root: Path, split: str, *, val_fraction: float = 0.2, seed: int = 0) -> RawSplit:
    """Every file under ROOT, flat or in sub-folders at any depth, as one class "images": unlabelled data
    for pre-training (``convnext pretrain``), with the same seeded split as "folders" (the header scan
    leaves out what is not an image)."""
    if not root.is_dir():
        raise UserError(f"images: {root} is not a folder")
    files: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
    if not files:
        raise UserError(f"images: {root} has no files")
    if split not in ("train", "val"):
        raise UserError(f"images: split {split!r} does not exist; use train or val")
    return RawSplit(seeded_split([(f, "images") for f in files], val_fraction, seed)[split], ["images"])


# ---------------------------------------------------------------------------------------------- ImageNet
def _imagenet_dir(root: Path, split: str) -> Path | None:
    """The split's folder: ``train/``, the seed project's ``ILSVRC2012_img_train/`` (the archive's name)
    or the Kaggle tree."""
    for cand in (
        root / split,
        root / f"ILSVRC2012_img_{split}",
        root / "ILSVRC" / "Data" / "CLS-LOC" / split,
        root / "Data" / "CLS-LOC" / split,
    ):
        if cand.is_dir():
            return cand
    return None


def imagenet_splits(root: Path) -> tuple[str, ...]:
    """The splits ``prepare`` writes: val, and train when there is a train folder or archive (val alone is
    fine: evaluation)."""
    has_train = _imagenet_dir(root, "train") is not None or imagenet_archive(root, "train") is not None
    return ("train", "val") if has_train else ("val",)


def imagenet_archive(root: Path, split: str) -> Path | None:
    """``ILSVRC2012_img_<split>.tar`` as downloaded, in ``root``."""
    p = root / (TRAIN_TAR if split == "train" else VAL_TAR)
    return p if split in ("train", "val") and p.is_file() else None


def _find(root: Path, names: list[str]) -> Path | None:
    for base in (root, *list(root.parents)[:3]):
        for n in names:
            if (base / n).is_file():
                return base / n
    return None


def _devkit_labels(gt: Path) -> dict[int, str]:
    """Validation image number -> wnid from the extracted devkit's ground truth and meta.mat."""
    meta = gt.with_name("meta.mat")
    if not meta.is_file():
        raise UserError(f"ImageNet: {meta} is missing (the devkit's meta.mat maps its class ids to wnids)")
    return parse_ground_truth(gt.read_text(), str(gt), parse_meta_mat(meta, str(meta)))


def imagenet_val_labels(root: Path) -> tuple[dict[int, str], str] | None:
    """(validation image number -> wnid, where the labels come from): the extracted devkit, the devkit
    archive as downloaded, or Kaggle's LOC_val_solution.csv, in ``root`` or up to 3 folders above it."""
    gt = _find(
        root,
        [
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "data/ILSVRC2012_validation_ground_truth.txt",
            "ILSVRC2012_validation_ground_truth.txt",
        ],
    )
    if gt is not None:
        return _devkit_labels(gt), str(gt)
    devkit = _find(root, [DEVKIT_TAR])
    if devkit is not None:
        return devkit_archive_labels(devkit), str(devkit)
    loc = _find(root, ["LOC_val_solution.csv"])
    if loc is not None:
        return _loc_csv_labels(loc), str(loc)
    return None


def _loc_csv_labels(path: Path) -> dict[int, str]:
    labels = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] != "ImageId":
                m = re.search(r"(\d+)$", row[0])
                if m and row[1].split():
                    labels[int(m.group(1))] = row[1].split()[0]
    return labels


def _not_imagenet(root: Path, why: str) -> UserError:
    """The refusal when ``root`` is not ImageNet-1k; names the layout it looks like instead."""
    guess = ""
    if (root / "wnids.txt").is_file() or (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        guess = " (it looks like Tiny-ImageNet: wnids.txt, train/<wnid>/images/; use tiny-imagenet)"
    elif (root / "images").is_dir() and (root / "train.csv").is_file():
        guess = " (it looks like mini-ImageNet: images/ and train.csv; use mini-imagenet)"
    return UserError(f"ImageNet: {root} is not an ImageNet-1k layout: {why}{guess}")


def imagenet(root: Path, split: str, *, streamed: frozenset[str] = frozenset()) -> RawSplit:
    """The split's (file, wnid). Class folders must be ImageNet-1k wnids holding their images directly (the
    signature of the official train/ and of a sorted val/); anything else (Tiny-ImageNet's
    train/<wnid>/images/ and val/images/, a folder of other classes) is refused, not read as classes.
    ``streamed``: wnids whose ``<wnid>.tar`` in the folder the caller reads instead (``prepare``; their
    folders, if any, are a partial unpacking and left out)."""
    name = "ImageNet"
    wnids = imagenet1k_wnids()
    if (root / "wnids.txt").is_file():
        raise _not_imagenet(root, "ImageNet has no wnids.txt")
    d = _imagenet_dir(root, split)
    archive = imagenet_archive(root, split)
    if d is None and archive is not None:
        raise UserError(
            f"{name}: {root} holds {archive.name}, not an extracted {split}/ folder: `convnext prepare "
            f"imagenet {root} DST` reads the archives as they are (then train with data.root=DST)"
        )
    if d is None:
        raise UserError(
            f"{name}: no {split}/ folder under {root} (expected {root}/{split}, "
            f"{root}/ILSVRC2012_img_{split}, the Kaggle tree, or the archive ILSVRC2012_img_{split}.tar)"
        )
    subdirs = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    class_tars = [e.name for e in os.scandir(d) if e.is_file() and re.fullmatch(r"n\d{8}\.tar", e.name)]
    if class_tars and not streamed:
        raise UserError(
            f"{name}: {d} holds the per-class archives ({sorted(class_tars)[0]}, ...), not their images: "
            f"`convnext prepare imagenet {root} DST` reads them as they are (then train with data.root=DST)"
        )
    if subdirs or streamed:  # already <wnid>/ folders
        known = set(wnids)
        odd = [s for s in subdirs if s not in known]
        if odd:
            raise _not_imagenet(root, f"{d / odd[0]} is not an ImageNet-1k class folder (wnid)")
        samples = []
        for w in (s for s in subdirs if s not in streamed):
            inner = sorted(e.name for e in os.scandir(d / w) if e.is_dir() and not e.name.startswith("."))
            if inner:
                raise _not_imagenet(root, f"class folder {d / w} holds folders ({inner[0]}), not only images")
            samples += [(p, w) for p in _images_in(d / w)]
        return RawSplit(samples, wnids)
    found = imagenet_val_labels(root)
    if found is None:
        raise UserError(
            f"{name}: {d} holds flat images but no labels were found: put the devkit "
            f"(ILSVRC2012_devkit_t12.tar.gz as downloaded, or its extracted "
            f"ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt and meta.mat) or Kaggle's "
            f"LOC_val_solution.csv in {root}"
        )
    labels, source = found
    known = set(wnids)
    samples = []
    for p in _images_in(d):
        m = re.search(r"_(\d+)\.\w+$", os.path.basename(p))
        if m is None or int(m.group(1)) not in labels:
            raise UserError(f"{name}: image {p} has no label in {source}")
        w = labels[int(m.group(1))]
        if w not in known:
            raise UserError(f"{name}: {source} labels {p} with {w}, which is not an ImageNet-1k class")
        samples.append((p, w))
    return RawSplit(samples, wnids)


# ----------------------------------------------------------------------------------------------- Caltech
def caltech(root: Path, split: str, *, version: int, val_fraction: float = 0.2, seed: int = 0) -> RawSplit:
    name = f"Caltech-{version}"
    top = f"{version}_ObjectCategories"
    for cand in (root / top, root / f"caltech{version}" / top, root):
        if cand.is_dir() and cand.name == top:
            break
    else:
        raise UserError(
            f"{name}: {root / top} does not exist (extract the archive into {root}, or data.download=true)"
        )
    classes = sorted(e.name for e in os.scandir(cand) if e.is_dir() and e.name != "BACKGROUND_Google")
    samples = [(p, c) for c in classes for p in _images_in(cand / c)]
    if split not in ("train", "val"):
        raise UserError(f"{name}: split {split!r} does not exist; use train or val")
    return RawSplit(seeded_split(samples, val_fraction, seed)[split], classes)
