"""Learning-rate schedule: a pure function of the optimizer step (nanoGPT's ``get_lr(it)``, the official
code's per-step ``cosine_scheduler`` array), so resuming needs no scheduler state, only the step number."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    min_lr: float,
    name: str = "cosine",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup from ``warmup_ratio``
    (mmcv's: the official detection configs start at 0.001, segmentation at 1e-6; ours 0), then cosine
    (or constant, or ``poly``: the official segmentation schedule, ``min + (1 - min) * (1 - step / total)``
    from step 0 as mmcv's ``PolyLrUpdaterHook`` with power 1, times the warmup ramp while it lasts).

    Warmup: ``r + (1 - r) * step / warmup_steps`` (mmcv's linear warmup, ``r = warmup_ratio``); cosine:
    ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with ``t = (step - warmup) / (total - warmup)`` and
    ``min = min_lr / base_lr``, the closed form of the official ``cosine_scheduler`` (which precomputes the
    same values in a numpy array).
    """
    floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0
    ramp = warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps if step < warmup_steps else 1.0
    if name == "poly":  # mmseg's poly (power 1) from step 0, the warmup ramp multiplying it (mmcv's hook)
        return ramp * (floor + (1.0 - floor) * (1.0 - min(step / max(total_steps, 1), 1.0)))
    if step < warmup_steps:
        return ramp
    if name == "constant":
        return 1.0
    if name == "step":  # mmdet's step policy: x gamma at each milestone passed (Mask R-CNN: epochs 27, 33)
        return gamma ** sum(step >= m for m in milestones)
    t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class LrSchedule:
    """Every param group's lr at a step: its peak lr (``optim.lr`` scaled by the batch and by its layer-decay
    factor) times :func:`lr_factor`. The cosine floor scales with each group's layer-decay factor, as in the
    official code; warmup starts at exactly ``warmup_ratio`` (0 by default, which torch's LinearLR cannot)."""

    total_steps: int
    warmup_steps: int
    base_lr: float  # the peak lr before layer decay: the floor's reference
    min_lr: float
    name: str = "cosine"
    milestones: tuple[int, ...] = ()  # "step": the optimizer steps at which the lr is multiplied by gamma
    gamma: float = 0.1
    warmup_ratio: float = 0.0

    def factor(self, step: int) -> float:
        return lr_factor(
            step,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            base_lr=self.base_lr,
            min_lr=self.min_lr,
            name=self.name,
            milestones=self.milestones,
            gamma=self.gamma,
            warmup_ratio=self.warmup_ratio,
        )

    def apply(self, optimizer: Optimizer, peaks: Sequence[float], step: int) -> float:
        """Set each group's lr for optimizer step ``step`` (0-based, before ``optimizer.step()``); returns the
        largest."""
        f = self.factor(step)
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * f
        return max(peak * f for peak in peaks)


def peak_lrs(optimizer: Optimizer) -> list[float]:
    """Each group's peak lr: call right after building the optimizer, before any lr is scheduled."""
    return [float(g["lr"]) for g in optimizer.param_groups]
