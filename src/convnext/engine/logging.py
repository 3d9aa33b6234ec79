"""Run records: metrics.jsonl (one JSON object per epoch, the source of truth) and the experiment trackers of
``run.loggers`` (engine/trackers.py); rank 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..messages import note, warn
from .trackers import Tracker, open_trackers


class MetricsLogger:
    """Appends to <run_dir>/metrics.jsonl and feeds the trackers; does nothing on ranks other than 0.

    A tracker that raises in the middle of a run is dropped with one warning (``messages.warn``): training and
    metrics.jsonl go on without it. Opening one that cannot start is a UserError (before the first step).
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        loggers: Iterable[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
        resumed_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.trackers: list[Tracker] = []
        if enabled:
            self.trackers = open_trackers(loggers, Path(run_dir), config or {}, resumed_step)
        self.closed = False

    def describe(self) -> str:
        """Where the trackers write ("" without any)."""
        return "; ".join(t.describe() for t in self.trackers)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as e:  # a tracker never stops training
                self.trackers.remove(t)
                msg = str(e).strip().splitlines()
                warn(
                    f"{t.name} failed {what} ({msg[0] if msg else type(e).__name__}); "
                    f"continuing without it (metrics.jsonl has every record)"
                )

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        scalars = {
            k: v
            for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._each("logging an epoch", lambda t: t.log_metrics("epoch", record["epoch"], scalars))

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self._each("logging a step", lambda t: t.log_metrics("step", step, scalars))

    def close(self, status: str = "finished", files: dict[str, Path] | None = None, step: int = 0) -> None:
        """Hand the trackers the run's files (``curves``: curves.png; others, e.g. config.yaml, as they are)
        and end their runs with ``status``: "finished", "stopped" (to be resumed) or "failed"."""
        if self.closed:
            return
        self.closed = True
        present = {k: p for k, p in (files or {}).items() if p.is_file()}
        if present:
            self._each("logging the run's files", lambda t: t.log_files(present, step))
        self._each("closing", lambda t: t.close(status))
        self.trackers = []


def repair_metrics(
    path: Path,
    epoch: int,
    last_record: dict[str, Any] | None = None,
    record_of: Callable[[int], tuple[dict[str, Any], Path] | None] | None = None,
) -> None:
    """Make metrics.jsonl hold epochs up to ``epoch`` once each, as the checkpoint resumed from says: drop
    records of epochs the checkpoint does not contain (a run killed after logging) and a torn last line
    (killed while appending); put back ``last_record`` (the checkpoint's own record of ``epoch``) when a kill
    came between the checkpoint and its line. An earlier epoch whose line is missing (torn) is rebuilt from
    ``record_of(epoch)`` (the record an end-of-epoch checkpoint of the run folder carries, and that file),
    else named as lost in one warning. Rewritten atomically."""
    records = read_metrics(path) if path.exists() else []
    by_epoch = {r["epoch"]: r for r in records if r["epoch"] <= epoch}  # a repeated epoch: the later line
    if last_record and last_record.get("epoch") == epoch:
        by_epoch.setdefault(epoch, last_record)
    lost = []
    if record_of is not None and (records or path.exists()):
        for e in range(1, epoch + 1):
            if e in by_epoch:
                continue
            found = record_of(e)
            if found is None:
                lost.append(e)
                continue
            by_epoch[e] = found[0]
            note(f"{path}: rebuilt the record of epoch {e} from {found[1]}")
    if lost:
        spans: list[list[int]] = []  # 1, 2, 3, 7 -> "1-3, 7": one short line however many are lost
        for e in lost:
            if spans and spans[-1][1] == e - 1:
                spans[-1][1] = e
            else:
                spans.append([e, e])
        which = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
        what = f"the records of epochs {which} are" if len(lost) > 1 else f"the record of epoch {which} is"
        warn(f"{path}: {what} lost (its line is missing or torn, and no checkpoint of that epoch is kept)")
    keep = [by_epoch[e] for e in sorted(by_epoch)]
    if not path.exists() and not keep:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (``path`` or ``path``/metrics.jsonl).

    A torn last line (a kill while appending) is skipped with one warning; a damaged line elsewhere is one
    sentence naming the file and line.
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
                warn(f"{path}: ignoring its torn last line (a run killed while writing it): {ln[:60]!r}")
                break
            raise UserError(f"{path} line {i} is not a metrics record: {ln[:60]!r}") from None
        out.append(rec)
    return out
