"""The flags every verb spells and reads the same way, added and interpreted in one place so no verb drifts:

- ``--json [FILE]``: ``--json`` or ``--json -`` prints JSON on stdout instead of the text; ``--json FILE``
  (a ``.json``/``.jsonl`` name) writes it there and the text still goes to stdout. The suffix is required
  so that ``--json`` never swallows the next word of the command line (an image, a model pattern) and
  overwrites it.
- ``--device`` (default ``auto``: CUDA when there is one, else CPU) and ``--amp``.
- ``--img-size`` / ``--crop-pct``: default the weights' own.
- ``--no-progress``; bars also switch off by themselves when stderr is not a terminal (logs, CI, pipes).
- ``--weights`` / ``--model`` / ``--ema``: which weights, read by :func:`weights_source`.

Nothing here imports torch (nor may a verb module at import time): ``convnext <verb> --help`` builds its
parser without it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import UserError

JSON_SUFFIXES = (".json", ".jsonl")
STDOUT = "-"


# ------------------------------------------------------------------------------------------------ types
def _int_at_least(lo: int, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < lo:
        raise argparse.ArgumentTypeError(f"must be at least {lo}, got {n}")
    return n


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (``--batch-size 0`` is an argparse error naming the flag)."""
    return _int_at_least(1, value)


def nonneg_int(value: str) -> int:
    """argparse type: an integer >= 0 (``--workers -1`` is an argparse error naming the flag)."""
    return _int_at_least(0, value)


def _json_target(value: str) -> str:
    if value == STDOUT or value.lower().endswith(JSON_SUFFIXES):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a .json/.jsonl file name; write --json - (or --json as the last flag) to print "
        "JSON on stdout"
    )


# ------------------------------------------------------------------------------------------------- --json
def add_json(p: argparse.ArgumentParser, what: str = "the results") -> None:
    p.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        type=_json_target,
        metavar="FILE",
        help=f"{what} as JSON: on stdout instead of the text (--json, --json -), or written to FILE "
        "(.json/.jsonl) with the text still on stdout",
    )


def json_only(args: argparse.Namespace) -> bool:
    """True when the JSON replaces the text on stdout (``--json`` / ``--json -``)."""
    return getattr(args, "json", None) == STDOUT


@contextmanager
def json_output(target: str) -> Iterator[TextIO]:
    """Where the JSON goes: stdout (``-``), or FILE, written whole to a temporary name and renamed when the
    block ends, so a failed run leaves no half-written file."""
    if target == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(target).expanduser()
    tmp, in_body = None, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            in_body = True
            yield f
            in_body = False  # the buffered text reaches the disk as the file closes, below
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; follow the umask as every other file
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not in_body:  # this file's own write: a full disk, a read-only folder
            why = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise UserError(f"cannot write {path} ({why or e}); nothing was written") from None
        raise


def write_json(target: str, obj: Any) -> None:
    """One JSON document (indented) to stdout or FILE."""
    with json_output(target) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------ --device, --amp
def add_device(p: argparse.ArgumentParser, *, amp: bool = True) -> None:
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA when there is one, else CPU), cpu, cuda, cuda:N"
    )
    if amp:
        p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast dtype (default: float32)")


# --------------------------------------------------------------------------------- --img-size, --crop-pct
def add_img_size(p: argparse.ArgumentParser, *, crop: bool = True, help: str | None = None) -> None:
    p.add_argument(
        "--img-size",
        type=positive_int,
        metavar="PX",
        help=help or "input resolution (default: the weights' own)",
    )
    if crop:
        p.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the weights' own)")


# ----------------------------------------------------------------------------------------- --no-progress
def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (bars show only when stderr is a terminal anyway)",
    )


def show_progress(args: argparse.Namespace | None = None) -> bool:
    """Progress bars: unless ``--no-progress``, and only on a terminal (a log file or a pipe gets none)."""
    if args is not None and getattr(args, "no_progress", False):
        return False
    return sys.stderr.isatty()


# ----------------------------------------------------------------------------- --weights, --model, --ema
def add_weights(
    p: argparse.ArgumentParser,
    *,
    ema: str = "use the EMA weights of a training checkpoint",
    exported: bool = False,
) -> None:
    """``--weights``/``--model``/``--ema``; ``exported``: the verb also runs exported files."""
    also = ", exported model (.onnx, .xml, .pt2; see `convnext export`)" if exported else ""
    p.add_argument(
        "--weights",
        metavar="SRC",
        help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k), HF folder, Hugging Face Hub repo "
        f"(hf-hub:ORG/NAME[@REVISION]), training run folder{also} (default: the tag in --model, e.g. "
        "--model convnext_tiny.fb_in1k, or the arch's default "
        "weights)",
    )
    p.add_argument("--model", metavar="ARCH", help="architecture (default: from the checkpoint or run)")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{ema}; --no-ema the model's; default: the weights a training run ranked its best by "
        "(checkpoint.best_by, EMA in the ImageNet recipes), else the model's",
    )


def weights_source(weights: str | None, model: str | None) -> str:
    """--weights, else the tag named by --model (convnext_tiny.fb_in1k), else the arch's default tag."""
    if weights:
        return weights
    if not model:
        raise UserError("pass --weights (a file, URL, weights tag or run folder) or --model with a tag")
    if "." in model:
        return model
    from ..weights.registry import default_tag

    return default_tag(model)


def read_names_file(path: str) -> list[str]:
    """``--classes FILE``: class names, one per line (blank lines ignored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"class list {p} does not exist")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise UserError(f"class list {p} is empty")
    return names
