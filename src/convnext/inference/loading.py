"""One loader for ``evaluate`` and ``predict``: a weights file, URL, registry tag or training run folder in,
the model with its class names and its eval transform settings out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data.config import DataConfig
from ..errors import UserError

RUN_CHECKPOINTS = ("best.pth", "last.pth")


@dataclass
class Loaded:
    model: nn.Module
    arch: str
    num_classes: int
    class_names: list[str] | None  # from the checkpoint (training runs, HF, in1k tags); None: unknown
    data: DataConfig  # eval geometry (img_size, crop_pct, interpolation, mean, std) and, for runs, the data
    checkpoint: str  # the file actually read
    run_dir: Path | None  # the training run folder, when one was given
    info: Any  # convnext.weights.load.CheckpointInfo


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "checkpoints").is_dir())


def run_checkpoint(run_dir: Path) -> Path:
    """checkpoints/best.pth (the best validation top-1), else checkpoints/last.pth."""
    for name in RUN_CHECKPOINTS:
        p = run_dir / "checkpoints" / name
        if p.is_file():
            return p
    raise UserError(f"run folder {run_dir} has no checkpoints/best.pth or checkpoints/last.pth yet")


def _run_config(run_dir: Path | None, raw_ckpt: dict | None) -> Any:
    """The run's typed TrainConfig: the checkpoint's own copy, else config.yaml."""
    from ..engine.config import config_from_dict, read_yaml

    raw = raw_ckpt.get("config") if raw_ckpt else None
    if not isinstance(raw, dict) and run_dir is not None and (run_dir / "config.yaml").is_file():
        raw = read_yaml(run_dir / "config.yaml")
    if not isinstance(raw, dict):
        return None
    return config_from_dict(raw, check_paths=False)


def load_for_inference(
    weights: str,
    model_name: str | None = None,
    *,
    ema: bool = False,
    img_size: int | None = None,
    crop_pct: float | None = None,
) -> Loaded:
    """Build the model the checkpoint describes and load it (strict: every tensor must fit).

    The classifier keeps the checkpoint's size, so a 1000-class file gives 1000 logits whatever data it
    is run on. Eval geometry: the flags, else the training run's data config, else the registry entry of
    a tag, else 224 / 0.875 / bicubic / ImageNet mean-std.
    """
    if str(weights).lower().endswith((".onnx", ".xml", ".pt2")):  # exported: onnxruntime / OpenVINO / pt2
        from .backends import load_exported

        return load_exported(str(weights), img_size=img_size, crop_pct=crop_pct)
    from ..models import build_model
    from ..weights.load import load_checkpoint, prepare, read_checkpoint

    src = str(weights)
    path = Path(src).expanduser()
    run_dir: Path | None = None
    raw: dict | None = None
    if is_run_dir(path):
        run_dir = path
        ckpt_path = run_checkpoint(path)
        raw = read_checkpoint(ckpt_path)
        src = str(ckpt_path)
        prepared = prepare(raw, ema=ema)
        prepared.info.source = prepared.info.path = src
    else:
        prepared = prepare(src, ema=ema)
    info = prepared.info
    if info.format == "convnext-train" and raw is None:
        raw = read_checkpoint(src)  # its config: model options and the eval transform it was trained with
    train_cfg = _run_config(run_dir, raw) if info.format == "convnext-train" or run_dir else None

    arch = model_name.partition(".")[0] if model_name else None
    if arch is None:
        arch = (train_cfg.model.name.partition(".")[0] if train_cfg else None) or info.arch
    if arch is None:
        raise UserError(f"cannot tell the architecture of {src}; pass --model (e.g. --model convnext_tiny)")
    if not info.num_classes:
        raise UserError(f"{src} holds a backbone without classifier; it cannot classify (fine-tune it first)")
    opts: dict[str, Any] = {}
    if train_cfg is not None:
        opts = dict(train_cfg.model.options)
        if not arch.startswith("convnext_isotropic") or train_cfg.model.layer_scale_init_value:
            opts.setdefault("layer_scale_init_value", train_cfg.model.layer_scale_init_value)
        opts.pop("drop_path_rate", None)
    try:
        model = build_model(arch, num_classes=info.num_classes, **opts)
    except ValueError as e:
        raise UserError(str(e)) from None
    info = load_checkpoint(model, prepared)
    model.eval()

    data = DataConfig()
    if train_cfg is not None:
        data = dataclasses.replace(train_cfg.data)
    elif info.entry is not None:
        e = info.entry
        data = dataclasses.replace(
            data,
            img_size=e.input_size,
            crop_pct=e.crop_pct,
            mean=tuple(e.mean),
            std=tuple(e.std),
            interpolation=e.interpolation,
        )
    if img_size is not None:
        data.img_size = int(img_size)
    if crop_pct is not None:
        data.crop_pct = float(crop_pct)
    names = list(info.class_names) if info.class_names else None
    return Loaded(model, arch, int(info.num_classes), names, data, info.path, run_dir, info)


def imagenet_wnid_names(names: list[str] | None, num_classes: int) -> list[str] | None:
    """The ImageNet-1k wnids when ``names`` are the ImageNet-1k classes (short names, wnids or unknown
    for a 1000-class head), so that wnid folders map to them; else ``names``."""
    from ..data.classes import imagenet1k_classes

    classes = imagenet1k_classes()
    if num_classes == 1000 and (
        names is None or names == [n for _, n in classes] or names == [w for w, _ in classes]
    ):
        return [w for w, _ in classes]
    return names


def display_names(names: list[str] | None, num_classes: int) -> list[str]:
    """Human names to print: ImageNet-1k descriptions ("tench, Tinca tinca") for ImageNet classes, the
    checkpoint's names otherwise, and "class N" when nothing names them (e.g. a 21841-class ImageNet-22k
    head: no 22k name list ships offline)."""
    from ..data.classes import imagenet1k_descriptions, imagenet1k_wnids

    wnids = imagenet_wnid_names(names, num_classes)
    if wnids is not None and num_classes == 1000 and wnids == imagenet1k_wnids():
        return imagenet1k_descriptions()
    if names is not None and len(names) == num_classes:
        desc = dict(zip(imagenet1k_wnids(), imagenet1k_descriptions()))
        return [desc.get(n, n) for n in names]
    return [f"class {i}" for i in range(num_classes)]
