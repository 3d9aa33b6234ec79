"""What a run prints (rank 0 only, to stderr) and the one sentence for a full disk.

These lines are the run's own log, its output read top to bottom as a record of the run (what it trains and
how, "resuming ...", the per-epoch lines, where the trackers write), as a verb's table is its output: they
keep their ``convnext train: ...`` form and their writer here. A fact found along the way (a damaged
checkpoint, a torn metrics line, a tracker that failed) is a message: ``convnext.messages.warn``/``note``,
shown by the command line as ``convnext train: warning: ...``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ... import dist
from ...errors import UserError
from ...messages import cli_verb
from ..checkpoint import no_space


def print_main(*args: Any) -> None:
    if dist.is_main():
        print(*args, file=sys.stderr, flush=True)


def say(msg: str) -> None:
    print_main(f"convnext {cli_verb()}: {msg}")


@contextlib.contextmanager
def writing(path: Path, intact: Path) -> Iterator[None]:
    """A full disk while writing ``path`` is one sentence, not a traceback."""
    try:
        yield
    except OSError as e:
        if not no_space(e):
            raise
        what = f"the checkpoint {intact} is intact" if intact.exists() else "no checkpoint was written yet"
        raise UserError(f"no space left on the device writing {getattr(e, 'path', path)}; {what}") from None


def hms(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"
