"""``convnext evaluate --weights SRC --data DIR``: top-1/top-5, mean loss and images/s of any checkpoint.

``--weights`` may be a training run folder: its checkpoint (best.pth, else last.pth), class names, model
options and eval transform are used, and ``--data`` defaults to the run's validation split. Under torchrun
each process evaluates its shard; the sums are all-reduced, only rank 0 prints and writes.

Every readable file counts exactly once; a file that cannot be used (empty, not an image, truncated,
above the pixel limit) is in no metric, and is named and counted in the output ("dropped").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

_SHOWN_DROPPED = 20  # dropped files listed in the text output (--json has them all)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy, loss and images/s of weights on an image folder",
        description="Evaluate a checkpoint, weights tag or training run on a labelled image folder.",
    )
    p.add_argument(
        "--weights",
        metavar="SRC",
        help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k), HF folder or training run folder "
        "(default: the tag in --model, e.g. --model convnext_tiny.fb_in1k, or the arch's default weights)",
    )
    p.add_argument("--model", metavar="ARCH", help="architecture (default: from the checkpoint or run)")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="image folder: DIR/<class>/<img> or DIR/val/<class>/<img> (default: a run's validation split)",
    )
    p.add_argument("--dataset", default=None, help="dataset kind (default imagefolder; digits, cifar10, ...)")
    p.add_argument("--split", default=None, help="split under --data (default: val when DIR/val exists)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, help="input resolution (default: the weights')")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the weights')")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data loading processes (default: 4, or the number of cores when fewer)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels_last input memory format")
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse (drop) images whose header declares more pixels (default: the weights' data.max_pixels, "
        "89478485 as PIL's; 0: no limit)",
    )
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    p.add_argument("--per-class", metavar="OUT.csv", help="write per-class top-1/top-5 as CSV")
    p.add_argument("--confusion", metavar="OUT.png", help="write a confusion-matrix plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _dropped(ds: Any, res: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """Every file left out (scan time and load time) as sorted (file, why), and the number of classes
    that still have a counted image."""
    from ..data.datasets import find_file_dataset

    load_time = list(res.get("dropped_files", []))
    files = sorted({*[(str(p), str(w)) for p, w in getattr(ds, "skipped", [])], *load_time})
    targets = list(ds.targets)
    fd = find_file_dataset(ds) if load_time else None
    gone = {p for p, _ in load_time}
    present = {t for i, t in enumerate(targets) if fd is None or fd.path(i) not in gone}
    return files, len(present)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset, build_eval_transform, build_loader
    from ..data.datasets import relabel
    from ..device import amp_dtype, resolve_device
    from ..engine import distributed as D
    from ..engine.evaluate import evaluate
    from ..inference.loading import display_names, imagenet_wnid_names, load_for_inference
    from ..inference.report import per_class_rows, write_confusion_png, write_per_class_csv
    from .predict import weights_source

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a number of pixels, got {args.max_pixels}")
    want = resolve_device(args.device)
    _, world, local_rank = D.init_distributed(want.type)
    device = torch.device("cuda", local_rank) if want.type == "cuda" and world > 1 else want
    main = D.is_main()
    dtype = amp_dtype(args.amp, device)
    try:
        loaded = load_for_inference(
            weights_source(args.weights, args.model),
            args.model,
            ema=args.ema,
            img_size=args.img_size,
            crop_pct=args.crop_pct,
        )
        cfg = loaded.data
        if args.data:
            root = Path(args.data).expanduser()
            if not root.is_dir():
                raise UserError(f"data folder {root} does not exist")
            split = args.split if args.split is not None else ("val" if (root / "val").is_dir() else "")
            cfg = dataclasses.replace(
                cfg, dataset=args.dataset or "imagefolder", root=str(root), val_split=split, class_list=None
            )
        elif loaded.run_dir is None:
            raise UserError("--data is required (a folder of class folders) unless --weights is a run folder")
        elif args.split is not None:
            cfg = dataclasses.replace(cfg, val_split=args.split)
        if args.dataset and not args.data:
            cfg = dataclasses.replace(cfg, dataset=args.dataset)
        cfg.workers = max(int(args.workers), 0)
        if args.max_pixels is not None:
            cfg = dataclasses.replace(cfg, max_pixels=args.max_pixels)
        with warnings.catch_warnings():  # the files left out at scan time are listed with the results
            warnings.filterwarnings("ignore", message=r".*skipped \d+ unusable file", category=RuntimeWarning)
            ds = build_dataset(cfg, cfg.val_split, build_eval_transform(cfg), on_error="drop")
        names = imagenet_wnid_names(loaded.class_names, loaded.num_classes)
        if names is not None:
            ds = relabel(ds, names, loaded.checkpoint)
        elif len(ds.classes) != loaded.num_classes:
            raise UserError(
                f"{loaded.checkpoint} has a {loaded.num_classes}-class head but {cfg.root or cfg.dataset} "
                f"has {len(ds.classes)} classes and the checkpoint names none of them"
            )
        loader = build_loader(ds, args.batch_size, train=False, cfg=cfg, seed=0, distributed=D.is_dist())
        model = loaded.model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        want_preds = bool(args.per_class or args.confusion)
        res = evaluate(
            model,
            loader,
            device,
            amp_dtype=dtype,
            channels_last=args.channels_last,
            progress=not args.no_progress and sys.stderr.isatty(),
            return_predictions=want_preds,
            warn_dropped=False,
        )
    finally:
        if D.is_dist():
            D.cleanup()
    if not main:
        return 0
    shown = display_names(loaded.class_names, loaded.num_classes)
    dropped, present = _dropped(ds, res)
    where = cfg.root or cfg.dataset
    print(f"model      {loaded.arch} ({loaded.checkpoint}{', EMA' if args.ema else ''})")
    note = f"; {len(dropped)} unreadable file(s) dropped, in no metric (listed below)" if dropped else ""
    print(
        f"data       {where} [{cfg.val_split or '.'}]: {res['n']} images, {present} of "
        f"{loaded.num_classes} classes{note}"
    )
    print(f"transform  {cfg.img_size} px, {cfg.crop_mode} crop {cfg.crop_pct}, {cfg.interpolation}")
    print(f"top-1      {res['top1']:.2f}%")
    print(f"top-5      {res['top5']:.2f}%")
    print(f"loss       {res['loss']:.4f}")
    print(f"images/s   {res['images_per_s']:.1f} ({device}, {res['world_size']} process(es))")
    if dropped:
        print(f"dropped    {len(dropped)} unreadable file(s):")
        for p, why in dropped[:_SHOWN_DROPPED]:
            print(f"  {p} ({why})")
        if len(dropped) > _SHOWN_DROPPED:
            rest = len(dropped) - _SHOWN_DROPPED
            print(f"  ... and {rest} more ({'in ' + args.json if args.json else '--json lists them all'})")
    if args.json:
        out = {k: res[k] for k in ("top1", "top5", "loss", "n", "images_per_s", "world_size") if k in res}
        out["dropped"] = len(dropped)
        out["dropped_files"] = [{"path": p, "reason": why} for p, why in dropped]
        out.update(
            model=loaded.arch,
            weights=loaded.checkpoint,
            ema=bool(args.ema),
            data=str(where),
            split=cfg.val_split,
            img_size=cfg.img_size,
            crop_pct=cfg.crop_pct,
            crop_mode=cfg.crop_mode,
            device=str(device),
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.per_class:
        write_per_class_csv(args.per_class, per_class_rows(res["predictions"], res["targets"], shown))
    if args.confusion:
        write_confusion_png(
            args.confusion, res["predictions"][:, 0], res["targets"], shown, title=f"{loaded.arch} on {where}"
        )
    return 0
