"""Our RandAugment is timm's ``rand-m9-mstd0.5-inc1`` (the official ConvNeXt recipe) op for op.

timm works on PIL images and ours on uint8 tensors: every op is run by both on the same image at the same
argument and compared after conversion, with no tolerance (ours repeats Pillow's arithmetic). The policy
(op set, probabilities, magnitude noise, fill, interpolation) is compared with the object timm builds
for the official command, and the sampling with the distribution timm's code draws from.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from convnext.data import DataConfig, build_train_transform
from convnext.data.randaugment import (
    INCREASING_OPS,
    PLAIN_OPS,
    SIGNED_OPS,
    TimmRandAugment,
    apply_op,
    op_argument,
    parse_randaugment,
)
from convnext.errors import UserError

aa = pytest.importorskip("timm.data.auto_augment")
Image = pytest.importorskip("PIL.Image")

FILL = (124, 116, 104)  # timm: round(255 * IMAGENET_DEFAULT_MEAN)
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESAMPLE["nearest"] = Image.Resampling.NEAREST
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    """A real photo (non-square crop, as after RandomResizedCrop at another size), a smooth synthetic image
    with flat and saturated regions, and small random noise of odd size."""
    g = torch.Generator().manual_seed(0)
    out = []
    photos = sorted((Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/val").rglob("*.JPEG"))
    if photos:
        out.append(decode_image(str(photos[0]), mode=ImageReadMode.RGB)[:, :176, :200].contiguous())
    across = torch.linspace(-60, 320, 96).clamp(0, 255).view(1, -1).expand(80, -1)
    down = torch.linspace(-30, 290, 80).clamp(0, 255).view(-1, 1).expand(-1, 96)
    blocks = torch.full((80, 96), 255.0)
    blocks[20:50, 30:70] = 0.0
    out.append(torch.stack([across, down, blocks]).round().to(torch.uint8))
    out.append(torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g))
    return out


def timm_op(img: torch.Tensor, op: str, arg: object, interpolation: str = "bicubic") -> torch.Tensor:
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    args = () if arg is None else (arg,)
    out = aa.NAME_TO_OP[op](pil, *args, fillcolor=FILL, resample=RESAMPLE[interpolation])
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def test_policy_is_timms_for_the_official_command() -> None:
    """The RandAugment timm builds for the official ConvNeXt train transform (datasets.py: create_transform
    with auto_augment rand-m9-mstd0.5-inc1, interpolation bicubic, ImageNet mean) against ours."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    official = create_transform(
        224,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    (timm_ra,) = [t for t in official.transforms if isinstance(t, aa.RandAugment)]
    ours = [t for t in build_train_transform(DataConfig()).transforms if isinstance(t, TimmRandAugment)][0]
    assert tuple(op.name for op in timm_ra.ops) == INCREASING_OPS == ours.ops  # 15 ops, no Identity
    assert {"Invert", "SolarizeAdd"} <= set(ours.ops) and "Identity" not in ours.ops
    assert timm_ra.num_layers == ours.spec.num_ops == 2 and timm_ra.choice_weights is None  # with replacement
    for op in timm_ra.ops:
        assert op.prob == ours.spec.prob == 0.5
        assert op.magnitude == ours.spec.magnitude == 9
        assert op.magnitude_std == ours.spec.magnitude_std == 0.5
        assert (op.magnitude_max or 10) == ours.spec.magnitude_max == 10
        assert op.kwargs["fillcolor"] == ours.fill == FILL
        assert op.kwargs["resample"] == Image.Resampling.BICUBIC and ours.interpolation == "bicubic"
        assert op.hparams.get("translate_pct", 0.45) == ours.translate_pct == 0.45
    # the plain (inc0) set is timm's too
    assert tuple(op.name for op in aa.rand_augment_transform("rand-m9", {}).ops) == PLAIN_OPS


@pytest.mark.parametrize("op", sorted(set(INCREASING_OPS) | set(PLAIN_OPS)))
def test_argument_at_each_magnitude_is_timms(op: str) -> None:
    hparams = {"translate_pct": 0.45}
    for m in (0.0, 1.3, 4.4, 5.0, 7.5, 9.0, 9.63, 10.0):
        ours = {op_argument(op, m, negate) for negate in (False, True)}
        for seed in range(4):  # timm negates the signed ops at random
            random.seed(seed)
            level = aa.LEVEL_TO_ARG[op]
            theirs = level(m, hparams)[0] if level is not None else None
            assert theirs in ours, (op, m, theirs, ours)


@pytest.mark.parametrize("op", sorted(set(INCREASING_OPS) | set(PLAIN_OPS)))
def test_op_output_equals_timms_pixel_for_pixel(op: str, images: list[torch.Tensor]) -> None:
    """Bit-identical for every op, magnitude and sign (Pillow's float32 blends, its SMOOTH filter, ImageOps
    tables, and its affine resampler are repeated operation for operation, so no tolerance is needed)."""
    for m in (0.0, 3.3, 9.0, 10.0):
        for negate in (False, True) if op in SIGNED_OPS else (False,):
            arg = op_argument(op, m, negate)
            for img in images:
                ours = apply_op(img, op, arg, fill=FILL)
                if op.startswith("Posterize") and arg == 0:
                    # m10 of PosterizeIncreasing keeps 0 bits: the Pillow timm was written for returns
                    # black; Pillow 13 refuses bits=0 (timm then raises mid-training). We keep black.
                    assert not ours.any()
                    continue
                assert torch.equal(ours, timm_op(img, op, arg)), (op, m, negate, tuple(img.shape))


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_geometric_ops_equal_timms_with_other_interpolations(
    interpolation: str, images: list[torch.Tensor]
) -> None:
    for op in GEOMETRIC:
        for m, negate in ((4.4, False), (9.6, True)):
            arg = op_argument(op, m, negate)
            for img in images:
                ours = apply_op(img, op, arg, fill=FILL, interpolation=interpolation)
                assert torch.equal(ours, timm_op(img, op, arg, interpolation)), (op, m, interpolation)


