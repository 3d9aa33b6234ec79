"""``convnext evaluate --weights SRC --data DIR``: top-1/top-5, mean loss and images/s of any checkpoint.

``--weights`` may be a training run folder: its checkpoint (best.pth, else last.pth), class names, model
options and eval transform are used, and ``--data`` defaults to the run's validation split. Under torchrun
each process evaluates its shard; the sums are all-reduced, only rank 0 prints and writes.

Every readable file counts exactly once; a file that cannot be used (empty, not an image, truncated,
above the pixel limit) is in no metric, and is named and counted in the output ("dropped"). The work is
:func:`convnext.inference.evaluate.evaluate_weights`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .common import (
    add_device,
    add_img_size,
    add_json,
    add_progress,
    add_weights,
    json_only,
    nonneg_int,
    positive_int,
    show_progress,
    weights_source,
    write_json,
)

if TYPE_CHECKING:
    from ..inference.evaluate import Evaluation

_SHOWN_DROPPED = 20  # dropped files listed in the text output (--json has them all)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy, loss and images/s of weights on an image folder",
        description="Evaluate a checkpoint, weights tag or training run on a labelled image folder.",
    )
    add_weights(p, ema="evaluate the EMA weights of a training checkpoint")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="image folder: DIR/<class>/<img> or DIR/val/<class>/<img> (default: a run's validation split)",
    )
    p.add_argument("--dataset", default=None, help="dataset kind (default imagefolder; digits, cifar10, ...)")
    p.add_argument("--split", default=None, help="split under --data (default: val when DIR/val exists)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_img_size(p)
    p.add_argument(
        "--workers",
        type=nonneg_int,
        default=min(4, os.cpu_count() or 1),
        help="data loading processes (default: 4, or the number of cores when fewer)",
    )
    add_device(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last input memory format")
    p.add_argument(
        "--max-pixels",
        type=nonneg_int,
        metavar="N",
        help="refuse (drop) images whose header declares more pixels (default: the weights' data.max_pixels, "
        "89478485 as PIL's; 0: no limit)",
    )
    add_json(p, "the metrics")
    p.add_argument("--per-class", metavar="OUT.csv", help="write per-class top-1/top-5 as CSV")
    p.add_argument("--confusion", metavar="OUT.png", help="write a confusion-matrix plot")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.evaluate import evaluate_weights

    ev = evaluate_weights(
        weights_source(args.weights, args.model),
        model=args.model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        ema=args.ema,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        max_pixels=args.max_pixels,
        predictions=bool(args.per_class or args.confusion),
        progress=show_progress(args),
    )
    if not ev.main:
        return 0
    if not json_only(args):
        _print_text(ev, args.json)
    if args.json:
        write_json(args.json, ev.summary())
    if args.per_class or args.confusion:
        _write_reports(ev, args.per_class, args.confusion)
    return 0


def _print_text(ev: Evaluation, json_file: str | None) -> None:
    res, cfg, loaded, dropped = ev.metrics, ev.data, ev.loaded, ev.dropped
    print(f"model      {loaded.arch} ({loaded.checkpoint}{', EMA' if ev.ema else ''})")
    note = f"; {len(dropped)} unreadable file(s) dropped, in no metric (listed below)" if dropped else ""
    print(
        f"data       {ev.where} [{cfg.val_split or '.'}]: {res['n']} images, {ev.classes_present} of "
        f"{loaded.num_classes} classes{note}"
    )
    print(f"transform  {cfg.img_size} px, {cfg.crop_mode} crop {cfg.crop_pct}, {cfg.interpolation}")
    print(f"top-1      {res['top1']:.2f}%")
    print(f"top-5      {res['top5']:.2f}%")
    print(f"loss       {res['loss']:.4f}")
    print(f"images/s   {res['images_per_s']:.1f} ({ev.device}, {res['world_size']} process(es))")
    if dropped:
        print(f"dropped    {len(dropped)} unreadable file(s):")
        for p, why in dropped[:_SHOWN_DROPPED]:
            print(f"  {p} ({why})")
        if len(dropped) > _SHOWN_DROPPED:
            rest = len(dropped) - _SHOWN_DROPPED
            print(f"  ... and {rest} more ({'in ' + json_file if json_file else '--json lists them all'})")


def _write_reports(ev: Evaluation, per_class: str | None, confusion: str | None) -> None:
    from ..inference.loading import display_names
    from ..inference.report import per_class_rows, write_confusion_png, write_per_class_csv

    res, loaded = ev.metrics, ev.loaded
    shown = display_names(loaded.class_names, loaded.num_classes)
    if per_class:
        write_per_class_csv(per_class, per_class_rows(res["predictions"], res["targets"], shown))
    if confusion:
        write_confusion_png(
            confusion, res["predictions"][:, 0], res["targets"], shown, title=f"{loaded.arch} on {ev.where}"
        )
