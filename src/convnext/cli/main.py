"""``convnext <verb>``: one entry point; each verb lives in its own module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# verb -> module in convnext.cli; each module has ``register(subparsers)`` which sets ``func``.
VERBS = ("models", "convert", "prepare", "train", "evaluate", "predict", "benchmark", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt: train, evaluate, run and ship.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for verb in VERBS:
        importlib.import_module(f"convnext.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list one contiguous run, so `train --config X a=1 --fresh b=2` would leave
    # b=2 over: overrides may stand anywhere on the line.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
