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
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import dist
from ...data.loader import close_loader
from ...messages import cli_verb
from ...recipe import TrainConfig, check_run_dir, dump_yaml, to_dict
from ..checkpoint import CheckpointManager, is_epoch_end, rng_state, set_rng_state, train_state
from ..ema import ema_state_dict
from ..logging import MetricsLogger, read_metrics, repair_metrics
from ..pauses import PausePoints
from ..preflight import check_resumable, check_step_memory, resume_changes
from ..rundir import RunFolder
from ..trackers import check_loggers
from .console import hms, print_main, say, writing
from .divergence import LossWindow, check_weights_finite
from .samples import export_samples
from .setup import (
    build_data,
    build_trainer,
    describe_run,
    open_logger,
    open_run,
    restore,
    seed_all,
    start_process,
)
from .signals import StopFlag
from .state import Process, Progress, Run, TrainResult
from .task import task_of


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    fresh: bool = False,
    pauses: PausePoints | None = None,
) -> TrainResult:
    """Train ``cfg``; resume ``resume`` (or the run folder's newest intact checkpoint unless ``fresh``).
    ``pauses``: where the kill tests stop the run (:mod:`convnext.engine.pauses`); None: as the environment
    variable ``CONVNEXT_TEST_PAUSE_AT`` says, which only tests set."""
    pauses = pauses if pauses is not None else PausePoints.from_env()
    run_dir = Path(cfg.run.dir).expanduser()
    check_run_dir(run_dir)  # before anything is created
    check_loggers(cfg.run.loggers)  # a tracker's missing package, before a process group or a file
    proc = start_process(cfg)
    check_step_memory(cfg, proc.device, "none" if proc.amp_dtype is None else cfg.train.amp)
    folder = RunFolder(run_dir)
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last, pauses=pauses)
    try:
        path, ckpt = open_run(cfg, folder, ckpts, Path(resume) if resume else None, fresh)
        if ckpt is not None:
            check_resumable(cfg, ckpt, path)
            for line in resume_changes(cfg, ckpt, path):
                say(line)
            if resume is None:
                say(f"resuming {path} (found in the run folder; pass --fresh to start over)")
            if proc.main:
                _repair(run_dir, ckpts, ckpt, path)
            if int(ckpt["epoch"]) >= cfg.epochs:  # done already: say so before loading any data or weights
                say(f"{path} has already completed {ckpt['epoch']} of {cfg.epochs} epochs")
                done = Progress(
                    int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best_top1"), ckpt.get("best_epoch")
                )
                return _finish(run_dir, proc, done, stopped=False)
        return _train(cfg, proc, run_dir, ckpts, path, ckpt, pauses)
    finally:
        folder.release()


def _train(
    cfg: TrainConfig,
    proc: Process,
    run_dir: Path,
    ckpts: CheckpointManager,
    path: Path | None,
    ckpt: dict | None,
    pauses: PausePoints,
) -> TrainResult:
    seed_all(cfg.seed)
    data = build_data(cfg, ckpt, path, cfg.train.accum_steps)
    trainer = build_trainer(cfg, proc, data, ckpt["model"] if ckpt is not None else None)
    progress, saved_rng = restore(cfg, proc, data, trainer, ckpt, path)
    ckpt = None  # the weights are in the model now; free the copy
    if proc.main:
        with writing(run_dir / "config.yaml", ckpts.last):
            dump_yaml(cfg, run_dir / "config.yaml")
            if cfg.run.export_samples and path is None:
                export_samples(cfg, run_dir, cfg.run.export_samples)
    say(describe_run(cfg, proc, data, trainer))
    run = Run(
        cfg=cfg,
        proc=proc,
        data=data,
        trainer=trainer,
        progress=progress,
        ckpts=ckpts,
        logger=open_logger(cfg, proc, run_dir, resumed_step=progress.step if path is not None else None),
        window=LossWindow(progress.step, ckpts.last),
        stop=StopFlag(announce=proc.main),
        pauses=pauses,
    )
    run.stop.install()
    stopped = False
    curve_options = {
        "num_classes": len(data.classes),
        "label_smoothing": cfg.train.label_smoothing,
        "mixup": data.mixup is not None,
        "title": f"{cfg.model.name}: {run_dir.name}",
        "reconstruction": not task_of(cfg).labels,  # pre-training: the loss is the masked patches' error
        "metric": (task_of(cfg).metric, task_of(cfg).metric_label),
    }
    try:
        while progress.epoch < cfg.epochs:
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
        close_loader(data.train_loader)  # the workers end with the run, not at interpreter exit
        close_loader(data.val_loader)
    return _finish(
        run_dir,
        proc,
        progress,
        stopped=stopped,
        curves=curve_options,
        logger=run.logger,
        stop_signal=run.stop.signal if stopped else None,
    )


