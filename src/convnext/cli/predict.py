"""``convnext predict IMG|DIR|GLOB ... --weights SRC``: top-k classes per image, optional Grad-CAM overlays.

Output per image: the path, then one line per class in the original project's format
(``f"{name:<75} ({prob:.2f}%)"``); ``--json``: one JSON object per line per image, on stdout instead
of the text (``--json``, ``--json -``) or written to a ``.json``/``.jsonl`` file with the text kept. An
unreadable image prints ``<path>: error: cannot read image (<why>)`` (stdout, in place), the rest are
still predicted, and the exit code is 1; so does anything but a regular file (a FIFO, a link to
/dev/zero), refused unread. A file name with a newline or another control character is printed quoted
(Python's repr) in the text, exactly in the JSON. ``--cam-class NAME`` draws the Grad-CAM of that class
(name or index) instead of the top-1's.

A detector or segmenter (``maskrcnn_*``, ``fasterrcnn_*``, ``upernet_*``: by ``--model`` or the weights) goes
to ``inference/dense.py``: its detections or class shares per image, ``--out DIR`` for the drawn figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from typing import Any

from ..errors import UserError
from .common import (
    add_device,
    add_img_size,
    add_json,
    add_progress,
    add_weights,
    json_only,
    json_output,
    nonneg_int,
    positive_int,
    read_names_file,
    show_progress,
    weights_source,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k classes (and Grad-CAM heat maps) for images; a detector's boxes, a segmenter's classes",
        description="Classify image files, folders or globs with any ConvNeXt checkpoint or training run; "
        "with a detector or segmenter (maskrcnn_*, fasterrcnn_*, upernet_*), its objects or classes, drawn.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IMG|DIR|GLOB", help="image files, folders (recursive), globs"
    )
    add_weights(p, exported=True)
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5)")
    add_json(p, "one object per image, one per line,")
    p.add_argument(
        "--cam", metavar="OUTDIR", help="write a Grad-CAM overlay PNG of the top-1 class per image"
    )
    p.add_argument(
        "--cam-class",
        metavar="NAME",
        help="with --cam: the Grad-CAM of this class (a name, e.g. the true class of a mistake, or an index) "
        "instead of the top-1",
    )
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="class names, one per line (default: the checkpoint's, else ImageNet-1k for 1000 classes)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_img_size(p)
    add_device(p)
    p.add_argument(
        "--max-pixels",
        type=nonneg_int,
        metavar="N",
        help="refuse images whose header declares more pixels (default 89478485, as PIL's; 0: no limit)",
    )
    dense = p.add_argument_group("detection and segmentation models (maskrcnn_*, fasterrcnn_*, upernet_*)")
    dense.add_argument(
        "--out",
        metavar="OUTDIR",
        help="write the drawn results there: boxes and masks on the image (<stem>_detections.png); the "
        "coloured classes with a legend over the image and alone (<stem>_overlay.png, <stem>_mask.png)",
    )
    dense.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        metavar="S",
        help="detections scoring below S are dropped (default 0.5)",
    )
    dense.add_argument(
        "--label-map",
        action="store_true",
        help="with --out: also the class index per pixel, <stem>_labels.png",
    )
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..device import amp_dtype, resolve_device
    from ..inference.loading import display_names, for_bf16_inference, load_for_inference
    from ..inference.predict import expand_inputs, predict_paths

    if args.cam_class is not None and not args.cam:  # before the weights are read
        raise UserError("--cam-class needs --cam OUTDIR (where the Grad-CAM figures go)")
    from ..inference.dense import dense_task

    if dense_task(args.weights, args.model):  # detection, segmentation: inference/dense.py
        return _run_dense(args)
    if args.out or args.label_map:
        raise UserError("--out and --label-map draw detection and segmentation results; a classifier: --cam")
    device = resolve_device(args.device)
    dtype = amp_dtype(args.amp, device)
    loaded = load_for_inference(
        weights_source(args.weights, args.model),
        args.model,
        ema=args.ema,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
    )
    names = loaded.class_names
    if args.classes:
        names = read_names_file(args.classes)
        if len(names) != loaded.num_classes:
            raise UserError(
                f"{loaded.checkpoint} has a {loaded.num_classes}-class head but class list {args.classes} "
                f"has {len(names)} classes"
            )
    runner = getattr(loaded.model, "runner", None)  # an exported file (inference/backends.py)
    if runner is not None and args.cam:
        raise UserError(
            f"--cam needs PyTorch weights (Grad-CAM takes gradients); {loaded.checkpoint} is an exported "
            f"{runner.backend} file"
        )
    shown = display_names(names, loaded.num_classes)
    cam_class = None
    if args.cam_class is not None:
        from ..inference.predict import class_index

        cam_class = class_index(args.cam_class, shown, loaded.checkpoint)
    if args.max_pixels is not None:
        import dataclasses

        loaded.data = dataclasses.replace(loaded.data, max_pixels=args.max_pixels)
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.inputs)}")
    model = loaded.model if args.cam else for_bf16_inference(loaded.model, device, dtype)  # CAM: gradients
    preds = predict_paths(
        model,
        paths,
        loaded.data,
        device=device,
        topk=args.topk,
        batch_size=args.batch_size,
        cam_dir=args.cam,
        amp_dtype=dtype,
        progress=len(paths) > args.batch_size and show_progress(args),
        class_names=shown,
        cam_class=cam_class,
    )
    failed = _print_predictions(preds, shown, args.json, text=not json_only(args), cam_class=cam_class)
    if failed:
        print(f"convnext predict: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


def _run_dense(args: argparse.Namespace) -> int:
    """``predict`` for a detector or a segmenter: per image its detections or class shares (text, JSON
    lines), and with ``--out`` the drawn figures."""
    from ..device import resolve_device
    from ..inference.dense import load_dense, predict_dense, prediction_json, prediction_lines
    from ..inference.predict import expand_inputs

    if args.cam or args.classes:
        raise UserError("--cam and --classes are for classifiers; a detector or segmenter takes --out")
    if not 0 <= args.score_threshold <= 1:
        raise UserError(f"--score-threshold must be between 0 and 1, got {args.score_threshold:g}")
    if args.label_map and not args.out:
        raise UserError("--label-map needs --out OUTDIR (where the label maps go)")
    dense = load_dense(
        args.weights, args.model, img_size=args.img_size, device=resolve_device(args.device), ema=args.ema
    )
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.inputs)}")
    preds = predict_dense(
        dense,
        paths,
        out_dir=args.out,
        score_threshold=args.score_threshold,
        label_map=args.label_map,
        max_pixels=args.max_pixels,
        progress=len(paths) > 1 and show_progress(args),
    )
    failed, text = 0, not json_only(args)
    with json_output(args.json) if args.json else nullcontext(None) as jf:
        for pred in preds:
            failed += pred.error is not None
            if jf is not None:
                jf.write(json.dumps(prediction_json(pred)) + "\n")
                jf.flush()
            if text:
                print("\n".join(prediction_lines(pred)), flush=True)
    if failed:
        print(f"convnext predict: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


def prediction_json(pred: Any, shown: list[str], cam_class: int | None = None) -> dict[str, Any]:
    """One image's ``--json`` object: its path and top-k (index, class, prob), or its error; with
    ``--cam-class`` also the CAM's class and its probability."""
    if pred.error is not None:
        return {"path": pred.path, "error": pred.error}
    top = [{"index": i, "class": shown[i], "prob": round(p, 6)} for i, p in zip(pred.indices, pred.probs)]
    obj: dict[str, Any] = {"path": pred.path, "top": top}
    if pred.cam_path:
        obj["cam"] = pred.cam_path
        if cam_class is not None and pred.cam_prob is not None:
            obj["cam_class"] = {
                "index": cam_class,
                "class": shown[cam_class],
                "prob": round(pred.cam_prob, 6),
            }
    return obj


def _print_predictions(
    preds: Any, shown: list[str], json_target: str | None, *, text: bool, cam_class: int | None = None
) -> int:
    """Each prediction as it comes: JSON lines (stdout or FILE) and/or the text. Returns the failures.
    A file name with a newline or another control character is quoted in the text (``shown_path``), so
    that one image is one block of lines; the JSON has it exactly."""
    from ..inference.report import shown_path

    failed = 0
    with json_output(json_target) if json_target else nullcontext(None) as jf:
        for pred in preds:
            failed += pred.error is not None
            if jf is not None:
                jf.write(json.dumps(prediction_json(pred, shown, cam_class)) + "\n")
                jf.flush()
            if not text:
                continue
            if pred.error is not None:
                print(f"{shown_path(pred.path)}: error: {pred.error}")
            else:
                print(shown_path(pred.path))
                for i, p in zip(pred.indices, pred.probs):
                    print(f"{shown[i]:<75} ({p * 100:.2f}%)")
                if pred.cam_path:
                    of = "" if cam_class is None else f" of {shown[cam_class]} ({pred.cam_prob * 100:.2f}%)"
                    print(f"Grad-CAM{of}: {shown_path(pred.cam_path)}")
            sys.stdout.flush()
    return failed
