"""The eval preprocessing that belongs to a set of weights, in timm's conventions.

``resolve_data_config(x)`` gives the settings (timm's keys: input_size (3, H, W), interpolation, mean, std,
crop_pct, crop_mode) of a model built by ``create_model`` (its ``pretrained_cfg``), a registry entry or
tag, a weights file, URL or training run folder; ``create_transform(cfg)`` the exact transform, built by
``convnext.data.build_eval_transform``, the one code path of train's validation, evaluate and predict.

The settings themselves are one record, ``convnext.data.preprocessing.Preprocessing``; the dicts here are
its timm view, kept because timm's users know them (``model.pretrained_cfg``, ``resolve_data_config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..data.preprocessing import TIMM_KEYS, Preprocessing
from ..errors import UserError
from .load import prepare
from .registry import WeightEntry, find_file, find_tag

DATA_KEYS = TIMM_KEYS


def default_data_config(img_size: int = 224) -> dict[str, Any]:
    """The paper's evaluation (resize to img_size / 0.875, centre crop, bicubic, ImageNet mean/std)."""
    return Preprocessing(img_size=int(img_size)).to_timm()


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
        cfg = Preprocessing.of(obj).to_timm()
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
    # reads the file: its format and recorded settings decide
    return prepare(src).info.data_config or default_data_config()


def label_names(class_names: list[str] | None, n: int) -> list[str] | None:
    """The names of a ``n``-class head: the checkpoint's, else ImageNet-1k's for 1000 classes and
    ImageNet-22k's for 21841 (the only such heads ConvNeXt ships), else None."""
    if class_names and len(class_names) == n:
        return list(class_names)
    from ..data.classes import default_class_names

    return default_class_names(n)


def to_data_config(cfg: dict[str, Any], base: DataConfig | None = None) -> DataConfig:
    """``cfg`` (timm's layout) as our DataConfig's geometry, on top of ``base``."""
    return Preprocessing.from_timm(cfg).apply(base)


def create_transform(cfg: Any = None, *, is_training: bool = False, **overrides: Any) -> Any:
    """The transform of ``cfg`` (anything ``resolve_data_config`` takes): uint8 (3, H, W) tensor in,
    normalized float (3, S, S) out. Eval: exactly what ``convnext evaluate``/``predict`` apply;
    ``is_training``: the paper's train recipe at that size and normalization."""
    from ..data.transforms import build_eval_transform, build_train_transform

    data = to_data_config(resolve_data_config(cfg, **overrides))
    return build_train_transform(data) if is_training else build_eval_transform(data)
