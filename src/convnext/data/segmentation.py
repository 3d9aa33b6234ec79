"""Semantic segmentation data: image + label-map pairs and mmsegmentation's ADE20K pipeline.

Three layouts, one :class:`SegmentationFiles` (or the in-memory digit scenes), each sample an
``(image, mask)`` pair: the uint8 (3, H, W) RGB image and the int64 (H, W) class of every pixel, 255
ignored. ``ade20k``: ``ADEChallengeData2016``'s ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png``, 150 classes, ``reduce_zero_label`` (0 "other" ignored, k ->
k - 1). ``segmentation-folder``: ``images/<split>/x.jpg`` with ``masks/<split>/x.png`` and a class file of
one name per line (``classes.txt`` beside the splits, or ``data.class_list``). ``digit-scenes-seg``:
scikit-learn digits on coloured backgrounds (data/digit_scenes.py), background + 10 digits.

The training pipeline is the official ConvNeXt ADE20K config's (mmseg 0.x ``train_pipeline``): Resize to
``seg_scale`` x a ratio in ``seg_ratio_range`` keeping the aspect ratio, RandomCrop ``img_size`` with
``cat_max_ratio``, RandomFlip, PhotoMetricDistortion, Normalize, Pad to the crop (image 0, mask 255), with
transforms.v2's kernels on ``tv_tensors.Image`` / ``tv_tensors.Mask`` (bilinear for the image, nearest for
the mask). Every random draw comes from torch's CPU generator, which the loader seeds per sample
(data/loader.py): a resumed run draws the same crops. Hand-written: the crop's ``cat_max_ratio`` and the
photometric distortion's order and arithmetic are mmseg's and no torchvision transform has them; the
distortion works in float HSV where mmseg rounds to OpenCV's uint8 HSV (hue in 180 steps).
Evaluation reads the image and its mask at their own size; the model's input is resized by
:func:`rescale_size` (mmseg's keep-ratio ``Resize`` to ``seg_scale``) and its logits resized back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .config import DataConfig

IGNORE_INDEX = 255
_ADE20K_NAMES = Path(__file__).with_name("ade20k_classes.txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: the ADE20K folder names of our split names
_ADE_SPLITS = {"train": "training", "val": "validation"}

JointTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# (the readers ade20k, segmentation_folder and digit_scenes_seg are reached through data/catalog.py)
__all__ = [
    "IGNORE_INDEX",
    "DigitScenesSeg",
    "SegEvalTransform",
    "SegTrainTransform",
    "SegmentationFiles",
    "ade20k_names",
    "list_collate",
    "normalize",
    "reduce_zero_label",
    "rescale_size",
]


def ade20k_names() -> list[str]:
    """ADE20K's 150 class names in label order (after ``reduce_zero_label``), from the package's file."""
    lines = _ADE20K_NAMES.read_text(encoding="utf-8").splitlines()
    return [ln.split("\t")[0] for ln in lines if ln and not ln.startswith("#")]


def reduce_zero_label(mask: Tensor) -> Tensor:
    """mmseg's ``reduce_zero_label`` on a label map: 0 becomes 255 (ignored), k becomes k - 1, 255 stays."""
    m = mask.long()
    out = m - 1
    return out.masked_fill((m == 0) | (m == IGNORE_INDEX), IGNORE_INDEX)


def rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` (keep_ratio): the largest (h, w) with the long side within max(scale) and
    the short side within min(scale), each rounded as ``int(x * factor + 0.5)``."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def normalize(img: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (…, 3, H, W) -> float, ``(x / 255 - mean) / std`` (mmseg's Normalize in 0..255 units)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (img.float() / 255 - m) / s


def _mask_array(path: str) -> np.ndarray:
    """One class index per pixel from a PNG (mode L, P or I;16); one sentence naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise UserError(
                    f"mask {path} is a {im.mode} image; a mask holds one class index per pixel "
                    "(a grey or palette PNG)"
                )
            return np.asarray(im.convert("I") if im.mode.startswith("I") else im, dtype=np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"mask {path} is unreadable ({e})") from None


class SegmentationFiles(Dataset):
    """(image file, mask file) pairs; item i is ``transform(image, mask)``, the raw pair without one.
    An unreadable image or mask, or a mask of another size than its image, is one sentence naming it."""

    def __init__(
        self,
        pairs: list[tuple[str, str]],
        classes: list[str],
        *,
        reduce_zero: bool,
        transform: JointTransform | None = None,
        max_pixels: int = 0,
    ) -> None:
        self.pairs, self.classes, self.reduce_zero = pairs, list(classes), reduce_zero
        self.transform, self.max_pixels = transform, max_pixels
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def path(self, index: int) -> str:
        return self.pairs[index][0]

    def raw(self, index: int) -> tuple[Tensor, Tensor]:
        from .images import ImageError, load_image

        image_path, mask_path = self.pairs[index]
        try:
            img = load_image(image_path, max_pixels=self.max_pixels)
        except ImageError as e:
            raise UserError(f"image {image_path} is unusable ({e.why})") from None
        mask = torch.from_numpy(_mask_array(mask_path))
        if tuple(mask.shape) != tuple(img.shape[1:]):
            raise UserError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{img.shape[2]}x{img.shape[1]}"
            )
        return img, reduce_zero_label(mask) if self.reduce_zero else mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img, mask = self.raw(index)
        return self.transform(img, mask) if self.transform is not None else (img, mask)


def _pairs(images: Path, masks: Path, where: str) -> list[tuple[str, str]]:
    """Every image under ``images`` with the mask of the same stem (``.png``) under ``masks``."""
    for folder in (images, masks):
        if not folder.is_dir():
            raise UserError(f"{where}: folder {folder} does not exist")
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    out = []
    for p in files:
        m = (masks / p.relative_to(images)).with_suffix(".png")
        if not m.is_file():
            raise UserError(f"{where}: image {p} has no mask {m}")
        out.append((str(p), str(m)))
    return out


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise UserError(f"config key data.root is required for dataset {cfg.dataset} (data.root=/path)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"config key data.root: folder {root} does not exist")
    return root


def ade20k(cfg: DataConfig, split: str, transform: Any = None, on_error: str = "raise") -> SegmentationFiles:
    """ADEChallengeData2016: ``images/<training|validation>/*.jpg``, ``annotations/<...>/*.png`` (split
    ``train``/``val`` or the folder's own name), 150 classes, ``reduce_zero_label`` unless
    ``data.reduce_zero_label=false``."""
    root = _root(cfg)
    folder = _ADE_SPLITS.get(split, split)
    pairs = _pairs(root / "images" / folder, root / "annotations" / folder, f"ADE20K {root}")
    reduce = True if cfg.reduce_zero_label is None else bool(cfg.reduce_zero_label)
    return SegmentationFiles(
        pairs, ade20k_names(), reduce_zero=reduce, transform=transform, max_pixels=cfg.max_pixels
    )


def _class_file(cfg: DataConfig, root: Path) -> list[str]:
    path = Path(cfg.class_list).expanduser() if cfg.class_list else root / "classes.txt"
    if not path.is_file():
        raise UserError(
            f"a segmentation folder needs its class names: {path} (one name per line, in label order) "
            "does not exist; write it or set data.class_list=FILE"
        )
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise UserError(f"class file {path} names no class")
    return names


def segmentation_folder(
    cfg: DataConfig, split: str, transform: Any = None, on_error: str = "raise"
) -> SegmentationFiles:
    """``images/<split>/x.jpg`` with ``masks/<split>/x.png`` (class index per pixel, 255 ignored) and the
    class names in ``classes.txt`` beside them (or ``data.class_list``); ``data.reduce_zero_label=true``
    when 0 means "unlabelled"."""
    root = _root(cfg)
    pairs = _pairs(root / "images" / split, root / "masks" / split, f"segmentation folder {root}")
    classes = _class_file(cfg, root)
    return SegmentationFiles(
        pairs,
        classes,
        reduce_zero=bool(cfg.reduce_zero_label),
        transform=transform,
        max_pixels=cfg.max_pixels,
    )


class DigitScenesSeg(Dataset):
    """``n`` digit scenes of ``split`` (data/digit_scenes.py), each (image, label map): 0 background, 1 + the
    digit over its ink and, with ``thicken``, a 1 px rim around it (an 8x8 digit's strokes are 2-5 px wide
    at these sizes, below the 4 px stride of UperNet's finest features). A function of (split, index,
    seed) only."""

    def __init__(
        self,
        split: str,
        n: int,
        size: int,
        seed: int = 0,
        transform: JointTransform | None = None,
        thicken: bool = True,
        max_digits: int = 4,
        digit_size: tuple[int, int] | None = None,
    ) -> None:
        from .digit_scenes import DIGIT_CLASSES

        self.split, self.n, self.size, self.seed, self.transform = split, n, size, seed, transform
        self.max_digits, self.digit_size = max_digits, digit_size
        self.thicken = thicken
        self.classes = ["background", *DIGIT_CLASSES]
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self.n

    def path(self, index: int) -> str:
        return f"digit scene {self.split} {index}"

    def raw(self, index: int) -> tuple[Tensor, Tensor]:
        from .digit_scenes import digit_scene, label_map

        image, instances = digit_scene(
            index, split=self.split, seed=self.seed, size=self.size, max_digits=self.max_digits,
            digit_size=self.digit_size,
        )  # fmt: skip
        mask = torch.from_numpy(label_map(instances, image.shape[:2])).long()
        if self.thicken:  # each digit's label over its ink and a 1 px rim: strokes a stride-4 head resolves
            grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0].long()
            mask = torch.where(mask == 0, grown, mask)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img, mask = self.raw(index)
        return self.transform(img, mask) if self.transform is not None else (img, mask)


def digit_scenes_seg(
    cfg: DataConfig, split: str, transform: Any = None, on_error: str = "raise"
) -> DigitScenesSeg:
    """Digit scenes for segmentation, built in: ``data.scenes`` (train, val) scenes of ``data.scene_size``."""
    if split not in ("train", "val"):
        raise UserError(f"split {split!r} does not exist in digit-scenes-seg; use train or val")
    from .digit_scenes import scene_options

    n = int(cfg.scenes[0] if split == "train" else cfg.scenes[1])
    opts = scene_options(cfg)
    return DigitScenesSeg(split, n, opts.pop("size"), cfg.split_seed, transform, **opts)


# ------------------------------------------------------------------------------------------- transforms
def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _coin() -> bool:
    return bool(torch.randint(2, ()))


class PhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` (brightness delta 32, contrast and saturation 0.5-1.5, hue delta
    18 in OpenCV's 180-step hue), each applied with probability 0.5, contrast first or last at random;
    uint8 in and out, clipped and truncated after each step as mmseg's ``convert``."""

    def __init__(
        self,
        brightness: int = 32,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: int = 18,
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @staticmethod
    def _convert(x: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
        return (x.float() * alpha + beta).clamp(0, 255).to(torch.uint8)

    def _contrast(self, img: Tensor) -> Tensor:
        return self._convert(img, alpha=_uniform(*self.contrast)) if _coin() else img

    def __call__(self, img: Tensor) -> Tensor:
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

        if _coin():
            img = self._convert(img, beta=_uniform(-self.brightness, self.brightness))
        contrast_first = _coin()
        if contrast_first:
            img = self._contrast(img)
        sat = _uniform(*self.saturation) if _coin() else None
        hue = int(torch.randint(-self.hue, self.hue, ())) if _coin() else None
        if sat is not None or hue is not None:
            hsv = _rgb_to_hsv(img.float() / 255)
            h, s, v = hsv.unbind(-3)
            if sat is not None:
                s = (s * 255 * sat).clamp(0, 255).floor() / 255
            if hue is not None:
                h = ((h * 180 + hue) % 180) / 180
            img = (_hsv_to_rgb(torch.stack([h, s, v], -3)) * 255).round().clamp(0, 255).to(torch.uint8)
        if not contrast_first:
            img = self._contrast(img)
        return img


class SegTrainTransform:
    """mmseg's ADE20K train pipeline on an (image uint8 (3, H, W), mask int64 (H, W)) pair; returns the
    normalised float crop and its mask, both ``img_size`` square (padded: image 0, mask 255)."""

    def __init__(self, cfg: DataConfig) -> None:
        self.scale, self.ratios = tuple(cfg.seg_scale), tuple(cfg.seg_ratio_range)
        self.crop, self.cat_max_ratio, self.hflip = int(cfg.img_size), float(cfg.cat_max_ratio), cfg.hflip
        self.photometric = PhotoMetricDistortion() if cfg.photometric else None
        self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)

    def _crop_box(self, h: int, w: int) -> tuple[int, int]:
        y = int(torch.randint(max(h - self.crop, 0) + 1, ()))
        x = int(torch.randint(max(w - self.crop, 0) + 1, ()))
        return y, x

    def __call__(self, img: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        image, label = tv_tensors.Image(img), tv_tensors.Mask(mask)
        r = _uniform(*self.ratios)
        size = list(rescale_size(*image.shape[-2:], (self.scale[0] * r, self.scale[1] * r)))
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
        label = F.resize(label, size)  # a Mask: nearest
        c = self.crop
        y, x = self._crop_box(*size)
        if self.cat_max_ratio < 1:  # mmseg: redraw while one class covers more than cat_max_ratio of it
            for _ in range(10):
                part = label[y : y + c, x : x + c]
                counts = torch.bincount(part[part != IGNORE_INDEX].flatten())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y, x = self._crop_box(*size)
        image, label = image[..., y : y + c, x : x + c], label[y : y + c, x : x + c]
        if float(torch.rand(())) < self.hflip:
            image, label = F.horizontal_flip(image), F.horizontal_flip(label)
        pixels = image.as_subclass(Tensor)
        if self.photometric is not None:
            pixels = self.photometric(pixels)
        out = normalize(pixels, self.mean, self.std)
        h, w = out.shape[-2:]
        pad = (0, c - w, 0, c - h)  # torch's order (left, right, top, bottom): mmseg pads bottom and right
        out = torch.nn.functional.pad(out, pad, value=0.0)
        label = torch.nn.functional.pad(label.as_subclass(Tensor), pad, value=IGNORE_INDEX)
        return out, label.long()


class SegEvalTransform:
    """Evaluation: the pair as read (the metric is taken at the image's own size); the model's input is
    resized and normalised by the evaluation loop (evaluation/segmentation_loop.py), which may try several
    scales."""

    def __call__(self, img: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return img, mask.long()


def list_collate(batch: list[Any]) -> list[Any]:
    """Evaluation batches of images of different sizes: the samples as a list."""
    return batch
