"""The training loop: one process per device (torchrun), exact resume, pre-emption safe, nothing lost.

Laid out as torchvision's ``references/classification/train.py`` and the official ``main.py``/``engine.py``:
:func:`train` (main: open the run folder, set up, restore, loop), :func:`train_one_epoch`,
:func:`evaluate_epoch` and :func:`end_epoch` (evaluate, then save), each on one screen.

What "exact" means here: data order depends only on (seed, epoch); model/augmentation RNG states of every
rank are in the checkpoint; a checkpoint taken mid-epoch records how many optimizer steps of the epoch were
done (and the epoch's running loss sum), and resume skips exactly those batches. The learning rate is a
function of the step number alone. On CPU with ``data.workers=0``, N epochs straight and N/2 + resume + N/2
give bit-identical weights (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import dist
from ..device import amp_dtype as resolve_amp
from ..device import resolve_device
from ..errors import UserError
from .allocator import tune_cpu_allocator
from .checkpoint import (
    CheckpointManager,
    is_epoch_end,
    load_train_checkpoint,
    no_space,
    pause_for_test,
    rng_state,
    set_rng_state,
    train_state,
)
from .config import TrainConfig, dump_yaml, to_dict
from .ema import build_ema, ema_state_dict, load_ema_state_dict
from .logging import MetricsLogger, read_metrics, repair_metrics
from .optim import build_optimizer
from .preflight import check_resumable, check_step_memory, resume_changes, train_amp
from .rundir import RunFolder, check_run_dir
from .schedule import LrSchedule, peak_lrs
from .trackers import check_loggers

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it was."""


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


# ----------------------------------------------------------------------------------------------------------
# small helpers


class _StopFlag:
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
                    "\nconvnext train: Ctrl-C: saving a checkpoint at the next step (Ctrl-C again stops at "
                    "once, losing the steps since the last checkpoint)",
                    file=sys.stderr,
                    flush=True,
                )
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _LossWindow:
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


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _print(*args: Any) -> None:
    if dist.is_main():
        print(*args, file=sys.stderr, flush=True)


def _say(msg: str) -> None:
    _print(f"convnext train: {msg}")


@contextlib.contextmanager
def _writing(path: Path, intact: Path) -> Iterator[None]:
    """A full disk while writing ``path`` is one sentence, not a traceback."""
    try:
        yield
    except OSError as e:
        if not no_space(e):
            raise
        what = f"the checkpoint {intact} is intact" if intact.exists() else "no checkpoint was written yet"
        raise UserError(f"no space left on the device writing {getattr(e, 'path', path)}; {what}") from None


