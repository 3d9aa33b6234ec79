"""Images/s of ONE loader worker reading tar shards (convnext.data.shards) against the same images as files,
on the local disk and through a simulated slow (network) file system; interleaved repeats in one process,
medians, reported as ratios (the machine is shared and noisy).

    .venv/bin/python benchmarks/shard_reading.py [--root /work/shared/data/imagenet-sample/val] [--repeats 5]
        [--latency-ms 10] [--mbps 50]

Each contestant reads every image of ``--root`` (class folders of JPEGs), decodes it and applies the eval
transform at 224 px, with workers=0 and one thread: the per-worker cost (a loader with N workers scales it
by about N).

The slow file system, the same cost model for both layouts: every file opened costs ``--latency-ms`` (a
network file system's metadata round trip and open), every byte ``1 / --mbps`` (its bandwidth).
* shards: a ``pipe:`` URL through a throttling cat (this script run as ``--cat``: it sleeps the latency once,
  then writes at the bandwidth), which is what a ``pipe:`` or object-store read is to the loader;
* files: the same latency and bandwidth slept before each image is read, in the dataset (a FUSE file system
  would model it more literally, but needs FUSE and root on the machine; a sleep before the read is what the
  worker experiences either way: it blocks for the open and the transfer).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample" / "val"


def throttled_cat(path: str, latency: float, rate: float) -> None:
    """``cat`` with a per-open latency and a bandwidth: the ``pipe:`` side of the slow file system."""
    time.sleep(latency)
    out = sys.stdout.buffer
    chunk = 64 << 10
    start = time.perf_counter()
    sent = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            out.write(block)
            sent += len(block)
            ahead = sent / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    out.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="class folders of images")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latency-ms", type=float, default=10.0)
    p.add_argument("--mbps", type=float, default=50.0, help="MB/s of the simulated file system")
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--cat", nargs=3, metavar=("FILE", "LATENCY_S", "BYTES_PER_S"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cat:
        throttled_cat(args.cat[0], float(args.cat[1]), float(args.cat[2]))
        return

    import torch

    from convnext.data import DataConfig, build_dataset, build_eval_transform, build_loader
    from convnext.data.shards import prepare_shards

    torch.set_num_threads(1)
    root = Path(args.root)
    if not root.is_dir():
        sys.exit(f"no image folder at {root} (pass --root)")
    latency, rate = args.latency_ms / 1e3, args.mbps * 1e6
    tmp = Path(tempfile.mkdtemp(prefix="shard-bench-"))
    (tmp / "src").mkdir()
    os.symlink(root.resolve(), tmp / "src" / "val")
    prepare_shards(tmp / "src", tmp / "shards", shard_size=args.shard_size, progress=False)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp / "src"), img_size=224, workers=0, pin_memory=False)
    transform = build_eval_transform(cfg)
    files = build_dataset(cfg, "val", transform, on_error="drop")
    n = len(files)
    sizes = [os.path.getsize(p) for p, _ in files.samples]

    class SlowFiles(torch.utils.data.Dataset):
        """The folder's samples, each read after the simulated open latency and transfer time."""

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> object:
            time.sleep(latency + sizes[i] / rate)
            return files[i]

    def read_files(slow: bool) -> int:  # through the same DataLoader batching (collate) as the shards
        loader = build_loader(
            SlowFiles() if slow else files, 32, train=False, cfg=cfg, seed=0, distributed=False
        )
        return sum(len(y) for _, y in loader)

    def read_shards(slow: bool) -> int:
        root_ = str(tmp / "shards")
        if slow:
            me = f"{sys.executable} {Path(__file__).resolve()} --cat"
            tars = f"{tmp}/shards/{{split}}-{{000000..{_last(tmp / 'shards'):06d}}}.tar"
            root_ = f"pipe:{me} {tars} {latency} {rate}"
        c = DataConfig(dataset="shards", root=root_, img_size=224, workers=0, pin_memory=False)
        ds = build_dataset(c, "val", transform, on_error="drop")
        loader = build_loader(ds, 32, train=False, cfg=c, seed=0, distributed=False)
        return sum(len(y) for _, y in loader)

    contestants = {
        "files, local disk": lambda: read_files(False),
        "shards, local disk": lambda: read_shards(False),
        "files, slow FS": lambda: read_files(True),
        "shards, slow FS (pipe:)": lambda: read_shards(True),
    }
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for fn in contestants.values():  # warm-up: page cache, imports
        fn()
    names = list(contestants)
    for r in range(args.repeats):
        # interleaved, the order rotated each round: the machine's noise and order effects hit all alike
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = contestants[name]
            t = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t)
            assert got == n, (name, got, n)
    print(
        f"{n} images ({sum(sizes) / n / 1e3:.0f} KB mean) from {root}, eval transform 224 px, "
        "1 worker, 1 thread; "
        f"slow FS: {args.latency_ms:g} ms per open + {args.mbps:g} MB/s; shards of {args.shard_size}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; medians of {args.repeats}"
    )
    rate_of = {k: n / statistics.median(v) for k, v in times.items()}
    for name, r in rate_of.items():
        print(f"  {name:<26} {r:8.1f} images/s")
    for where in ("local disk", "slow FS"):  # the ratio of each round (same moment), then their median
        pair = [k for k in names if where in k]
        ratios = sorted(f / s for s, f in zip(times[pair[1]], times[pair[0]]))
        print(
            f"  shards / files, {where}: {statistics.median(ratios):.2f}x "
            f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
        )


def _last(folder: Path) -> int:
    return len(list(folder.glob("val-*.tar"))) - 1


if __name__ == "__main__":
    main()
