"""Every published ConvNeXt, by name: ``create_model("convnext_tiny")``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .base import FAMILIES, Family
from .chunked_mlp import set_chunked_mlp
from .convnext import ConvNeXt
from .isotropic import ConvNeXtIsotropic
from .upernet import upernet_builder


@dataclass(frozen=True)
class Variant:
    name: str
    family: Family
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


VARIANTS: dict[str, Variant] = {}
for _size in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge"):
    _d, _w = _SHAPES[_size]
    VARIANTS[f"convnext_{_size}"] = Variant(f"convnext_{_size}", "v1", ConvNeXt, {"depths": _d, "dims": _w})
for _size in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "huge"):  # small: timm's
    _d, _w = _SHAPES[_size]
    _v2 = {"depths": _d, "dims": _w, "use_grn": True, "layer_scale_init_value": None}  # GRN replaces it
    VARIANTS[f"convnextv2_{_size}"] = Variant(f"convnextv2_{_size}", "v2", ConvNeXt, _v2)
# timm's own variants, each the paper's network with timm's options (their constructor names in
# ``ConvNeXt``'s docstring); the configs are timm's ``convnext_*`` entrypoints'.
_TIMM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "convnext_zepto_rms": ("zepto", {"norm": "simplenorm"}),
    "convnext_zepto_rms_ols": ("zepto", {"norm": "simplenorm", "stem": "overlap_act"}),
    "convnext_atto_ols": ("atto", {"stem": "overlap_tiered"}),
    "convnext_atto_rms": ("atto", {"norm": "rmsnorm"}),
    "convnext_femto_ols": ("femto", {"stem": "overlap_tiered"}),
    "convnext_pico_ols": ("pico", {"stem": "overlap_tiered"}),
    "convnext_nano_ols": ("nano", {"stem": "overlap"}),
    "convnext_tiny_hnf": ("tiny", {"head_norm_first": True}),
    "convnext_large_mlp": ("large", {"head_hidden_size": 1536}),
    "convnext_xxlarge": ("xxlarge", {"norm_eps": 1e-5}),
}
_SHAPES_TIMM = {
    "zepto": ((2, 2, 4, 2), (32, 64, 128, 256)),
    "xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),
}
for _name, (_size, _opts) in _TIMM_VARIANTS.items():
    _d, _w = {**_SHAPES, **_SHAPES_TIMM}[_size]
    VARIANTS[_name] = Variant(_name, "v1", ConvNeXt, {"depths": _d, "dims": _w, **_opts})
for _size, (_depth, _dim) in {"small": (18, 384), "base": (18, 768), "large": (36, 1024)}.items():
    VARIANTS[f"convnext_isotropic_{_size}"] = Variant(
        f"convnext_isotropic_{_size}", "isotropic", ConvNeXtIsotropic, {"depth": _depth, "dim": _dim}
    )


def list_models(filter: str | Sequence[str] = "", *, family: str | None = None) -> list[str]:
    """Names of every architecture matching the glob ``filter`` (or any of several), as timm's
    ``list_models("*tiny*")``; ``family`` keeps one family ("v1", "v2", "isotropic")."""
    patterns = [filter] if isinstance(filter, str) else list(filter)
    if len(patterns) == 1 and patterns[0] in FAMILIES and family is None:
        warnings.warn(
            f"list_models({patterns[0]!r}): the first argument is a name pattern now; pass family=",
            DeprecationWarning,
            stacklevel=2,
        )
        patterns, family = [], patterns[0]
    patterns = [p for p in patterns if p]
    return [
        n
        for n, v in VARIANTS.items()
        if (family is None or v.family == family)
        and (not patterns or any(fnmatchcase(n, p) for p in patterns))
    ]


def dense_backbone(name: str) -> str | None:
    """The backbone of a segmentation or detection model name (``upernet_convnext_tiny`` ->
    ``convnext_tiny``), None for any other name."""
    for prefix in ("upernet_", "maskrcnn_", "fasterrcnn_"):
        if name.startswith(prefix) and name[len(prefix) :] in VARIANTS:
            return name[len(prefix) :]
    return None


def dense_head_options(name: str) -> tuple[str, ...]:
    """The constructor options of a dense model's head (UperNet's, torchvision's detector's and the FPN's),
    beside its backbone's own."""
    if name.startswith("upernet_"):
        from .upernet import HEAD_OPTIONS

        return HEAD_OPTIONS
    from .detection import head_options

    return head_options(name.partition("_")[0])


