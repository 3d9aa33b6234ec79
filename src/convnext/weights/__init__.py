"""Checkpoints from every ecosystem, in our layout and back: the registry of released weights (each with
its eval transform), safe reading, format mapping both ways, and loading into a model.

fetch.py (where bytes come from) -> files.py (reading them safely) -> containers.py (where the weights
sit, their values checked) -> formats.py (names, both ways) -> load.py (into a model); write.py (back out
to every layout); registry.py and presets.py say which weights exist and how they want images.
"""

from .load import CheckpointInfo, Prepared, load_checkpoint, prepare, read_checkpoint
from .presets import create_transform, resolve_data_config
from .registry import REGISTRY, WeightEntry, default_tag, find_tag, list_tags, register

__all__ = [
    "REGISTRY",
    "CheckpointInfo",
    "Prepared",
    "WeightEntry",
    "create_transform",
    "default_tag",
    "find_tag",
    "list_tags",
    "load_checkpoint",
    "prepare",
    "read_checkpoint",
    "register",
    "resolve_data_config",
]
