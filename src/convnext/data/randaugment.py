"""timm's RandAugment (``rand-m9-mstd0.5-inc1``, the official ConvNeXt recipe) on uint8 image tensors.

The official training code builds its train transform with timm, whose RandAugment works on PIL images:
per image, ``n`` ops drawn uniformly with replacement from 15 (``_RAND_INCREASING_TRANSFORMS`` with ``inc1``:
AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness,
Sharpness, ShearX, ShearY, TranslateXRel, TranslateYRel; no Identity), each applied with probability ``p``
(0.5), at a magnitude drawn per op from N(m, mstd) clipped to [0, mmax]. Geometric ops resample with the
recipe's interpolation (bicubic in the official command) and fill with the mean pixel; translations move by
up to 0.45 of the side (``translate_pct``) times m / 10.

Why by hand: torchvision's RandAugment is a different policy (14 ops with Identity, no Invert/SolarizeAdd,
Posterize keeping 4 bits at m9 where timm keeps 1, bilinear, no magnitude noise), and timm's needs PIL images
(a uint8 tensor -> PIL -> tensor round trip per op costs more than the op). Here every op reproduces what
Pillow computes for timm, in the same arithmetic (float32 blends truncated as ``Image.blend``, Pillow's
3x3 SMOOTH kernel, ``ImageOps`` lookup tables, and the affine resampler of ``Image.transform`` with its
a = -1 bicubic kernel in float64, edge clamping and fill outside the image), so the outputs are equal to
timm's pixel for pixel (tests/test_randaugment.py compares every op with timm's on the same image).

Randomness comes only from torch's global generator (like torchvision's transforms), so a seed set per
sample or per worker covers the ops, and Python's ``random`` and NumPy are never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError

# The op sets of timm's RandAugment (timm/data/auto_augment.py: _RAND_INCREASING_TRANSFORMS for inc1,
# _RAND_TRANSFORMS otherwise), in timm's order.
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
PLAIN_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
# ops whose argument timm negates with probability 1/2
SIGNED_OPS = frozenset(
    {
        "Rotate",
        "ShearX",
        "ShearY",
        "TranslateXRel",
        "TranslateYRel",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
    }
)
LEVEL_DENOM = 10.0  # timm's magnitude scale: m / 10 is the fraction of each op's range


@dataclass(frozen=True)
class RandAugmentSpec:
    """timm's ``rand-m9-mstd0.5-inc1`` notation: n ops per image, magnitude m on a 0..10 scale, Gaussian
    magnitude noise mstd (inf: uniform in [0, m]), magnitude cap mmax, per-op probability p, inc (the
    "increasing" op variants, whose strength grows with m)."""

    num_ops: int = 2
    magnitude: float = 10.0
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = False


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse timm's RandAugment string, e.g. "rand-m9-mstd0.5-inc1" or "rand-n3-m10-p0.7"."""
    parts = str(spec).strip().split("-")
    if parts[0] != "rand":
        raise UserError(
            f"config key data.randaugment: {spec!r} must start with 'rand-' (e.g. rand-m9-mstd0.5-inc1)"
        )
    kw: dict[str, Any] = {}
    keys = {"n": "num_ops", "m": "magnitude", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob"}
    for part in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?|\.\d+|inf)", part)
        if m is None or m.group(1) not in (*keys, "inc"):
            raise UserError(
                f"config key data.randaugment: cannot read {part!r} in {spec!r} "
                f"(known: n, m, mstd, mmax, p, inc, e.g. rand-m9-mstd0.5-inc1)"
            )
        key, val = m.groups()
        num = float(val)
        if key == "inc":
            if num not in (0.0, 1.0):
                raise UserError(f"config key data.randaugment: {part!r} in {spec!r} must be inc0 or inc1")
            kw["increasing"] = bool(num)
        elif key == "n":
            if not num.is_integer():
                raise UserError(f"config key data.randaugment: {part!r} in {spec!r} must be a whole number")
            kw["num_ops"] = int(num)
        elif key == "mstd":
            kw["magnitude_std"] = math.inf if num > 100 else num  # timm: mstd > 100 means uniform
        else:
            kw[keys[key]] = num
    out = RandAugmentSpec(**kw)
    if not (out.num_ops >= 1 and 0 <= out.magnitude <= out.magnitude_max and 0 <= out.prob <= 1):
        raise UserError(
            f"config key data.randaugment: {spec!r} is out of range (n >= 1, 0 <= m <= mmax (10 unless "
            f"given), 0 <= p <= 1); write null to switch RandAugment off"
        )
    return out


