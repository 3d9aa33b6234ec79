"""Run records: metrics.jsonl (one JSON object per epoch) and TensorBoard scalars; rank 0 only."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


class MetricsLogger:
    """Appends to <run_dir>/metrics.jsonl and <run_dir>/tb; does nothing on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            step = record["epoch"]
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, step)
            self.tb.flush()

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"step/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError:  # a full disk: the checkpoint and metrics.jsonl matter, the event file does not
                pass


def repair_metrics(
    path: Path,
    epoch: int,
    last_record: dict[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Make metrics.jsonl hold epochs up to ``epoch`` once each, as the checkpoint resumed from says: drop
    records of epochs the checkpoint does not contain (a run killed after logging) and a torn last line
    (killed while appending); put back ``last_record`` (the checkpoint's own record of ``epoch``) when a kill
    came between the checkpoint and its line. Rewritten atomically."""
    records = read_metrics(path, warn=warn) if path.exists() else []
    by_epoch = {r["epoch"]: r for r in records if r["epoch"] <= epoch}  # a repeated epoch: the later line
    if last_record and last_record.get("epoch") == epoch:
        by_epoch.setdefault(epoch, last_record)
    keep = [by_epoch[e] for e in sorted(by_epoch)]
    if not path.exists() and not keep:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


def read_metrics(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (``path`` or ``path``/metrics.jsonl).

    A torn last line (a kill while appending) is skipped with one warning, through ``warn`` (default:
    ``warnings.warn``); a damaged line elsewhere is one sentence naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError:
            if i == len(lines):
                msg = f"{path}: ignoring its torn last line (a run killed while writing it): {ln[:60]!r}"
                (warn or (lambda m: warnings.warn(m, stacklevel=3)))(f"warning: {msg}" if warn else msg)
                break
            raise UserError(f"{path} line {i} is not a metrics record: {ln[:60]!r}") from None
        out.append(rec)
    return out