def train_one_epoch(run: Run, saved_rng: dict | None) -> bool:
    """The rest of epoch ``progress.epoch`` (all of it, or what a mid-epoch checkpoint left); True when a stop
    signal ended it (after a checkpoint)."""
    from tqdm import tqdm

    from ...data import epoch_iterator

    cfg, progress, steps_per_epoch, accum = run.cfg, run.progress, run.data.steps_per_epoch, run.trainer.accum
    skip = progress.step - progress.epoch * steps_per_epoch  # > 0 only when resuming a mid-epoch checkpoint
    if skip == 0:
        progress.new_epoch(run.proc.device)
    run.trainer.train_model.train()
    # Restore every RNG exactly where the saved run was: a mid-epoch checkpoint was taken after the epoch's
    # iterator existed, an end-of-epoch one before the next iterator was created.
    if saved_rng is not None and skip == 0:
        set_rng_state(saved_rng)
    batches = epoch_iterator(run.data.train_loader, cfg.seed, progress.epoch, skip * accum)
    if saved_rng is not None and skip > 0:
        set_rng_state(saved_rng)
    bar = tqdm(
        total=steps_per_epoch,
        initial=skip,
        desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
        # train.progress=false turns it off; a log file or a pipe never gets one (a line per refresh)
        disable=not (run.proc.main and cfg.train.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    plain = run.proc.main and bar.disable  # no bar (a pipe, a log file, --no-progress): a line per log_every
    world = run.proc.world
    check_every = 1 if world == 1 else min(cfg.train.log_every, 10)  # the cross-rank check costs a sync
    t0 = time.perf_counter() - progress.elapsed
    try:
        for _ in range(skip, steps_per_epoch):
            loss, lr = train_step(run, batches)
            run.window.add(loss)
            progress.loss_sum += loss
            progress.loss_steps += 1
            bar.update(1)
            run.pauses("step", progress.step, until=lambda: run.stop.signal is not None)
            if progress.step % cfg.train.log_every == 0:
                vals = run.window.flush(progress.epoch)
                rate = progress.images * world / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{sum(vals) / len(vals):.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                run.logger.log_step(
                    progress.step, {"loss": sum(vals) / len(vals), "lr": lr, "images_per_s": rate}
                )
                if plain:
                    print_main(_step_line(run, sum(vals) / len(vals), lr, rate, time.perf_counter() - t0))
            in_epoch = progress.step - progress.epoch * steps_per_epoch
            if progress.step % check_every == 0 and dist.any_rank(
                run.stop.signal is not None, run.proc.device
            ):
                progress.elapsed = time.perf_counter() - t0
                save(run, epoch_end=False)
                last, verb = run.ckpts.last, cli_verb()
                print_main(
                    f"\nconvnext {verb}: {run.stop.signal or 'a stop signal'} received; saved {last} at step "
                    f"{progress.step} (epoch {progress.epoch + 1}, batch {in_epoch}/{steps_per_epoch}); "
                    f"resume with: convnext {verb} --resume {last}"
                )
                return True
            if (
                cfg.checkpoint.every_steps
                and progress.step % cfg.checkpoint.every_steps == 0
                and in_epoch < steps_per_epoch
            ):
                progress.elapsed = time.perf_counter() - t0
                save(run, epoch_end=False)
    finally:
        bar.close()
    progress.elapsed = time.perf_counter() - t0
    return False


def train_step(run: Run, batches: Iterator) -> tuple[torch.Tensor, float]:
    """One optimizer step over ``accum`` micro-batches; returns its mean loss (on device) and its lr."""
    cfg, trainer, progress, device = run.cfg, run.trainer, run.progress, run.proc.device
    lr = trainer.schedule.apply(trainer.optimizer, trainer.peaks, progress.step)
    autocast = (
        torch.autocast(device.type, dtype=run.proc.amp_dtype)
        if run.proc.amp_dtype is not None
        else contextlib.nullcontext()
    )
    task = task_of(cfg)
    prepare = task.prepare or classifier_batch
    step_loss = torch.zeros((), device=device)
    for micro in range(trainer.accum):
        inputs, targets, n = prepare(run, *next(batches))
        # accumulation: skip the gradient all-reduce until the last micro-batch
        last = micro == trainer.accum - 1
        sync = trainer.ddp.no_sync() if trainer.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                if task.loss is not None:  # segmentation (with its auxiliary loss), detection (its sum)
                    loss = task.loss(trainer.train_model, trainer.criterion, inputs, targets)
                else:
                    loss = trainer.criterion(trainer.train_model(inputs), targets)
            trainer.scaler.scale(loss / trainer.accum).backward()
        step_loss += loss.detach() / trainer.accum
        progress.images += n
    trainer.scaler.unscale_(trainer.optimizer)  # a no-op unless fp16
    if cfg.optim.clip_grad:
        nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.optim.clip_grad)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.ema is not None:
        trainer.ema.update_parameters(trainer.model)
        progress.ema_updates += 1
    progress.step += 1
    return step_loss, lr


def classifier_batch(run: Run, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Any, int]:
    """A classification batch on the device: normalised (when the loader left it uint8), MixUp/CutMix."""
    device, data = run.proc.device, run.data
    images = images.to(device, non_blocking=True)
    if data.finish is not None:
        images = data.finish(images)
    targets = targets.to(device, non_blocking=True)
    if data.mixup is not None:
        images, targets = data.mixup(images, targets)
    if run.cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets, images.shape[0]


def evaluate_epoch(run: Run) -> dict[str, float]:
    """Validation top-1/top-5/loss of the model (and of the EMA weights), every rank's shard counted once;
    a pre-training run's task evaluates its own way (task.py: reconstruction loss and figure)."""
    from ...evaluation.loop import evaluate

    if task_of(run.cfg).evaluate is not None:
        return task_of(run.cfg).evaluate(run)

    kw = {
        "amp_dtype": run.proc.amp_dtype,
        "channels_last": run.cfg.train.channels_last,
        "progress": False,
        "label_smoothing": run.cfg.train.label_smoothing,  # val_loss_smoothed: the training loss's basis
    }
    res = evaluate(run.trainer.model, run.data.val_loader, run.proc.device, **kw)
    out = {"val_top1": res["top1"], "val_top5": res["top5"], "val_loss": res["loss"]}
    out["val_loss_smoothed"] = res["loss_smoothed"]
    if run.trainer.ema is not None and run.cfg.ema.eval and run.progress.ema_updates > 0:
        res = evaluate(run.trainer.ema.module, run.data.val_loader, run.proc.device, **kw)
        out.update(ema_val_top1=res["top1"], ema_val_top5=res["top5"], ema_val_loss=res["loss"])
        out["ema_val_loss_smoothed"] = res["loss_smoothed"]
    return out


def end_epoch(run: Run) -> None:
    """Close the epoch: its record, evaluation, best, then the checkpoints and only then its metrics line
    (a kill in between is repaired from last.pth on the next start)."""
    cfg, progress, trainer, task = run.cfg, run.progress, run.trainer, task_of(run.cfg)
    run.window.flush(progress.epoch)
    loss_sum = progress.loss_sum.clone()
    if dist.is_dist():
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= run.proc.world
    progress.epoch += 1
    record: dict[str, Any] = {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": float(loss_sum.item() / max(progress.loss_steps, 1)),
        "lr": max(trainer.peaks)
        * trainer.schedule.factor(max(progress.step - 1, 0)),  # the lr of the epoch's last step
        "epoch_time_s": progress.elapsed,
        "images_per_s": progress.images * run.proc.world / max(progress.elapsed, 1e-9),
    }
    is_best = False
    if run.data.val_loader is not None and (
        progress.epoch % cfg.train.eval_every == 0 or progress.epoch == cfg.epochs
    ):
        record.update(evaluate_epoch(run))
        best_by = cfg.checkpoint.best_by
        if best_by == "auto":
            best_by = "ema" if trainer.ema is not None and cfg.ema.eval else "model"
        key = task.metric and f"{'ema_' if best_by == 'ema' else ''}val_{task.metric}"
        score = record.get(key) if key else None
        if score is not None and (progress.best_top1 is None or score > progress.best_top1):
            progress.best_top1, progress.best_epoch, is_best = score, progress.epoch, True
    val, metric, label = "", f"val_{task.metric}", task.metric_label
    if metric in record:
        loss = f", val loss {record['val_loss']:.4f}" if "val_loss" in record else ""
        val = f"{loss}, val {label} {record[metric]:.2f}%"
        val += f", EMA {label} {record['ema_' + metric]:.2f}%" if "ema_" + metric in record else ""
    elif "val_loss" in record:  # pre-training: the reconstruction loss
        val = f", val loss {record['val_loss']:.4f}"
        val += f", EMA val loss {record['ema_val_loss']:.4f}" if "ema_val_loss" in record else ""
    print_main(
        f"epoch {progress.epoch}/{cfg.epochs} done: train loss {record['train_loss']:.4f}{val}, "
        f"{record['images_per_s']:.0f} img/s, epoch time {hms(record['epoch_time_s'])}"
    )
    save(run, epoch_end=True, is_best=is_best, record=record)
    with writing(run.logger.path, run.ckpts.last):
        run.logger.log_epoch(record)
    run.pauses("metrics", progress.epoch)


def save(run: Run, *, epoch_end: bool, is_best: bool = False, record: dict | None = None) -> None:
    """Checkpoint the run (rank 0 writes; every rank contributes its RNG state and loss sum)."""
    progress, trainer = run.progress, run.trainer
    run.window.flush(
        progress.epoch
    )  # never write a diverged state: finite losses so far, and finite weights now
    check_weights_finite(trainer.model, progress.step, progress.epoch, run.ckpts.last)
    loss_sum = None if epoch_end else progress.loss_sum.detach().cpu().clone()
    per_rank = dist.all_gather_object((rng_state(), loss_sum))
    if not run.proc.main:
        return
    partial = None
    if not epoch_end:
        partial = {
            "loss_sum": [s for _, s in per_rank],
            "loss_steps": progress.loss_steps,
            "images": progress.images,
            "elapsed_s": progress.elapsed,
        }
    state = train_state(
        arch=run.cfg.model.name.partition(".")[0],
        model=trainer.model.state_dict(),
        model_ema=ema_state_dict(trainer.ema) if trainer.ema is not None else None,
        ema_updates=progress.ema_updates,
        optimizer=trainer.optimizer.state_dict(),
        scaler=trainer.scaler.state_dict(),
        epoch=progress.epoch,
        step=progress.step,
        steps_per_epoch=run.data.steps_per_epoch,
        epoch_end=epoch_end,
        epoch_partial=partial,
        world_size=run.proc.world,
        rng=[r for r, _ in per_rank],
        config=to_dict(run.cfg),
        class_names=run.data.classes,
        metrics=record,
        best_top1=progress.best_top1,
        best_epoch=progress.best_epoch,
    )
    run.ckpts.save(state, epoch_end=epoch_end, is_best=is_best)


def _repair(run_dir: Path, ckpts: CheckpointManager, ckpt: dict, path: Path) -> None:
    """After a kill: best.pth and metrics.jsonl made to agree with the checkpoint resumed from."""
    own = path.resolve().parent == ckpts.folder.resolve()
    with writing(run_dir / "metrics.jsonl", ckpts.last):
        if own:
            ckpts.repair_best(ckpt, path)
        repair_metrics(
            run_dir / "metrics.jsonl",
            int(ckpt["epoch"]),
            ckpt.get("metrics") if own and is_epoch_end(ckpt) else None,
            record_of=ckpts.epoch_record if own else None,
        )


def _finish(
    run_dir: Path,
    proc: Process,
    progress: Progress,
    *,
    stopped: bool,
    curves: dict[str, Any] | None = None,
    logger: MetricsLogger | None = None,
    stop_signal: str | None = None,
) -> TrainResult:
    metrics: list[dict[str, Any]] = []
    try:
        if proc.main and (run_dir / "metrics.jsonl").exists():
            metrics = read_metrics(run_dir)
            if metrics:
                from ..plots import plot_curves

                with contextlib.suppress(OSError):  # a full disk: the picture is the least of it
                    plot_curves(metrics, run_dir / "curves.png", **(curves or {}))
    finally:
        if logger is not None:  # the trackers get the curves, and end their runs
            files = {n.partition(".")[0]: run_dir / n for n in ("curves.png", "config.yaml", "metrics.jsonl")}
            logger.close("stopped" if stopped else "finished", files=files, step=progress.step)
    dist.barrier()
    dist.cleanup()
    return TrainResult(
        run_dir=run_dir,
        epoch=progress.epoch,
        step=progress.step,
        stopped_early=stopped,
        metrics=metrics,
        best_top1=progress.best_top1,
        best_epoch=progress.best_epoch,
        main=proc.main,
        stopped_by=stop_signal,
    )


def _step_line(run: Run, loss: float, lr: float, rate: float, elapsed: float) -> str:
    """Progress where there is no terminal (Slurm, nohup, CI): one plain line, the bar's numbers and the time
    left (from this epoch's pace; evaluation not counted)."""
    progress, steps_per_epoch, epochs = run.progress, run.data.steps_per_epoch, run.cfg.epochs
    in_epoch = progress.step - progress.epoch * steps_per_epoch
    per_step = elapsed / max(progress.loss_steps, 1)
    return (
        f"epoch {progress.epoch + 1}/{epochs}, step {in_epoch}/{steps_per_epoch}: loss {loss:.4f}, "
        f"lr {lr:.3g}, {rate:.0f} img/s, ETA {hms(per_step * (steps_per_epoch - in_epoch))} epoch, "
        f"{hms(per_step * (epochs * steps_per_epoch - progress.step))} run"
    )