def test_sampling_follows_timms_distribution() -> None:
    """n=2 draws with replacement from 15 ops, each kept with p=0.5, magnitude N(9, 0.5) clipped to
    [0, 10], signed ops negated half the time (timm's AugmentOp.__call__ and RandAugment.__call__)."""
    ra = TimmRandAugment(parse_randaugment("rand-m9-mstd0.5-inc1"), fill=FILL)
    torch.manual_seed(0)
    n = 20000
    draws = [ra.sample() for _ in range(n)]
    applied = [d for image in draws for d in image]
    assert abs(len(applied) / n - 1.0) < 0.03  # 2 ops x p 0.5
    counts = {op: 0 for op in INCREASING_OPS}
    for op, _ in applied:
        counts[op] += 1
    for c in counts.values():
        assert abs(c / len(applied) - 1 / 15) < 0.01
    rot = torch.tensor([a for op, a in applied if op == "Rotate"], dtype=torch.float64)
    mags = rot.abs() / 3.0  # Rotate's argument is m / 10 * 30 degrees
    expected_mean = 9 - 0.5 * (math.exp(-2) / math.sqrt(2 * math.pi) - 2 * 0.5 * math.erfc(2 / math.sqrt(2)))
    assert abs(float(mags.mean()) - expected_mean) < 0.05
    assert abs(float(mags.std()) - 0.5) < 0.05 and float(mags.max()) == 10.0  # the clip at mmax
    assert abs(float((rot < 0).double().mean()) - 0.5) < 0.05
    uniform = TimmRandAugment(parse_randaugment("rand-m9-mstd101-inc1"))  # timm: mstd > 100 -> uniform
    assert uniform.spec.magnitude_std == math.inf


def test_randomness_comes_from_torch_only(images: list[torch.Tensor]) -> None:
    """Seeding torch's generator (per sample, per worker) decides every draw; Python's random and NumPy's
    global state are never touched, so the resumable per-sample seeding covers RandAugment."""
    ra = TimmRandAugment(parse_randaugment("rand-m9-mstd0.5-inc1"), fill=FILL)
    img = images[-1]
    py, npy = random.getstate(), np.random.get_state()
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(torch.stack([ra(img) for _ in range(20)]))
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy[1])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_train_transform_passes_the_recipes_fill_and_interpolation() -> None:
    cfg = DataConfig(interpolation="bilinear", mean=(0.5, 0.25, 1.0), randaugment="rand-n3-m7-mstd0-inc0")
    (ra,) = [t for t in build_train_transform(cfg).transforms if isinstance(t, TimmRandAugment)]
    assert (ra.interpolation, ra.fill, ra.ops) == ("bilinear", (128, 64, 255), PLAIN_OPS)
    assert (ra.spec.num_ops, ra.spec.magnitude, ra.spec.magnitude_std) == (3, 7.0, 0.0)


def test_tv_tensor_and_grayscale_inputs(images: list[torch.Tensor]) -> None:
    ra = TimmRandAugment(parse_randaugment("rand-n4-m9-p1-inc1"), fill=FILL)
    out = ra(tv_tensors.Image(images[-1]))
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8 and out.shape == images[-1].shape
    grey = images[-1][:1]
    for op in INCREASING_OPS:
        assert apply_op(grey, op, op_argument(op, 9.0), fill=FILL).shape == grey.shape
    with pytest.raises(TypeError, match="uint8"):
        ra(images[-1].float())


def test_randaugment_string_parsing() -> None:
    s = parse_randaugment("rand-m9-mstd0.5-inc1")
    assert (s.num_ops, s.magnitude, s.magnitude_std, s.increasing, s.prob) == (2, 9.0, 0.5, True, 0.5)
    s = parse_randaugment("rand-n3-m10-mmax12-p0.7")
    assert (s.num_ops, s.magnitude, s.magnitude_max, s.prob) == (3, 10.0, 12.0, 0.7)
    assert parse_randaugment("rand-m7-mstdinf").magnitude_std == math.inf
    for bad, msg in (
        ("auto-m9", "must start with 'rand-'"),
        ("rand-q9", "cannot read 'q9'"),
        ("rand-m-1", "cannot read"),
        ("rand-m11", "out of range"),
        ("rand-n0-m9", "out of range"),
        ("rand-m9-inc2", "inc0 or inc1"),
        ("rand-n2.5", "whole number"),
        ("rand-m9-p1.5", "out of range"),
    ):
        with pytest.raises(UserError, match=msg) as e:
            parse_randaugment(bad)
        assert str(e.value).startswith("config key data.randaugment") and "\n" not in str(e.value)