def _on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its UserError) on every rank, so all ranks stop together."""
    out: tuple[str, Any] = ("ok", None)
    if dist.is_main():
        try:
            out = ("ok", fn())
        except UserError as e:
            out = ("error", str(e))
            if not dist.is_dist():
                raise
    out = dist.broadcast_object(out)
    if out[0] == "error":
        raise UserError(out[1])
    return out[1]


def _build_model(cfg: TrainConfig, num_classes: int, resume_state: dict | None = None) -> nn.Module:
    """The recipe's model: ``model.pretrained`` loaded into it, or, when a checkpoint will be restored
    (``resume_state``, its model weights), built as that checkpoint's weights are shaped and left for
    :func:`restore` to fill: the checkpoint holds every weight, so a resume needs no pretrained file (it may
    be gone) and prints nothing about it."""
    from ..hub import create_model
    from ..models import get_variant, set_chunked_mlp
    from ..weights.containers import model_options_of

    opts = dict(cfg.model.options)
    opts.setdefault("drop_path_rate", cfg.model.drop_path_rate)
    opts.setdefault("head_init_scale", cfg.model.head_init_scale)
    try:
        family = get_variant(cfg.model.name.partition(".")[0]).family
    except ValueError as e:
        raise UserError(f"config key model.name: {e}") from None
    # The key's default is V1's layer scale; V2 has none (GRN) and isotropic none by default.
    if family == "v1" or (family == "isotropic" and cfg.model.layer_scale_init_value):
        opts.setdefault("layer_scale_init_value", cfg.model.layer_scale_init_value)
    pretrained = cfg.model.pretrained
    if resume_state is not None:  # the options the pretrained file would have implied, from the checkpoint
        opts = {**model_options_of(resume_state, cfg.model.name), **opts}
        pretrained = None
    try:
        model = create_model(cfg.model.name, pretrained=pretrained, num_classes=num_classes, **opts)
    except TypeError as e:
        raise UserError(f"config key model.options: {e}") from None
    except ValueError as e:
        raise UserError(f"config key model.name: {e}") from None
    # head_init_scale reaches the constructor, so a classifier that starts fresh (fine-tuning on other
    # classes) is already scaled, as in the official fine-tuning; one loaded from the checkpoint is not.
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    set_chunked_mlp(model, cfg.model.chunked_mlp)
    return model


def describe_model(cfg: TrainConfig, model: nn.Module) -> str:
    """The model as built: its name, the options that changed it, and its real parameter count."""
    n = sum(p.numel() for p in model.parameters()) / 1e6
    opts = ", ".join(f"{k}={v}" for k, v in to_dict(cfg.model)["options"].items())
    return f"{cfg.model.name} ({opts + '; ' if opts else ''}{n:.2f}M params)"


def _export_samples(cfg: TrainConfig, run_dir: Path, n: int) -> None:
    """Write ``n`` validation images as PNG (named <index>_<class>.png), for `convnext predict` to try."""
    from torchvision.io import write_png

    from ..data import build_dataset

    ds = build_dataset(cfg.data, cfg.data.val_split, None)
    out = run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    step = max(len(ds) // n, 1)
    for k, i in enumerate(range(0, min(len(ds), step * n), step)):
        img, target = ds[i]
        if int(target) < 0:  # unreadable (the val split drops such files): nothing to export
            continue
        if not isinstance(img, torch.Tensor):  # a PIL image
            from torchvision.transforms.v2.functional import pil_to_tensor

            img = pil_to_tensor(img)
        if img.dtype != torch.uint8:
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ds.classes[int(target)]))
        write_png(img.cpu(), str(out / f"{k:02d}_{safe}.png"))


# ----------------------------------------------------------------------------------------------------------
# setup


def start_process(cfg: TrainConfig) -> Process:
    """Device, threads, process group (under torchrun), allocator, AMP dtype."""
    want = resolve_device(cfg.train.device, what="config key train.device").type
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rank, world, local_rank = dist.init_distributed(want)
    device = resolve_device(want, local_rank, what="config key train.device")
    if device.type == "cpu":
        tune_cpu_allocator()  # reuse the heap for activations instead of page-faulting them in every step
    amp_name, why = train_amp(cfg, device)  # bf16 on a CPU without native bf16: fp32, said in one line
    if why:
        _say(why)
    amp = resolve_amp(amp_name, device, what="config key train.amp")
    return Process(device=device, amp_dtype=amp, rank=rank, world=world, local_rank=local_rank)


def open_run(
    cfg: TrainConfig, folder: RunFolder, ckpts: CheckpointManager, resume: Path | None, fresh: bool
) -> tuple[Path | None, dict | None]:
    """Rank 0 takes the run folder's lock, removes temporaries of killed writes, moves an earlier run aside
    (``--fresh``) or finds the checkpoint to resume; every rank then reads that checkpoint."""

    def on_main() -> Path | None:
        folder.acquire()
        ckpts.clean_temporaries()
        if resume is not None:
            return resume
        found = ckpts.find_resumable(warn=_say) if cfg.run.auto_resume and not fresh else None
        if found is not None:
            return found
        # a new run: whatever an earlier one left (checkpoints, or metrics without them) goes aside, whole
        moved = folder.move_aside()
        if moved is not None:
            why = (
                "--fresh"
                if fresh
                else "run.auto_resume=false"
                if not cfg.run.auto_resume
                else "no checkpoint"
            )
            _say(f"{why}: moved the previous run's checkpoints and metrics to {moved}")
        return None

    path = _on_main(on_main)
    if path is None:
        return None, None
    return path, load_train_checkpoint(path)


def build_data(cfg: TrainConfig, ckpt: dict | None, ckpt_path: Path | None, accum: int) -> Data:
    from ..data import (
        BatchFinish,
        build_dataset,
        build_eval_transform,
        build_loader,
        build_mixup_cutmix,
        build_train_transform,
    )

    on_device = cfg.data.normalize_on_device
    train_ds = build_dataset(
        cfg.data, cfg.data.train_split, build_train_transform(cfg.data, finish=not on_device)
    )
    do_eval = cfg.train.eval_every > 0
    val_ds = build_dataset(cfg.data, cfg.data.val_split, build_eval_transform(cfg.data)) if do_eval else None
    classes = list(train_ds.classes)
    if val_ds is not None and list(val_ds.classes) != classes:
        raise UserError(
            f"the {cfg.data.val_split!r} split has classes {list(val_ds.classes)[:5]}... but the "
            f"{cfg.data.train_split!r} split has {classes[:5]}...; both need the same class folders"
        )
    num_classes = cfg.model.num_classes or len(classes)
    if num_classes != len(classes):
        raise UserError(
            f"config key model.num_classes is {num_classes} but the dataset has {len(classes)} classes"
        )
    if ckpt is not None and ckpt.get("class_names") and list(ckpt["class_names"]) != classes:
        raise UserError(
            f"checkpoint {ckpt_path} was trained on other classes than data.root={cfg.data.root!r}"
        )
    kw = {"cfg": cfg.data, "seed": cfg.seed, "distributed": dist.is_dist()}
    train_loader = build_loader(train_ds, cfg.train.batch_size, train=True, **kw)
    val_loader = None
    if val_ds is not None:
        val_loader = build_loader(
            val_ds, cfg.train.eval_batch_size or 2 * cfg.train.batch_size, train=False, **kw
        )
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} x train.accum_steps={accum} is more than the "
            f"{len(train_ds)} training images allow for one optimizer step"
        )
    return Data(
        train_loader=train_loader,
        val_loader=val_loader,
        finish=BatchFinish(cfg.data) if on_device else None,
        mixup=build_mixup_cutmix(cfg.data, num_classes),
        classes=classes,
        n_train=len(train_ds),
        n_val=len(val_ds) if val_ds is not None else 0,
        steps_per_epoch=steps_per_epoch,
    )


def build_trainer(cfg: TrainConfig, proc: Process, data: Data, resume_state: dict | None = None) -> Trainer:
    num_classes = len(data.classes)
    model = _build_model(cfg, num_classes, resume_state)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise UserError(
            f"model {cfg.model.name} has {model.num_classes} classes but the dataset has {num_classes}"
        )
    model.to(proc.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = build_ema(model, cfg.ema.decay) if cfg.ema.enabled else None
    _seed_all(cfg.seed + proc.rank)  # per-rank augmentation / stochastic depth streams

    accum = cfg.train.accum_steps
    eff_batch = cfg.train.batch_size * proc.world * accum
    lr = cfg.optim.lr * (eff_batch / cfg.optim.lr_base_batch if cfg.optim.lr_base_batch else 1.0)
    o = cfg.optim
    optimizer = build_optimizer(
        model,
        name=o.name,
        lr=lr,
        weight_decay=o.weight_decay,
        betas=o.betas,
        eps=o.eps,
        momentum=o.momentum,
        layer_decay=o.layer_decay,
        fused=o.fused,
        device=proc.device,
    )
    spe = data.steps_per_epoch
    schedule = LrSchedule(
        total_steps=cfg.epochs * spe,
        warmup_steps=round(cfg.schedule.warmup_epochs * spe),
        base_lr=lr,
        min_lr=cfg.schedule.min_lr,
        name=cfg.schedule.name,
    )
    ddp = None
    train_model: nn.Module = model
    if dist.is_dist():
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None
        )
        train_model = ddp
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    return Trainer(
        model=model,
        ema=ema,
        train_model=train_model,
        ddp=ddp,
        optimizer=optimizer,
        peaks=peak_lrs(optimizer),
        scaler=torch.amp.GradScaler(proc.device.type, enabled=proc.amp_dtype == torch.float16),
        schedule=schedule,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing),
        lr=lr,
        eff_batch=eff_batch,
        accum=accum,
    )


def restore(
    cfg: TrainConfig, proc: Process, data: Data, tr: Trainer, ckpt: dict | None, path: Path | None
) -> tuple[Progress, dict | None]:
    """Load ``ckpt`` into the trainer; returns the progress and this rank's saved RNG state."""
    prog = Progress()
    prog.new_epoch(proc.device)
    if ckpt is None:
        return prog, None
    tr.model.load_state_dict(ckpt["model"])
    if tr.ema is not None and ckpt.get("model_ema") is not None:
        load_ema_state_dict(tr.ema, ckpt["model_ema"], int(ckpt.get("ema_updates", 1)))
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    # A version-1 checkpoint's "scheduler" state is not needed: the lr is a function of the step.
    prog.epoch, prog.step = int(ckpt["epoch"]), int(ckpt["step"])
    prog.best_top1, prog.best_epoch = ckpt.get("best_top1"), ckpt.get("best_epoch")
    prog.ema_updates = int(ckpt.get("ema_updates", 0))
    spe = data.steps_per_epoch
    saved_spe = int(ckpt.get("steps_per_epoch") or spe)
    partial = ckpt.get("epoch_partial")
    if saved_spe != spe:
        # A different batch size or number of processes: only an epoch boundary maps onto this run.
        if prog.step != prog.epoch * saved_spe:
            raise UserError(
                f"checkpoint {path} was saved mid-epoch with {saved_spe} steps per epoch but this run has "
                f"{spe} (other batch size, accum_steps or process count); resume it with the same settings, "
                "or resume from an epoch_XXXX.pth checkpoint"
            )
        prog.step, partial = prog.epoch * spe, None
        _say(f"{saved_spe} -> {spe} steps per epoch; the schedule continues at epoch {prog.epoch}")
    if partial and prog.step > prog.epoch * spe:
        sums = partial["loss_sum"]
        prog.loss_sum = sums[proc.rank if proc.rank < len(sums) else 0].to(proc.device)
        prog.loss_steps, prog.images = int(partial["loss_steps"]), int(partial["images"])
        prog.elapsed = float(partial["elapsed_s"])
    rngs = ckpt["rng"]
    return prog, (rngs[proc.rank] if proc.rank < len(rngs) else rngs[0])


