"""The run folder: one training at a time, no leftovers of killed writes, never two runs mixed in it."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".lock"
# What a run writes into its folder; `--fresh` moves these aside together (checkpoints and metrics of one run
# must never be mixed with another's).
# trackers.json (the MLflow / W&B run ids) goes with them: a fresh start is a new tracker run.
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "config.yaml",
    "tb",
    "curves.png",
    "samples",
    "trackers.json",
    "wandb",
)


def has_checkpoint(run_dir: Path) -> bool:
    """``run_dir`` holds a checkpoint that a run of it resumes (last.pth, best.pth or epoch_XXXX.pth; whether
    it is intact is decided when the run reads it)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return False
    names = [p.name for p in folder.glob("*.pth")]
    return any(n in ("last.pth", "best.pth") or n.startswith("epoch_") for n in names)


class RunFolder:
    """An exclusive OS lock on ``<run.dir>/.lock`` for the life of the training process.

    An OS lock, not a PID file: the kernel drops it when the process ends however it ends (kill -9 included),
    so a crash never leaves a stale lock. A POSIX record lock (``lockf``) rather than ``flock``: forked
    DataLoader workers do not inherit it, so it is gone the moment the trainer dies (a ``flock`` would live
    on in the workers until they notice, seconds later), and it works over NFS. The lock file stays (removing
    it would race with a second process's lock); it holds the holder's PID and host for the message a second
    run prints.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one run per folder is up to the user there
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            os.close(fd)
            holder = self._holder()
            raise UserError(
                f"run folder {self.path} is in use by another training ({holder}); wait for it to end, stop "
                "it, or choose another run.dir"
            ) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError:  # a full disk: the lock holds all the same, only the PID is not there to name
            pass

    def _holder(self) -> str:
        try:
            pid, _, host = self.lock_file.read_text().strip().partition(" ")
        except OSError:
            pid, host = "", ""
        if not pid:
            return "PID unknown"
        return f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def previous_run(self) -> list[Path]:
        """The files of an earlier run in this folder (checkpoints or metrics); empty when there are none."""
        ckpts = self.path / "checkpoints"
        has_ckpts = ckpts.is_dir() and any(p.suffix == ".pth" for p in ckpts.iterdir())
        if not has_ckpts and not (self.path / "metrics.jsonl").exists():
            return []
        return [self.path / n for n in RUN_FILES if (self.path / n).exists()]

    def move_aside(self) -> Path | None:
        """Move an earlier run's files into ``previous-<YYYYmmdd-HHMMSS>/`` in the run folder (a fresh start
        never deletes or mixes them); returns that folder, or None when there was nothing to move."""
        files = self.previous_run()
        if not files:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.path / f"previous-{stamp}"
        k = 1
        while dest.exists():
            k += 1
            dest = self.path / f"previous-{stamp}-{k}"
        dest.mkdir()
        for p in files:
            os.replace(p, dest / p.name)
        return dest
