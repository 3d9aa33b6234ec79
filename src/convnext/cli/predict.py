"""``convnext predict IMG|DIR|GLOB ... --weights SRC``: top-k classes per image, optional Grad-CAM overlays.

Output per image: the path, then one line per class in the original project's format
(``f"{name:<75} ({prob:.2f}%)"``); ``--json``: one JSON object per line per image. An unreadable image
prints ``<path>: error: cannot read image (<why>)`` (stdout, in place), the rest are still predicted, and
the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k classes (and Grad-CAM heat maps) for images",
        description="Classify image files, folders or globs with any ConvNeXt checkpoint or training run.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IMG|DIR|GLOB", help="image files, folders (recursive), globs"
    )
    p.add_argument(
        "--weights",
        metavar="SRC",
        help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k), HF folder, training run folder or "
        "exported model (.onnx, .xml, .pt2; see `convnext export`) (default: the tag in --model, e.g. "
        "--model convnext_tiny.fb_in1k, or the arch's default weights)",
    )
    p.add_argument("--model", metavar="ARCH", help="architecture (default: from the checkpoint)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument(
        "--cam", metavar="OUTDIR", help="write a Grad-CAM overlay PNG of the top-1 class per image"
    )
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="class names, one per line (default: the checkpoint's, else ImageNet-1k for 1000 classes)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, help="input resolution (default: the weights')")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the weights')")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast dtype")
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse images whose header declares more pixels (default 89478485, as PIL's; 0: no limit)",
    )
    p.set_defaults(func=run)


def weights_source(weights: str | None, model: str | None) -> str:
    """--weights, else the tag named by --model (convnext_tiny.fb_in1k), else the arch's default tag."""
    if weights:
        return weights
    if not model:
        raise UserError("pass --weights (a file, URL, weights tag or run folder) or --model with a tag")
    if "." in model:
        return model
    from ..weights.registry import default_tag

    return default_tag(model)


def read_names_file(path: str) -> list[str]:
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"class list {p} does not exist")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise UserError(f"class list {p} is empty")
    return names


def run(args: argparse.Namespace) -> int:
    from ..device import amp_dtype, resolve_device
    from ..inference.loading import display_names, load_for_inference
    from ..inference.predict import expand_inputs, predict_paths

    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a number of pixels, got {args.max_pixels}")
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
    if runner is not None:
        if args.cam:
            raise UserError(
                f"--cam needs PyTorch weights (Grad-CAM takes gradients); {loaded.checkpoint} is an exported "
                f"{runner.backend} file"
            )
    shown = display_names(names, loaded.num_classes)
    if args.max_pixels is not None:
        import dataclasses

        loaded.data = dataclasses.replace(loaded.data, max_pixels=args.max_pixels)
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.inputs)}")
    failed = 0
    preds = predict_paths(
        loaded.model,
        paths,
        loaded.data,
        device=device,
        topk=args.topk,
        batch_size=args.batch_size,
        cam_dir=args.cam,
        amp_dtype=dtype,
        progress=len(paths) > args.batch_size and sys.stderr.isatty(),
        class_names=shown,
    )
    for pred in preds:
        if pred.error is not None:
            failed += 1
            if args.json:
                print(json.dumps({"path": pred.path, "error": pred.error}), flush=True)
            else:
                print(f"{pred.path}: error: {pred.error}", flush=True)
            continue
        if args.json:
            obj = {
                "path": pred.path,
                "top": [
                    {"index": i, "class": shown[i], "prob": round(p, 6)}
                    for i, p in zip(pred.indices, pred.probs)
                ],
            }
            if pred.cam_path:
                obj["cam"] = pred.cam_path
            print(json.dumps(obj), flush=True)
        else:
            print(pred.path)
            for i, p in zip(pred.indices, pred.probs):
                print(f"{shown[i]:<75} ({p * 100:.2f}%)")
            if pred.cam_path:
                print(f"Grad-CAM: {pred.cam_path}")
            sys.stdout.flush()
    if failed:
        print(f"convnext predict: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0