# ----------------------------------------------------------------------------------------------------------
# one epoch, evaluation, saving


@dataclass
class Run:
    """Everything :func:`train_one_epoch` and :func:`end_epoch` share."""

    cfg: TrainConfig
    proc: Process
    data: Data
    tr: Trainer
    prog: Progress
    ckpts: CheckpointManager
    logger: MetricsLogger
    window: _LossWindow
    stop: _StopFlag


def save(run: Run, *, epoch_end: bool, is_best: bool = False, record: dict | None = None) -> None:
    """Checkpoint the run (rank 0 writes; every rank contributes its RNG state and loss sum)."""
    prog, tr = run.prog, run.tr
    run.window.flush(prog.epoch)  # never write a diverged state: finite losses so far, and finite weights now
    if not torch.stack([torch.isfinite(p).all() for p in tr.model.parameters()]).all():
        raise TrainingDiverged(
            f"the weights became NaN/inf by optimizer step {prog.step} (epoch {prog.epoch + 1}); the last "
            f"good checkpoint ({run.ckpts.last if run.ckpts.last.exists() else 'none yet'}) is intact; lower "
            "optim.lr or set optim.clip_grad"
        )
    loss_sum = None if epoch_end else prog.loss_sum.detach().cpu().clone()
    per_rank = dist.all_gather_object((rng_state(), loss_sum))
    if not run.proc.main:
        return
    partial = None
    if not epoch_end:
        partial = {
            "loss_sum": [s for _, s in per_rank],
            "loss_steps": prog.loss_steps,
            "images": prog.images,
            "elapsed_s": prog.elapsed,
        }
    state = train_state(
        arch=run.cfg.model.name.partition(".")[0],
        model=tr.model.state_dict(),
        model_ema=ema_state_dict(tr.ema) if tr.ema is not None else None,
        ema_updates=prog.ema_updates,
        optimizer=tr.optimizer.state_dict(),
        scaler=tr.scaler.state_dict(),
        epoch=prog.epoch,
        step=prog.step,
        steps_per_epoch=run.data.steps_per_epoch,
        epoch_end=epoch_end,
        epoch_partial=partial,
        world_size=run.proc.world,
        rng=[r for r, _ in per_rank],
        config=to_dict(run.cfg),
        class_names=run.data.classes,
        metrics=record,
        best_top1=prog.best_top1,
        best_epoch=prog.best_epoch,
    )
    run.ckpts.save(state, epoch_end=epoch_end, is_best=is_best)


