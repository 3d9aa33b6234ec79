"""One loader for ``evaluate`` and ``predict`` (and the public ``convnext.load_for_inference``): a weights
file, URL, registry tag, HF folder or training run folder in, the model with its class names and its eval
transform settings out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.config import DataConfig
from ..errors import UserError
from ..runtimes import is_exported
from ..weights.fetch import RUN_CHECKPOINTS, is_run_dir, run_checkpoint  # noqa: F401 (re-exported)


@dataclass
class Loaded:
    model: nn.Module
    arch: str
    num_classes: int
    class_names: list[str] | None  # from the checkpoint (training runs, HF, in1k tags); None: unknown
    # eval geometry (img_size, crop_pct, crop_mode, interpolation, mean, std) and, for runs, the data
    data: DataConfig
    checkpoint: str  # the file actually read
    run_dir: Path | None  # the training run folder, when one was given
    info: Any  # convnext.weights.load.CheckpointInfo


def _run_config(run_dir: Path | None, recorded: dict | None) -> Any:
    """The run's typed TrainConfig: the checkpoint's own copy (``recorded``), else config.yaml."""
    from ..recipe import config_from_dict, read_yaml, rebase_paths

    raw = recorded
    if not isinstance(raw, dict) and run_dir is not None and (run_dir / "config.yaml").is_file():
        raw = read_yaml(run_dir / "config.yaml")
    if not isinstance(raw, dict):
        return None
    cfg = config_from_dict(raw, check_paths=False)
    return rebase_paths(cfg, run_dir) if run_dir is not None else cfg  # a run of before absolute paths


def _family(arch: str) -> str:
    """ "ConvNeXt V1", "ConvNeXt V2" or "isotropic ConvNeXt", for a sentence naming two architectures."""
    from ..models import FAMILY_TITLES, VARIANTS

    family = VARIANTS[arch].family if arch in VARIANTS else "unknown"
    return FAMILY_TITLES.get(family, family)


def load_for_inference(
    weights: str,
    model_name: str | None = None,
    *,
    ema: bool | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
) -> Loaded:
    """Build the model a checkpoint describes and load it (strict: every tensor must fit), for evaluate
    and predict; the public way to get a ready model with its class names and eval preprocessing.

    ``weights``: a file, URL, registry tag, Hugging Face folder or training run folder (its best.pth, else
    last.pth). ``model_name`` (``--model``) must name what the checkpoint holds; it is needed only when
    the shapes match no known architecture. The classifier keeps the checkpoint's size, so a 1000-class
    file gives 1000 logits whatever data it is run on. Eval geometry (``Loaded.data``; transform:
    ``convnext.data.build_eval_transform``): the flags, else the training run's data config, else the
    weights' own preset (registry release, by tag, URL or file name; torchvision's preset for
    torchvision-layout weights), else 224 / 0.875 / bicubic / ImageNet mean-std.
    """
    if is_exported(weights):  # a file of one of convnext.runtimes: onnxruntime / OpenVINO / pt2
        return load_exported(str(weights), img_size=img_size, crop_pct=crop_pct)
    from ..models import build_model, get_variant
    from ..weights.containers import TRAIN_FORMAT
    from ..weights.load import load_checkpoint, prepare

    arch = model_name.partition(".")[0] if model_name else None
    if arch is not None:
        try:
            get_variant(arch)
        except ValueError as e:
            raise UserError(str(e)) from None
    prepared = prepare(str(weights), ema=ema)
    info = prepared.info
    src = info.path
    run_dir = Path(info.run_dir) if info.run_dir else None
    train_cfg = None
    if info.format == TRAIN_FORMAT or run_dir is not None:
        # its config: the model options and the eval transform it was trained with
        # (read with the weights by prepare: the file is read once)
        train_cfg = _run_config(run_dir, prepared.run_config if info.format == TRAIN_FORMAT else None)

    held = (train_cfg.model.name.partition(".")[0] if train_cfg else None) or info.arch
    if arch is not None and held is not None and arch != held:
        raise UserError(
            f"--model {arch}: {src} holds {held} weights but the model is {arch} ({_family(held)} vs "
            f"{_family(arch)}); drop --model or pass --model {held}"
        )
    arch = arch or held
    if arch is None:
        raise UserError(f"cannot tell the architecture of {src}; pass --model (e.g. --model convnext_tiny)")
    if not info.num_classes:
        raise UserError(f"{src} holds a backbone without classifier; it cannot classify (fine-tune it first)")
    from ..weights.containers import model_options_of, run_model_options

    # e.g. no layer scale in the weights: none in the model; a run's own depths and widths: those
    opts = model_options_of(prepared.state_dict, arch)
    if train_cfg is not None:
        opts.update(run_model_options(dataclasses.asdict(train_cfg.model), arch))
    try:
        model = build_model(arch, num_classes=info.num_classes, **opts)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {arch} with the options of {src} ({e})") from None
    info = load_checkpoint(model, prepared)
    model.eval()

    data = DataConfig()
    if train_cfg is not None:
        data = dataclasses.replace(train_cfg.data)
    elif info.preprocessing is not None:
        data = info.preprocessing.apply(data)
    if img_size is not None:
        data.img_size = int(img_size)
    if crop_pct is not None:
        data.crop_pct = float(crop_pct)
    smallest = model.reduction  # the total stride
    if data.img_size < smallest:  # the convolutions would fail deep inside, on the first image
        what = f"--img-size {data.img_size}" if img_size is not None else f"image size {data.img_size}"
        raise UserError(f"{what} is below the {smallest} px {arch} needs (it downsamples {smallest}x)")
    names = list(info.class_names) if info.class_names else None
    return Loaded(model, arch, int(info.num_classes), names, data, info.path, run_dir, info)


def load_exported(
    path: str,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    device: str = "cpu",
) -> Loaded:
    """``Loaded`` for an exported file: ``model`` is a ``RunnerModule`` around its runtime's runner.

    ``run_dir`` is the training run the file was exported from (the file's folder when that run is not
    recorded), so ``evaluate`` without ``--data`` uses the run's validation split, from the dataset settings
    the file carries; None when the file holds no dataset settings.
    """
    from ..runtimes.base import RunnerModule, open_exported, resize_data
    from ..weights.load import CheckpointInfo

    runner = open_exported(path, device=device)
    resize_data(runner, path, img_size, crop_pct)
    meta = runner.meta
    info = CheckpointInfo(
        source=str(path),
        path=str(path),
        format=meta.format if meta and meta.format else runner.backend,
        num_classes=runner.num_classes,
        class_names=runner.class_names,
        arch=runner.arch,
        metadata={"backend": runner.backend, "precision": runner.precision},
    )
    run_dir = None
    if meta is not None and meta.has_dataset:  # exported from training: evaluate may default to its val split
        run_dir = Path(meta.run_dir) if meta.run_dir else Path(path).parent
    return Loaded(
        model=RunnerModule(runner),
        arch=runner.arch,
        num_classes=runner.num_classes,
        class_names=runner.class_names,
        data=runner.data,
        checkpoint=str(path),
        run_dir=run_dir,
        info=info,
    )


def for_bf16_inference(model: nn.Module, device: torch.device, amp: torch.dtype | None) -> nn.Module:
    """The model ``predict`` / ``evaluate`` run: under bf16 on a CPU, ``fuse_for_inference``'s bf16 copy
    (weights cast to bf16 once instead of by autocast on every call, which gains most at small batches:
    BENCHMARKS.md, "predict / evaluate --amp bf16 on CPU"), else ``model`` itself; fp32 keeps the ops that
    training evaluated with, so ``evaluate`` repeats the run's own top-1 exactly. Exported files pass
    through."""
    if amp != torch.bfloat16 or device.type != "cpu" or getattr(model, "runner", None) is not None:
        return model
    from ..models import fuse_for_inference

    return fuse_for_inference(model, dtype=torch.bfloat16)


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
    checkpoint's names otherwise (wnids as words), ImageNet-22k's words for a nameless 21841-class head,
    and "class N" when nothing names them."""
    from ..data.classes import (
        default_descriptions,
        imagenet1k_descriptions,
        imagenet1k_wnids,
        wnid_descriptions,
    )

    wnids = imagenet_wnid_names(names, num_classes)
    if wnids is not None and num_classes == 1000 and wnids == imagenet1k_wnids():
        return imagenet1k_descriptions()
    if names is not None and len(names) == num_classes:
        desc = wnid_descriptions()
        return [desc.get(n, n) for n in names]
    return default_descriptions(num_classes)
