"""Checkpoints from every ecosystem, in our layout: the registry of released weights and a safe loader."""

from .load import CheckpointInfo, load_checkpoint, prepare, read_checkpoint
from .registry import REGISTRY, WeightEntry, default_tag, find_tag, list_tags, register

__all__ = [
    "REGISTRY",
    "CheckpointInfo",
    "WeightEntry",
    "default_tag",
    "find_tag",
    "list_tags",
    "load_checkpoint",
    "prepare",
    "read_checkpoint",
    "register",
]
