"""A diverged run stops with one sentence and never overwrites a good checkpoint with NaN/inf."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ...errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it was."""


class LossWindow:
    """Per-step losses since the last host sync, checked for NaN/inf there (one sync per ``log_every``)."""

    def __init__(self, start_step: int, last: Path) -> None:
        self.losses: list[torch.Tensor] = []
        self.start = start_step
        self.last = last

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def flush(self, epoch: int) -> list[float]:
        if not self.losses:
            return []
        vals = torch.stack(self.losses).float().cpu().tolist()
        for i, v in enumerate(vals):
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"the training loss became {v} at optimizer step {self.start + i + 1} "
                    f"(epoch {epoch + 1}); the last good checkpoint "
                    f"({self.last if self.last.exists() else 'none yet'}) is intact; lower "
                    "optim.lr, set optim.clip_grad, or use train.amp=bf16 instead of fp16"
                )
        self.losses, self.start = [], self.start + len(vals)
        return vals


def check_weights_finite(model: nn.Module, step: int, epoch: int, last: Path) -> None:
    """Refuse to checkpoint weights that became NaN/inf (``last``: the last good checkpoint)."""
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        raise TrainingDiverged(
            f"the weights became NaN/inf by optimizer step {step} (epoch {epoch + 1}); the last "
            f"good checkpoint ({last if last.exists() else 'none yet'}) is intact; lower "
            "optim.lr or set optim.clip_grad"
        )
