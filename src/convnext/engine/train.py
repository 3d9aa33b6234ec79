"""The training loop: one process per device (torchrun), exact resume, pre-emption safe, nothing lost.

What "exact" means here: data order depends only on (seed, epoch); model/augmentation RNG states of every
rank are in the checkpoint; a checkpoint taken mid-epoch records how many optimizer steps of the epoch were
done, and resume skips exactly those batches. On CPU with ``data.workers=0``, N epochs straight and
N/2 + resume + N/2 give bit-identical weights (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import amp_dtype as resolve_amp
from ..device import resolve_device
from ..errors import UserError
from . import distributed as D
from .allocator import tune_cpu_allocator
from .checkpoint import CheckpointManager, load_train_checkpoint, rng_state, set_rng_state
from .config import TrainConfig, dump_yaml, to_dict
from .ema import build_ema, ema_state_dict, load_ema_state_dict
from .logging import MetricsLogger, read_metrics
from .optim import build_optimizer
from .schedule import build_scheduler

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it was."""


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int  # completed epochs
    step: int  # optimizer steps done
    stopped_early: bool  # True when a SIGTERM/SIGUSR1 ended the run after a checkpoint
    metrics: list[dict[str, Any]]
    best_top1: float | None


# ----------------------------------------------------------------------------------------------------------


