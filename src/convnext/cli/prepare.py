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
        "and a second run adds only what is missing. Then train with data.root=DST.",
        epilog="datasets:\n"
        + "".join(f"  {s.name:<14} {s.description}\n" for s in catalog.CATALOG if s.preparable),
        formatter_class=_Formatter,
    )
    p.add_argument(
        "dataset",
        type=_dataset,
        metavar="dataset",
        help=f"one of: {', '.join(catalog.names(preparable=True))} "
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
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

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
