"""ConvNeXt for PyTorch: every published variant, weights from any ecosystem, and the tools to train them.

Imported lazily: ``import convnext`` costs nothing until a name is used (``convnext --help`` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "create_model": ".hub",
    "list_models": ".models",
    "load_checkpoint": ".weights.load",
    "load_for_inference": ".inference.loading",
    "resolve_data_config": ".weights.presets",
    "create_transform": ".weights.presets",
}

__all__ = [
    "__version__",
    "create_model",
    "create_transform",
    "list_models",
    "load_checkpoint",
    "load_for_inference",
    "resolve_data_config",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    __version__: str
    from .hub import create_model
    from .inference.loading import load_for_inference
    from .models import list_models
    from .weights.load import load_checkpoint
    from .weights.presets import create_transform, resolve_data_config


_SUBPACKAGES = ("models", "weights", "data", "engine", "inference", "hub", "device", "errors")


def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convnext")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _SUBPACKAGES:  # convnext.models.X works after a bare `import convnext`, as it used to
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'convnext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})
