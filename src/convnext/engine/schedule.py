"""Learning-rate schedule, stepped once per optimizer step (not per epoch), as in the official recipe."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(
    step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, name: str = "cosine"
) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup from 0, then cosine.

    Warmup: ``step / warmup_steps``; cosine: ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup) / (total - warmup)`` and ``min = min_lr / base_lr``, the closed form of the
    official ``cosine_scheduler`` (which precomputes the same values in a numpy array).
    """
    if step < warmup_steps:
        return step / warmup_steps
    if name == "constant":
        return 1.0
    floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0
    t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    min_lr: float,
    name: str = "cosine",
) -> LambdaLR:
    """A LambdaLR: each param group's lr is its initial lr (peak x layer-decay scale) times the factor.

    LambdaLR rather than SequentialLR(LinearLR, CosineAnnealingLR) because LinearLR cannot start at exactly
    0 and the cosine floor must scale with each group's layer-decay factor, as in the official code.
    """

    def factor(step: int) -> float:
        return lr_factor(
            step,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            base_lr=base_lr,
            min_lr=min_lr,
            name=name,
        )

    return LambdaLR(optimizer, factor)
