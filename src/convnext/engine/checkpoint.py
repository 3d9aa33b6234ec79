"""Training checkpoints: one schema (:func:`train_state`), written atomically, copied (never linked), rotated,
read with ``weights_only=True``.

The files of ``<run.dir>/checkpoints/``:

- ``last.pth``: the newest state, written after every epoch, on SIGTERM/SIGUSR1 and every
  ``checkpoint.every_steps`` steps; a run folder holding it resumes by itself.
- ``epoch_XXXX.pth``: the state at the end of epoch XXXX (the newest ``checkpoint.keep_last`` are kept).
- ``best.pth``: the end-of-epoch state with the best validation top-1 so far.

Each is an independent file (a copy, never a hard link: overwriting or truncating one cannot touch another),
and each write is atomic (a temporary file in the same folder, fsync, ``os.replace``), so a kill at any
moment leaves every file either as it was or complete. ``last.pth`` records the best epoch, so a kill between
writing ``last.pth`` and ``best.pth`` is repaired on the next start (:meth:`CheckpointManager.repair_best`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
import secrets
import shutil
import signal
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..messages import note, warn
from ..weights.containers import TRAIN_FORMAT, TRAIN_VERSION
from .pauses import NO_PAUSES, PausePoints

# The schema's name and version, defined where every container is read (their history: weights/containers.py).
FORMAT, VERSION = TRAIN_FORMAT, TRAIN_VERSION

# The signals a checkpoint write holds back until its files are complete (signals_held).
HELD_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")
_held_now: list[int] | None = None  # the signals held by the write under way


def train_state(
    *,
    arch: str,
    model: dict[str, torch.Tensor],
    model_ema: dict[str, torch.Tensor] | None = None,
    ema_updates: int = 0,
    optimizer: dict | None = None,
    scaler: dict | None = None,
    epoch: int = 0,
    step: int = 0,
    steps_per_epoch: int | None = None,
    epoch_end: bool = True,
    epoch_partial: dict | None = None,
    world_size: int = 1,
    rng: list[dict] | None = None,
    config: dict | None = None,
    class_names: list[str] | None = None,
    metrics: dict | None = None,
    best_top1: float | None = None,
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """The training checkpoint, the only place its schema is written (plain types: loads with weights_only).

    ``epoch`` counts completed epochs and ``step`` optimizer steps; a mid-epoch checkpoint
    (``epoch_end=False``) carries ``epoch_partial``: the epoch's running train-loss sum (one per rank), its
    step and image counts and the seconds spent, so the resumed epoch reports what an uninterrupted one would.
    ``metrics`` is the epoch's metrics.jsonl record (end-of-epoch checkpoints), ``rng`` one state per rank.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model": model,
        "model_ema": model_ema,
        "ema_updates": ema_updates,
        "optimizer": optimizer,
        "scaler": scaler or None,
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "epoch_end": epoch_end,
        "epoch_partial": epoch_partial,
        "world_size": world_size,
        "rng": rng or [],
        "config": config or {},
        "class_names": class_names,
        "metrics": metrics or {},
        "best_top1": best_top1,
        "best_epoch": best_epoch,
    }


def is_epoch_end(ckpt: dict) -> bool:
    """Whether ``ckpt`` is the state at the end of its epoch (version 1 files say it through the step)."""
    if "epoch_end" in ckpt:
        return bool(ckpt["epoch_end"])
    steps_per_epoch = ckpt.get("steps_per_epoch")
    return steps_per_epoch is None or int(ckpt["step"]) == int(ckpt["epoch"]) * int(steps_per_epoch)


# ----------------------------------------------------------------------------------------------------------
# Atomic writes


