"""torch.hub entry points: ``torch.hub.load("<owner>/convnext", "convnext_tiny", pretrained=True)``.

One entry point per architecture, generated from the variant table (``convnext.models.VARIANTS``), so the
list cannot drift from the models. ``pretrained``: False (random init), True (the architecture's default
released weights), or a tag, file, URL, Hugging Face folder or training run folder; other keywords go to
``convnext.create_model`` (``num_classes``, ``drop_path_rate``, ``features_only``, ...).
"""

import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision"]

_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:  # a hub checkout is not pip-installed: import the package from its src/ folder
    sys.path.insert(0, _SRC)

from convnext.hub import create_model as _create_model  # noqa: E402
from convnext.models.factory import VARIANTS as _VARIANTS  # noqa: E402


def _entry_point(arch: str) -> Any:
    def entry(pretrained: bool | str = False, **kwargs: Any) -> Any:
        return _create_model(arch, pretrained=pretrained or None, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (
        f"{arch} ({_VARIANTS[arch].family}). pretrained: False, True (default weights), or a tag, file, "
        "URL, HF folder or run folder; keywords go to convnext.create_model."
    )
    return entry


for _arch in _VARIANTS:
    globals()[_arch] = _entry_point(_arch)
