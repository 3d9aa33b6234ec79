"""Digit scenes: scikit-learn's handwritten digits pasted onto coloured backgrounds, with a class, a box and a
mask per digit. The offline data of the detection and segmentation quickstarts: it ships with scikit-learn
(no download), it is a real task (read the digit, find its pixels) and it is small enough for a CPU.

Hand-written because no library makes such scenes. Every scene is a function of (split, index, seed) only,
so a run sees the same scenes on every machine and after every resume. The train scenes use the first 80%
of the 1797 digits, the val scenes the rest: a val digit was never seen in training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError

if TYPE_CHECKING:
    from .config import DataConfig

#: the 10 digit classes, in label order
DIGIT_CLASSES = tuple(str(d) for d in range(10))
TRAIN_SHARE = 0.8


@dataclass(frozen=True)
class Instance:
    label: int  # 0..9: the digit
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    mask: np.ndarray  # bool (H, W): the digit's ink


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _pool(split: str) -> np.ndarray:
    n = len(_digits()[1])
    cut = int(n * TRAIN_SHARE)
    return np.arange(cut) if split == "train" else np.arange(cut, n)


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit at ``size`` x ``size``, bilinear (torch's, as the rest of the pipeline)."""
    t = torch.from_numpy(img)[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def digit_scene(
    index: int,
    *,
    split: str = "train",
    seed: int = 0,
    size: int = 128,
    max_digits: int = 4,
    digit_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[Instance]]:
    """Scene ``index`` of ``split``: (uint8 H x W x 3 image, its digits). 1..max_digits digits whose side is
    drawn in ``digit_size`` (default 22-56 px scaled to ``size``), apart from each other, each in its own
    colour on a smooth two-colour background with a little noise; a digit's mask is its ink above half
    intensity."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    images, labels = _digits()
    pool = _pool(split)
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    h = w = size
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    canvas = (c0 * (1 - ramp) + c1 * ramp) * np.ones((h, w, 3), np.float32)
    canvas += rng.normal(0, 0.03, (h, w, 3)).astype(np.float32)
    taken = np.zeros((h, w), bool)
    out: list[Instance] = []
    lo, hi = digit_size or (max(8, round(22 * size / 128)), max(10, round(56 * size / 128)))
    for _ in range(int(rng.integers(1, max_digits + 1))):
        k = int(pool[rng.integers(len(pool))])
        s = int(rng.integers(lo, hi + 1))
        for _try in range(20):
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            if not taken[max(y - 2, 0) : y + s + 2, max(x - 2, 0) : x + s + 2].any():
                break
        else:
            continue  # no free place left: fewer digits
        ink = _upscale(images[k], s)
        mask = np.zeros((h, w), bool)
        mask[y : y + s, x : x + s] = ink > 0.5
        if not mask.any():
            continue
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        background = canvas[y : y + s, x : x + s].mean((0, 1))
        if np.abs(colour - background).sum() < 0.9:  # keep the digit visible against its background
            colour = 1.0 - background
        alpha = np.clip(ink, 0, 1)[..., None]
        canvas[y : y + s, x : x + s] = canvas[y : y + s, x : x + s] * (1 - alpha) + colour * alpha
        taken[y : y + s, x : x + s] = True
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        out.append(Instance(int(labels[k]), box, mask))
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, out


def scene_options(cfg: DataConfig) -> dict[str, Any]:
    """``data.scene_size`` / ``scene_digits`` / ``digit_size`` as :func:`digit_scene`'s keywords, for both
    digit-scene readers (detection and segmentation); one sentence naming the key that cannot be drawn."""
    size, max_digits = int(cfg.scene_size), int(cfg.scene_digits)
    digit_size = None if cfg.digit_size is None else (int(cfg.digit_size[0]), int(cfg.digit_size[1]))
    if size < 16:
        raise UserError(f"data.scene_size={size}: a scene needs at least 16 px")
    if max_digits < 1:
        raise UserError(f"data.scene_digits={max_digits}: a scene holds at least one digit")
    if digit_size is not None and not 8 <= digit_size[0] <= digit_size[1] <= size:
        raise UserError(
            f"data.digit_size={list(digit_size)}: the digits' side must lie in 8..data.scene_size ({size}) "
            "px, smallest first"
        )
    return {"size": size, "max_digits": max_digits, "digit_size": digit_size}


def label_map(instances: list[Instance], size: tuple[int, int], background: int = 0) -> np.ndarray:
    """The scene's per-pixel classes: ``background`` where there is no digit, else 1 + the digit (uint8)."""
    out = np.full(size, background, np.uint8)
    for inst in instances:
        out[inst.mask] = inst.label + 1
    return out
