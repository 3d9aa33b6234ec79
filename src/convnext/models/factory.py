"""Every published ConvNeXt, by name: ``create_model("convnext_tiny")``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .convnext import ConvNeXt
from .convnext_v2 import BlockV2
from .isotropic import ConvNeXtIsotropic


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "v1", "v2" or "isotropic"
    build: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 224

    def __call__(self, **options: Any) -> nn.Module:
        return self.build(**{**self.kwargs, **options})


_SMALL = {  # the light variants timm trained, shared by V1 and V2
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
}
_PAPER = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}
_SHAPES = {**_SMALL, **_PAPER}


def _v2(**kwargs: Any) -> nn.Module:
    kwargs.pop("layer_scale_init_value", None)  # V2 has no layer scale: GRN takes its place
    return ConvNeXt(block=BlockV2, **kwargs)


VARIANTS: dict[str, Variant] = {}
for _size in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge"):
    _d, _w = _SHAPES[_size]
    VARIANTS[f"convnext_{_size}"] = Variant(f"convnext_{_size}", "v1", ConvNeXt, {"depths": _d, "dims": _w})
for _size in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge"):
    _d, _w = _SHAPES[_size]
    VARIANTS[f"convnextv2_{_size}"] = Variant(f"convnextv2_{_size}", "v2", _v2, {"depths": _d, "dims": _w})
for _size, (_depth, _dim) in {"small": (18, 384), "base": (18, 768), "large": (36, 1024)}.items():
    VARIANTS[f"convnext_isotropic_{_size}"] = Variant(
        f"convnext_isotropic_{_size}", "isotropic", ConvNeXtIsotropic, {"depth": _depth, "dim": _dim}
    )


def list_models(family: str | None = None) -> list[str]:
    """Names of every architecture, optionally of one family ("v1", "v2", "isotropic")."""
    return [n for n, v in VARIANTS.items() if family is None or v.family == family]


def get_variant(name: str) -> Variant:
    """The architecture called ``name``; an unknown name is one sentence listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(VARIANTS)}") from None


def create_model(
    name: str,
    pretrained: str | bool | dict | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build a ConvNeXt by name, optionally loading weights.

    ``name`` is an architecture (``convnext_tiny``) or a weight tag (``convnext_tiny.fb_in1k``).
    ``pretrained`` is a file, a URL or a registry tag; ``True`` takes the tag in ``name`` or the
    architecture's default weights. A ``num_classes`` other than the checkpoint's keeps the backbone and
    starts a fresh classifier (fine-tuning).
    """
    arch, _, tag = name.partition(".")
    variant = get_variant(arch)
    src: str | dict | None
    if pretrained is True:
        from ..weights.registry import default_tag

        src = name if tag else default_tag(arch)
    elif isinstance(pretrained, dict):  # an in-memory state dict, e.g. another library's model's
        src = pretrained
    elif pretrained:
        src = str(pretrained)
    else:
        src = None

    prepared = None
    if src is not None:
        from ..weights.load import prepare

        # Read the checkpoint before building: without num_classes the model takes the checkpoint's
        # (21841 for a 22k one; 0, a pooled-feature model, for a backbone without classifier).
        prepared = prepare(src)
        if num_classes is None:
            num_classes = prepared.info.num_classes or 0
    model = variant(num_classes=num_classes if num_classes is not None else 1000, **options)
    model.variant = arch  # type: ignore[assignment]
    if prepared is not None:
        from ..weights.load import load_checkpoint

        model.pretrained_info = load_checkpoint(model, prepared)  # type: ignore[assignment]
    return model
