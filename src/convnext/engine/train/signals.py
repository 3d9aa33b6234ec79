"""Stopping a run cleanly: SIGTERM, SIGUSR1 (cluster pre-emption) and Ctrl-C become a checkpoint at the
next step."""

from __future__ import annotations

import signal
import sys
from typing import Any

from ...messages import cli_verb

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class StopFlag:
    """SIGTERM / SIGUSR1 (cluster pre-emption) and a first Ctrl-C set a flag; the loop checkpoints at the next
    step and exits (the CLI with 128 + the signal's number). A second Ctrl-C stops at once
    (KeyboardInterrupt), losing only the steps since the last checkpoint: a user who presses it twice means
    it; during a checkpoint write it waits until the files are complete (``checkpoint.signals_held``).
    Loader workers ignore all three (``seed_worker``): schedulers signal the whole process group, and the
    batches must still come while the checkpoint is taken."""

    def __init__(self, announce: bool = True) -> None:
        self.signal: str | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. called from a notebook worker)
                    pass

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.signal == "SIGINT":
                raise KeyboardInterrupt
            if self.announce:
                print(
                    f"\nconvnext {cli_verb()}: Ctrl-C: saving a checkpoint at the next step "
                    "(Ctrl-C again stops at once, losing the steps since the last checkpoint)",
                    file=sys.stderr,
                    flush=True,
                )
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