def op_argument(op: str, magnitude: float, negate: bool = False, translate_pct: float = 0.45) -> Any:
    """The argument timm passes to ``op`` at ``magnitude`` (0..mmax), ``negate`` for the signed ops.

    Same arithmetic as timm's level functions, in the same order, so the floats are identical.
    """
    level = magnitude / LEVEL_DENOM
    sign = -1.0 if negate else 1.0
    if op == "Rotate":
        return sign * (level * 30.0)
    if op in ("ShearX", "ShearY"):
        return sign * (level * 0.3)
    if op in ("TranslateXRel", "TranslateYRel"):
        return sign * (level * translate_pct)
    if op in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return max(0.1, 1.0 + sign * (level * 0.9))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if op == "Posterize":
        return int(level * 4)
    if op == "PosterizeIncreasing":
        return 4 - int(level * 4)
    if op == "Solarize":
        return min(256, int(level * 256))
    if op == "SolarizeIncreasing":
        return 256 - min(256, int(level * 256))
    if op == "SolarizeAdd":
        return min(128, int(level * 110))
    if op in ("AutoContrast", "Equalize", "Invert"):
        return None
    raise ValueError(f"unknown RandAugment op {op!r}")


# ----------------------------------------------------------------------------------------- colour ops
def _luma(img: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 in 16.16 fixed point, rounded): int32 (H, W)."""
    r, g, b = img.to(torch.int32).unbind(0)
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _blend(degenerate: Tensor | float, img: Tensor, factor: float) -> Tensor:
    """Pillow's ``Image.blend(degenerate, img, factor)``: ``deg + factor * (img - deg)`` in float32 (the C
    code's types, one rounding per operation as there), truncated to uint8, clipped when the factor
    extrapolates. ``degenerate``: an image broadcastable to ``img``, or one grey level."""
    alpha = float(torch.tensor(factor, dtype=torch.float32))  # C casts the double factor to float
    out = img.to(torch.float32)
    if isinstance(degenerate, Tensor):
        deg = degenerate.to(torch.float32)
        out.sub_(deg).mul_(alpha).add_(deg)
    else:  # a constant: deg + (img - deg) * a, with deg exact in float32
        out.sub_(degenerate).mul_(alpha).add_(degenerate)
    if not 0.0 <= factor <= 1.0:
        out.clamp_(0.0, 255.0)
    return out.to(torch.uint8)


def _smooth(img: Tensor) -> Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13) with its float32 sums in
    its order, +0.5 and truncation; the 1-px border is copied unchanged as Pillow does."""
    c, h, w = img.shape
    if h < 3 or w < 3:
        return img.clone()
    k1 = float(torch.tensor(1.0, dtype=torch.float32) / 13.0)
    k5 = float(torch.tensor(5.0, dtype=torch.float32) / 13.0)
    x = img.to(torch.float32)
    tmp = torch.empty(c, h - 2, w - 2)

    def row_sum(r: Tensor, centre: float, acc: Tensor) -> Tensor:  # (in[x-1] k0 + in[x] k1) + in[x+1] k2
        torch.mul(r[..., :-2], k1, out=acc)
        acc.add_(torch.mul(r[..., 1:-1], centre, out=tmp))
        return acc.add_(torch.mul(r[..., 2:], k1, out=tmp))

    ss = row_sum(x[:, 2:], k1, torch.empty(c, h - 2, w - 2)).add_(0.5)  # offset 0.5 + row y+1
    ss.add_(row_sum(x[:, 1:-1], k5, torch.empty(c, h - 2, w - 2)))
    ss.add_(row_sum(x[:, :-2], k1, torch.empty(c, h - 2, w - 2)))
    out = img.clone()
    out[:, 1:-1, 1:-1] = ss.clamp_(0.0, 255.0)
    return out


