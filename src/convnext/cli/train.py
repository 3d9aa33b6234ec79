"""``convnext train``: a recipe file, ``key=value`` overrides, automatic resume."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .common import add_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune from a recipe (bundled by name, or a YAML file), resumable, single GPU/CPU "
        "or torchrun",
        description="Train from a recipe. Overrides use the recipe's dotted keys, values in YAML: "
        "optim.lr=1e-3 data.root=/data/imagenet model.name=convnext_small epochs=10. "
        "A run folder (run.dir) holding checkpoints/last.pth is resumed automatically. "
        "Give all key=value overrides together (before or after the flags, not split by them).",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="NAME",
        help="a bundled recipe by name (`convnext recipes` lists them, e.g. finetune_folder) or a YAML file; "
        "optional with --resume",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a recipe key")
    p.add_argument("--resume", metavar="PATH", help="continue from this training checkpoint (last.pth)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start from scratch even when the run folder has a checkpoint to resume; the earlier run's "
        "checkpoints and metrics are moved aside into <run.dir>/previous-<date>/, never deleted or mixed",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the checks of a real run on this machine (the checkpoint it would resume, precision, "
        "memory of a training step), print the resolved config and stop; writes nothing",
    )
    add_progress(p)  # the same as train.progress=false
    p.set_defaults(func=run)


def stop_exit_code(stopped_by: str | None) -> int:
    """128 + the signal's number after a signal-triggered checkpoint (SIGTERM 143, SIGUSR1 138 on Linux,
    Ctrl-C 130), as a shell reports a process that signal ended: `train && evaluate` does not evaluate a
    half-trained model, and a Slurm script can tell pre-emption (requeue) from success or an error (exit 2).
    0 when no signal stopped this process (a finished run, or another rank of a torchrun job)."""
    import signal

    sig = getattr(signal, stopped_by, None) if stopped_by else None
    return 128 + int(sig) if sig is not None else 0


def run(args: argparse.Namespace) -> int:
    from ..engine.config import resolve_config

    if args.resume and args.fresh:
        raise UserError("--resume and --fresh contradict each other; pass one")
    overrides = [*(args.overrides or []), *(["train.progress=false"] if args.no_progress else [])]
    cfg = resolve_config(args.config, overrides, args.resume, fresh=args.fresh)
    if args.dry_run:
        import yaml

        from ..engine.preflight import dry_run
        from ..recipe import to_dict

        plan = dry_run(cfg, resume=args.resume, fresh=args.fresh)  # the run's own checks, on this machine
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        for line in plan:
            print(f"convnext train: {line}", file=sys.stderr)
        return 0
    from ..engine.train import train

    result = train(cfg, resume=args.resume, fresh=args.fresh)
    if result.stopped_early or not result.main:  # under torchrun, rank 0 reports
        return stop_exit_code(result.stopped_by)
    epochs = f"{result.epoch} epoch" + ("" if result.epoch == 1 else "s")
    best = ""
    if result.best_top1 is not None:
        from ..engine.train.task import task_of

        at = f" (epoch {result.best_epoch}, checkpoints/best.pth)" if result.best_epoch is not None else ""
        best = f"; best {task_of(cfg).metric_label} {result.best_top1:.2f}%{at}"
    print(f"convnext train: done, {epochs} in {result.run_dir}{best}")
    return 0
