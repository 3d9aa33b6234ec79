"""Checkpoints from every ecosystem, in our layout and back: the registry of released weights (each with
its eval transform), safe reading, format mapping both ways, and loading into a model.

fetch.py (where bytes come from) -> files.py (reading them safely) -> containers.py (where the weights
sit, their values checked) -> formats.py (names, both ways) -> load.py (into a model); write.py (back out
to every layout); registry.py and presets.py say which weights exist and how they want images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# public name -> module of this package that defines it. Imported on first use, as convnext.data does:
# the registry is plain data, and `convnext models --weights` lists it without importing torch.
_EXPORTS = {
    "CheckpointInfo": ".load",
    "Prepared": ".load",
    "load_checkpoint": ".load",
    "prepare": ".load",
    "read_checkpoint": ".load",
    "create_transform": ".presets",
    "resolve_data_config": ".presets",
    "REGISTRY": ".registry",
    "WeightEntry": ".registry",
    "default_tag": ".registry",
    "find_tag": ".registry",
    "list_tags": ".registry",
    "register": ".registry",
}

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

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .load import CheckpointInfo, Prepared, load_checkpoint, prepare, read_checkpoint
    from .presets import create_transform, resolve_data_config
    from .registry import REGISTRY, WeightEntry, default_tag, find_tag, list_tags, register


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
