"""The records a training run keeps: where it trains (``Process``), its data, its model side (``Trainer``),
where it is (``Progress``, what a checkpoint records besides the weights) and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...recipe import TrainConfig
from ..checkpoint import CheckpointManager
from ..logging import MetricsLogger
from ..pauses import PausePoints
from ..schedule import LrSchedule
from .divergence import LossWindow
from .signals import StopFlag


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int  # completed epochs
    step: int  # optimizer steps done
    stopped_early: bool  # True when a SIGTERM/SIGUSR1/SIGINT ended the run after a checkpoint
    metrics: list[dict[str, Any]]
    best_top1: float | None
    best_epoch: int | None = None
    main: bool = True  # this process reports (rank 0; every other rank of a torchrun job returns quietly)
    stopped_by: str | None = None  # the signal that stopped it ("SIGINT": Ctrl-C, the CLI exits 130)


@dataclass
class Process:
    """Where this process trains: device, AMP dtype, its rank among ``world`` processes."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Data:
    train_loader: Any
    val_loader: Any | None
    finish: Callable | None  # normalization (and random erasing) on the device batch
    mixup: Callable | None
    classes: list[str]
    n_train: int
    n_val: int
    steps_per_epoch: int
    num_classes: int | None = None  # the model's class count when it is not len(classes) (detection: + 1)


@dataclass
class Trainer:
    """The model side of a run: everything a step touches."""

    model: nn.Module
    ema: Any | None  # torch.optim.swa_utils.AveragedModel
    train_model: nn.Module  # the model, wrapped in DDP and/or torch.compile
    ddp: nn.parallel.DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    peaks: list[float]  # each param group's peak lr (batch scaling x layer decay)
    scaler: torch.amp.GradScaler  # enabled for fp16 only; a no-op otherwise
    schedule: LrSchedule
    criterion: nn.Module
    lr: float  # peak lr before layer decay
    eff_batch: int
    accum: int


@dataclass
class Progress:
    """Where the run is: what a checkpoint records besides the weights and optimizer."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps done
    best_top1: float | None = None
    best_epoch: int | None = None
    ema_updates: int = 0
    # the current epoch's running sums (a mid-epoch checkpoint carries them, so the epoch's line is the same
    # with or without an interruption)
    loss_sum: torch.Tensor | None = None
    loss_steps: int = 0
    images: int = 0
    elapsed: float = 0.0

    def new_epoch(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.loss_steps, self.images, self.elapsed = 0, 0, 0.0


@dataclass
class Run:
    """Everything :func:`train_one_epoch` and :func:`end_epoch` share."""

    cfg: TrainConfig
    proc: Process
    data: Data
    trainer: Trainer
    progress: Progress
    ckpts: CheckpointManager
    logger: MetricsLogger
    window: LossWindow
    stop: StopFlag
    pauses: PausePoints  # the kill tests' stops (convnext.engine.pauses); none in a real run
