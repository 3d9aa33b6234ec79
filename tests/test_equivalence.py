"""Same weights, same logits: timm, torchvision and transformers ConvNeXts moved into ours by our converters.

Every parameter is randomised first (layer scale, GRN gamma/beta included: at their default init of 1e-6
and 0 a wrong mapping of the block would be invisible). Big variants are built on the meta device and
filled with random values, so the cost is the forward pass, not the paper's init.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import convnext
from convnext.weights.load import load_checkpoint, prepare

timm = pytest.importorskip("timm")
TOL = 1e-4
SLOW = pytest.mark.slow
# Square and non-square: a non-square map catches any H/W transpose of a kernel in a conversion. The
# 27-block variants run at half the size (stage 3 still 2x4, the last stage 1x2) to stay fast on 2 cores.
INPUTS = [(64, 64), (64, 96)]
INPUTS_DEEP = [(32, 32), (32, 64)]
DEEP = ("small", "base", "large", "huge")  # "large" also matches xlarge


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values of a sensible scale for every parameter, so that every mapping shows in the logits."""
    torch.manual_seed(seed)
    for name, p in module.named_parameters():  # in place, uniform: the cheapest fill (xlarge/huge)
        fan_in = math.prod(p.shape[1:])
        if p.ndim >= 2 and p.shape[0] > 1 and fan_in > 1:  # conv and linear weights: unit output variance
            bound = math.sqrt(3 / fan_in)
            p.uniform_(-bound, bound)
        elif p.ndim == 1 and name.endswith("weight"):  # norm weights (and timm's GRN weight)
            p.uniform_(0.8, 1.2)
        else:  # biases, layer scale (C,), (C, 1, 1), GRN (1, 1, 1, C)
            p.uniform_(-0.3, 0.3)
    return module.eval()


def on_meta(build):
    """Build without the random init (seconds for xlarge/huge), then allocate uninitialised memory."""
    with torch.device("meta"):
        m = build()
    return m.to_empty(device="cpu")


def ours_from(reference_sd: dict, arch: str) -> nn.Module:
    prepared = prepare(reference_sd)
    with torch.device("meta"):
        model = convnext.create_model(arch, num_classes=prepared.info.num_classes)
    info = load_checkpoint(model, prepared, assign=True)
    assert not info.missing and not info.unexpected
    return model.eval()


@torch.no_grad()
def assert_same_logits(ref_fn, ours: nn.Module) -> None:
    deep = any(s in getattr(ours, "variant", "") for s in DEEP)
    for h, w in INPUTS_DEEP if deep else INPUTS:
        x = torch.randn(1, 3, h, w)
        diff = (ref_fn(x) - ours(x)).abs().max().item()
        assert diff <= TOL, f"max |logit difference| {diff:.2e} at {h}x{w}"


SIZES_V1 = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")
SIZES_V2 = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")  # every size timm has
TIMM_V1 = [f"convnext_{s}" for s in SIZES_V1]
TIMM_V2 = [f"convnextv2_{s}" for s in SIZES_V2]
BIG = {"convnext_large", "convnext_xlarge", "convnextv2_large", "convnextv2_huge"}  # slow: 5-30 s each


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in TIMM_V1 + TIMM_V2]
)
def test_timm(arch: str) -> None:
    ref = randomize_(on_meta(lambda: timm.create_model(arch, pretrained=False, num_classes=10)))
    assert_same_logits(ref, ours_from(ref.state_dict(), arch))


def test_timm_22k_head_sets_num_classes(tmp_path) -> None:
    ref = randomize_(timm.create_model("convnext_atto", pretrained=False, num_classes=21841))
    path = tmp_path / "convnext_atto_22k.pth"
    torch.save({"model": ref.state_dict()}, path)
    ours = convnext.create_model("convnext_atto", pretrained=str(path)).eval()
    assert ours.num_classes == 21841 and ours.head.out_features == 21841
    assert_same_logits(ref, ours)


@pytest.mark.parametrize(
    "arch",
    ["convnext_tiny", "convnext_small", "convnext_base", pytest.param("convnext_large", marks=SLOW)],
)
def test_torchvision(arch: str) -> None:
    tv = pytest.importorskip("torchvision.models")
    ref = randomize_(on_meta(lambda: getattr(tv, arch)(weights=None, num_classes=10)))
    assert prepare(ref.state_dict()).info.format == "torchvision"
    assert_same_logits(ref, ours_from(ref.state_dict(), arch))


HF_SHAPES = {  # depths, hidden sizes -> our architecture
    "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "convnext_atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
}


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("arch", list(HF_SHAPES))
def test_transformers(arch: str, v2: bool) -> None:
    tr = pytest.importorskip("transformers")
    depths, sizes = HF_SHAPES[arch]
    if v2:
        cfg = tr.ConvNextV2Config(depths=depths, hidden_sizes=sizes, num_labels=10)
        ref = randomize_(tr.ConvNextV2ForImageClassification(cfg))
        arch = arch.replace("convnext_", "convnextv2_")
    else:
        cfg = tr.ConvNextConfig(depths=depths, hidden_sizes=sizes, num_labels=10)
        ref = randomize_(tr.ConvNextForImageClassification(cfg))
    assert prepare(ref.state_dict()).info.format == ("transformers-v2" if v2 else "transformers")
    assert_same_logits(lambda x: ref(pixel_values=x).logits, ours_from(ref.state_dict(), arch))
