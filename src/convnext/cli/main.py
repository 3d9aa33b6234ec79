"""``convnext <verb>``: one entry point; each verb lives in its own module of this package.

A verb module imports only argparse-level things at import time (torch inside its ``run``), and only the
verb named on the command line is imported, so ``convnext --help`` and ``convnext <verb> --help`` answer at
once. Errors every verb shares are handled here once: a :class:`~convnext.errors.UserError` is one line and
exit 2, Ctrl-C is exit 130, and a closed pipe (``convnext models | head -2``) ends quietly.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from ..errors import UserError
from ..messages import install_cli_handler, remove_cli_handler
from ..telemetry import disable_telemetry

# verb -> module in convnext.cli; each module has ``register(subparsers)`` which sets ``func``.
# fmt: off
VERBS = (
    "models", "convert", "prepare", "train", "pretrain", "evaluate", "predict", "benchmark", "recipes",
    "serve", "export",
)
# fmt: on

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not a dependency): libjpeg-turbo via
# torchvision.io is still the fastest decoder we have. Filtered for the command line's own process only; a
# library user's warning filters are theirs.
_DECODER_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def build_parser(verbs: Sequence[str] = VERBS) -> argparse.ArgumentParser:
    """The parser with ``verbs`` registered (all by default; ``main`` registers only the one it runs)."""
    from .. import __version__  # the installed distribution's (pyproject.toml's) version

    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt: train, evaluate, run and ship.")
    parser.add_argument("--version", action="version", version=f"convnext {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for verb in verbs:
        importlib.import_module(f"convnext.cli.{verb}").register(sub)
    return parser


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb the command line names (the top level has only --help/--version, which take no value)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in VERBS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    disable_telemetry()  # no dependency reports usage from a verb: convnext/telemetry.py
    verb = _verb_of(argv)
    parser = build_parser((verb,) if verb else VERBS)
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list one contiguous run, so `train --config X a=1 --fresh b=2` would leave
    # b=2 over: overrides may stand anywhere on the line.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.filterwarnings("ignore", message=_DECODER_DEPRECATION, category=DeprecationWarning)
    install_cli_handler(args.verb)  # the package's notes and warnings: `convnext <verb>: note: ...` on stderr
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return rc
    except UserError as e:
        print(f"convnext {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convnext {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say. Point stdout at /dev/null so the interpreter's
        # own flush at exit does not raise again (the recipe of Python's signal module documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a process a closed pipe stopped
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk under a writer that does not name it (an exporter, an image writer): still one line;
        # every writer of ours writes to a temporary name first, so nothing half-written is left
        where = f" writing {e.filename}" if e.filename else ""
        print(f"convnext {args.verb}: error: no space left on the device{where}", file=sys.stderr)
        return 2
    finally:
        remove_cli_handler()  # a caller of main() in its own process gets logging's defaults back


if __name__ == "__main__":
    sys.exit(main())
