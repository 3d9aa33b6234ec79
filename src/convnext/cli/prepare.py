"""``convnext prepare <dataset> SRC DST``: a raw public dataset layout -> ImageFolder (data.root=DST)."""

from __future__ import annotations

import argparse
import sys

from ..data import catalog  # no torch: the parser needs the dataset names
from ..data.prepare import LINKS
from .common import add_progress, show_progress

_OLD_MODES = {"link": "hard", "copy": "copy", "symlink": "symlink"}  # the deprecated --mode's values


class _Formatter(argparse.HelpFormatter):
    """The description wrapped as usual; the epilog's table one line per dataset."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("datasets:\n"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _dataset(name: str) -> str:
    if name.lower() == "shards":  # not a layout: the tar shards of one (--from)
        return "shards"
    try:
        return catalog.find_preparable(name).name
    except Exception as e:  # argparse: "argument dataset: invalid choice ..." in one line
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a raw dataset layout (the ImageNet archives, Tiny-ImageNet, Caltech, CIFAR, class "
        "folders, ...) into an image folder",
        description="Write DST/train/<class>/, DST/val/<class>/ and DST/classes.txt from a raw dataset "
        "layout. JPEGs are hard-linked (or copied), never re-encoded; images in the ImageNet archives "
        "(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar with ILSVRC2012_devkit_t12.tar.gz) are "
        "written straight from the archives, with no extraction beside them; MNIST/CIFAR become PNG "
        "files. The source is checked before anything is written, a failed run removes what it wrote, "
        "and a second run adds only what is missing. Then train with data.root=DST. "
        "`convnext prepare shards SRC DST` writes WebDataset tar shards instead (DST/train-000000.tar, ..., "
        "classes.txt, shards.json) from an image folder or any layout below (--from): images stored byte "
        "for byte; train with data.dataset=shards data.root=DST.",
        epilog="datasets:\n"
        + "".join(f"  {s.name:<14} {s.description}\n" for s in catalog.CATALOG if s.preparable)
        + f"  {'shards':<14} tar shards of SRC (an image folder, or the layout --from names)\n",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "dataset",
        type=_dataset,
        metavar="dataset",
        help=f"one of: {', '.join(catalog.names(preparable=True))}, shards "
        f"(or {', '.join(catalog.aliases(preparable=True))})",
    )
    p.add_argument(
        "src",
        help="the raw dataset folder (as extracted; for imagenet also the folder of the downloaded archives)",
    )
    p.add_argument("dst", help="output folder (created)")
    p.add_argument(
        "--link",
        choices=LINKS,
        default=None,
        help="hard (hard links, default; copies across file systems), copy, or symlink (files inside "
        "archives are always written)",
    )
    p.add_argument("--mode", choices=tuple(_OLD_MODES), help=argparse.SUPPRESS)  # deprecated: --link
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="folders, Caltech, pooled mini-ImageNet: share of each class that goes to val (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        metavar="N",
        help="shards: samples per tar (default 1000, about 110 MB of ImageNet JPEGs)",
    )
    p.add_argument(
        "--from",
        dest="layout",
        default=None,
        metavar="DATASET",
        help="shards: the layout of SRC, a dataset below (default: an image folder, SRC/train/<class>/)",
    )
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    if args.dataset == "shards":
        from ..data.shards import prepare_shards

        counts = prepare_shards(
            args.src,
            args.dst,
            layout=args.layout,
            shard_size=args.shard_size,
            val_fraction=args.val_fraction,
            seed=args.seed,
            progress=show_progress(args),
        )
        parts = ", ".join(f"{n} {split}" for split, n in counts.items())
        print(
            f"convnext prepare: shards: {parts} images in {args.dst} "
            f"(train with data.dataset=shards data.root={args.dst})"
        )
        return 0
    link = args.link
    if args.mode is not None:
        print(f"convnext prepare: --mode is deprecated; use --link {_OLD_MODES[args.mode]}", file=sys.stderr)
        link = link or _OLD_MODES[args.mode]
    counts = prepare(
        args.dataset,
        args.src,
        args.dst,
        link=link or "hard",
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=show_progress(args),
    )
    parts = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"convnext prepare: {args.dataset}: {parts} images in {args.dst} (train with data.root={args.dst})")
    return 0
