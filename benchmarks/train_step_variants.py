"""Time our ConvNeXt training step with the plain ops and with chunked MLPs of several sizes, interleaved.

    .venv/bin/python benchmarks/train_step_variants.py --batch-size 32 --rounds 3 plain 4096 16384 32768
    .venv/bin/python benchmarks/train_step_variants.py --eval --rounds 4 plain 16384   # what `evaluate` runs

Each variant name is ``plain`` or a chunk size in rows at C=96 (the hidden-element budget is rows x 384).
One process, one model, round-robin over the variants, so noise from other processes hits them alike;
prints the median images/s of each. BENCHMARKS.md, "What was tried for speed", quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import convnext.models.chunked_mlp as chunked
from convnext import create_model
from convnext.models import set_chunked_mlp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="plain, or rows per chunk at C=96")
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval", action="store_true", help="time an inference_mode forward (unfused)")
    args = p.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model).train(not args.eval)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch_size, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch_size,))

    def step() -> None:
        if args.eval:
            with torch.inference_mode():
                model(x)
            return
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def use(variant: str) -> None:
        set_chunked_mlp(model, variant != "plain")
        if variant != "plain":
            chunked.CHUNK_ELEMENTS = int(variant) * 384
            chunked.MIN_ROWS_TRAIN = chunked.MIN_ROWS_INFER = 0  # every block chunks, as when measured

    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for v in args.variants:  # warm-up
        use(v)
        step()
    for r in range(args.rounds):
        for v in args.variants:
            use(v)
            start = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}", flush=True)
    for v, ts in times.items():
        print(f"{v:>8}: {args.batch_size / statistics.median(ts):.2f} images/s")


if __name__ == "__main__":
    main()
