"""What the per-sample reseed of the training loader costs (convnext.data.loader.SeededSamples).

    .venv/bin/python benchmarks/loader_reseed.py [--root /work/shared/data/imagenet-sample/val] [--rounds 9]

Per sample, SeededSamples saves the CPU torch generator's state, seeds it from (seed, epoch, index), loads and
transforms the sample, and restores the state; in a loader worker it also seeds Python's ``random`` and
numpy's global RNG (without restoring them). Measured in one process with one thread (as a loader worker),
the variants interleaved round-robin every tenth of a round's calls, medians over rounds: the bare round
trip in microseconds, its parts, and the slowdown of two real train pipelines (the digits quickstart at
32 px, the cheapest there is, and ImageNet JPEGs at 224 px with the paper's augmentation, up to uint8 as a
`convnext train` worker runs it).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from convnext.data import DataConfig, build_dataset, build_train_transform, load_image
from convnext.data.loader import SeededSamples, sample_seed


class _Const:
    def __getitem__(self, i: int) -> int:
        return i


class _Files:
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(str(self.paths[i])))


def _per_call_us(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1e6


def _parts() -> dict:
    gen = torch.default_generator

    def torch_round_trip(i: int) -> None:  # what every sample pays
        s = gen.get_state()
        gen.manual_seed(sample_seed(0, 0, i))
        gen.set_state(s)

    def worker_extra(i: int) -> None:  # what a sample in a loader worker pays on top
        s = sample_seed(0, 0, i)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)

    def numpy_random_round_trip(i: int) -> None:  # NOT done: saving/restoring them in the main process
        r, n = random.getstate(), np.random.get_state()
        s = sample_seed(0, 0, i)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        random.setstate(r)
        np.random.set_state(n)

    return {
        "hash (sample_seed)": lambda i: sample_seed(0, 0, i),
        "torch get/seed/set": torch_round_trip,
        "worker: random+numpy seed": worker_extra,
        "(not done) random+numpy save/restore": numpy_random_round_trip,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/work/shared/data/imagenet-sample/val")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)

    const, seeded_const = _Const(), SeededSamples(_Const())
    digits_cfg = DataConfig(dataset="digits", img_size=32, scale=(0.8, 1.0), ratio=(0.85, 1.18), hflip=0.0)
    digits_cfg.randaugment = None
    digits = build_dataset(digits_cfg, "train", build_train_transform(digits_cfg, finish=False))
    seeded_digits = SeededSamples(digits)
    in_cfg = DataConfig()  # the paper's recipe: RRC 224 bicubic, hflip, rand-m9-mstd0.5-inc1
    paths = sorted(Path(args.root).rglob("*.JPEG"))
    photos = _Files(paths, build_train_transform(in_cfg, finish=False))
    seeded_photos = SeededSamples(photos)

    n, m = len(digits), len(paths)
    timed = {  # name: (per-sample call, calls per round), run round-robin
        "plain int index (us)": (lambda i: const[i], 20000),
        "SeededSamples[(i, seed, epoch)] (us)": (lambda i: seeded_const[(i, 0, 0)], 20000),
        **{f"  {name} (us)": (fn, 20000) for name, fn in _parts().items()},
        "digits 32px plain (us)": (lambda i: digits[i % n], 2000),
        "digits 32px seeded (us)": (lambda i: seeded_digits[(i % n, 0, 0)], 2000),
    }
    if m:
        timed["ImageNet 224px plain (us)"] = (lambda i: photos[i % m], m)
        timed["ImageNet 224px seeded (us)"] = (lambda i: seeded_photos[(i % m, 0, 0)], m)
    rows: dict[str, list[float]] = {name: [] for name in timed}
    blocks = 10  # each round alternates the variants every tenth of its calls: load bursts hit all alike
    for _ in range(args.rounds):
        total = dict.fromkeys(timed, 0.0)
        for _ in range(blocks):
            for name, (fn, calls) in timed.items():
                total[name] += _per_call_us(fn, max(calls // blocks, 1)) / blocks
        for name, us in total.items():
            rows[name].append(us)
    cpu = platform.processor() or platform.machine()
    print(f"{cpu}, torch {torch.__version__}, 1 thread, {args.rounds} rounds")
    for name, vals in rows.items():
        print(
            f"{name:<36} median {statistics.median(vals):9.2f}   rounds {' '.join(f'{v:.1f}' for v in vals)}"
        )
    for what in ("digits 32px", "ImageNet 224px"):
        if f"{what} plain (us)" in rows:
            ratios = [s / p for p, s in zip(rows[f"{what} plain (us)"], rows[f"{what} seeded (us)"])]
            print(f"{what}: seeded / plain = {statistics.median(ratios):.3f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
