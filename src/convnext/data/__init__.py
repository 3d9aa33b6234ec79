"""Datasets, class lists, transforms and loaders."""

from .classes import imagenet1k_classes, imagenet1k_descriptions, imagenet1k_wnids, resolve_class_list
from .config import IMAGENET_MEAN, IMAGENET_STD, DataConfig

__all__ = [
    "DataConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet1k_classes",
    "imagenet1k_descriptions",
    "imagenet1k_wnids",
    "resolve_class_list",
]