def get_variant(name: str) -> Variant:
    """The architecture called ``name``; an unknown name is one sentence listing the known ones."""
    if name in VARIANTS:
        return VARIANTS[name]
    backbone = VARIANTS.get(name.removeprefix("upernet_")) if name.startswith("upernet_") else None
    if backbone is not None and backbone.family != "isotropic":  # segmentation: models/upernet.py
        build = upernet_builder(backbone.name, backbone.build)
        return Variant(name, backbone.family, build, backbone.kwargs, input_size=512)
    detector, _, rest = name.partition("_")
    backbone = VARIANTS.get(rest) if detector in ("maskrcnn", "fasterrcnn") else None
    if backbone is not None and backbone.family != "isotropic":  # detection: models/detection.py
        from .detection import detection_builder  # lazy: torchvision.models.detection is slow to import

        build = detection_builder(detector, rest, backbone.build)
        return Variant(name, backbone.family, build, backbone.kwargs, input_size=800)
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(VARIANTS)}, upernet_<V1/V2 model>, "
        "maskrcnn_<V1/V2 model>, fasterrcnn_<V1/V2 model>"
    )


def family_of_name(name: str) -> Family:
    """The family of the architecture ``name`` (a ``.tag`` suffix is ignored), for code that has a name and no
    model; with a model, ask ``model.family``. An unknown name is ``get_variant``'s ValueError."""
    return get_variant(name.partition(".")[0]).family


def layer_scale_option(family: Family, value: float | None) -> dict[str, float]:
    """The constructor option the recipe key ``model.layer_scale_init_value`` gives a ``family`` model.

    The key's default (1e-6) is V1's layer scale, which V1 takes as set; V2 has none (GRN replaces it), so
    the key is ignored there; isotropic blocks have none by default (0) and take the key when it is nonzero.
    Training builds its model with this, and rebuilding a run's model for inference must do the same."""
    if value is None or family == "v2" or (family == "isotropic" and not value):
        return {}
    return {"layer_scale_init_value": float(value)}


def has_layer_scale_by_default(family: Family) -> bool:
    """Whether a ``family`` model built without options has layer scale (``gamma``): V1 only."""
    return family == "v1"


def build_model(name: str, num_classes: int = 1000, chunked_mlp: bool = True, **options: Any) -> nn.Module:
    """An architecture by name, randomly initialised (no weights: see ``convnext.create_model``).

    With ``chunked_mlp`` (the default) the V1 blocks are :class:`~convnext.models.chunked_mlp.ChunkedBlock`:
    the same parameters, names and function (to float rounding), but on CPU in float32 the MLP runs in row
    chunks wherever that is measured faster and lighter on activation memory (BENCHMARKS.md) and the plain
    ops everywhere else, so ``train``, ``evaluate`` and ``predict`` get
    the speed without asking, and nothing is ever slower than the reference. ``chunked_mlp=False`` gives the
    reference model (plain :class:`~convnext.models.convnext.Block` modules, as the paper's code);
    :func:`~convnext.models.set_chunked_mlp` switches a built model either way.
    """
    arch = name.partition(".")[0]
    model = get_variant(arch)(num_classes=num_classes, **options)
    set_chunked_mlp(model, chunked_mlp)
    model.variant = arch  # type: ignore[assignment]
    return model
