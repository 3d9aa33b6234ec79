"""Training checkpoints: one schema (:func:`train_state`), written atomically, rotated, read with
``weights_only=True``."""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

FORMAT = "convnext-train"
# 1: the lr schedule's position was a LambdaLR state under "scheduler" (still read: the lr is now a function
#    of "step" alone, so that entry is simply ignored).
# 2: no "scheduler".
VERSION = 2


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
    world_size: int = 1,
    rng: list[dict] | None = None,
    config: dict | None = None,
    class_names: list[str] | None = None,
    metrics: dict | None = None,
    best_top1: float | None = None,
) -> dict[str, Any]:
    """The training checkpoint, the only place its schema is written (plain types: loads with weights_only).

    ``epoch`` counts completed epochs and ``step`` optimizer steps; ``metrics`` is the epoch's metrics.jsonl
    record (end-of-epoch checkpoints), ``rng`` one RNG state per rank.
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
        "world_size": world_size,
        "rng": rng or [],
        "config": config or {},
        "class_names": class_names,
        "metrics": metrics or {},
        "best_top1": best_top1,
    }


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash mid-write (or a
    full disk) leaves the previous file intact, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else copy), atomically replacing ``dst``."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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


def load_train_checkpoint(path: str | Path) -> dict:
    """A checkpoint of :func:`train_state`, read without running any pickle code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's file, one sentence
        raise UserError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})"
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


class CheckpointManager:
    """<run_dir>/checkpoints/{last.pth, best.pth, epoch_XXXX.pth}; keeps the last ``keep_last`` epochs."""

    def __init__(self, folder: str | Path, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.folder / "last.pth"

    @property
    def best(self) -> Path:
        return self.folder / "best.pth"

    def save(self, state: dict, *, epoch_end: bool, is_best: bool) -> Path:
        """Write last.pth; at an epoch's end link it as epoch_XXXX.pth (and best.pth), then rotate."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save(state, self.last)
        if epoch_end:
            atomic_link(self.last, self.folder / f"epoch_{state['epoch']:04d}.pth")
            self._rotate()
        if is_best:
            atomic_link(self.last, self.best)
        return self.last

    def _rotate(self) -> None:
        epochs = sorted(p for p in self.folder.glob("epoch_*.pth") if re.fullmatch(r"epoch_\d+\.pth", p.name))
        for p in epochs[: max(len(epochs) - self.keep_last, 0)]:
            p.unlink(missing_ok=True)
