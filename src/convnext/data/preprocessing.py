"""The eval preprocessing of a set of weights, as one record: input size, crop, interpolation, mean, std.

The same six settings are spoken in several dialects: timm's dict (``model.pretrained_cfg``,
``resolve_data_config``: ``input_size`` (3, H, W)), our recipe's ``DataConfig`` (``img_size``), an exported
file's JSON ``preprocessing`` and the server's ``/info``. ``Preprocessing`` is the one record; each dialect
is a view of it (``to_timm``/``from_timm``, ``to_json``/``from_json``, ``of``/``apply``), so a key added or
renamed changes in one place. It sits in data/, the lowest layer that weights/, export/, serve/ and
inference/ all import, and imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .config import DataConfig

#: timm's keys, in the order ``resolve_data_config`` has always listed them
TIMM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
#: the JSON keys (those of ``DataConfig``), in the order exported files have always listed them
JSON_KEYS = ("img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input at evaluation. The defaults are the paper's 224
    evaluation (resize 256, centre crop 224, bicubic, ImageNet mean/std), taken from ``DataConfig`` so
    that the recipe's defaults and these cannot differ.

    ``crop_mode`` "center": resize the shorter side to floor(img_size / crop_pct), centre crop img_size;
    "squash": resize the whole image to the square (the official 384/512 evaluation)."""

    img_size: int = DataConfig.img_size
    crop_pct: float = DataConfig.crop_pct
    crop_mode: str = DataConfig.crop_mode
    interpolation: str = DataConfig.interpolation
    mean: tuple[float, ...] = DataConfig.mean
    std: tuple[float, ...] = DataConfig.std

    # ---------------------------------------------------------------- timm's dict (pretrained_cfg)

    def to_timm(self) -> dict[str, Any]:
        """timm's ``resolve_data_config`` layout: ``input_size`` is (3, H, W)."""
        return {
            "input_size": (3, self.img_size, self.img_size),
            "interpolation": self.interpolation,
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    @classmethod
    def from_timm(cls, cfg: dict[str, Any], base: Preprocessing | None = None) -> Preprocessing:
        """The record of a timm dict; keys it lacks (and other keys it has) leave ``base``'s (defaults)."""
        out = base or cls()
        kw: dict[str, Any] = {}
        if "input_size" in cfg:
            size = cfg["input_size"]
            h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
            if int(h) != int(w):
                raise UserError(
                    f"input_size {h}x{w} is not square; ConvNeXt's eval transforms here are square"
                )
            kw["img_size"] = int(h)
        for key in ("crop_pct", "crop_mode", "interpolation", "mean", "std"):
            if key in cfg:
                kw[key] = cfg[key]
        return out.replace(**kw)

    # ---------------------------------------------------------------- JSON (exported files, /info)

    def to_json(self) -> dict[str, Any]:
        """The JSON object exported files and the server write (``DataConfig``'s names, lists)."""
        return {
            "img_size": self.img_size,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], base: Preprocessing | None = None) -> Preprocessing:
        """The record of a JSON object; a key it lacks (a file written before that key existed) keeps
        ``base``'s, any other key is ignored (a newer writer's)."""
        return (base or cls()).replace(**{k: doc[k] for k in JSON_KEYS if k in doc and doc[k] is not None})

    # ---------------------------------------------------------------- DataConfig (the recipe)

    @classmethod
    def of(cls, data: Any) -> Preprocessing:
        """The eval geometry of a ``DataConfig`` (or anything with its attribute names)."""
        return cls(**{k: getattr(data, k) for k in JSON_KEYS if hasattr(data, k)})

    def apply(self, data: DataConfig | None = None) -> DataConfig:
        """A copy of ``data`` (default: a fresh ``DataConfig``) with this eval geometry."""
        return dataclasses.replace(data or DataConfig(), **self.to_fields())

    def to_fields(self) -> dict[str, Any]:
        """The six settings under ``DataConfig``'s names, mean and std as tuples."""
        return {k: getattr(self, k) for k in JSON_KEYS}

    # ---------------------------------------------------------------- helpers

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with ``changes``, each normalised to its type (lists from JSON become tuples)."""
        for key, cast in (("img_size", int), ("crop_pct", float), ("crop_mode", str), ("interpolation", str)):
            if key in changes:
                changes[key] = cast(changes[key])
        for key in ("mean", "std"):
            if key in changes:
                changes[key] = _floats(changes[key])
        return dataclasses.replace(self, **changes)
