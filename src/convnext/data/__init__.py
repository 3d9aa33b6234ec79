"""Datasets, class lists, transforms and loaders (the paper's recipe on torchvision.transforms.v2)."""

from .classes import imagenet1k_classes, imagenet1k_descriptions, imagenet1k_wnids, resolve_class_list
from .config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from .datasets import DATASETS, build_dataset, check_num_classes
from .images import load_image
from .loader import build_loader, epoch_iterator
from .presets import SMALL_DATASET_DEFAULTS, small_dataset_defaults
from .transforms import (
    BatchFinish,
    build_eval_transform,
    build_mixup_cutmix,
    build_train_transform,
    eval_resize_size,
    parse_randaugment,
)

__all__ = [
    "BatchFinish",
    "DATASETS",
    "DataConfig",
    "SMALL_DATASET_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "epoch_iterator",
    "build_mixup_cutmix",
    "build_train_transform",
    "check_num_classes",
    "eval_resize_size",
    "imagenet1k_classes",
    "imagenet1k_descriptions",
    "imagenet1k_wnids",
    "load_image",
    "parse_randaugment",
    "resolve_class_list",
    "small_dataset_defaults",
]
