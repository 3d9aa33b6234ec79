"""``convnext export --weights SRC --format onnx|openvino|pt2 [--precision fp32|bf16|int8] --out PATH``.

Writes the file, runs it in its runtime against PyTorch (a file off by more than 1e-5 relative is deleted
and the command fails), and prints what was written, how close it is and what it runs as on this CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from ..runtimes import EXPORTERS, FORMATS, PRECISIONS
from .common import add_img_size, add_json, add_progress, add_weights, json_only, weights_source, write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX, OpenVINO IR (fp32/bf16/int8) or torch.export .pt2, verified against PyTorch",
        description="Export a checkpoint, weights tag or training run for deployment; the file is run "
        "against PyTorch right after writing and carries the model's classes and preprocessing.",
    )
    add_weights(p, ema="export the EMA weights of a training checkpoint")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        help="onnx (onnxruntime), openvino (.xml + .bin IR) or pt2 (torch.export); default: from --out",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (every format); bf16 and int8 (NNCF post-training quantization): --format openvino",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="int8: a folder of typical images (or a run folder); default: the run's own training data",
    )
    p.add_argument("--calibration-size", type=int, default=300, help="int8: calibration images (default 300)")
    p.add_argument(
        "--int8-float",
        metavar="PARTS",
        default=None,
        help="int8: keep these in float, comma-separated: dwconv (depthwise convs), stem, head, or none "
        "(default: dwconv, faster so; LayerNorm, GELU and the residual adds are always float)",
    )
    add_img_size(p, crop=False, help="input resolution baked into the graph (default: the weights' own)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (>= 18; default 20)")
    p.add_argument("--out", metavar="PATH", required=True, help="output file: .onnx, .xml or .pt2")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    add_json(p, "the report")
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def report(res: Any) -> dict[str, Any]:
    """The export's report as plain data (what --json prints)."""
    import json

    return {
        "path": str(res.path),
        "files": [str(f) for f in res.files],
        "size_bytes": res.size_bytes,
        "format": res.format,
        "precision": res.precision,
        "runs_as": res.runs_as,
        "max_rel_diff_vs_pytorch": res.max_rel_diff,
        "verified_batches": [1, 3],
        "agreement_top1": res.agreement,
        "calibration": None
        if res.calibration is None
        else {
            "images": len(res.calibration.images),
            "source": res.calibration.source,
            "skipped": [{"file": p, "why": w} for p, w in res.calibration.skipped],
        },
        "seconds": res.seconds,
        "notes": res.notes,
        "metadata": json.loads(res.meta.to_json()),
    }


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def run(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..models.cpu import cpu_features_line

    # an --img-size below the model's total stride is refused by load_for_inference, naming the stride
    # Ctrl-C: export_model removes its work folder first, then this ends the process at once. Unwinding a
    # KeyboardInterrupt through OpenVINO's or NNCF's native code can abort the process (SIGABRT).
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)
    from ..inference.dense import dense_task

    weights = args.weights
    if not (weights or dense_task(None, args.model)):  # a detector or segmenter by name: random weights
        weights = weights_source(args.weights, args.model)
    res = export_model(
        weights,
        out=args.out,
        fmt=args.format,
        precision=args.precision,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        img_size=args.img_size,
        model_name=args.model,
        ema=args.ema,
        force=args.force,
        opset=args.opset,
        int8_float=_parts(args.int8_float),
        progress=lambda msg: print(f"[export] {msg}", file=sys.stderr, flush=True),
    )
    if args.json:
        write_json(args.json, report(res))
    if json_only(args):
        return 0
    m = res.meta
    d = m.data
    names = m.class_names or []
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    files = " + ".join(f.name for f in res.files)
    print(
        f"exported   {m.arch} ({m.source}) -> {res.path} ({files}, {_size(res.size_bytes)}) "
        f"in {res.seconds:.0f} s"
    )
    detector = m.extra.get("task") == "detection"
    if detector:  # torchvision's detector: one image of any size, resized inside the graph
        print(
            f"format     {res.format} {res.precision}, one image of any H x W "
            f"(resized to {d.img_size} px inside)"
        )
        print(
            f"verified   {EXPORTERS[res.format].verified_as} vs PyTorch on 2 images: every detection, box "
            f"within {res.max_rel_diff:.1e} of the image side"
        )
    else:
        print(
            f"format     {res.format} {res.precision}, dynamic batch, {d.img_size}x{d.img_size} input 'input'"
        )
    if res.max_rel_diff is not None and not detector:
        where = EXPORTERS[res.format].verified_as
        print(
            f"verified   {where} vs PyTorch at batch 1 and 3: max relative difference {res.max_rel_diff:.1e}"
        )
    if res.agreement is not None:
        n = len(res.calibration.images) if res.calibration is not None else 8
        if m.extra.get("task") == "segmentation":
            what = f"per-pixel class equals fp32's on {100 * res.agreement:.1f}% of the pixels of {n} images"
        else:
            what = f"top-1 equals fp32 on {100 * res.agreement:.1f}% of {n} images"
        print(f"agreement  {res.precision} {what}")
    if res.calibration is not None:
        print(f"calibrated {res.calibration.source}; {len(res.calibration.skipped)} unreadable skipped")
    print(f"runs as    {res.runs_as} on this CPU ({cpu_features_line()})")
    print(
        f"metadata   {m.num_classes} classes{f' ({shown})' if names else ''}; {d.img_size} px, "
        f"crop {d.crop_pct}, {d.interpolation}, mean {list(d.mean)}, std {list(d.std)}"
        + (f"; dataset {d.dataset} ({d.root or 'built in'})" if m.has_dataset else "")
    )
    for n in res.notes:
        print(f"note       {n}")
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    print("convnext export: interrupted; nothing was written", file=sys.stderr, flush=True)
    os._exit(130)


def _parts(value: str | None) -> tuple[str, ...] | None:
    """``--int8-float``: None when not given (the default parts), ``()`` for ``none``."""
    if value is None:
        return None
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    return () if parts == ("none",) else parts
