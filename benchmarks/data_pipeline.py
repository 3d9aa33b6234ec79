"""Images/s of ONE loader worker: our pipeline (torchvision.io decode + v2 on uint8 tensors) against the same
recipe on PIL (PIL decode + torchvision.transforms v1), interleaved repeats in one process, medians.

    .venv/bin/python benchmarks/data_pipeline.py [--root /work/shared/data/imagenet-sample/val] [--repeats 7]

One thread (torch.set_num_threads(1)), as a DataLoader worker has: the figure is the per-worker cost; a
loader with N workers scales it by about N. "train" is what a `convnext train` worker does: the recipe up to
uint8 (float conversion, normalization and RandomErasing then run on the device batch); "train-float" is the
whole recipe per image in the worker, as the PIL pipeline does it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from convnext.data import DataConfig, build_eval_transform, build_train_transform, load_image
from convnext.data.transforms import parse_randaugment


def pil_train(cfg: DataConfig) -> T.Compose:
    """The same recipe on PIL images (v1) with timm's RandAugment: what the official ConvNeXt loader does
    per image (timm's create_transform; torchvision's RandAugment stands in when timm is not installed)."""
    ra = parse_randaugment(cfg.randaugment)
    try:
        from timm.data.auto_augment import rand_augment_transform

        hparams = {
            "translate_const": int(cfg.img_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in cfg.mean),
            "interpolation": Image.Resampling.BICUBIC,
        }
        timm_ra = rand_augment_transform(cfg.randaugment, hparams)

        def augment(img: Image.Image) -> Image.Image:
            # Pillow 13 refuses Posterize with 0 bits, which timm asks for when the magnitude noise
            # reaches 10 (about 1 image in 700): skip that image's ops rather than stop the benchmark
            try:
                return timm_ra(img)
            except ValueError:
                return img

    except ImportError:
        augment = T.RandAugment(num_ops=ra.num_ops, magnitude=9, num_magnitude_bins=11, fill=[124, 116, 104])
    return T.Compose(
        [
            T.RandomResizedCrop(
                cfg.img_size, scale=cfg.scale, ratio=cfg.ratio, interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(cfg.hflip),
            augment,
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
            T.RandomErasing(p=cfg.reprob, value="random"),
        ]
    )


def pil_eval(cfg: DataConfig) -> T.Compose:
    return T.Compose(
        [
            T.Resize(int(cfg.img_size / cfg.crop_pct), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(cfg.img_size),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def pil_load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def run_once(files: list[Path], load, transform) -> float:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    for f in files:
        out = transform(load(f))
        del out
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/val")
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this thread's CPU time instead of the wall clock: on a CPU shared with other jobs, "
        "time spent descheduled is not the pipeline's cost (the per-worker cost is single-threaded)",
    )
    args = ap.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(1)
    files = sorted(Path(args.root).rglob("*.JPEG"))
    cfg = DataConfig()
    pipes = {
        # what a worker does in `convnext train` (data.normalize_on_device: float + erasing on the device)
        "train ours": (load_image, build_train_transform(cfg, finish=False)),
        # the whole recipe per image in the worker, float at the end (data.normalize_on_device=false)
        "train-float ours": (load_image, build_train_transform(cfg)),
        "train PIL": (pil_load, pil_train(cfg)),
        "eval ours": (load_image, build_eval_transform(cfg)),
        "eval PIL": (pil_load, pil_eval(cfg)),
        "decode ours": (load_image, lambda x: x[..., :224]),
        "decode PIL": (pil_load, lambda x: T.functional.pil_to_tensor(x)[..., :224]),
    }
    for load, t in pipes.values():  # warm up (first-call allocations, lazy imports)
        run_once(files[:10], load, t)
    rates: dict[str, list[float]] = {k: [] for k in pipes}
    for rep in range(args.repeats):
        # interleaved per image: a burst of load from other processes hits every pipeline alike
        spent = dict.fromkeys(pipes, 0.0)
        torch.manual_seed(rep)
        for f in files:
            for name, (load, t) in pipes.items():
                t0 = clock()
                out = t(load(f))
                spent[name] += clock() - t0
                del out
        for name in pipes:
            rates[name].append(len(files) / spent[name])
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{len(files)} images from {args.root}, {args.repeats} repeats interleaved per image, 1 thread, "
        f"medians, {'thread CPU time' if args.cpu_time else 'wall clock'}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    for kind in ("train", "train-float", "eval", "decode"):
        a, b = med[f"{kind} ours"], med[f"{kind.split('-')[0]} PIL"]
        print(f"{kind:6s}: ours {a:7.1f} img/s   PIL {b:7.1f} img/s   ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()
