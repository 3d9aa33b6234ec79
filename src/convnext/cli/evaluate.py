"""``convnext evaluate --weights SRC --data DIR``: top-1/top-5, mean loss and images/s of any checkpoint.

``--weights`` may be a training run folder: its checkpoint (best.pth, else last.pth), class names, model
options and eval transform are used, and ``--data`` defaults to the run's validation split. Under torchrun
each process evaluates its shard; the sums are all-reduced, only rank 0 prints and writes.

Every readable file counts exactly once (however many symbolic or hard links lead to it); a file that
cannot be used (empty, not an image, truncated, above the pixel limit, a FIFO or a device) is in no
metric, and is named and counted in the output ("dropped"). Beside top-1/top-5 (no top-5 with 5 classes
or fewer): per-class precision/recall/F1, macro F1 and balanced accuracy, from confusion counts that are
exact across ranks; ``--predictions`` lists every image's prediction. The work is
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
_SHOWN_CLASSES = 20  # per-class lines in the text output up to this many classes (--json has them all)


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
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="default 64 (segmentation: 1, sizes differ)"
    )
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
    p.add_argument(
        "--per-class", metavar="OUT.csv", help="write per-class top-1/top-5, precision, recall and F1 as CSV"
    )
    p.add_argument(
        "--predictions",
        metavar="OUT.csv",
        help="write every image's prediction as CSV (path, true and predicted class, their probabilities, "
        "correct): the mistakes are the rows with correct 0",
    )
    p.add_argument("--confusion", metavar="OUT.png", help="write a confusion-matrix plot")
    seg = p.add_argument_group("segmentation (upernet_* weights: mIoU, mAcc, aAcc as mmsegmentation)")
    seg.add_argument("--flip", action="store_true", help="also the mirrored image, softmax averaged")
    seg.add_argument(
        "--scales",
        metavar="R,R,...",
        help="multi-scale: ratios of the test scale, softmax averaged (ms: mmseg's 0.5,0.75,...,1.75)",
    )
    seg.add_argument(
        "--slide", action="store_true", help="sliding windows of the training crop (the official test mode)"
    )
    seg.add_argument(
        "--reduce-zero-label",
        action="store_true",
        default=None,
        help="mask value 0 is 'unlabelled' (ignored) and k is class k - 1 (default: the run's, ade20k's)",
    )
    p.add_argument(
        "--confusion-normalize",
        action="store_true",
        help="the confusion matrix in percent of each true class (rows sum to 100%%) instead of counts",
    )
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.dense import dense_task
    from ..inference.evaluate import evaluate_weights

    if dense_task(args.weights, args.model) == "segmentation":
        return _run_segmentation(args)
    if dense_task(args.weights, args.model) == "detection":
        return _run_detection(args)
    ev = evaluate_weights(
        weights_source(args.weights, args.model),
        model=args.model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        ema=args.ema,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        batch_size=args.batch_size or 64,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        max_pixels=args.max_pixels,
        predictions=bool(args.per_class or args.confusion or args.predictions),
        progress=show_progress(args),
    )
    if not ev.main:  # under torchrun only rank 0 prints and writes: each file once
        return 0
    if not json_only(args):
        _print_text(ev, args.json)
    if args.json:
        write_json(args.json, ev.summary())
    _write_reports(ev, args.per_class, args.confusion, args.predictions, args.confusion_normalize)
    return 0


def _run_segmentation(args: argparse.Namespace) -> int:
    """upernet_* weights: mIoU / mAcc / aAcc as mmsegmentation (inference/segmentation_eval.py)."""
    from ..inference.segmentation_eval import evaluate_segmentation_weights, print_segmentation

    ev = evaluate_segmentation_weights(
        weights_source(args.weights, args.model),
        model=args.model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        scales=args.scales,
        flip=args.flip,
        slide=args.slide,
        reduce_zero_label=args.reduce_zero_label,
        ema=args.ema,
        img_size=args.img_size,
        batch_size=args.batch_size or 1,  # images of many sizes: one at a time
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        progress=show_progress(args),
    )
    if not ev.main:
        return 0
    if not json_only(args):
        print_segmentation(ev, args.json)
    if args.json:
        write_json(args.json, ev.summary())
    return 0


def _print_text(ev: Evaluation, json_file: str | None) -> None:
    from ..inference.report import shown_path

    res, cfg, loaded, dropped = ev.metrics, ev.data, ev.loaded, ev.dropped
    print(f"model      {loaded.arch} ({shown_path(loaded.checkpoint)}{', EMA' if ev.ema else ''})")
    note = f"; {len(dropped)} unreadable file(s) dropped, in no metric (listed below)" if dropped else ""
    print(
        f"data       {shown_path(ev.where)} [{cfg.val_split or '.'}]: {res['n']} images, "
        f"{ev.classes_present} of {loaded.num_classes} classes{note}"
    )
    print(f"transform  {cfg.img_size} px, {cfg.crop_mode} crop {cfg.crop_pct}, {cfg.interpolation}")
    print(f"top-1      {res['top1']:.2f}%")
    if ev.has_top5:  # with 5 classes or fewer top-5 is 100% by definition
        print(f"top-5      {res['top5']:.2f}%")
    summary, table = ev.class_summary(), ev.class_table()
    if summary["macro_f1"] is not None:
        in_data = sum(1 for r in table if r["n"])
        f1, bal = summary["macro_f1"], summary["balanced_accuracy"]
        print(f"macro F1   {f1:.2f}% (mean F1 of {len(table)} classes: in the data or predicted)")
        print(f"bal. acc.  {bal:.2f}% (mean recall of the {in_data} classes in the data)")
    print(f"loss       {res['loss']:.4f}")
    print(f"images/s   {res['images_per_s']:.1f} ({ev.device}, {res['world_size']} process(es))")
    if table and len(table) <= _SHOWN_CLASSES:
        print(f"per class  {'n':>6} {'predicted':>9} {'precision':>9} {'recall':>8} {'F1':>8}  class")
        for r in table:
            print(
                f"           {r['n']:>6} {r['predicted']:>9} {r['precision']:>8.2f}% {r['recall']:>7.2f}% "
                f"{r['f1']:>7.2f}%  {shown_path(r['class'])}"
            )
    elif table:
        where = json_file or "--json"
        print(
            f"per class  {len(table)} classes: precision, recall and F1 in {where} (per_class) or --per-class"
        )
    if dropped:
        print(f"dropped    {len(dropped)} unreadable file(s):")
        for p, why in dropped[:_SHOWN_DROPPED]:
            print(f"  {shown_path(p)} ({why})")
        if len(dropped) > _SHOWN_DROPPED:
            rest = len(dropped) - _SHOWN_DROPPED
            print(f"  ... and {rest} more ({'in ' + json_file if json_file else '--json lists them all'})")


def _write_reports(
    ev: Evaluation, per_class: str | None, confusion: str | None, predictions: str | None, normalize: bool
) -> None:
    from ..inference.loading import display_names
    from ..inference.report import (
        per_class_rows,
        write_confusion_png,
        write_per_class_csv,
        write_predictions_csv,
    )

    res, loaded = ev.metrics, ev.loaded
    shown = display_names(loaded.class_names, loaded.num_classes)
    if per_class:
        rows = per_class_rows(res["predictions"], res["targets"], shown, top5=ev.has_top5)
        write_per_class_csv(per_class, rows, ev.class_table())
    if predictions:
        write_predictions_csv(predictions, ev.prediction_rows())
    if confusion:
        write_confusion_png(
            confusion,
            res["predictions"][:, 0],
            res["targets"],
            shown,
            title=f"{loaded.arch} on {ev.where}",
            normalize=normalize,
        )


def _run_detection(args: argparse.Namespace) -> int:
    """maskrcnn_/fasterrcnn_* weights: COCO box and mask mAP by pycocotools (inference/detection_eval.py)."""
    from ..inference.detection_eval import evaluate_detection_weights, format_detection

    ev = evaluate_detection_weights(
        weights_source(args.weights, args.model),
        model=args.model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        ema=args.ema,
        img_size=args.img_size,
        batch_size=args.batch_size or 4,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        progress=show_progress(args),
    )
    if not ev.main:  # under torchrun only rank 0 prints and writes
        return 0
    if not json_only(args):
        print("\n".join(format_detection(ev)))
    if args.json:
        write_json(args.json, ev.summary())
    return 0
