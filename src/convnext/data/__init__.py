"""Datasets, class lists, transforms and loaders (the paper's recipe on torchvision.transforms.v2).

Imported lazily, as the package root: ``convnext.data.prepare`` or ``convnext.data.classes`` cost no torch
import (``convnext prepare --help`` builds its parser from them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# public name -> module of this package that defines it
_EXPORTS = {
    "imagenet1k_classes": ".classes",
    "imagenet1k_descriptions": ".classes",
    "imagenet1k_wnids": ".classes",
    "resolve_class_list": ".classes",
    "IMAGENET_MEAN": ".config",
    "IMAGENET_STD": ".config",
    "DataConfig": ".config",
    "DATASETS": ".datasets",
    "build_dataset": ".datasets",
    "load_image": ".images",
    "build_loader": ".loader",
    "epoch_iterator": ".loader",
    "BatchFinish": ".transforms",
    "build_eval_transform": ".transforms",
    "build_mixup_cutmix": ".transforms",
    "build_train_transform": ".transforms",
    "eval_resize_size": ".transforms",
    "parse_randaugment": ".transforms",
}

__all__ = [
    "BatchFinish",
    "DATASETS",
    "DataConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "build_mixup_cutmix",
    "build_train_transform",
    "epoch_iterator",
    "eval_resize_size",
    "imagenet1k_classes",
    "imagenet1k_descriptions",
    "imagenet1k_wnids",
    "load_image",
    "parse_randaugment",
    "resolve_class_list",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .classes import imagenet1k_classes, imagenet1k_descriptions, imagenet1k_wnids, resolve_class_list
    from .config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
    from .datasets import DATASETS, build_dataset
    from .images import load_image
    from .loader import build_loader, epoch_iterator
    from .transforms import (
        BatchFinish,
        build_eval_transform,
        build_mixup_cutmix,
        build_train_transform,
        eval_resize_size,
        parse_randaugment,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
