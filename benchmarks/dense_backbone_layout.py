"""Backbone + FPN of ``maskrcnn_convnext_tiny`` at detection shapes: ours (stage outputs handed to the FPN as
NCHW copies), ours handing over channels_last maps (``-cl``), without the chunked MLP (``plain``), and timm's
``features_only`` ConvNeXt with the per-stage norms (the peer of ``convnext benchmark --task detection``).
Rotated rounds in one process, medians (BENCHMARKS.md, "Quiet-machine rerun: the detection gap was the load").

    python benchmarks/dense_backbone_layout.py --threads 2 --mode infer --rounds 12
    python benchmarks/dense_backbone_layout.py --threads 2 --mode train --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from convnext.bench.dense import _randomise, torchvision_detector
from convnext.models import base, build_model, set_chunked_mlp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("infer", "train"), default="infer")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--size", type=int, default=320)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    size = {"min_size": a.size, "max_size": a.size}
    ours = build_model("maskrcnn_convnext_tiny", **size)
    _randomise(ours)
    peer = torchvision_detector(ours, "maskrcnn_convnext_tiny", size)
    plain = set_chunked_mlp(copy.deepcopy(ours), False)
    x = torch.randn(2, 3, a.size, a.size)
    nchw = base.like_input

    def run(model: nn.Module, channels_last: bool = False) -> None:
        base.like_input = (lambda y, _x: y) if channels_last else nchw  # type: ignore[assignment]
        try:
            if a.mode == "infer":
                with torch.inference_mode():
                    model.backbone(x)
            else:
                out: dict[str, Tensor] = model.backbone(x)
                sum(v.float().mean() for v in out.values()).backward()
        finally:
            base.like_input = nchw

    for m in (ours, peer, plain):
        m.train(a.mode == "train")
    steps: dict[str, Callable[[], None]] = {
        "ours": lambda: run(ours),
        "ours-cl": lambda: run(ours, True),
        "plain": lambda: run(plain),
        "plain-cl": lambda: run(plain, True),
        "timm": lambda: run(peer),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for step in steps.values():  # warm-up
        step()
    for r in range(a.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(a.mode, a.size, {k: round(v, 3) for k, v in med.items()})
    print("median / ours:", {k: round(v / med["ours"], 3) for k, v in med.items()})


if __name__ == "__main__":
    main()
