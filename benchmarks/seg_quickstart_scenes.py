"""Which digit scenes UperNet learns in a quickstart's budget: a plain training loop (AdamW, poly lr after 100
warmup steps, decode + 0.4 x auxiliary cross-entropy, batch 8, whole scenes) over ``DigitScenesSeg``, printing
every 250 steps, on the train and val scenes, the share of digit pixels labelled with the right digit, the
share labelled as some digit, and the mIoU (BENCHMARKS.md, "The dense quickstarts").

    # the detection quickstart's scenes (1-4 digits of 22-56 px in 128 px): the digit stays at chance
    python benchmarks/seg_quickstart_scenes.py \
        --scenes 1000 --steps 1500 --size 128 --pretrained runs/quickstart_digits
    # one digit of 32-48 px in 64 px: 1000 scenes are memorised, 20000 are not
    python benchmarks/seg_quickstart_scenes.py \
        --scenes 1000 --steps 2000 --size 64 --digits 1 --digit-size 32 48
    python benchmarks/seg_quickstart_scenes.py \
        --scenes 20000 --steps 3000 --size 64 --digits 1 --digit-size 32 48
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from convnext.data.segmentation import DigitScenesSeg, normalize
from convnext.hub import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--digits", type=int, default=4)
    ap.add_argument("--digit-size", type=int, nargs=2, default=None)
    ap.add_argument(
        "--pretrained", default=None, help="a classifier run for the backbone (quickstart_digits)"
    )
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = create_model(
        "upernet_convnext_atto", pretrained=a.pretrained, num_classes=11, depths=[1, 1, 2, 1],
        dims=[32, 64, 128, 256], channels=64, aux_channels=32, drop_path_rate=0.0, layer_scale_init_value=1.0,
    )  # fmt: skip
    scene = {"max_digits": a.digits, "digit_size": tuple(a.digit_size) if a.digit_size else None}
    train, val = (
        DigitScenesSeg("train", a.scenes, a.size, **scene),
        DigitScenesSeg("val", 100, a.size, **scene),
    )
    cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def batch(ds: DigitScenesSeg, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        for i in idx:
            if (ds.split, i) not in cache:
                img, mask = ds.raw(i)
                cache[ds.split, i] = (normalize(img, MEAN, STD), mask)
        xs, ys = zip(*(cache[ds.split, i] for i in idx))
        return torch.stack(xs), torch.stack(ys)

    def score(ds: DigitScenesSeg, n: int) -> tuple[float, float, float]:
        model.eval()
        x, y = batch(ds, list(range(min(n, len(ds)))))
        with torch.no_grad():
            p = model(x).argmax(1)
        model.train()
        digit = y > 0
        ious = [
            ((p == c) & (y == c)).sum().item() / u
            for c in range(11)
            if (u := ((p == c) | (y == c)).sum().item())
        ]
        return (
            (p[digit] == y[digit]).float().mean().item(),
            (p[digit] > 0).float().mean().item(),
            float(np.mean(ious)),
        )

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * (1 - s / a.steps) ** 0.9)
    t = time.perf_counter()
    for s in range(a.steps):
        x, y = batch(train, torch.randint(a.scenes, (8,)).tolist())
        logits, aux = model(x, aux=True)
        loss = F.cross_entropy(logits, y, ignore_index=255) + 0.4 * F.cross_entropy(aux, y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (s + 1) % 250 == 0 or s + 1 == a.steps:
            tr, va = score(train, 64), score(val, 100)
            print(f"step {s + 1}: loss {loss.item():.3f}; digit right / as a digit / mIoU: train "
                  f"{tr[0]:.3f} {tr[1]:.3f} {tr[2]:.3f}, val {va[0]:.3f} {va[1]:.3f} {va[2]:.3f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
