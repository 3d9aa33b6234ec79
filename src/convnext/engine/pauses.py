"""Pause points for the kill tests: a training process stops at an exact point of an epoch's end or of a
checkpoint write, so that a test can kill -9 it there (tests/test_faults.py).

The one switch is the environment variable ``CONVNEXT_TEST_PAUSE_AT=<point>@<n>``, read in one place
(:meth:`PausePoints.from_env`, by ``engine.train.train``); the loop and :class:`~convnext.engine.checkpoint.
CheckpointManager` are handed the resulting :class:`PausePoints` and pause nowhere without it. At the point,
the process prints ``convnext-test: paused at <point>@<n>`` to stderr and sleeps until it is killed (or a
condition the point names becomes true).

Points, in the order of an epoch's end, for epoch <n>: ``last.tmp`` (last.pth's temporary file half written;
two signals held back by the write, a double Ctrl-C, also end the pause), ``last`` (last.pth replaced),
``epoch`` (epoch_XXXX.pth copied), ``best`` (best.pth copied), ``metrics`` (metrics.jsonl appended); and
``step`` for optimizer step <n> (there a SIGTERM/SIGUSR1 also ends the pause, and the run stops as usual).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

TEST_PAUSE_ENV = "CONVNEXT_TEST_PAUSE_AT"


class PausePoints:
    """Where this process pauses: ``at`` is ``"<point>@<n>"``, or None (a real run: never)."""

    def __init__(self, at: str | None = None) -> None:
        self.at = at

    @classmethod
    def from_env(cls) -> PausePoints:
        return cls(os.environ.get(TEST_PAUSE_ENV) or None)

    def wants(self, point: str, n: int) -> bool:
        return self.at is not None and self.at == f"{point}@{n}"

    def __call__(self, point: str, n: int, until: Callable[[], bool] | None = None) -> None:
        """Stop here if asked to (see the module's docstring), until killed or ``until()`` is true."""
        if not self.wants(point, n):
            return
        print(f"convnext-test: paused at {point}@{n} (pid {os.getpid()})", file=sys.stderr, flush=True)
        while not (until is not None and until()):
            time.sleep(0.05)

    def writer(self, f: Any, point: str, n: int, until: Callable[[], bool]) -> Any:
        """``f``, or when ``point@n`` is asked for, ``f`` pausing after its first 4 KiB are written."""
        return _PausingWriter(f, lambda: self(point, n, until)) if self.wants(point, n) else f


NO_PAUSES = PausePoints(None)


class _PausingWriter:
    """A file object that calls ``pause`` once 4 KiB went through it (flushed, so the bytes are on disk)."""

    def __init__(self, f: Any, pause: Callable[[], None]) -> None:
        self.f, self.pause, self.n = f, pause, 0

    def write(self, b: bytes) -> int:
        out = self.f.write(b)
        self.n += len(b)
        if self.n >= 4096:
            self.f.flush()
            self.pause()
        return out

    def flush(self) -> None:
        self.f.flush()
