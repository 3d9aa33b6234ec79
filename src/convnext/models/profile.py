"""Parameter and FLOP counts measured on the real modules (nothing hard-coded).

``python -m convnext.models.profile`` writes ``sizes.json`` beside this file: the same counts for every
variant, which ``convnext models`` reads instead of building twenty models on each call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------------------------------------
# The table `convnext models` prints: measured once here and shipped, because building and counting every
# variant costs seconds per call. tests/test_cli.py checks it against the counter above.

SIZES_PATH = Path(__file__).with_name("sizes.json")


def sizes_table(num_classes: int = 1000) -> dict[str, Any]:
    """Every variant's parameters and multiply-adds at its default input size, as ``sizes.json`` holds."""
    from .factory import VARIANTS

    models = {}
    for name, variant in VARIANTS.items():
        with torch.device("meta"):
            model = variant(num_classes=num_classes).eval()
        models[name] = {
            "family": variant.family,
            "params": count_params(model),
            "macs": count_macs(model, variant.input_size),
            "input_size": variant.input_size,
        }
    return {
        "about": "params and multiply-adds (the paper's FLOPs) of every architecture, measured by "
        "convnext.models.profile; regenerate with: python -m convnext.models.profile",
        "num_classes": num_classes,
        "models": models,
    }


def write_sizes_table(path: Path = SIZES_PATH) -> None:
    path.write_text(json.dumps(sizes_table(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_sizes_table()
    print(f"wrote {SIZES_PATH}")
