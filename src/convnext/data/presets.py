"""Data settings for small-image datasets (28-64 px), for recipes: resize up, lighter augmentation.

Why resize up: ConvNeXt downsamples 32x (4x4 patchify stem, then three 2x steps), so a 32 px CIFAR image
ends as a 1x1 map before the head; at 64 px it is 2x2. Why lighter: RandAugment m9 and full MixUp/CutMix
are tuned for 1.28M ImageNet photos and 300 epochs; tiny images lose their content under them (a sheared,
erased 28 px digit is noise), and hflip turns a 2 into a different glyph.
"""

from __future__ import annotations

from typing import Any

_NO_AUG: dict[str, Any] = {"randaugment": None, "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0}

SMALL_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # 8x8 digits, stored at 32 px
    "digits": {
        "img_size": 32, "crop_pct": 1.0, "scale": (0.6, 1.0), "ratio": (0.85, 1.18), "hflip": 0.0, **_NO_AUG,
    },
    # 28 px grey digits: up to 32, no flips, mild crops only
    "mnist": {
        "img_size": 32, "crop_pct": 1.0, "scale": (0.7, 1.0), "ratio": (0.9, 1.1), "hflip": 0.0, **_NO_AUG,
    },
    # 32 px photos: up to 64, half-strength RandAugment, MixUp/CutMix on half the batches
    "cifar10": {
        "img_size": 64, "crop_pct": 1.0, "scale": (0.35, 1.0), "hflip": 0.5,
        "randaugment": "rand-m5-mstd0.5-inc1", "reprob": 0.1, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 0.5,
    },
    "cifar100": {
        "img_size": 64, "crop_pct": 1.0, "scale": (0.35, 1.0), "hflip": 0.5,
        "randaugment": "rand-m5-mstd0.5-inc1", "reprob": 0.1, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 0.5,
    },
    # 64 px, 200 classes, 100k images: close to the paper's recipe at native size
    "tiny-imagenet": {
        "img_size": 64, "crop_pct": 1.0, "scale": (0.25, 1.0), "hflip": 0.5,
        "randaugment": "rand-m7-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
    },
    # 84 px (the usual release): up to 96
    "mini-imagenet": {
        "img_size": 96, "crop_pct": 1.0, "scale": (0.25, 1.0), "hflip": 0.5,
        "randaugment": "rand-m7-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
    },
}  # fmt: skip


def small_dataset_defaults(dataset: str) -> dict[str, Any]:
    """The data.* settings for ``dataset`` (a copy), or {} when the paper's 224 px recipe applies as is."""
    key = dataset.lower().replace("_", "-")
    key = {"tinyimagenet": "tiny-imagenet", "miniimagenet": "mini-imagenet"}.get(key, key)
    return dict(SMALL_DATASET_DEFAULTS.get(key, {}))