def _apply_lut(img: Tensor, luts: Tensor) -> Tensor:
    """Per-channel lookup tables (C, 256) applied to a uint8 (C, H, W) image."""
    c = img.shape[0]
    flat = img.reshape(c, -1).to(torch.int64)
    return torch.gather(luts, 1, flat).reshape(img.shape).to(torch.uint8)


def _autocontrast(img: Tensor) -> Tensor:
    """Pillow's ``ImageOps.autocontrast`` (no cutoff): each channel's [lo, hi] stretched to [0, 255],
    lut[i] = int(i * scale + offset) in Python floats (scale and offset as Pillow computes them)."""
    c = img.shape[0]
    flat = img.reshape(c, -1)
    ix = torch.arange(256, dtype=torch.float64)
    luts = []
    for lo, hi in zip(flat.amin(1).tolist(), flat.amax(1).tolist()):
        if hi <= lo:
            luts.append(torch.arange(256))
            continue
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        luts.append((ix * scale + offset).trunc_().clamp_(0, 255).to(torch.int64))
    return _apply_lut(img, torch.stack(luts))


def _equalize(img: Tensor) -> Tensor:
    """Pillow's ``ImageOps.equalize``: per channel, lut[i] = (step // 2 + sum(hist[:i])) // step with
    step = (pixels - count of the brightest level present) // 255; identity when step is 0 or one level
    is present. All channels at once (one histogram of channel-offset values)."""
    c = img.shape[0]
    flat = img.reshape(c, -1).to(torch.int64)
    flat += torch.arange(0, 256 * c, 256).view(c, 1)
    hist = torch.bincount(flat.view(-1), minlength=256 * c).view(c, 256)
    present = hist != 0
    brightest = 255 - present.flip(1).to(torch.uint8).argmax(1)  # index of the last level present
    step = (hist.sum(1) - hist.gather(1, brightest.view(c, 1)).view(c)) // 255
    keep = (present.sum(1) <= 1) | (step == 0)
    step = step.clamp(min=1).view(c, 1)
    lut = ((step // 2 + torch.cumsum(hist, 1) - hist) // step).clamp_(max=255)
    lut = torch.where(keep.view(c, 1), torch.arange(256), lut)
    return _apply_lut(img, lut)


def _posterize(img: Tensor, bits: int) -> Tensor:
    if bits >= 8:
        return img
    return img & ((0xFF << (8 - max(bits, 0))) & 0xFF)


def _solarize(img: Tensor, threshold: int) -> Tensor:
    if threshold > 255:  # 256: nothing is inverted (and 256 does not fit the uint8 comparison)
        return img.clone()
    return img ^ (img >= threshold).to(torch.uint8).mul_(255)  # 255 - x == x ^ 255 (uint8 arithmetic: fast)


def _solarize_add(img: Tensor, add: int, threshold: int = 128) -> Tensor:
    """x + add below the threshold, clipped at 255 (never reached for timm's add <= 110 below 128)."""
    if threshold + add <= 256:
        return img + (img < threshold).to(torch.uint8).mul_(add)
    added = (img.to(torch.int16) + add).clamp_(max=255).to(torch.uint8)
    return torch.where(img < threshold, added, img)


def _color(img: Tensor, factor: float) -> Tensor:
    if img.shape[0] == 1:  # Pillow: an L image is its own grey version
        return img.clone()
    return _blend(_luma(img).to(torch.uint8), img, factor)


def _contrast(img: Tensor, factor: float) -> Tensor:
    luma = _luma(img) if img.shape[0] == 3 else img[0].to(torch.int64)
    mean = int(int(luma.sum()) / luma.numel() + 0.5)
    return _blend(float(mean), img, factor)


def _brightness(img: Tensor, factor: float) -> Tensor:
    return _blend(0.0, img, factor)


def _sharpness(img: Tensor, factor: float) -> Tensor:
    return _blend(_smooth(img), img, factor)


# -------------------------------------------------------------------------------------- geometric ops
def _pil_affine(img: Tensor, matrix: Sequence[float], fill: Sequence[int], interpolation: str) -> Tensor:
    """Pillow's ``Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)`` on a uint8 (C, H, W)
    tensor: output pixel (x, y) samples the input at ``matrix @ (x + 0.5, y + 0.5, 1)``.

    Same arithmetic as Pillow's C resampler: float64 coordinates; bicubic with a = -1 as Horner
    polynomials, first along x then along y (bilinear likewise); neighbours clamped to the edge;
    truncation to uint8; pixels whose sample point lies outside the image take ``fill``. Nearest follows
    Pillow's own nearest paths (16.16 fixed point, or the pure-translation table).
    """
    c, h, w = img.shape
    a, b, cx, d, e, cy = (float(v) for v in matrix)
    if interpolation == "nearest":
        return _pil_affine_nearest(img, (a, b, cx, d, e, cy), fill)
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64).unsqueeze(1) + 0.5
    # A matrix that keeps y (or x) at the pixel centre needs one 1-D pass: there Pillow's second pass
    # returns its middle tap unchanged (t = 0). Pillow computes (m0 * x + m1 * y) + m2; a zero term adds an
    # exact 0.0, so dropping it gives the same doubles.
    if d == 0.0 and e == 1.0 and cy == 0.0:
        pos = a * xs + cx if b == 0.0 else (a * xs + b * ys) + cx  # (w,) or (h, w)
        return _resample_axis(img, pos.expand(1, w) if pos.ndim == 1 else pos, 2, fill, interpolation)
    if a == 1.0 and b == 0.0 and cx == 0.0:
        pos = e * ys + cy if d == 0.0 else (d * xs + e * ys) + cy  # (h, 1) or (h, w)
        return _resample_axis(img, pos, 1, fill, interpolation)
    xin = (a * xs + b * ys) + cx
    yin = (d * xs + e * ys) + cy
    valid = (xin >= 0.0) & (xin < w) & (yin >= 0.0) & (yin < h)
    coef = _coefficients(img, 2, interpolation)
    n = coef.shape[0]
    coef = coef.reshape(n, c, -1)  # (n, C, H * (W + 1))
    bx, dx = _base(xin, w)
    by, dy = _base(yin, h)
    col = bx.clamp_(0, w)
    offsets = torch.tensor([-2, -1, 0, 1] if interpolation == "bicubic" else [-1, 0]).view(-1, 1, 1)
    rows_at = (by.unsqueeze(0) + offsets).clamp_(0, h - 1)  # tap rows y-1..y+2 (y..y+1): (k, H, W)
    idx = (rows_at * (w + 1) + col).view(1, 1, -1).expand(n, c, -1)
    taps = torch.gather(coef, 2, idx).view(n, c, -1, h, w)  # every tap row at once: (n, C, k, H, W)
    rows = _first_pass(taps, dx, interpolation).unbind(1)
    out = _to_uint8(_second_pass(rows, dy, interpolation), interpolation)
    return _fill_outside(out, valid, fill)


def _resample_axis(img: Tensor, pos: Tensor, dim: int, fill: Sequence[int], interpolation: str) -> Tensor:
    """Pillow's resampling along one axis (``dim`` 2: x, 1: y) at source positions ``pos``, a (1, W) or
    (H, 1) vector when every row (column) samples the same positions (a translation: rows are then
    selected whole instead of gathered pixel by pixel), else (H, W)."""
    c, h, w = img.shape
    # Work where memory is contiguous: per-pixel positions are gathered along x (a row), and a translation
    # selects whole rows; the other cases run on the transposed image (two cheap uint8 copies).
    if (dim == 1 and pos.shape[1] != 1) or (dim == 2 and pos.shape[0] == 1):
        flipped = img.transpose(1, 2).contiguous()
        out = _resample_axis(flipped, pos.t().contiguous(), 3 - dim, fill, interpolation)
        return out.transpose(1, 2).contiguous()
    size = img.shape[dim]
    valid = (pos >= 0.0) & (pos < size)
    base, frac = _base(pos, size)
    base.clamp_(0, size)
    coef = _coefficients(img, dim, interpolation)  # (n, C, size + 1, W) or (n, C, H, size + 1)
    if pos.shape[0 if dim == 2 else 1] == 1:  # the same index for every row (dim 2) or column (dim 1)
        taps = coef.index_select(dim + 1, base.flatten())
    else:
        taps = torch.gather(coef, dim + 1, base.expand(coef.shape[0], c, h, w))
    out = _to_uint8(_first_pass(taps, frac, interpolation), interpolation)
    return _fill_outside(out, valid.expand(h, w), fill)


def _fill_outside(out: Tensor, valid: Tensor, fill: Sequence[int]) -> Tensor:
    """Pixels whose sample point fell outside the image take the fill colour. As uint8 arithmetic,
    ``out * valid + fill * (1 - valid)`` (exact: one term is always 0), which runs several times faster
    than a boolean ``where`` or ``masked_fill``."""
    keep = valid.to(torch.uint8)
    fill_t = torch.tensor([int(v) for v in fill][: out.shape[0]], dtype=torch.uint8).view(-1, 1, 1)
    return out.mul_(keep).add_(fill_t * (1 - keep))


def _base(pos: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pillow's ``x = FLOOR(pos - 0.5)`` and ``d = (pos - 0.5) - x``, with x shifted by one so that it
    indexes :func:`_coefficients` (0..size for sample points inside the image)."""
    p = pos - 0.5
    base = torch.floor(p)
    frac = p - base
    return base.to(torch.int64).add_(1), frac


# Pillow's macros, whose operations (and so float64 roundings) are repeated in the same order:
#   BICUBIC(v1..v4, d): p1 = v2, p2 = -v1 + v3, p3 = 2 * (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4,
#                       v = p1 + d * (p2 + d * (p3 + d * p4))
#   BILINEAR(a, b, d):  v = a + (b - a) * d
# In the first pass the taps are pixels (integers), so p1..p4 are exact integers (ints in the C code too):
# they are computed once per source position (not once per output pixel), and one gather over the stacked
# planes fetches all of a pixel's coefficients.
def _coefficients(img: Tensor, dim: int, interpolation: str) -> Tensor:
    """First-pass coefficients at every base position 0..size along ``dim`` (position b stands for taps
    b-2..b+1 bicubic, b-1..b bilinear, clamped to the image) as planes: (n, C, H, W + 1) or (n, C, H + 1, W)
    int16, n = 4 (p1..p4) bicubic, 2 (v1, v2 - v1) bilinear."""
    size = img.shape[dim]
    lo, n = (2, 4) if interpolation == "bicubic" else (1, 2)
    x = img.to(torch.int16)
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, size - 1, 1)
    shape = list(x.shape)
    shape[dim] = lo
    left = first.expand(shape)
    shape[dim] = n - lo
    src = torch.cat((left, x, last.expand(shape)), dim)  # edge-replicated: size + n entries along dim
    v = [src.narrow(dim, i, size + 1) for i in range(n)]
    if interpolation == "bicubic":
        v1, v2, v3, v4 = v
        return torch.stack((v2, v3 - v1, (v1 - v2) * 2 + v3 - v4, v2 - v1 - v3 + v4))
    v1, v2 = v
    return torch.stack((v1, v2 - v1))


def _first_pass(taps: Tensor, t: Tensor, interpolation: str) -> Tensor:
    """BICUBIC / BILINEAR at offsets ``t`` from gathered first-pass coefficients (n, C, H, W) -> float64."""
    parts = taps.to(torch.float64)  # (n, C, H, W): one contiguous conversion
    if interpolation == "bicubic":
        p1, p2, p3, p4 = parts
        return p4.mul_(t).add_(p3).mul_(t).add_(p2).mul_(t).add_(p1)
    v1, diff = parts
    return diff.mul_(t).add_(v1)


def _second_pass(v: list[Tensor], t: Tensor, interpolation: str) -> Tensor:
    """The same macros along y on the first pass's float64 rows."""
    if interpolation == "bicubic":
        v1, v2, v3, v4 = v
        p2 = v3 - v1  # -v1 + v3
        p3 = (v1 - v2).mul_(2.0).add_(v3).sub_(v4)
        p4 = (v2 - v1).sub_(v3).add_(v4)  # -v1 + v2 - v3 + v4
        return p4.mul_(t).add_(p3).mul_(t).add_(p2).mul_(t).add_(v2)
    v1, v2 = v
    return (v2 - v1).mul_(t).add_(v1)


def _to_uint8(v: Tensor, interpolation: str) -> Tensor:
    if interpolation == "bicubic":  # Pillow: <= 0 -> 0, >= 255 -> 255, else truncate
        v = v.clamp_(0.0, 255.0)
    return v.to(torch.uint8)


def _pil_affine_nearest(img: Tensor, m: tuple[float, ...], fill: Sequence[int]) -> Tensor:
    c, h, w = img.shape
    a, b, cx, d, e, cy = m
    if b == 0.0 and d == 0.0:  # Pillow's ImagingScaleAffine: positions accumulated in float64
        xo, xs = cx + a * 0.5, []
        for _ in range(w):
            xs.append(xo)
            xo += a
        yo, ys = cy + e * 0.5, []
        for _ in range(h):
            ys.append(yo)
            yo += e
        xi = torch.tensor([-1 if v < 0 else int(v) for v in xs], dtype=torch.int64).view(1, w).expand(h, w)
        yi = torch.tensor([-1 if v < 0 else int(v) for v in ys], dtype=torch.int64).view(h, 1).expand(h, w)
    else:  # Pillow's affine_fixed: 16.16 fixed point, exact in integers

        def fix(v: float) -> int:
            return math.floor(v * 65536.0 + 0.5)

        a0, a1, a3, a4 = fix(a), fix(b), fix(d), fix(e)
        a2 = fix(cx + a * 0.5 + b * 0.5)
        a5 = fix(cy + d * 0.5 + e * 0.5)
        xg = torch.arange(w, dtype=torch.int64).view(1, w)
        yg = torch.arange(h, dtype=torch.int64).view(h, 1)
        xi = (a2 + yg * a1 + xg * a0) >> 16
        yi = (a5 + yg * a4 + xg * a3) >> 16
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(1, -1).expand(c, -1)
    out = torch.gather(img.reshape(c, h * w), 1, idx).view(c, h, w)
    return _fill_outside(out, valid, fill)


def _rotate(img: Tensor, degrees: float, fill: Sequence[int], interpolation: str) -> Tensor:
    """Pillow's ``Image.rotate(degrees)`` (counter-clockwise about the centre, same size): its matrix,
    built in the same float steps (angle mod 360, cos/sin rounded to 15 digits)."""
    _, h, w = img.shape
    angle = degrees % 360.0
    if angle == 0:
        return img.clone()
    rad = -math.radians(angle)
    cos, sin = round(math.cos(rad), 15), round(math.sin(rad), 15)
    m = [cos, sin, 0.0, round(-math.sin(rad), 15), cos, 0.0]
    cxc, cyc = w / 2, h / 2
    m[2] = m[0] * -cxc + m[1] * -cyc + m[2]
    m[5] = m[3] * -cxc + m[4] * -cyc + m[5]
    m[2] += cxc
    m[5] += cyc
    return _pil_affine(img, m, fill, interpolation)


def apply_op(
    img: Tensor, op: str, arg: Any, *, fill: Sequence[int] = (128, 128, 128), interpolation: str = "bicubic"
) -> Tensor:
    """One RandAugment op with its (already drawn) argument on a uint8 (C, H, W) image, as timm's PIL op."""
    if op == "AutoContrast":
        return _autocontrast(img)
    if op == "Equalize":
        return _equalize(img)
    if op == "Invert":
        return 255 - img
    if op.startswith("Posterize"):
        return _posterize(img, arg)
    if op.startswith("Solarize") and op != "SolarizeAdd":
        return _solarize(img, arg)
    if op == "SolarizeAdd":
        return _solarize_add(img, arg)
    if op.startswith("Color"):
        return _color(img, arg)
    if op.startswith("Contrast"):
        return _contrast(img, arg)
    if op.startswith("Brightness"):
        return _brightness(img, arg)
    if op.startswith("Sharpness"):
        return _sharpness(img, arg)
    _, h, w = img.shape
    if op == "Rotate":
        return _rotate(img, arg, fill, interpolation)
    if op == "ShearX":
        return _pil_affine(img, (1.0, arg, 0.0, 0.0, 1.0, 0.0), fill, interpolation)
    if op == "ShearY":
        return _pil_affine(img, (1.0, 0.0, 0.0, arg, 1.0, 0.0), fill, interpolation)
    if op == "TranslateXRel":
        return _pil_affine(img, (1.0, 0.0, arg * w, 0.0, 1.0, 0.0), fill, interpolation)
    if op == "TranslateYRel":
        return _pil_affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, arg * h), fill, interpolation)
    raise ValueError(f"unknown RandAugment op {op!r}")


