"""Detection data: a folder in the COCO 2017 layout (read with pycocotools) and the digit scenes, both as
torchvision's detection references hand samples to a detector: ``(uint8 image (3, H, W), target)`` with
``target`` = ``boxes`` (``tv_tensors.BoundingBoxes``, xyxy pixels), ``labels`` (int64, 1..K: 0 is the
background), ``masks`` (``tv_tensors.Mask`` (N, H, W) uint8, Mask R-CNN only) and ``image_id`` (the COCO
image id, which the evaluation hands back to ``COCOeval``). Batches are lists (:func:`collate`, the
references' ``collate_fn``): images keep their own sizes, the detector resizes and batches them itself.

COCO layout: ``ROOT/<split>/`` or ``ROOT/<split>2017/`` beside ``ROOT/annotations/instances_<folder>.json``
(so ``data.train_split=train`` reads ``train2017/`` and ``instances_train2017.json``, and
``data.train_split=mine`` reads ``mine/`` and ``instances_mine.json``). Boxes, polygons, RLE and iscrowd are
pycocotools' (``COCO.annToMask``). As torchvision's references: crowd annotations are not training targets,
boxes are clipped to the image and empty ones dropped, and the training split leaves out images without a
usable annotation (the val split keeps every image: COCOeval scores them all). Category ids become contiguous
labels 1..K in id order; ``classes`` is ``["__background__", *category names]`` (one name per label, what a
training checkpoint records), so evaluation and prediction map labels back to category ids by name.

Augmentation: the official horizontal flip (``data.hflip``) with ``torchvision.transforms.v2`` on
``tv_tensors``, so boxes and masks flip with the image. It draws from torch's generator, which the loader
seeds per sample (data/loader.py). The official multi-scale resize is the detector's own
``GeneralizedRCNNTransform`` (``model.options.min_size`` a list: one size drawn per image from torch's global
RNG, which every checkpoint carries per rank).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UserError
from .config import DataConfig

__all__ = [
    "BACKGROUND",
    "CocoDetection",
    "DigitScenes",
    "build_detection_dataset",
    "collate",
    "detection_transform",
    "label_to_category",
]

BACKGROUND = "__background__"


def collate(batch: list[tuple[Any, Any]]) -> tuple[tuple[Any, ...], ...]:
    """(images, targets) as tuples: torchvision's detection references' ``collate_fn``."""
    return tuple(zip(*batch))


def detection_transform(train: bool, hflip: float) -> v2.Transform | None:
    """The training augmentation (the flip; the resize is the detector's), none for evaluation."""
    if not train or hflip <= 0:
        return None
    return v2.RandomHorizontalFlip(hflip)


def label_to_category(classes: list[str], coco: Any) -> dict[int, int]:
    """Label -> COCO category id, by name (``classes[0]`` is the background): the checkpoint's labels
    against the ground truth's categories; UserError naming a class the annotations do not have."""
    by_name: dict[str, int] = {}
    for c in sorted(coco.dataset.get("categories", []), key=lambda c: c["id"]):
        by_name.setdefault(str(c["name"]), int(c["id"]))
    missing = [n for n in classes[1:] if n not in by_name]
    if missing:
        raise UserError(
            f"the model's classes {missing[:5]} are not categories of the COCO annotations "
            f"(they have {list(by_name)[:5]}...); evaluate on data with the categories it was trained on"
        )
    return {i: by_name[n] for i, n in enumerate(classes) if i > 0}


def _target(
    boxes: np.ndarray, labels: list[int], masks: np.ndarray | None, size: tuple[int, int], image_id: int
) -> dict[str, Any]:
    h, w = size
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    target: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(b[keep], format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)[keep],
        "image_id": int(image_id),
    }
    if masks is not None:
        m = torch.from_numpy(masks).reshape(-1, h, w)[keep]
        target["masks"] = tv_tensors.Mask(m.to(torch.uint8))
    return target


