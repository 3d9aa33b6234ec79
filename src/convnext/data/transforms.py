"""The paper's train/eval transforms with torchvision.transforms.v2 on uint8 tensors, and batch MixUp/CutMix.

Images stay uint8 through every geometric/colour op (cheap, and exactly what RandAugment's ops expect) and
become float once at the end: ToDtype(float32, scale=True) -> Normalize -> RandomErasing (timm erases the
normalized tensor with per-pixel N(0, 1) noise, "pixel" mode; v2.RandomErasing(value="random") does the same).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..errors import UserError
from .config import DataConfig
from .randaugment import TimmRandAugment, parse_randaugment  # timm's RandAugment on uint8 tensors

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def interpolation(name: str) -> InterpolationMode:
    try:
        return _INTERP[name]
    except KeyError:
        raise UserError(
            f"config key data.interpolation: {name!r} is not one of {', '.join(_INTERP)}"
        ) from None


# -------------------------------------------------------------------------------------------- transforms
def eval_resize_size(img_size: int, crop_pct: float) -> int:
    """The shorter side before the center crop: floor(img_size / crop_pct) (256 for 224 @ 0.875), as timm.

    Rounded to 1e-6 first, so that a crop_pct written as a ratio (torchvision's 224 / 236) gives back its
    integer exactly whatever the float rounding."""
    return int(math.floor(round(img_size / crop_pct, 6)))


CROP_MODES = ("center", "squash")


def _to_float(cfg: DataConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]


def build_eval_transform(cfg: DataConfig) -> v2.Compose:
    """uint8 (3, H, W) -> float (3, img_size, img_size), normalized; antialiased resize.

    ``crop_mode`` "center": resize the shorter side to floor(img_size / crop_pct), centre crop img_size
    (the paper's 224 evaluation, timm's and torchvision's presets). "squash": resize the whole image to
    the square, aspect ratio not kept (the official 384/512 evaluation; timm's ``crop_mode="squash"``),
    with crop_pct 1 (as those weights use) nothing is cropped; below 1 the square is
    floor(img_size / crop_pct) and then centre-cropped, as timm does. The one eval transform of every
    verb (train's validation, evaluate, predict) and of ``convnext.create_transform``.
    """
    if not 0 < cfg.crop_pct <= 1:
        raise UserError(f"config key data.crop_pct must be in (0, 1], got {cfg.crop_pct}")
    mode = cfg.crop_mode
    if mode not in CROP_MODES:
        raise UserError(f"config key data.crop_mode: {mode!r} is not one of {', '.join(CROP_MODES)}")
    interp = interpolation(cfg.interpolation)
    resize = eval_resize_size(cfg.img_size, cfg.crop_pct)
    geometry: list[v2.Transform] = [
        v2.Resize((resize, resize) if mode == "squash" else resize, interp, antialias=True)
    ]
    if mode == "center" or resize != cfg.img_size:
        geometry.append(v2.CenterCrop(cfg.img_size))
    return v2.Compose([*geometry, *_to_float(cfg)])


def build_train_transform(cfg: DataConfig, *, finish: bool = True) -> v2.Compose:
    """The paper's recipe: RandomResizedCrop (bicubic) -> hflip -> RandAugment (timm string) on uint8,
    then float + normalize, then RandomErasing (p=reprob, per-pixel random values).

    ``finish=False`` stops at uint8: the rest is :class:`BatchFinish`, run on the batch on the device.
    """
    ts: list[v2.Transform] = [
        v2.RandomResizedCrop(
            cfg.img_size,
            scale=tuple(cfg.scale),
            ratio=tuple(cfg.ratio),
            interpolation=interpolation(cfg.interpolation),
            antialias=True,
        )
    ]
    if cfg.hflip > 0:
        ts.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.randaugment:
        # timm (the official recipe): geometric ops fill with the mean pixel and resample with the
        # recipe's interpolation
        fill = [min(255, round(255 * m)) for m in cfg.mean]
        interpolation(cfg.interpolation)  # one sentence for an unknown name
        spec = parse_randaugment(cfg.randaugment)
        ts.append(TimmRandAugment(spec, fill=fill, interpolation=cfg.interpolation))
    if finish:
        ts += _to_float(cfg)
        if cfg.reprob > 0:
            ts.append(v2.RandomErasing(p=cfg.reprob, value="random"))
    return v2.Compose(ts)


class BatchFinish(torch.nn.Module):
    """The end of the train recipe, on a uint8 (B, 3, H, W) batch already on the training device:
    float + normalize, then RandomErasing drawn per sample.

    Converting once per batch on the GPU instead of per image in the workers takes work off each worker
    and moves a quarter of the bytes through pinned memory and PCIe (BENCHMARKS.md); the values are
    the same as the per-image transform's.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.to_float = v2.Compose(_to_float(cfg))
        self.erase = v2.RandomErasing(p=cfg.reprob, value="random") if cfg.reprob > 0 else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.to_float(images)
        if self.erase is not None:
            for i in range(images.shape[0]):  # v2 would erase one box for the whole batch
                images[i] = self.erase(images[i])
        return images


# ------------------------------------------------------------------------------------------ MixUp/CutMix
class MixupCutmix:
    """Batch-level MixUp (alpha cfg.mixup) or CutMix (alpha cfg.cutmix), one of them per batch
    (CutMix with probability cfg.mixup_switch_prob), applied to a batch with probability cfg.mixup_prob.

    Always returns soft targets (B, num_classes) float, also for a batch left unmixed (one-hot), so the loss
    sees one kind of target. Label smoothing is NOT folded in here: use
    ``nn.CrossEntropyLoss(label_smoothing=eps)`` on these targets. For soft targets torch computes the loss
    against ``(1 - eps) * p + eps / K``, and since smoothing is affine and the mixing weights sum to 1 that
    is exactly timm's ``lam * smooth(y1) + (1 - lam) * smooth(y2)`` + SoftTargetCrossEntropy (the official
    ConvNeXt recipe). Smoothing in both places would smooth twice.
    """

    def __init__(self, cfg: DataConfig, num_classes: int) -> None:
        self.num_classes = num_classes
        self.prob = cfg.mixup_prob
        ops: list[v2.Transform] = []
        p: list[float] = []
        if cfg.mixup > 0:
            ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
            p.append(1 - cfg.mixup_switch_prob if cfg.cutmix > 0 else 1.0)
        if cfg.cutmix > 0:
            ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
            p.append(cfg.mixup_switch_prob if cfg.mixup > 0 else 1.0)
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops, p=p)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob >= 1 or float(torch.rand(())) < self.prob:
            return self.op(images, targets)
        return images, torch.nn.functional.one_hot(targets, self.num_classes).to(images.dtype)

    def __repr__(self) -> str:
        return f"MixupCutmix(prob={self.prob}, op={self.op})"


def build_mixup_cutmix(cfg: DataConfig, num_classes: int) -> MixupCutmix | None:
    """None when both alphas are 0 or mixup_prob is 0 (then targets stay class indices)."""
    if (cfg.mixup <= 0 and cfg.cutmix <= 0) or cfg.mixup_prob <= 0:
        return None
    if num_classes < 2:
        raise UserError(f"MixUp/CutMix need at least 2 classes, the dataset has {num_classes}")
    return MixupCutmix(cfg, num_classes)
