"""Datasets, class lists, transforms and loaders."""

from .config import IMAGENET_MEAN, IMAGENET_STD, DataConfig

__all__ = ["DataConfig", "IMAGENET_MEAN", "IMAGENET_STD"]