def train_step(run: Run, batches: Iterator) -> tuple[torch.Tensor, float]:
    """One optimizer step over ``accum`` micro-batches; returns its mean loss (on device) and its lr."""
    cfg, tr, prog, data, device = run.cfg, run.tr, run.prog, run.data, run.proc.device
    lr = tr.schedule.apply(tr.optimizer, tr.peaks, prog.step)
    autocast = (
        torch.autocast(device.type, dtype=run.proc.amp_dtype)
        if run.proc.amp_dtype is not None
        else contextlib.nullcontext()
    )
    step_loss = torch.zeros((), device=device)
    for micro in range(tr.accum):
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        if data.finish is not None:
            images = data.finish(images)
        targets = targets.to(device, non_blocking=True)
        if data.mixup is not None:
            images, targets = data.mixup(images, targets)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # accumulation: skip the gradient all-reduce until the last micro-batch
        last = micro == tr.accum - 1
        sync = tr.ddp.no_sync() if tr.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                loss = tr.criterion(tr.train_model(images), targets)
            tr.scaler.scale(loss / tr.accum).backward()
        step_loss += loss.detach() / tr.accum
        prog.images += images.shape[0]
    tr.scaler.unscale_(tr.optimizer)  # a no-op unless fp16
    if cfg.optim.clip_grad:
        nn.utils.clip_grad_norm_(tr.model.parameters(), cfg.optim.clip_grad)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    if tr.ema is not None:
        tr.ema.update_parameters(tr.model)
        prog.ema_updates += 1
    prog.step += 1
    return step_loss, lr