def no_space(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) is a full disk or quota; torch.save wraps the OSError in a
    RuntimeError, so the chain is searched."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class NoSpaceLeft(OSError):
    """A write failed for lack of space; the temporary file is gone, the target untouched."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path = path


def _open_tmp(path: Path) -> tuple[int, Path]:
    """A new temporary file next to ``path`` (``.<name>.<random>.tmp``), created with mode 0666 so the umask
    applies, as for every other run file (mkstemp would make it 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file, fsync, os.replace onto ``path``, fsync the folder: a kill or a full
    disk at any moment leaves ``path`` as it was or complete, never truncated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_tmp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if no_space(e):
            raise NoSpaceLeft(path) from None
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGUSR1 back while the checkpoint files are written, then deliver them to the
    handlers they were meant for, in order. A second Ctrl-C during a multi-gigabyte write would otherwise
    raise KeyboardInterrupt inside torch.save (a traceback, exit 1, a temporary file to clean up); held, the
    write completes and the Ctrl-C stops the run right after it. A no-op outside the main thread (Python
    delivers signals only there)."""
    global _held_now
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread() or _held_now is not None:
        yield held
        return
    old: dict[int, Any] = {}
    for name in HELD_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            old[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    _held_now = held
    try:
        yield held
    finally:
        _held_now = None
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in held:  # as if each had come now: a KeyboardInterrupt stops the delivery of the rest
            handler = old[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


def atomic_save(obj: Any, path: str | Path, *, wrap: Callable[[Any], Any] | None = None) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :func:`_write_atomically`); ``wrap`` wraps the file
    torch.save writes to (the tests' pause point inside a write, :mod:`convnext.engine.pauses`)."""
    _write_atomically(Path(path), lambda f: torch.save(obj, wrap(f) if wrap is not None else f))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically, as an independent file: ``os.copy_file_range`` shares blocks where
    the filesystem can (reflinks on btrfs/XFS, server-side on NFS 4.2) and copies elsewhere; never a hard
    link, so damaging one file cannot damage the other."""

    def write(f: Any) -> None:
        with open(src, "rb") as s:
            n = os.fstat(s.fileno()).st_size
            try:
                done = 0
                while done < n:
                    k = os.copy_file_range(s.fileno(), f.fileno(), n - done)
                    if k == 0:
                        break
                    done += k
                if done == n:
                    return
            except OSError as e:
                if no_space(e):
                    raise
            f.seek(0)
            f.truncate()
            s.seek(0)
            shutil.copyfileobj(s, f, 1 << 20)

    _write_atomically(Path(dst), write)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# RNG states: plain tensors / ints so they pass weights_only


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------


def load_train_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """A checkpoint of :func:`train_state`, read without running any pickle code. ``mmap=True`` reads only
    the header (tensors stay on disk until touched): cheap for looking at ``epoch`` or ``best_epoch``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} cannot be read (it is empty: 0 bytes)")
    if zipfile.is_zipfile(path):
        # sizes from the zip directory before torch inflates anything: a pickle that inflates to gigabytes
        # (or a storage record that lies) is refused here, not after it filled the memory
        from ..weights.files import check_archive

        try:
            check_archive(path)
        except UserError as e:
            raise UserError(f"checkpoint {path} cannot be read ({e})") from None
    else:
        with path.open("rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive; only files of torch < 1.6 are a bare pickle (b"\x80" + protocol).
        # Anything else (random bytes, a truncated zip, an HTML page) is named as such, not with torch's
        # advice about mmap or weights_only.
        if head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise UserError(
                f"checkpoint {path} cannot be read (not a checkpoint: corrupt or truncated, it is not the "
                "zip archive torch.save writes)"
            )
        mmap = False  # torch maps only zip archives
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # any unreadable file is the user's file, one sentence
        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, pickle.UnpicklingError):  # torch's first line is a paragraph about weights_only
            first = "its pickle is corrupt or not plain data"
        raise UserError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first or 'no detail'})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} is not a convnext training checkpoint (no format: {FORMAT!r}); "
            "to start from pretrained weights use model.pretrained=PATH"
        )
    if ckpt.get("version", 0) > VERSION:
        raise UserError(
            f"checkpoint {path} has version {ckpt['version']}; this convnext reads up to {VERSION}"
        )
    return ckpt


def _epoch_of(name: str) -> int | None:
    m = re.fullmatch(r"epoch_(\d+)\.pth", name)
    return int(m.group(1)) if m else None


