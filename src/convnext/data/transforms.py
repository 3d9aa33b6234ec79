"""The paper's train/eval transforms with torchvision.transforms.v2 on uint8 tensors, and batch MixUp/CutMix.

Images stay uint8 through every geometric/colour op (cheap, and exactly what RandAugment's ops expect) and
become float once at the end: ToDtype(float32, scale=True) -> Normalize -> RandomErasing (timm erases the
normalized tensor with per-pixel N(0, 1) noise, "pixel" mode; v2.RandomErasing(value="random") does the same).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import grid_sample
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..errors import UserError
from .config import DataConfig

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


# ------------------------------------------------------------------------------------------- RandAugment
@dataclass(frozen=True)
class RandAugmentSpec:
    """timm's ``rand-m9-mstd0.5-inc1`` notation: n ops per image, magnitude m on a 0..10 scale, Gaussian
    magnitude noise mstd, magnitude cap mmax, per-op probability p, inc (the "increasing" op variants)."""

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = False


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse timm's RandAugment string, e.g. "rand-m9-mstd0.5-inc1" or "rand-n3-m10-p0.7"."""
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise UserError(
            f"config key data.randaugment: {spec!r} must start with 'rand-' (e.g. rand-m9-mstd0.5-inc1)"
        )
    kw: dict[str, Any] = {}
    keys = {"n": "num_ops", "m": "magnitude", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob"}
    for part in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(-?[\d.]+|inf)", part)
        if m is None or m.group(1) not in (*keys, "inc"):
            raise UserError(
                f"config key data.randaugment: cannot read {part!r} in {spec!r} "
                f"(known: n, m, mstd, mmax, p, inc)"
            )
        key, val = m.groups()
        try:
            num = float(val)
        except ValueError:
            raise UserError(f"config key data.randaugment: {part!r} in {spec!r} is not a number") from None
        if key == "inc":
            kw["increasing"] = bool(int(num))
        elif key == "n":
            kw["num_ops"] = int(num)
        else:
            kw[keys[key]] = num
    out = RandAugmentSpec(**kw)
    if out.num_ops < 0 or not 0 <= out.magnitude <= out.magnitude_max or not 0 <= out.prob <= 1:
        raise UserError(
            f"config key data.randaugment: {spec!r} is out of range (n >= 0, 0 <= m <= mmax, 0 <= p <= 1)"
        )
    return out


class TimmRandAugment(v2.RandAugment):
    """torchvision's RandAugment driven the way timm's ``rand-m9-mstd0.5-inc1`` is.

    Magnitude: torchvision picks ``linspace(0, max_op, num_magnitude_bins)[magnitude]``; timm uses
    ``max_op * m / 10``. With 101 bins, bin ``round(10 * m)`` is exactly ``max_op * m / 10`` at 0.1 resolution
    of timm's scale (m9 -> bin 90 of 0..100), so the op strengths match (ShearX/Y 0.3, Rotate 30 deg,
    Brightness/Color/Contrast/Sharpness 1 +- 0.9, Solarize threshold 26/256; Translate 0.45*size in both).
    Magnitude noise (mstd): torchvision has none; like timm we draw m ~ N(m, mstd) clipped to [0, mmax]
    for EACH op, by running the parent with num_ops=1, ``n`` times, each with its own drawn bin. Each op
    is applied with probability p (timm's default 0.5; torchvision always applies). torchvision's ops are
    already the "increasing" variants (inc1). Remaining differences to timm: the op set (torchvision has
    Identity, timm has Invert and SolarizeAdd), and Posterize keeps 4 bits at m9 (timm's keeps 1).
    Hand-written because no library provides timm's magnitude noise on torchvision's v2 ops.
    """

    BINS = 101
    GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

    def __init__(self, spec: RandAugmentSpec, fill: Any = None) -> None:
        super().__init__(
            num_ops=1,
            magnitude=self._bin(spec.magnitude, spec.magnitude_max),
            num_magnitude_bins=self.BINS,
            interpolation=InterpolationMode.BILINEAR,
            fill=fill,
        )
        self.spec = spec
        self.fill_values = [float(v) for v in fill] if isinstance(fill, (list, tuple)) else None

    def _apply_image_or_video_transform(self, image, transform_id, magnitude, interpolation, fill):  # type: ignore[override]
        if (
            transform_id in self.GEOMETRIC
            and _inverse_affine is not None
            and self.fill_values is not None
            and type(image) is torch.Tensor
            and image.ndim == 3
            and image.dtype == torch.uint8
            and len(self.fill_values) == image.shape[0]
        ):
            return _fast_geometric(image, transform_id, magnitude, self.fill_values)
        return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)

    @classmethod
    def _bin(cls, m: float, mmax: float) -> int:
        return int(round(min(max(m, 0.0), mmax, 10.0) * (cls.BINS - 1) / 10))

    def forward(self, *inputs: Any) -> Any:
        x = inputs if len(inputs) > 1 else inputs[0]
        s = self.spec
        for _ in range(s.num_ops):
            if s.prob < 1 and float(torch.rand(())) >= s.prob:
                continue
            m = s.magnitude
            if s.magnitude_std == math.inf:
                m = float(torch.rand(())) * m
            elif s.magnitude_std > 0:
                m = m + float(torch.randn(())) * s.magnitude_std
            self.magnitude = self._bin(m, s.magnitude_max)
            x = super().forward(x)
        return x


