"""Where the chunked MLP beats the plain ops: one ConvNeXt block, per width and pixel count, interleaved.

    .venv/bin/python benchmarks/block_paths.py --mode infer          # no_grad forward
    .venv/bin/python benchmarks/block_paths.py --mode train          # forward + backward
    .venv/bin/python benchmarks/block_paths.py --mode infer --dims 96 --rows 3136 12544

For each (C, rows) a block of width C runs on a (1, C, rows) channels_last map, alternately as the reference
``Block`` and as the ``ChunkedBlock`` forced onto its chunked path; the ratio printed is the median of the
per-round ratios (plain time / chunked time: > 1 means chunked is faster). The rows thresholds in
``chunked_mlp.py`` (``MIN_ROWS_TRAIN``, ``MIN_ROWS_INFER``) come from this table; BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import convnext.models.chunked_mlp as cm
from convnext.models import Block, set_chunked_mlp

# The pixel counts of ConvNeXt's stages at 224 px are 3136, 784, 196, 49 per image.
ROWS = [49, 196, 392, 784, 1568, 3136, 6272, 12544, 25088, 50176]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--dims", type=int, nargs="+", default=[96, 192, 384, 768])
    p.add_argument("--rows", type=int, nargs="+", default=ROWS)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--max-elements", type=float, default=5e6, help="skip shapes above rows x C")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cm.MIN_ROWS_TRAIN = cm.MIN_ROWS_INFER = 0  # the fast block always chunks; the plain one never does
    torch.manual_seed(0)
    print(f"mode {args.mode}, {torch.get_num_threads()} threads; ratio = plain time / chunked time")
    print(f"{'C':>5} {'rows':>7} {'plain ms':>9} {'chunked ms':>11} {'ratio':>6}")
    for dim in args.dims:
        plain = Block(dim, layer_scale_init_value=0.5)
        fast = set_chunked_mlp(Block(dim, layer_scale_init_value=0.5), True)
        fast.load_state_dict(plain.state_dict())
        for rows in args.rows:
            if rows * dim > args.max_elements:
                continue
            x = torch.randn(1, dim, 1, rows).contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(x)

            def run(block: Block, x: torch.Tensor = x, g: torch.Tensor = g) -> float:
                start = time.perf_counter()
                if args.mode == "infer":
                    with torch.no_grad():
                        block(x)
                else:
                    block(x.requires_grad_()).backward(g)
                return time.perf_counter() - start

            for b in (plain, fast):  # warm-up (and the fast block's weight cache)
                run(b)
            tp, tf = [], []
            for _ in range(args.rounds):
                tp.append(run(plain))
                tf.append(run(fast))
            ratio = statistics.median(a / b for a, b in zip(tp, tf, strict=True))
            print(
                f"{dim:>5} {rows:>7} {statistics.median(tp) * 1e3:>9.2f} {statistics.median(tf) * 1e3:>11.2f}"
                f" {ratio:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