class _StopFlag:
    """SIGTERM / SIGUSR1 (cluster pre-emption) set a flag; the loop checkpoints at the next step and exits."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. called from a notebook worker)
                    pass

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _print(*args: Any) -> None:
    if D.is_main():
        print(*args, file=sys.stderr, flush=True)


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from ..hub import create_model
    from ..models import get_variant, set_chunked_mlp

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
    try:
        model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, num_classes=num_classes, **opts)
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
        if not isinstance(img, torch.Tensor):  # a PIL image
            from torchvision.transforms.v2.functional import pil_to_tensor

            img = pil_to_tensor(img)
        if img.dtype != torch.uint8:
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ds.classes[int(target)]))
        write_png(img.cpu(), str(out / f"{k:02d}_{safe}.png"))


def train(cfg: TrainConfig, *, resume: str | Path | None = None, fresh: bool = False) -> TrainResult:
    """Train ``cfg``; resume ``resume`` (or <run.dir>/checkpoints/last.pth unless ``fresh``)."""
    from ..data import (
        BatchFinish,
        build_dataset,
        build_eval_transform,
        build_loader,
        build_mixup_cutmix,
        build_train_transform,
        epoch_iterator,
    )
    from .evaluate import evaluate

    want = resolve_device(cfg.train.device, what="config key train.device").type
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rank, world, local_rank = D.init_distributed(want)
    device = resolve_device(want, local_rank, what="config key train.device")
    if device.type == "cpu":
        tune_cpu_allocator()  # reuse the heap for activations instead of page-faulting them in every step
    amp_dtype = resolve_amp(cfg.train.amp, device, what="config key train.amp")

    run_dir = Path(cfg.run.dir).expanduser()
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last)

    # ---- what to resume
    resume_path: Path | None = Path(resume) if resume else None
    if resume_path is None and not fresh and cfg.run.auto_resume and ckpts.last.exists():
        resume_path = ckpts.last
        _print(
            f"convnext train: resuming {resume_path} (found in the run folder; pass --fresh to start over)"
        )
    ckpt = load_train_checkpoint(resume_path) if resume_path is not None else None

    # ---- data
    _seed_all(cfg.seed)
    on_device = cfg.data.normalize_on_device
    train_ds = build_dataset(
        cfg.data, cfg.data.train_split, build_train_transform(cfg.data, finish=not on_device)
    )
    finish = BatchFinish(cfg.data) if on_device else None
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
            f"checkpoint {resume_path} was trained on other classes than data.root={cfg.data.root!r}"
        )
    train_loader = build_loader(
        train_ds, cfg.train.batch_size, train=True, cfg=cfg.data, seed=cfg.seed, distributed=D.is_dist()
    )
    val_loader = None
    if val_ds is not None:
        val_loader = build_loader(
            val_ds,
            cfg.train.eval_batch_size or 2 * cfg.train.batch_size,
            train=False,
            cfg=cfg.data,
            seed=cfg.seed,
            distributed=D.is_dist(),
        )
    mixup = build_mixup_cutmix(cfg.data, num_classes)
    accum = cfg.train.accum_steps
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} x train.accum_steps={accum} is more than the "
            f"{len(train_ds)} training images allow for one optimizer step"
        )

    # ---- model, EMA, optimizer, schedule
    model = _build_model(cfg, num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise UserError(
            f"model {cfg.model.name} has {model.num_classes} classes but the dataset has {num_classes}"
        )
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = build_ema(model, cfg.ema.decay) if cfg.ema.enabled else None
    _seed_all(cfg.seed + rank)  # per-rank augmentation / stochastic depth streams

    eff_batch = cfg.train.batch_size * world * accum
    lr = cfg.optim.lr * (eff_batch / cfg.optim.lr_base_batch if cfg.optim.lr_base_batch else 1.0)
    optimizer = build_optimizer(
        model,
        name=cfg.optim.name,
        lr=lr,
        weight_decay=cfg.optim.weight_decay,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        momentum=cfg.optim.momentum,
        layer_decay=cfg.optim.layer_decay,
        fused=cfg.optim.fused,
        device=device,
    )
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.schedule.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        base_lr=lr,
        min_lr=cfg.schedule.min_lr,
        name=cfg.schedule.name,
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    epoch, step, best_top1, ema_updates = 0, 0, None, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("model_ema") is not None:
            load_ema_state_dict(ema, ckpt["model_ema"], int(ckpt.get("ema_updates", 1)))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best_top1 = ckpt.get("best_top1")
        saved_spe = int(ckpt.get("steps_per_epoch", steps_per_epoch))
        if saved_spe != steps_per_epoch:
            # A different batch size or number of processes: only an epoch boundary maps onto this run.
            if step != epoch * saved_spe:
                raise UserError(
                    f"checkpoint {resume_path} was saved mid-epoch with {saved_spe} steps per epoch but "
                    f"this run has {steps_per_epoch} (other batch size, accum_steps or process count); "
                    "resume it with the same settings, or resume from an epoch_XXXX.pth checkpoint"
                )
            step = epoch * steps_per_epoch
            scheduler.last_epoch = step
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](step)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
            _print(
                f"convnext train: {saved_spe} -> {steps_per_epoch} steps per epoch; the schedule "
                f"continues at epoch {epoch}"
            )
        if epoch >= cfg.epochs:
            _print(f"convnext train: {resume_path} has already completed {epoch} of {cfg.epochs} epochs")

    train_model: nn.Module = model
    ddp: nn.parallel.DistributedDataParallel | None = None
    if D.is_dist():
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
        train_model = ddp
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    # ---- run folder (rank 0 writes)
    main = D.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        if cfg.run.export_samples and ckpt is None:
            _export_samples(cfg, run_dir, cfg.run.export_samples)
    logger = MetricsLogger(run_dir, enabled=main)
    logger.truncate_after(epoch)
    best_by = cfg.checkpoint.best_by
    if best_by == "auto":
        best_by = "ema" if ema is not None and cfg.ema.eval else "model"
    _print(
        f"convnext train: {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
        f"{len(classes)} classes, {len(train_ds)} train / {len(val_ds) if val_ds else 0} val images, "
        f"{world} process(es) on {device.type}; effective batch {eff_batch} = "
        f"{cfg.train.batch_size} x {world} x {accum}; peak lr "
        f"{lr:.3g}"
        + (
            f" (optim.lr {cfg.optim.lr:g} x {eff_batch}/{cfg.optim.lr_base_batch})"
            if cfg.optim.lr_base_batch
            else ""
        )
    )

    stop = _StopFlag()
    stop.install()
    check_every = 1 if world == 1 else min(cfg.train.log_every, 10)  # the cross-rank check costs a sync
    stopped = False
    window: list[torch.Tensor] = []  # per-step losses since the last host sync (checked for NaN there)
    window_start = step

    def flush_window() -> list[float]:
        nonlocal window, window_start
        if not window:
            return []
        vals = torch.stack(window).float().cpu().tolist()
        for i, v in enumerate(vals):
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"the training loss became {v} at optimizer step {window_start + i + 1} "
                    f"(epoch {epoch + 1}); the last good checkpoint "
                    f"({ckpts.last if ckpts.last.exists() else 'none yet'}) is intact; "
                    "lower optim.lr, set optim.clip_grad, or use train.amp=bf16 instead of fp16"
                )
        window, window_start = [], window_start + len(vals)
        return vals

    def save(epoch_done: int, *, epoch_end: bool, is_best: bool, record: dict | None = None) -> None:
        flush_window()  # never write a diverged state: finite losses so far, and finite weights now
        if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
            raise TrainingDiverged(
                f"the weights became NaN/inf by optimizer step {step} (epoch {epoch + 1}); the last good "
                f"checkpoint ({ckpts.last if ckpts.last.exists() else 'none yet'}) is intact; lower optim.lr "
                "or set optim.clip_grad"
            )
        rngs = D.all_gather_object(rng_state())
        if not main:
            return
        state = {
            "format": "convnext-train",
            "version": 1,
            "arch": cfg.model.name.partition(".")[0],
            "model": model.state_dict(),
            "model_ema": ema_state_dict(ema) if ema is not None else None,
            "ema_updates": ema_updates,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch_done,
            "step": step,
            "steps_per_epoch": steps_per_epoch,
            "world_size": world,
            "rng": rngs,
            "config": to_dict(cfg),
            "class_names": classes,
            "metrics": record or {},
            "best_top1": best_top1,
        }
        ckpts.save(state, epoch_end=epoch_end, is_best=is_best)

    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    try:
        while epoch < cfg.epochs and not stopped:
            skip_steps = step - epoch * steps_per_epoch  # > 0 only when resuming a mid-epoch checkpoint
            train_model.train()
            # Restore every RNG exactly where the saved run was: a mid-epoch checkpoint was taken after the
            # epoch's iterator existed, an end-of-epoch one before the next iterator was created.
            saved_rng = None
            if ckpt is not None:
                saved_rng = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0]
                ckpt = None
            if saved_rng is not None and skip_steps == 0:
                set_rng_state(saved_rng)
            it = epoch_iterator(train_loader, cfg.seed, epoch, skip_steps * accum)
            if saved_rng is not None and skip_steps > 0:
                set_rng_state(saved_rng)
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=skip_steps,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not (main and cfg.train.progress),
                dynamic_ncols=True,
                file=sys.stderr,
            )
            t0, images, epoch_loss, n_loss = time.perf_counter(), 0, torch.zeros((), device=device), 0
            for _ in range(skip_steps, steps_per_epoch):
                step_loss = torch.zeros((), device=device)
                for micro in range(accum):
                    images_b, targets = next(it)
                    images_b = images_b.to(device, non_blocking=True)
                    if finish is not None:
                        images_b = finish(images_b)
                    targets = targets.to(device, non_blocking=True)
                    if mixup is not None:
                        images_b, targets = mixup(images_b, targets)
                    if cfg.train.channels_last:
                        images_b = images_b.contiguous(memory_format=torch.channels_last)
                    last = micro == accum - 1
                    # accumulation: skip the gradient all-reduce until the last micro-batch
                    sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
                    with sync:
                        with autocast:
                            loss = criterion(train_model(images_b), targets)
                        scaled = loss / accum
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    step_loss += loss.detach() / accum
                    images += images_b.shape[0]
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.optim.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                    ema_updates += 1
                step += 1
                window.append(step_loss)
                epoch_loss += step_loss
                n_loss += 1
                bar.update(1)
                if step % cfg.train.log_every == 0:
                    vals = flush_window()
                    lr_now = max(scheduler.get_last_lr())
                    rate = images * world / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(
                        loss=f"{sum(vals) / len(vals):.4f}", lr=f"{lr_now:.3g}", img_s=f"{rate:.0f}"
                    )
                    logger.log_step(step, {"loss": sum(vals) / len(vals), "lr": lr_now, "images_per_s": rate})
                in_epoch = step - epoch * steps_per_epoch
                if step % check_every == 0 and D.any_rank(stop.signal is not None, device):
                    save(epoch, epoch_end=False, is_best=False)
                    _print(
                        f"\nconvnext train: {stop.signal or 'a stop signal'} received; saved {ckpts.last} at "
                        f"step {step} (epoch {epoch + 1}, batch {in_epoch}/{steps_per_epoch}); "
                        f"resume with: convnext train --resume {ckpts.last}"
                    )
                    stopped = True
                    break
                if (
                    cfg.checkpoint.every_steps
                    and step % cfg.checkpoint.every_steps == 0
                    and in_epoch < steps_per_epoch
                ):
                    save(epoch, epoch_end=False, is_best=False)
            bar.close()
            if stopped:
                break
            flush_window()
            epoch_time = time.perf_counter() - t0
            if D.is_dist():
                torch.distributed.all_reduce(epoch_loss)
                epoch_loss /= world
            epoch += 1
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "train_loss": float(epoch_loss.item() / max(n_loss, 1)),
                "lr": max(scheduler.get_last_lr()),
                "epoch_time_s": epoch_time,
                "images_per_s": images * world / max(epoch_time, 1e-9),
            }
            is_best = False
            if val_loader is not None and (epoch % cfg.train.eval_every == 0 or epoch == cfg.epochs):
                res = evaluate(
                    model,
                    val_loader,
                    device,
                    amp_dtype=amp_dtype,
                    channels_last=cfg.train.channels_last,
                    progress=False,
                )
                record.update(val_top1=res["top1"], val_top5=res["top5"], val_loss=res["loss"])
                if ema is not None and cfg.ema.eval and ema_updates > 0:
                    res_e = evaluate(
                        ema.module,
                        val_loader,
                        device,
                        amp_dtype=amp_dtype,
                        channels_last=cfg.train.channels_last,
                        progress=False,
                    )
                    record.update(
                        ema_val_top1=res_e["top1"], ema_val_top5=res_e["top5"], ema_val_loss=res_e["loss"]
                    )
                score = record.get("ema_val_top1" if best_by == "ema" else "val_top1")
                if score is not None and (best_top1 is None or score > best_top1):
                    best_top1, is_best = score, True
                _print(
                    f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, val top-1 "
                    f"{record['val_top1']:.2f}%"
                    + (f", EMA top-1 {record['ema_val_top1']:.2f}%" if "ema_val_top1" in record else "")
                    + f", {record['images_per_s']:.0f} img/s"
                )
            logger.log_epoch(record)
            save(epoch, epoch_end=True, is_best=is_best, record=record)
    finally:
        stop.restore()
        logger.close()

    metrics: list[dict[str, Any]] = []
    if main and (run_dir / "metrics.jsonl").exists():
        metrics = read_metrics(run_dir)
        if metrics:
            from .plots import plot_curves

            plot_curves(metrics, run_dir / "curves.png")
    D.barrier()
    D.cleanup()
    return TrainResult(
        run_dir=run_dir, epoch=epoch, step=step, stopped_early=stopped, metrics=metrics, best_top1=best_top1
    )
