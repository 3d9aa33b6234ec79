"""``convnext pretrain``: FCMAE self-supervised pre-training from a recipe (``model.name: fcmae_<encoder>``),
on any folder of images or any dataset with its labels ignored; the training loop of ``convnext train``
(torchrun, exact resume, AMP, EMA, run folders, curves, trackers)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised FCMAE pre-training (ConvNeXt V2) on unlabelled images, resumable, single "
        "GPU/CPU or torchrun",
        description="Pre-train a ConvNeXt V2 encoder as a masked autoencoder (FCMAE) from a recipe whose "
        "model.name is fcmae_<encoder> (fcmae_convnextv2_atto ... fcmae_convnextv2_huge, quickstart_fcmae). "
        "Data: data.dataset=images data.root=DIR (any folder of images, flat or nested), or any dataset "
        "of `convnext prepare --help` with its labels ignored. Overrides use the recipe's dotted keys "
        "(model.options.mask_ratio=0.75 epochs=800). Fine-tune the result with `convnext train --config "
        "convnextv2_atto_ft_in1k model.pretrained=<run.dir>`.",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="NAME",
        help="a bundled pre-training recipe by name (`convnext recipes` lists them: quickstart_fcmae...) or "
        "a YAML file; optional with --resume",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a recipe key")
    p.add_argument("--resume", metavar="PATH", help="continue from this training checkpoint (last.pth)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start from scratch even when the run folder has a checkpoint to resume (the earlier run is "
        "moved aside into <run.dir>/previous-<date>/)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the checks of a real run on this machine (the data, the checkpoint it would resume, "
        "precision, memory of a training step), print the resolved config and stop; writes nothing",
    )
    add_progress(p)  # the same as train.progress=false
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.config import resolve_config
    from ..recipe.pretrain import is_fcmae
    from .train import stop_exit_code

    if args.resume and args.fresh:
        raise UserError("--resume and --fresh contradict each other; pass one")
    overrides = [*(args.overrides or []), *(["train.progress=false"] if args.no_progress else [])]
    cfg = resolve_config(args.config, overrides, args.resume, fresh=args.fresh)
    if not is_fcmae(cfg.model.name):
        raise UserError(
            f"config key model.name is {cfg.model.name}, a classifier: pre-training needs an FCMAE model "
            "(fcmae_convnextv2_atto ...; `convnext recipes` lists the fcmae_* recipes); classifiers train "
            "with `convnext train`"
        )
    if args.dry_run:
        import sys

        import yaml

        from ..engine.preflight import dry_run
        from ..recipe import to_dict

        plan = dry_run(cfg, resume=args.resume, fresh=args.fresh)  # the run's own checks, on this machine
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        for line in plan:
            print(f"convnext pretrain: {line}", file=sys.stderr)
        return 0
    from ..engine.train import train

    result = train(cfg, resume=args.resume, fresh=args.fresh)
    if result.stopped_early or not result.main:  # under torchrun, rank 0 reports
        return stop_exit_code(result.stopped_by)
    epochs = f"{result.epoch} epoch" + ("" if result.epoch == 1 else "s")
    print(
        f"convnext pretrain: done, {epochs} in {result.run_dir}; fine-tune with: convnext train --config "
        f"<recipe> model.pretrained={result.run_dir}"
    )
    return 0
