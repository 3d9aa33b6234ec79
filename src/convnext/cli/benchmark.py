"""``convnext benchmark``: images/s, batch-1 latency and memory, ours against timm and torchvision; with
``--backend``, the same weights in PyTorch, onnxruntime and OpenVINO (fp32, bf16, int8)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..errors import UserError
from ..runtimes import BENCH_BACKENDS as BACKENDS
from .common import add_device, add_img_size, add_json, add_progress, json_only, json_output, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time a ConvNeXt (inference or a training step), optionally against timm/torchvision",
        description="Times a model interleaved with its peers in one process and reports medians and ratios.",
    )
    p.add_argument(
        "--model", help="architecture name (see `convnext models`; default convnext_tiny, or the --weights')"
    )
    p.add_argument(
        "--task",
        choices=("classification", "segmentation", "detection"),
        default="classification",
        help="segmentation: upernet_<backbone> against transformers' UperNet (--compare transformers); "
        "detection: maskrcnn_ or fasterrcnn_<backbone> against torchvision's over timm's ConvNeXt "
        "(--compare torchvision)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="images per step (default 32; segmentation, detection: 2)"
    )
    add_img_size(
        p,
        crop=False,
        help="input resolution (default 224, or the --weights' own; segmentation 512 on a GPU, 256 on a CPU; "
        "detection 800 on a GPU, 320 on a CPU)",
    )
    p.add_argument("--mode", choices=["infer", "train"], default="infer", help="train: fwd+bwd+AdamW")
    p.add_argument("--channels-last", action="store_true", help="models and input in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile every model first")
    add_device(p)
    p.add_argument(
        "--compare",
        default="",
        help="comma-separated peers: timm,torchvision (segmentation: transformers; detection: torchvision)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=5, help="timed rounds (each runs every contestant once)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per contestant first")
    p.add_argument(
        "--no-fuse", action="store_true", help="time our plain ops: no inference fusion, no chunked MLP"
    )
    p.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="time every contestant with glibc malloc tuned as `convnext train` runs on CPU (after memory)",
    )
    p.add_argument(
        "--backend",
        metavar="LIST",
        help=f"time deployment backends on the CPU instead, comma-separated: {','.join(BACKENDS)} (torch is "
        "the reference: our fused fp32 PyTorch)",
    )
    p.add_argument(
        "--weights", metavar="SRC", help="with --backend: weights (file, tag, run folder; default: random)"
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="with --backend openvino-int8: calibration images (default: the run's data, else random)",
    )
    add_json(p, "the report (one object)")
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import format_backend_report, format_report, run_backend_benchmark, run_benchmark

    say = lambda msg: print(f"[benchmark] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.task != "classification":
        _emit(args, _run_dense(args, say), _format_dense)
        return 0
    if args.backend:
        _refuse_with_backend(args)
        report = run_backend_benchmark(
            args.model,
            weights=args.weights,
            backends=args.backend,
            batch_size=args.batch_size or 32,
            img_size=args.img_size,
            repeats=args.repeats,
            warmup=args.warmup,
            calibration=args.calibration,
            progress=say,
        )
        _emit(args, report, format_backend_report)
        return 0
    if args.weights or args.calibration:
        raise UserError("--weights and --calibration go with --backend")
    report = run_benchmark(
        args.model or "convnext_tiny",
        batch_size=args.batch_size or 32,
        img_size=args.img_size or 224,
        mode=args.mode,
        channels_last=args.channels_last,
        compile=args.compile,
        amp=args.amp,
        device=args.device,
        compare=tuple(p.strip() for p in args.compare.split(",") if p.strip()),
        repeats=args.repeats,
        warmup=args.warmup,
        fuse=not args.no_fuse,
        tuned_malloc=args.tuned_malloc,
        progress=say,
    )
    _emit(args, report, format_report)
    return 0


def _run_dense(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """--task segmentation | detection (bench/dense.py); the flags that only classification has refused."""
    from ..bench.dense import run_dense_benchmark

    flags = {"--backend": args.backend, "--weights": args.weights, "--calibration": args.calibration}
    flags.update({"--channels-last": args.channels_last, "--compile": args.compile})
    clash = [f for f, v in flags.items() if v]
    if clash:
        raise UserError(f"--task {args.task} times our dense model against its peer; drop {', '.join(clash)}")
    return run_dense_benchmark(
        args.task,
        args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        mode=args.mode,
        amp=args.amp,
        device=args.device,
        compare=tuple(p.strip() for p in args.compare.split(",") if p.strip()),
        repeats=args.repeats,
        warmup=args.warmup,
        fuse=not args.no_fuse,
        tuned_malloc=args.tuned_malloc,
        progress=say,
    )


def _format_dense(report: dict[str, Any]) -> str:
    from ..bench.dense import format_dense_report

    return format_dense_report(report)


def _refuse_with_backend(args: argparse.Namespace) -> None:
    """--backend times CPU inference as each runtime runs it: the model-comparison flags do not apply."""
    if args.device not in ("auto", "cpu"):
        raise UserError(f"--backend times the CPU backends; drop --device {args.device}")
    flags = {"--compare": args.compare, "--amp": args.amp, "--compile": args.compile}
    flags.update({"--channels-last": args.channels_last, "--no-fuse": args.no_fuse})
    flags.update({"--mode train": args.mode != "infer"})
    clash = [f for f, v in flags.items() if v]
    if clash:
        raise UserError(f"--backend times CPU inference as each backend runs it; drop {', '.join(clash)}")


def _emit(args: argparse.Namespace, report: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> None:
    """The table on stdout, unless --json (or --json -) prints the report there instead; --json FILE."""
    if args.json:
        with json_output(args.json) as f:
            f.write(json.dumps(report) + "\n")
    if not json_only(args):
        print(table(report))
