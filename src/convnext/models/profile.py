"""Parameter and FLOP counts measured on the real modules (nothing hard-coded)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .factory import get_variant


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image: the paper's "FLOPs" convention.

    torch's flop counter counts a multiply-add as two FLOPs (convs and matmuls), so we halve it.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = next(model.parameters())
    x = torch.empty(1, in_chans, h, w, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def model_stats(
    name: str, img_size: int | None = None, num_classes: int = 1000
) -> dict[str, float | int | str]:
    """Params and GMACs of a named variant, built on the meta device so even the huge ones cost nothing."""
    variant = get_variant(name)
    size = img_size or variant.input_size
    with torch.device("meta"):
        model = variant(num_classes=num_classes).eval()
    return {
        "model": name,
        "family": variant.family,
        "params_m": count_params(model) / 1e6,
        "gflops": count_macs(model, size) / 1e9,
        "input_size": size,
    }