class CheckpointManager:
    """<run_dir>/checkpoints/{last.pth, best.pth, epoch_XXXX.pth}; keeps the last ``keep_last`` epochs.
    ``pauses``: where the kill tests stop the writes (:mod:`convnext.engine.pauses`; none by default)."""

    def __init__(self, folder: str | Path, keep_last: int = 3, pauses: PausePoints = NO_PAUSES) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.pauses = pauses

    @property
    def last(self) -> Path:
        return self.folder / "last.pth"

    @property
    def best(self) -> Path:
        return self.folder / "best.pth"

    def epoch_file(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pth"

    def epoch_files(self) -> list[Path]:
        """The epoch_XXXX.pth files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(e, p) for p in self.folder.iterdir() if (e := _epoch_of(p.name)) is not None]
        return [p for _, p in sorted(found)]

    def save(self, state: dict, *, epoch_end: bool, is_best: bool) -> Path:
        """Write last.pth; at an epoch's end copy it to epoch_XXXX.pth (and best.pth), then rotate.

        last.pth first: it records ``best_epoch``, so a kill before best.pth is copied is repaired from it on
        the next start. A full disk is one sentence naming the file and the checkpoint that is intact.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with signals_held():  # a Ctrl-C (or SIGTERM) now acts once every file is complete
            return self._save(state, epoch_end=epoch_end, is_best=is_best)

    def _save(self, state: dict, *, epoch_end: bool, is_best: bool) -> Path:
        epoch = int(state["epoch"])
        had_last = self.last.exists()

        def two_held() -> bool:  # the pause inside last.pth's write also ends on a double Ctrl-C
            return len(_held_now or ()) >= 2

        try:
            atomic_save(state, self.last, wrap=lambda f: self.pauses.writer(f, "last.tmp", epoch, two_held))
        except NoSpaceLeft as e:
            intact = (
                f"the previous checkpoint {self.last} is intact"
                if had_last
                else "no checkpoint was written yet"
            )
            raise UserError(f"no space left on the device writing {e.path}; {intact}") from None
        if epoch_end:
            self.pauses("last", epoch)
        try:
            if epoch_end:
                atomic_copy(self.last, self.epoch_file(epoch))
                self.pauses("epoch", epoch)
                self._rotate()
            if is_best:
                atomic_copy(self.last, self.best)
        except NoSpaceLeft as e:
            raise UserError(
                f"no space left on the device writing {e.path}; the checkpoint {self.last} (epoch {epoch}) "
                "is intact"
            ) from None
        if epoch_end:
            self.pauses("best", epoch)
        return self.last

    def _rotate(self) -> None:
        epochs = self.epoch_files()
        for p in epochs[: max(len(epochs) - self.keep_last, 0)]:
            p.unlink(missing_ok=True)

    def clean_temporaries(self) -> list[Path]:
        """Remove the temporary files of writes a kill interrupted (``.last.pth.<random>.tmp``); call it only
        while holding the run folder's lock, when no write can be under way."""
        if not self.folder.is_dir():
            return []
        gone = [p for p in self.folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def find_resumable(self) -> Path | None:
        """The checkpoint to resume: last.pth, or when it is damaged (or gone) the newest intact end-of-epoch
        checkpoint (epoch_XXXX.pth or best.pth) with one warning line; None when the folder holds none.

        Raises UserError naming the damaged file when no intact one is left: never starts over silently.
        Files are checked by reading their header and zip directory (``mmap``), which catches truncated,
        empty and foreign files without reading gigabytes of weights twice.
        """
        damaged: list[str] = []
        if self.last.exists():
            try:
                load_train_checkpoint(self.last, mmap=True)
                return self.last
            except UserError as e:
                damaged.append(str(e))
        candidates = [p for p in [*self.epoch_files(), self.best] if p.exists()]
        if not candidates and not damaged:
            return None
        if not damaged:
            damaged.append(f"checkpoint {self.last} is missing")
        found: list[tuple[int, Path]] = []
        for p in candidates:
            try:
                found.append((int(load_train_checkpoint(p, mmap=True)["epoch"]), p))
            except UserError as e:
                damaged.append(str(e))
        if not found:
            raise UserError(
                f"{damaged[0]}, and no intact checkpoint is left in {self.folder}; resume another one with "
                "--resume PATH or start over with --fresh"
            )
        epoch, p = min(found, key=lambda t: (-t[0], t[1] == self.best))  # newest; epoch_XXXX before best
        warn(f"{damaged[0]}; resuming from the newest intact checkpoint {p} (epoch {epoch})")
        return p

    def epoch_record(self, epoch: int) -> tuple[dict, Path] | None:
        """The metrics.jsonl record of ``epoch`` as an end-of-epoch checkpoint of this folder carries it, and
        that file (epoch_XXXX.pth, else best.pth or last.pth when they hold that epoch); None when none does.
        Read from the header only (``mmap``): the record is in the pickle, the weights stay on disk."""
        for p in (self.epoch_file(epoch), self.best, self.last):
            if not p.is_file():
                continue
            try:
                ckpt = load_train_checkpoint(p, mmap=True)
            except UserError:
                continue
            record = ckpt.get("metrics") or {}
            if int(ckpt["epoch"]) == epoch and is_epoch_end(ckpt) and record.get("epoch") == epoch:
                return dict(record), p
        return None

    def repair_best(self, ckpt: dict, source: Path) -> None:
        """Make best.pth the epoch ``ckpt`` names as the best (a kill may have come between writing last.pth
        and copying best.pth); ``source`` is the file ``ckpt`` was read from."""
        want = ckpt.get("best_epoch")
        if want is None:  # version 1, or no evaluation yet
            return
        have = None
        if self.best.exists():
            try:
                have = int(load_train_checkpoint(self.best, mmap=True)["epoch"])
            except UserError:
                have = None
        if have == want:
            return
        src = None
        if int(ckpt["epoch"]) == want and is_epoch_end(ckpt):
            src = source
        elif self.epoch_file(want).exists():
            src = self.epoch_file(want)
        if src is None:
            warn(
                f"{self.best} is "
                + (f"from epoch {have}" if have is not None else "missing or unreadable")
                + f" but the run's best is epoch {want}, whose checkpoint is no longer kept"
            )
            return
        atomic_copy(src, self.best)
        note(
            f"restored {self.best} to epoch {want}, the run's best (it was "
            + (f"epoch {have})" if have is not None else "missing)")
        )