class _Detection(Dataset):
    """What both readers share: ``classes``, ``coco`` (the split's ground truth as pycocotools' ``COCO``),
    the transform applied to (image, target)."""

    classes: list[str]
    transform: v2.Transform | None

    def _finish(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        img = tv_tensors.Image(image)
        if self.transform is not None:
            img, target = self.transform(img, target)
        return img, target


def _load_coco(path: Path) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - the dense extra installs it
        raise UserError("COCO data needs pycocotools: pip install 'convnext[dense]'") from e
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"COCO annotations {path} cannot be read ({type(e).__name__}: {e})") from None


class CocoDetection(_Detection):
    """One split of a COCO-layout folder (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        train: bool,
        masks: bool = True,
        transform: v2.Transform | None = None,
        max_pixels: int = 0,
    ) -> None:
        root = Path(root).expanduser()
        folder = next((n for n in (split, f"{split}2017") if (root / n).is_dir()), None)
        if folder is None:
            raise UserError(
                f"data.root={root} has no {split}/ or {split}2017/ image folder (COCO layout: train2017/, "
                "val2017/, annotations/instances_train2017.json, annotations/instances_val2017.json)"
            )
        ann = root / "annotations" / f"instances_{folder}.json"
        if not ann.is_file():
            raise UserError(f"data.root={root}: the {folder}/ images have no annotations/{ann.name}")
        self.images = root / folder
        self.coco = _load_coco(ann)
        cats = sorted(self.coco.dataset.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise UserError(f"COCO annotations {ann} have no categories")
        self.cat_to_label = {int(c["id"]): i + 1 for i, c in enumerate(cats)}
        self.classes = [BACKGROUND, *(str(c["name"]) for c in cats)]
        ids = sorted(self.coco.imgs)
        if train:  # torchvision's _coco_remove_images_without_annotations (no keypoints here)
            ids = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise UserError(f"COCO annotations {ann} list no {'annotated ' if train else ''}images")
        self.ids = ids
        self.train, self.masks, self.transform, self.max_pixels = train, masks, transform, max_pixels

    @staticmethod
    def _usable(a: dict[str, Any]) -> bool:
        return not a.get("iscrowd", 0) and len(a.get("bbox", ())) == 4 and min(a["bbox"][2:]) > 1

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self.images / self.coco.imgs[self.ids[i]]["file_name"]

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        from .images import ImageError, load_image

        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        try:
            image = load_image(self.path(i), max_pixels=self.max_pixels)
        except ImageError as e:
            raise UserError(f"COCO image {e}") from None
        h, w = int(image.shape[1]), int(image.shape[2])
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise UserError(
                f"COCO image {self.path(i)} is {w}x{h} but its annotations say "
                f"{info['width']}x{info['height']}"
            )
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        anns = [a for a in anns if len(a.get("bbox", ())) == 4 and int(a["category_id"]) in self.cat_to_label]
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = [self.cat_to_label[int(a["category_id"])] for a in anns]
        masks = None
        if self.masks:
            masks = (
                np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
            )
        return self._finish(image, _target(boxes, labels, masks, (h, w), image_id))


class DigitScenes(_Detection):
    """scikit-learn's digits pasted onto coloured backgrounds (data/digit_scenes.py), 10 classes "0".."9",
    with a COCO ground truth made from the same scenes (boxes, RLE masks), so that evaluation is
    ``COCOeval`` as for any COCO folder. Scene ``i`` of a split is a function of (split, i, seed) only."""

    def __init__(
        self,
        split: str,
        n: int,
        *,
        size: int = 128,
        seed: int = 0,
        masks: bool = True,
        transform: v2.Transform | None = None,
        max_digits: int = 4,
        digit_size: tuple[int, int] | None = None,
    ) -> None:
        from .digit_scenes import DIGIT_CLASSES

        if split not in ("train", "val"):
            raise UserError(f"digit-scenes has the splits train and val, not {split!r}")
        self.split, self.n, self.size, self.seed = split, n, size, seed
        self.max_digits, self.digit_size = max_digits, digit_size
        self.masks, self.transform = masks, transform
        self.classes = [BACKGROUND, *DIGIT_CLASSES]
        self._coco: Any = None

    def __len__(self) -> int:
        return self.n

    def _scene(self, i: int) -> tuple[np.ndarray, list[Any]]:
        from .digit_scenes import digit_scene

        return digit_scene(
            i, split=self.split, seed=self.seed, size=self.size, max_digits=self.max_digits,
            digit_size=self.digit_size,
        )  # fmt: skip

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image, instances = self._scene(i)
        boxes = np.array([x.box for x in instances], np.float32).reshape(-1, 4)
        masks = None
        if self.masks:
            masks = np.stack([x.mask for x in instances]).astype(np.uint8) if instances else None
            masks = masks if masks is not None else np.zeros((0, self.size, self.size), np.uint8)
        t = _target(boxes, [x.label + 1 for x in instances], masks, image.shape[:2], i + 1)
        return self._finish(torch.from_numpy(image).permute(2, 0, 1).contiguous(), t)

    @property
    def coco(self) -> Any:
        """The split's ground truth as a pycocotools ``COCO`` (image ids 1..n; category id = label)."""
        if self._coco is None:
            from pycocotools import mask as mask_util
            from pycocotools.coco import COCO

            images, anns = [], []
            for i in range(self.n):
                image, instances = self._scene(i)
                h, w = image.shape[:2]
                images.append({"id": i + 1, "height": h, "width": w, "file_name": f"{self.split}_{i}.png"})
                for x in instances:
                    rle = mask_util.encode(np.asfortranarray(x.mask.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    x0, y0, x1, y1 = x.box
                    anns.append(
                        {"id": len(anns) + 1, "image_id": i + 1, "category_id": x.label + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(x.mask.sum()),
                         "segmentation": rle, "iscrowd": 0}
                    )  # fmt: skip
            cats = [{"id": k, "name": name} for k, name in enumerate(self.classes) if k > 0]
            coco = COCO()
            coco.dataset = {"images": images, "annotations": anns, "categories": cats}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco


def coco_folder(cfg: DataConfig, split: str, *, train: bool, masks: bool) -> CocoDetection:
    """The catalog's ``coco`` reader: ``data.root`` in the COCO layout."""
    if not cfg.root:
        raise UserError("config key data.root is required for a COCO-layout folder (data.root=/path/to/coco)")
    transform = detection_transform(train, cfg.hflip)
    return CocoDetection(
        cfg.root, split, train=train, masks=masks, transform=transform, max_pixels=cfg.max_pixels
    )


def digit_scenes(cfg: DataConfig, split: str, *, train: bool, masks: bool) -> DigitScenes:
    """The catalog's ``digit-scenes``: ``data.scenes`` (train, val) scenes of ``data.scene_size`` px,
    seeded by ``data.split_seed``."""
    n = int(cfg.scenes[0] if split == "train" else cfg.scenes[1])
    from .digit_scenes import scene_options

    transform = detection_transform(train, cfg.hflip)
    return DigitScenes(
        split, n, seed=cfg.split_seed, masks=masks, transform=transform, **scene_options(cfg)
    )  # fmt: skip


def build_detection_dataset(cfg: DataConfig, split: str, *, train: bool, masks: bool = True) -> _Detection:
    """The ``split`` of ``data.dataset`` (a catalog entry of task ``detection``); ``masks``: decode the
    instance masks (Mask R-CNN; Faster R-CNN needs boxes only)."""
    from .catalog import find_dataset

    spec = find_dataset(cfg.dataset)
    if spec.task != "detection" or spec.builder is None:
        raise UserError(
            f"config key data.dataset: {spec.name} is a {spec.task} dataset; a detector trains on coco or "
            "digit-scenes"
        )
    return spec.builder(cfg, split, train=train, masks=masks)
