"""The model ``create_model`` returns against the reference, always-chunked, fused and timm, per batch size.

    .venv/bin/python benchmarks/model_paths.py --batch-sizes 1 32 --rounds 7
    .venv/bin/python benchmarks/model_paths.py --mode train --batch-sizes 1 8 32 --rounds 5
    .venv/bin/python benchmarks/model_paths.py --img-size 384 --batch-sizes 1 4

Contestants (same weights; random layer scales and biases so that nothing is trivially folded):
``default`` (``create_model``: the per-call rule of ``chunked_mlp.py``), ``plain`` (``chunked_mlp=False``,
the reference), ``chunked`` (the chunked path at every size: the rule's thresholds at 0), ``fused``
(``fuse_for_inference``, infer mode only) and ``timm`` (timm's ConvNeXt). One process, round-robin, one
call each per round; printed: median ms per call and the median of the per-round ratios timm / contestant
(> 1: faster than timm). No-grad forward (``--mode infer``) or forward + backward + AdamW step (``train``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import convnext.models.chunked_mlp as cm
from convnext.models import fuse_for_inference, get_variant, set_chunked_mlp


class AlwaysChunked(nn.Module):
    """Runs the wrapped model with the rule's thresholds at 0, restoring them after."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = cm.MIN_ROWS_TRAIN, cm.MIN_ROWS_INFER
        cm.MIN_ROWS_TRAIN = cm.MIN_ROWS_INFER = 0
        try:
            return self.model(x)
        finally:
            cm.MIN_ROWS_TRAIN, cm.MIN_ROWS_INFER = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--contestants", nargs="+", default=["default", "plain", "chunked", "fused", "timm"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    from convnext.bench import to_peer_state_dict
    from convnext.bench.models import build_ours

    torch.manual_seed(0)
    default = build_ours(args.model, get_variant(args.model), torch.device("cpu"))  # off-init gains, biases
    plain = set_chunked_mlp(copy.deepcopy(default), False)
    peer = timm.create_model(args.model, num_classes=plain.num_classes)
    peer.load_state_dict(to_peer_state_dict(plain.state_dict(), "timm", peer), strict=True)
    models: dict[str, nn.Module] = {"default": default, "plain": plain, "chunked": AlwaysChunked(default)}
    models["timm"] = peer
    if args.mode == "infer":
        models["fused"] = fuse_for_inference(plain)
    names = [n for n in args.contestants if n in models]
    threads = torch.get_num_threads()
    print(f"{args.model} {args.mode}, {args.img_size} px, {threads} threads, {args.rounds} rounds")
    print("ms per call (median); x timm = median of per-round ratios timm / contestant")

    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, args.img_size, args.img_size)
        y = torch.randint(0, plain.num_classes, (bs,))
        steps: dict[str, Callable[[], None]] = {}
        for n in names:
            m = models[n].train(args.mode == "train")
            if args.mode == "infer":
                steps[n] = lambda m=m, x=x: m(x)
            else:
                opt = torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True)

                def step(
                    m: nn.Module = m,
                    opt: torch.optim.Optimizer = opt,
                    x: torch.Tensor = x,
                    y: torch.Tensor = y,
                ) -> None:
                    loss = F.cross_entropy(m(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                steps[n] = step
        times: dict[str, list[float]] = {n: [] for n in names}
        ctx = torch.inference_mode if args.mode == "infer" else torch.enable_grad
        with ctx():
            for n in names:  # warm-up
                steps[n]()
            for _ in range(args.rounds):
                for n in names:
                    start = time.perf_counter()
                    steps[n]()
                    times[n].append(time.perf_counter() - start)
        line = [f"batch {bs:>3}:"]
        for n in names:
            ratio = statistics.median(
                t / s for t, s in zip(times.get("timm", times[n]), times[n], strict=True)
            )
            line.append(f"{n} {statistics.median(times[n]) * 1e3:.1f} ms ({ratio:.2f}x)")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
