"""``convnext <verb>``: one entry point; each verb lives in its own module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# verb -> module in convnext.cli; each module has ``register(subparsers)`` which sets ``func``.
VERBS = ("models", "convert", "prepare", "train", "evaluate", "predict", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt: train, evaluate, run and ship.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"convnext.cli.{verb}")
        except ModuleNotFoundError as e:  # TEMPORARY while verbs are being written; removed before release
            if e.name != f"convnext.cli.{verb}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"convnext {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convnext {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