def train_one_epoch(run: Run, saved_rng: dict | None) -> bool:
    """The rest of epoch ``prog.epoch`` (all of it, or what a mid-epoch checkpoint left); True when a stop
    signal ended it (after a checkpoint)."""
    from tqdm import tqdm

    from ..data import epoch_iterator

    cfg, prog, spe, accum = run.cfg, run.prog, run.data.steps_per_epoch, run.tr.accum
    skip = prog.step - prog.epoch * spe  # > 0 only when resuming a mid-epoch checkpoint
    if skip == 0:
        prog.new_epoch(run.proc.device)
    run.tr.train_model.train()
    # Restore every RNG exactly where the saved run was: a mid-epoch checkpoint was taken after the epoch's
    # iterator existed, an end-of-epoch one before the next iterator was created.
    if saved_rng is not None and skip == 0:
        set_rng_state(saved_rng)
    batches = epoch_iterator(run.data.train_loader, cfg.seed, prog.epoch, skip * accum)
    if saved_rng is not None and skip > 0:
        set_rng_state(saved_rng)
    bar = tqdm(
        total=spe,
        initial=skip,
        desc=f"epoch {prog.epoch + 1}/{cfg.epochs}",
        # train.progress=false turns it off; a log file or a pipe never gets one (a line per refresh)
        disable=not (run.proc.main and cfg.train.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    plain = run.proc.main and bar.disable  # no bar (a pipe, a log file, --no-progress): a line per log_every
    world = run.proc.world
    check_every = 1 if world == 1 else min(cfg.train.log_every, 10)  # the cross-rank check costs a sync
    t0 = time.perf_counter() - prog.elapsed
    try:
        for _ in range(skip, spe):
            loss, lr = train_step(run, batches)
            run.window.add(loss)
            prog.loss_sum += loss
            prog.loss_steps += 1
            bar.update(1)
            pause_for_test("step", prog.step, until=lambda: run.stop.signal is not None)
            if prog.step % cfg.train.log_every == 0:
                vals = run.window.flush(prog.epoch)
                rate = prog.images * world / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{sum(vals) / len(vals):.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                run.logger.log_step(
                    prog.step, {"loss": sum(vals) / len(vals), "lr": lr, "images_per_s": rate}
                )
                if plain:
                    _print(_step_line(run, sum(vals) / len(vals), lr, rate, time.perf_counter() - t0))
            in_epoch = prog.step - prog.epoch * spe
            if prog.step % check_every == 0 and dist.any_rank(run.stop.signal is not None, run.proc.device):
                prog.elapsed = time.perf_counter() - t0
                save(run, epoch_end=False)
                last = run.ckpts.last
                _print(
                    f"\nconvnext train: {run.stop.signal or 'a stop signal'} received; saved {last} at step "
                    f"{prog.step} (epoch {prog.epoch + 1}, batch {in_epoch}/{spe}); resume with: "
                    f"convnext train --resume {last}"
                )
                return True
            if cfg.checkpoint.every_steps and prog.step % cfg.checkpoint.every_steps == 0 and in_epoch < spe:
                prog.elapsed = time.perf_counter() - t0
                save(run, epoch_end=False)
    finally:
        bar.close()
    prog.elapsed = time.perf_counter() - t0
    return False


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _step_line(run: Run, loss: float, lr: float, rate: float, elapsed: float) -> str:
    """Progress where there is no terminal (Slurm, nohup, CI): one plain line, the bar's numbers and the time
    left (from this epoch's pace; evaluation not counted)."""
    prog, spe, epochs = run.prog, run.data.steps_per_epoch, run.cfg.epochs
    in_epoch = prog.step - prog.epoch * spe
    per_step = elapsed / max(prog.loss_steps, 1)
    return (
        f"epoch {prog.epoch + 1}/{epochs}, step {in_epoch}/{spe}: loss {loss:.4f}, lr {lr:.3g}, "
        f"{rate:.0f} img/s, ETA {_hms(per_step * (spe - in_epoch))} epoch, "
        f"{_hms(per_step * (epochs * spe - prog.step))} run"
    )


def evaluate_epoch(run: Run) -> dict[str, float]:
    """Validation top-1/top-5/loss of the model (and of the EMA weights), every rank's shard counted once."""
    from ..evaluation.loop import evaluate

    kw = {
        "amp_dtype": run.proc.amp_dtype,
        "channels_last": run.cfg.train.channels_last,
        "progress": False,
        "label_smoothing": run.cfg.train.label_smoothing,  # val_loss_smoothed: the training loss's basis
    }
    res = evaluate(run.tr.model, run.data.val_loader, run.proc.device, **kw)
    out = {"val_top1": res["top1"], "val_top5": res["top5"], "val_loss": res["loss"]}
    out["val_loss_smoothed"] = res["loss_smoothed"]
    if run.tr.ema is not None and run.cfg.ema.eval and run.prog.ema_updates > 0:
        res = evaluate(run.tr.ema.module, run.data.val_loader, run.proc.device, **kw)
        out.update(ema_val_top1=res["top1"], ema_val_top5=res["top5"], ema_val_loss=res["loss"])
        out["ema_val_loss_smoothed"] = res["loss_smoothed"]
    return out


def end_epoch(run: Run) -> None:
    """Close the epoch: its record, evaluation, best, then the checkpoints and only then its metrics line
    (a kill in between is repaired from last.pth on the next start)."""
    cfg, prog, tr = run.cfg, run.prog, run.tr
    run.window.flush(prog.epoch)
    loss_sum = prog.loss_sum.clone()
    if dist.is_dist():
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= run.proc.world
    prog.epoch += 1
    record: dict[str, Any] = {
        "epoch": prog.epoch,
        "step": prog.step,
        "train_loss": float(loss_sum.item() / max(prog.loss_steps, 1)),
        "lr": max(tr.peaks) * tr.schedule.factor(max(prog.step - 1, 0)),  # the lr of the epoch's last step
        "epoch_time_s": prog.elapsed,
        "images_per_s": prog.images * run.proc.world / max(prog.elapsed, 1e-9),
    }
    is_best = False
    if run.data.val_loader is not None and (
        prog.epoch % cfg.train.eval_every == 0 or prog.epoch == cfg.epochs
    ):
        record.update(evaluate_epoch(run))
        best_by = cfg.checkpoint.best_by
        if best_by == "auto":
            best_by = "ema" if tr.ema is not None and cfg.ema.eval else "model"
        score = record.get("ema_val_top1" if best_by == "ema" else "val_top1")
        if score is not None and (prog.best_top1 is None or score > prog.best_top1):
            prog.best_top1, prog.best_epoch, is_best = score, prog.epoch, True
    val = ""
    if "val_top1" in record:
        val = f", val loss {record['val_loss']:.4f}, val top-1 {record['val_top1']:.2f}%"
        val += f", EMA top-1 {record['ema_val_top1']:.2f}%" if "ema_val_top1" in record else ""
    _print(
        f"epoch {prog.epoch}/{cfg.epochs} done: train loss {record['train_loss']:.4f}{val}, "
        f"{record['images_per_s']:.0f} img/s, epoch time {_hms(record['epoch_time_s'])}"
    )
    save(run, epoch_end=True, is_best=is_best, record=record)
    with _writing(run.logger.path, run.ckpts.last):
        run.logger.log_epoch(record)
    pause_for_test("metrics", prog.epoch)


# ----------------------------------------------------------------------------------------------------------
# main


def train(cfg: TrainConfig, *, resume: str | Path | None = None, fresh: bool = False) -> TrainResult:
    """Train ``cfg``; resume ``resume`` (or the run folder's newest intact checkpoint unless ``fresh``)."""
    run_dir = Path(cfg.run.dir).expanduser()
    check_run_dir(run_dir)  # before anything is created
    check_loggers(cfg.run.loggers)  # a tracker's missing package, before a process group or a file
    proc = start_process(cfg)
    check_step_memory(cfg, proc.device, "none" if proc.amp_dtype is None else cfg.train.amp)
    folder = RunFolder(run_dir)
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last)
    try:
        path, ckpt = open_run(cfg, folder, ckpts, Path(resume) if resume else None, fresh)
        if ckpt is not None:
            check_resumable(cfg, ckpt, path)
            for line in resume_changes(cfg, ckpt, path):
                _say(line)
            if resume is None:
                _say(f"resuming {path} (found in the run folder; pass --fresh to start over)")
            if proc.main:
                _repair(run_dir, ckpts, ckpt, path)
            if int(ckpt["epoch"]) >= cfg.epochs:  # done already: say so before loading any data or weights
                _say(f"{path} has already completed {ckpt['epoch']} of {cfg.epochs} epochs")
                done = Progress(
                    int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best_top1"), ckpt.get("best_epoch")
                )
                return _finish(run_dir, proc, done, stopped=False)
        return _train(cfg, proc, run_dir, ckpts, path, ckpt)
    finally:
        folder.release()


def _repair(run_dir: Path, ckpts: CheckpointManager, ckpt: dict, path: Path) -> None:
    """After a kill: best.pth and metrics.jsonl made to agree with the checkpoint resumed from."""
    own = path.resolve().parent == ckpts.folder.resolve()
    with _writing(run_dir / "metrics.jsonl", ckpts.last):
        if own:
            ckpts.repair_best(ckpt, path, warn=_say)
        repair_metrics(
            run_dir / "metrics.jsonl",
            int(ckpt["epoch"]),
            ckpt.get("metrics") if own and is_epoch_end(ckpt) else None,
            warn=_say,
            record_of=ckpts.epoch_record if own else None,
        )


def _train(
    cfg: TrainConfig,
    proc: Process,
    run_dir: Path,
    ckpts: CheckpointManager,
    path: Path | None,
    ckpt: dict | None,
) -> TrainResult:
    _seed_all(cfg.seed)
    data = build_data(cfg, ckpt, path, cfg.train.accum_steps)
    tr = build_trainer(cfg, proc, data, ckpt["model"] if ckpt is not None else None)
    prog, saved_rng = restore(cfg, proc, data, tr, ckpt, path)
    ckpt = None  # the weights are in the model now; free the copy
    if proc.main:
        with _writing(run_dir / "config.yaml", ckpts.last):
            dump_yaml(cfg, run_dir / "config.yaml")
            if cfg.run.export_samples and path is None:
                _export_samples(cfg, run_dir, cfg.run.export_samples)
    per_batch = f"{cfg.train.batch_size} x {proc.world} x {tr.accum}"
    scaled = (
        f" (optim.lr {cfg.optim.lr:g} x {tr.eff_batch}/{cfg.optim.lr_base_batch})"
        if cfg.optim.lr_base_batch
        else ""
    )
    _say(
        f"{describe_model(cfg, tr.model)}, {len(data.classes)} classes, {data.n_train} train / "
        f"{data.n_val} val images, {proc.world} process(es) on {proc.device.type}; effective batch "
        f"{tr.eff_batch} = {per_batch}; peak lr {tr.lr:.3g}{scaled}"
    )
    run = Run(
        cfg=cfg,
        proc=proc,
        data=data,
        tr=tr,
        prog=prog,
        ckpts=ckpts,
        logger=open_logger(cfg, proc, run_dir, resumed_step=prog.step if path is not None else None),
        window=_LossWindow(prog.step, ckpts.last),
        stop=_StopFlag(announce=proc.main),
    )
    run.stop.install()
    stopped = False
    curve_options = {
        "num_classes": len(data.classes),
        "label_smoothing": cfg.train.label_smoothing,
        "mixup": data.mixup is not None,
        "title": f"{cfg.model.name}: {run_dir.name}",
    }
    try:
        while prog.epoch < cfg.epochs:
            stopped = train_one_epoch(run, saved_rng)
            saved_rng = None
            if stopped:
                break
            end_epoch(run)
    except BaseException as e:
        run.logger.close("stopped" if isinstance(e, KeyboardInterrupt) else "failed")
        raise
    finally:
        run.stop.restore()
    return _finish(
        run_dir,
        proc,
        prog,
        stopped=stopped,
        curves=curve_options,
        logger=run.logger,
        stop_signal=run.stop.signal if stopped else None,
    )


def open_logger(cfg: TrainConfig, proc: Process, run_dir: Path, resumed_step: int | None) -> MetricsLogger:
    """metrics.jsonl and the trackers of run.loggers, opened by rank 0; a tracker that cannot start (no
    server, no W&B login) stops every rank with its sentence, before the first step."""
    opened: list[MetricsLogger] = []

    def on_main() -> None:
        opened.append(
            MetricsLogger(
                run_dir,
                loggers=cfg.run.loggers,
                config=to_dict(cfg),
                resumed_step=resumed_step,
                say=_say,
            )
        )
        if opened[0].trackers:
            _say(f"tracking: {opened[0].describe()}")

    _on_main(on_main)
    return opened[0] if opened else MetricsLogger(run_dir, enabled=False)


def _finish(
    run_dir: Path,
    proc: Process,
    prog: Progress,
    *,
    stopped: bool,
    curves: dict[str, Any] | None = None,
    logger: MetricsLogger | None = None,
    stop_signal: str | None = None,
) -> TrainResult:
    metrics: list[dict[str, Any]] = []
    try:
        if proc.main and (run_dir / "metrics.jsonl").exists():
            metrics = read_metrics(run_dir, warn=_say)
            if metrics:
                from .plots import plot_curves

                with contextlib.suppress(OSError):  # a full disk: the picture is the least of it
                    plot_curves(metrics, run_dir / "curves.png", **(curves or {}))
    finally:
        if logger is not None:  # the trackers get the curves, and end their runs
            files = {n.partition(".")[0]: run_dir / n for n in ("curves.png", "config.yaml", "metrics.jsonl")}
            logger.close("stopped" if stopped else "finished", files=files, step=prog.step)
    dist.barrier()
    dist.cleanup()
    return TrainResult(
        run_dir=run_dir,
        epoch=prog.epoch,
        step=prog.step,
        stopped_early=stopped,
        metrics=metrics,
        best_top1=prog.best_top1,
        best_epoch=prog.best_epoch,
        main=proc.main,
        stopped_by=stop_signal,
    )