try:  # the matrix convention of torchvision's own affine ops; without it the parent's ops are used
    from torchvision.transforms.functional import _get_inverse_affine_matrix as _inverse_affine
except ImportError:  # pragma: no cover
    _inverse_affine = None


def _fast_geometric(img: torch.Tensor, op: str, magnitude: float, fill: list[float]) -> torch.Tensor:
    """RandAugment's Shear/Translate/Rotate on a uint8 (C, H, W) image, bilinear, filled with ``fill``.

    Hand-written for speed (2-3x faster per op than torchvision's tensor affine, the largest cost of the
    train pipeline): the sampling grid is built by broadcasting instead of a (H*W, 3) x (3, 2) bmm, and the
    fill needs no extra mask channel: sampling (img - fill) with zero padding and adding fill back blends
    border pixels with the fill exactly as sampling an image padded with the fill colour (PIL's behaviour).
    Same matrices as torchvision (same geometry; translations are bit-identical); border pixels differ
    slightly because torchvision's tensor path weights them by the in-bounds mask twice.
    """
    _, h, w = img.shape
    if op in ("ShearX", "ShearY"):  # torchvision: shear about the top-left corner, angle atan(magnitude)
        deg = math.degrees(math.atan(magnitude))
        shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
        mat = _inverse_affine([-w * 0.5, -h * 0.5], 0.0, [0.0, 0.0], 1.0, shear)
    elif op in ("TranslateX", "TranslateY"):
        t = float(int(magnitude))
        mat = _inverse_affine([0.0, 0.0], 0.0, [t, 0.0] if op == "TranslateX" else [0.0, t], 1.0, [0.0, 0.0])
    else:  # Rotate: torchvision's rotate passes -angle to the affine matrix
        mat = _inverse_affine([0.0, 0.0], -magnitude, [0.0, 0.0], 1.0, [0.0, 0.0])
    a, b, c, d, e, f = mat
    xs = torch.linspace((1 - w) * 0.5, (w - 1) * 0.5, w)
    ys = torch.linspace((1 - h) * 0.5, (h - 1) * 0.5, h).unsqueeze(1)
    grid = torch.stack(((a * xs + b * ys + c) / (0.5 * w), (d * xs + e * ys + f) / (0.5 * h)), -1)
    fill_t = torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1)
    x = img.unsqueeze(0).float().sub_(fill_t)
    out = grid_sample(x, grid.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.add_(fill_t).round_().clamp_(0, 255).to(torch.uint8)[0]


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
        fill = [int(round(255 * m)) for m in cfg.mean]  # timm fills geometric ops with the mean pixel
        ts.append(TimmRandAugment(parse_randaugment(cfg.randaugment), fill=fill))
    if finish:
        ts += _to_float(cfg)
        if cfg.reprob > 0:
            ts.append(v2.RandomErasing(p=cfg.reprob, value="random"))
    return v2.Compose(ts)


class BatchFinish(torch.nn.Module):
    """The end of the train recipe, on a uint8 (B, 3, H, W) batch already on the training device:
    float + normalize, then RandomErasing drawn per sample.

    Converting once per batch on the GPU instead of per image in the workers takes ~15% off each worker's
    cost and moves a quarter of the bytes through pinned memory and PCIe (BENCHMARKS.md); the values are
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
