"""Setting a run up, as torchvision's reference does before its loop: the process (device, ranks, AMP),
the run folder and the checkpoint to resume, the data, the model with its optimizer and schedule, and the
restored state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import dist
from ...device import amp_dtype as resolve_amp
from ...device import resolve_device
from ...errors import UserError
from ...recipe import TrainConfig, to_dict
from ..allocator import tune_cpu_allocator
from ..checkpoint import CheckpointManager, load_train_checkpoint
from ..ema import build_ema, load_ema_state_dict
from ..logging import MetricsLogger
from ..optim import build_optimizer
from ..preflight import train_amp
from ..rundir import RunFolder
from ..schedule import LrSchedule, peak_lrs
from .console import say
from .state import Data, Process, Progress, Trainer
from .task import task_of


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_on_main(fn: Callable[[], Any]) -> Any:
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


def build_model(cfg: TrainConfig, num_classes: int, resume_state: dict | None = None) -> nn.Module:
    """The recipe's model: ``model.pretrained`` loaded into it, or, when a checkpoint will be restored
    (``resume_state``, its model weights), built as that checkpoint's weights are shaped and left for
    :func:`restore` to fill: the checkpoint holds every weight, so a resume needs no pretrained file (it may
    be gone) and prints nothing about it."""
    from ...hub import create_model
    from ...models import family_of_name, layer_scale_option, set_chunked_mlp
    from ...weights.containers import model_options_of

    if task_of(cfg).build_model is not None:  # pre-training, segmentation, detection (task.py)
        return task_of(cfg).build_model(cfg, num_classes, resume_state)
    opts = dict(cfg.model.options)
    opts.setdefault("drop_path_rate", cfg.model.drop_path_rate)
    opts.setdefault("head_init_scale", cfg.model.head_init_scale)
    try:
        family = family_of_name(cfg.model.name)
    except ValueError as e:
        raise UserError(f"config key model.name: {e}") from None
    # the recipe key as the family takes it (models/factory.py), as inference rebuilds the run's model
    for key, value in layer_scale_option(family, cfg.model.layer_scale_init_value).items():
        opts.setdefault(key, value)
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


def describe_run(cfg: TrainConfig, proc: Process, data: Data, trainer: Trainer) -> str:
    """The line a run starts with: the model, the data, where it trains, the batch and the peak lr."""
    per_batch = f"{cfg.train.batch_size} x {proc.world} x {trainer.accum}"
    scaled = (
        f" (optim.lr {cfg.optim.lr:g} x {trainer.eff_batch}/{cfg.optim.lr_base_batch})"
        if cfg.optim.lr_base_batch
        else ""
    )
    classes = f"{len(data.classes)} classes, " if task_of(cfg).labels else "labels unused, "
    if data.classes[:1] == ["__background__"]:  # a detector's labels count the background (label 0)
        classes = f"{len(data.classes) - 1} classes + the background, "
    return (
        f"{describe_model(cfg, trainer.model)}, {classes}{data.n_train} train / "
        f"{data.n_val} val images, {proc.world} process(es) on {proc.device.type}; effective batch "
        f"{trainer.eff_batch} = {per_batch}; peak lr {trainer.lr:.3g}{scaled}"
    )


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
        say(why)
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
        found = ckpts.find_resumable() if cfg.run.auto_resume and not fresh else None
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
            say(f"{why}: moved the previous run's checkpoints and metrics to {moved}")
        return None

    path = run_on_main(on_main)
    if path is None:
        return None, None
    return path, load_train_checkpoint(path)


def build_data(cfg: TrainConfig, ckpt: dict | None, ckpt_path: Path | None, accum: int) -> Data:
    """The loaders and class names of the run; a dense task reads its own data (task.py)."""
    if task_of(cfg).build_data is not None:
        return task_of(cfg).build_data(cfg, ckpt, ckpt_path, accum)
    from ...data import (
        BatchFinish,
        build_dataset,
        build_eval_transform,
        build_mixup_cutmix,
        build_train_transform,
    )

    on_device = cfg.data.normalize_on_device
    train_ds = build_dataset(
        cfg.data, cfg.data.train_split, build_train_transform(cfg.data, finish=not on_device)
    )
    if cfg.data.labels_per_class is not None:  # few labels: the same seeded subset on every rank and resume
        from ...data.fewshot import labels_per_class

        train_ds = labels_per_class(train_ds, cfg.data.labels_per_class, cfg.data.split_seed)
    labels = task_of(cfg).labels  # pre-training reads the images only: no class checks, no MixUp
    do_eval = cfg.train.eval_every > 0
    val_ds = build_dataset(cfg.data, cfg.data.val_split, build_eval_transform(cfg.data)) if do_eval else None
    classes = list(train_ds.classes) if labels else []
    if labels and val_ds is not None and list(val_ds.classes) != classes:
        raise UserError(
            f"the {cfg.data.val_split!r} split has classes {list(val_ds.classes)[:5]}... but the "
            f"{cfg.data.train_split!r} split has {classes[:5]}...; both need the same class folders"
        )
    num_classes = cfg.model.num_classes or len(classes)
    if labels and num_classes != len(classes):
        raise UserError(
            f"config key model.num_classes is {num_classes} but the dataset has {len(classes)} classes"
        )
    return loaders(
        cfg,
        train_ds,
        val_ds,
        classes,
        (ckpt, ckpt_path),
        accum,
        finish=BatchFinish(cfg.data) if on_device else None,
        mixup=build_mixup_cutmix(cfg.data, num_classes) if labels else None,
    )


def loaders(
    cfg: TrainConfig,
    train_ds: Any,
    val_ds: Any | None,
    classes: list[str],
    checkpoint: tuple[dict | None, Path | None],
    accum: int,
    *,
    what: str = "classes",
    collate_fn: Callable | None = None,
    val_collate_fn: Callable | None = None,
    val_batch: int | None = None,
    finish: Any = None,
    mixup: Any = None,
    num_classes: int | None = None,
) -> Data:
    """What every task's ``build_data`` ends with, once: the resumed checkpoint's class names against the
    data's (``what`` names them in the sentence), the seeded loaders (val batch: ``train.eval_batch_size``,
    else ``val_batch``, else twice the train batch) and at least one optimizer step per epoch."""
    from ...data import build_loader

    ckpt, ckpt_path = checkpoint
    if ckpt is not None and ckpt.get("class_names") and list(ckpt["class_names"]) != classes:
        raise UserError(
            f"checkpoint {ckpt_path} was trained on other {what} than data.root={cfg.data.root!r}"
        )
    kw = {"cfg": cfg.data, "seed": cfg.seed, "distributed": dist.is_dist()}
    train_loader = build_loader(train_ds, cfg.train.batch_size, train=True, collate_fn=collate_fn, **kw)
    val_loader = None
    if val_ds is not None:
        batch = cfg.train.eval_batch_size or val_batch or 2 * cfg.train.batch_size
        val_loader = build_loader(val_ds, batch, train=False, collate_fn=val_collate_fn or collate_fn, **kw)
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} x train.accum_steps={accum} is more than the "
            f"{len(train_ds)} training images allow for one optimizer step"
        )
    return Data(
        train_loader=train_loader,
        val_loader=val_loader,
        finish=finish,
        mixup=mixup,
        classes=classes,
        n_train=len(train_ds),
        n_val=len(val_ds) if val_ds is not None else 0,
        steps_per_epoch=steps_per_epoch,
        num_classes=num_classes,
    )


def build_trainer(cfg: TrainConfig, proc: Process, data: Data, resume_state: dict | None = None) -> Trainer:
    num_classes = data.num_classes if data.num_classes is not None else len(data.classes)
    model = build_model(cfg, num_classes, resume_state)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise UserError(
            f"model {cfg.model.name} has {model.num_classes} classes but the dataset has {num_classes}"
        )
    model.to(proc.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = build_ema(model, cfg.ema.decay) if cfg.ema.enabled else None
    seed_all(cfg.seed + proc.rank)  # per-rank augmentation / stochastic depth streams

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
    steps_per_epoch = data.steps_per_epoch
    schedule = LrSchedule(
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.schedule.warmup_epochs * steps_per_epoch),
        base_lr=lr,
        min_lr=cfg.schedule.min_lr,
        name=cfg.schedule.name,
        milestones=tuple(round(e * steps_per_epoch) for e in cfg.schedule.milestones),
        gamma=cfg.schedule.gamma,
        warmup_ratio=cfg.schedule.warmup_ratio,
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
        criterion=task_of(cfg).criterion(cfg),
        lr=lr,
        eff_batch=eff_batch,
        accum=accum,
    )


def restore(
    cfg: TrainConfig, proc: Process, data: Data, trainer: Trainer, ckpt: dict | None, path: Path | None
) -> tuple[Progress, dict | None]:
    """Load ``ckpt`` into the trainer; returns the progress and this rank's saved RNG state."""
    progress = Progress()
    progress.new_epoch(proc.device)
    if ckpt is None:
        return progress, None
    trainer.model.load_state_dict(ckpt["model"])
    if trainer.ema is not None and ckpt.get("model_ema") is not None:
        load_ema_state_dict(trainer.ema, ckpt["model_ema"], int(ckpt.get("ema_updates", 1)))
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    # A version-1 checkpoint's "scheduler" state is not needed: the lr is a function of the step.
    progress.epoch, progress.step = int(ckpt["epoch"]), int(ckpt["step"])
    progress.best_top1, progress.best_epoch = ckpt.get("best_top1"), ckpt.get("best_epoch")
    progress.ema_updates = int(ckpt.get("ema_updates", 0))
    steps_per_epoch = data.steps_per_epoch
    saved_steps_per_epoch = int(ckpt.get("steps_per_epoch") or steps_per_epoch)
    partial = ckpt.get("epoch_partial")
    if saved_steps_per_epoch != steps_per_epoch:
        # A different batch size or number of processes: only an epoch boundary maps onto this run.
        if progress.step != progress.epoch * saved_steps_per_epoch:
            raise UserError(
                f"checkpoint {path} was saved mid-epoch with {saved_steps_per_epoch} steps per epoch but "
                f"this run has {steps_per_epoch} (other batch size, accum_steps or process count); resume it "
                "with the same settings, or resume from an epoch_XXXX.pth checkpoint"
            )
        progress.step, partial = progress.epoch * steps_per_epoch, None
        say(
            f"{saved_steps_per_epoch} -> {steps_per_epoch} steps per epoch; the schedule continues at epoch "
            f"{progress.epoch}"
        )
    if partial and progress.step > progress.epoch * steps_per_epoch:
        sums = partial["loss_sum"]
        progress.loss_sum = sums[proc.rank if proc.rank < len(sums) else 0].to(proc.device)
        progress.loss_steps, progress.images = int(partial["loss_steps"]), int(partial["images"])
        progress.elapsed = float(partial["elapsed_s"])
    rngs = ckpt["rng"]
    return progress, (rngs[proc.rank] if proc.rank < len(rngs) else rngs[0])


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
            )
        )
        if opened[0].trackers:
            say(f"tracking: {opened[0].describe()}")

    run_on_main(on_main)
    return opened[0] if opened else MetricsLogger(run_dir, enabled=False)
