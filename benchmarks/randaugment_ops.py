"""Per-op cost of our RandAugment (uint8 tensors, timm-exact) against timm's own ops on PIL images.

    .venv/bin/python benchmarks/randaugment_ops.py [--root DIR] [--repeats 7] [--images 30]

One thread; each op runs at timm's m9 argument on the same 224 x 224 crops of real photos, ours and
timm's interleaved per image, thread CPU time (a shared machine's descheduling is not the op's cost),
medians over the repeats. "per image" weighs the ops as rand-m9-mstd0.5-inc1 draws them (2 draws of 15,
each applied with p = 0.5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from timm.data import auto_augment as aa
from torchvision.io import ImageReadMode, decode_image

from convnext.data.randaugment import INCREASING_OPS, apply_op, op_argument

FILL = (124, 116, 104)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/val")
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--images", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(args.root).rglob("*.JPEG"))[: args.images]
    crops = []
    for f in files:
        x = decode_image(str(f), mode=ImageReadMode.RGB)
        crops.append(x[:, :224, :224].contiguous())
    pils = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in crops]
    ours_ms: dict[str, float] = {}
    timm_ms: dict[str, float] = {}
    for op in INCREASING_OPS:
        arg = op_argument(op, 9.0, negate=False)
        targs = () if arg is None else (arg,)
        runs: dict[str, list[float]] = {"ours": [], "timm": []}
        for _ in range(args.repeats):
            spent = {"ours": 0.0, "timm": 0.0}
            for x, pil in zip(crops, pils):
                t0 = time.thread_time()
                apply_op(x, op, arg, fill=FILL)
                spent["ours"] += time.thread_time() - t0
                t0 = time.thread_time()
                aa.NAME_TO_OP[op](pil, *targs, fillcolor=FILL, resample=Image.Resampling.BICUBIC)
                spent["timm"] += time.thread_time() - t0
            for k in runs:
                runs[k].append(spent[k] / len(crops) * 1e3)
        ours_ms[op], timm_ms[op] = statistics.median(runs["ours"]), statistics.median(runs["timm"])
        print(f"{op:22s} ours {ours_ms[op]:6.2f} ms   timm (PIL) {timm_ms[op]:6.2f} ms")
    per_image = 2 * 0.5 / len(INCREASING_OPS)
    print(
        f"per image (rand-m9-mstd0.5-inc1): ours {sum(ours_ms.values()) * per_image:.2f} ms, "
        f"timm {sum(timm_ms.values()) * per_image:.2f} ms"
    )


if __name__ == "__main__":
    main()