class TimmRandAugment(torch.nn.Module):
    """timm's RandAugment policy on uint8 (C, H, W) tensors (C = 1 or 3), drawn from torch's generator.

    ``fill``: the mean pixel for geometric ops (timm: ``round(255 * mean)``); ``interpolation``: bicubic
    (the official recipe passes it), bilinear or nearest.
    """

    def __init__(
        self,
        spec: RandAugmentSpec,
        fill: Sequence[int] = (128, 128, 128),
        interpolation: str = "bicubic",
        translate_pct: float = 0.45,
    ) -> None:
        super().__init__()
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation {interpolation!r} is not bicubic, bilinear or nearest")
        self.spec = spec
        self.ops = INCREASING_OPS if spec.increasing else PLAIN_OPS
        self.fill = tuple(int(v) for v in fill)
        self.interpolation = interpolation
        self.translate_pct = translate_pct

    def sample(self) -> list[tuple[str, Any]]:
        """This image's ops and their arguments: ``n`` draws with replacement, each kept with probability
        p, magnitude ~ N(m, mstd) (uniform in [0, m] for mstd inf) clipped to [0, mmax], sign +-1."""
        s = self.spec
        picks = torch.randint(len(self.ops), (s.num_ops,)).tolist()
        out = []
        for i in picks:
            if s.prob < 1.0 and float(torch.rand(())) > s.prob:
                continue
            m = s.magnitude
            if s.magnitude_std == math.inf:
                m = float(torch.rand(())) * m
            elif s.magnitude_std > 0:
                m = m + float(torch.randn(())) * s.magnitude_std
            m = max(0.0, min(m, s.magnitude_max))
            op = self.ops[i]
            negate = op in SIGNED_OPS and float(torch.rand(())) > 0.5
            out.append((op, op_argument(op, m, negate, self.translate_pct)))
        return out

    def forward(self, img: Tensor) -> Tensor:
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3):
            raise TypeError("TimmRandAugment expects a uint8 (C, H, W) tensor with 1 or 3 channels")
        x = img.as_subclass(Tensor)
        for op, arg in self.sample():
            x = apply_op(x, op, arg, fill=self.fill, interpolation=self.interpolation)
        if type(img) is not Tensor:  # a tv_tensors.Image stays one
            from torchvision import tv_tensors

            return tv_tensors.wrap(x, like=img)
        return x

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"n={s.num_ops}, m={s.magnitude}, mstd={s.magnitude_std}, mmax={s.magnitude_max}, p={s.prob}, "
            f"inc={int(s.increasing)}, interpolation={self.interpolation}, fill={self.fill}"
        )
