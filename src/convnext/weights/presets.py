"""The eval preprocessing that belongs to a set of weights, in timm's conventions.

``resolve_data_config(x)`` gives the settings (timm's keys: input_size (3, H, W), interpolation, mean, std,
crop_pct, crop_mode) of a model built by ``create_model`` (its ``pretrained_cfg``), a registry entry or
tag, a weights file, URL or training run folder; ``create_transform(cfg)`` the exact transform, built by
``convnext.data.build_eval_transform``, the one code path of train's validation, evaluate and predict.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..errors import UserError
from .registry import WeightEntry, find_file, find_tag, torchvision_entry

DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def default_data_config(img_size: int = 224) -> dict[str, Any]:
    """The paper's 224 evaluation (resize 256, centre crop 224, bicubic, ImageNet mean/std)."""
    d = DataConfig()
    return {
        "input_size": (3, img_size, img_size),
        "interpolation": d.interpolation,
        "mean": tuple(d.mean),
        "std": tuple(d.std),
        "crop_pct": d.crop_pct,
        "crop_mode": d.crop_mode,
    }


def _from_data_section(data: dict[str, Any]) -> dict[str, Any]:
    """A training run's ``data:`` section (its eval geometry) in timm's layout."""
    cfg = default_data_config(int(data.get("img_size", 224)))
    for key in ("interpolation", "crop_pct", "crop_mode"):
        if data.get(key) is not None:
            cfg[key] = data[key]
    for key in ("mean", "std"):
        if data.get(key) is not None:
            cfg[key] = tuple(float(x) for x in data[key])
    return cfg


def checkpoint_data_config(
    entry: WeightEntry | None,
    run_data: dict[str, Any] | None,
    fmt: str,
    arch: str | None,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The eval settings loaded weights were made for: the registry release's, a training run's, those
    ``convnext convert`` recorded, or torchvision's preset for weights in torchvision's layout; None when
    nothing says (defaults apply)."""
    if entry is not None:
        return entry.data_config()
    if run_data is not None:
        return _from_data_section(run_data)
    if isinstance(recorded, dict) and all(k in recorded for k in DATA_KEYS):
        return resolve_data_config(recorded)
    if fmt == "torchvision" and arch:
        tv = torchvision_entry(arch)
        if tv is not None:
            return tv.data_config()
    return None


def resolve_data_config(obj: Any = None, **overrides: Any) -> dict[str, Any]:
    """The eval settings of ``obj``, timm's ``resolve_data_config`` for our weights.

    ``obj``: a model from ``create_model`` (its ``pretrained_cfg``), a registry tag or ``WeightEntry``, a
    weights file, URL or training run folder, a dict (a ``pretrained_cfg``), a ``DataConfig``, or None
    (the paper's 224 defaults). ``overrides`` (e.g. ``crop_pct=1.0``) win.
    """
    cfg: dict[str, Any]
    if obj is None:
        cfg = default_data_config()
    elif isinstance(obj, WeightEntry):
        cfg = obj.data_config()
    elif isinstance(obj, DataConfig):
        cfg = _from_data_section(dataclasses.asdict(obj))
    elif isinstance(obj, dict):
        cfg = {**default_data_config(), **{k: obj[k] for k in DATA_KEYS if k in obj}}
    elif isinstance(obj, (str, Path)):
        cfg = _of_source(str(obj))
    elif isinstance(getattr(obj, "pretrained_cfg", None), dict):
        pcfg = obj.pretrained_cfg
        cfg = {**default_data_config(), **{k: pcfg[k] for k in DATA_KEYS if k in pcfg}}
    elif callable(getattr(obj, "state_dict", None)):  # a model without pretrained_cfg: the paper's defaults
        cfg = default_data_config()
    else:
        raise UserError(
            f"cannot tell the eval settings of a {type(obj).__name__}; pass a model from "
            "convnext.create_model, a weights tag, file or run folder, or a dict"
        )
    unknown = set(overrides) - set(DATA_KEYS)
    if unknown:
        raise UserError(
            f"unknown data config key(s) {', '.join(sorted(unknown))}; known: {', '.join(DATA_KEYS)}"
        )
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(cfg["input_size"], int):
        cfg["input_size"] = (3, cfg["input_size"], cfg["input_size"])
    cfg["input_size"] = tuple(int(x) for x in cfg["input_size"])
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    return cfg


def _of_source(src: str) -> dict[str, Any]:
    entry = find_tag(src)
    if entry is not None:
        return entry.data_config()
    path = Path(src).expanduser()
    if not path.exists() and not src.startswith(("http://", "https://")):
        known = find_file(src)
        if known is not None:
            return known.data_config()
    from .load import prepare  # reads the file: its format and recorded settings decide

    return prepare(src).info.data_config or default_data_config()


def label_names(class_names: list[str] | None, n: int) -> list[str] | None:
    """The names of a ``n``-class head: the checkpoint's, else ImageNet-1k's for 1000 classes (the only
    1000-class heads ConvNeXt ships), else None."""
    if class_names and len(class_names) == n:
        return list(class_names)
    if n == 1000:
        from ..data.classes import imagenet1k_classes

        return [name for _, name in imagenet1k_classes()]
    return None


def to_data_config(cfg: dict[str, Any], base: DataConfig | None = None) -> DataConfig:
    """``cfg`` (timm's layout) as our DataConfig's geometry, on top of ``base``."""
    _, h, w = cfg["input_size"]
    if h != w:
        raise UserError(f"input_size {h}x{w} is not square; ConvNeXt's eval transforms here are square")
    return dataclasses.replace(
        base or DataConfig(),
        img_size=int(h),
        crop_pct=float(cfg["crop_pct"]),
        crop_mode=str(cfg["crop_mode"]),
        interpolation=str(cfg["interpolation"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


def create_transform(cfg: Any = None, *, is_training: bool = False, **overrides: Any) -> Any:
    """The transform of ``cfg`` (anything ``resolve_data_config`` takes): uint8 (3, H, W) tensor in,
    normalized float (3, S, S) out. Eval: exactly what ``convnext evaluate``/``predict`` apply;
    ``is_training``: the paper's train recipe at that size and normalization."""
    from ..data.transforms import build_eval_transform, build_train_transform

    data = to_data_config(resolve_data_config(cfg, **overrides))
    return build_train_transform(data) if is_training else build_eval_transform(data)
