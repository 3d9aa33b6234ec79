"""``convnext models``: the table of every architecture, measured from the modules themselves."""

from __future__ import annotations

import argparse
import json

from ..models import list_models
from ..models.profile import model_stats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every ConvNeXt with params, GFLOPs and input size")
    p.add_argument("--family", choices=["v1", "v2", "isotropic"], help="only this family")
    p.add_argument("--img-size", type=int, help="count FLOPs at this resolution instead of the default")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument(
        "--weights", action="store_true", help="list the released weights (tags for --weights/pretrained=)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.weights:
        return _list_weights(args)
    rows = [model_stats(n, args.img_size) for n in list_models(args.family)]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{'model':<28}{'family':<11}{'params (M)':>11}{'GFLOPs':>9}{'input':>7}")
    for r in rows:
        print(
            f"{r['model']:<28}{r['family']:<11}{r['params_m']:>11.1f}{r['gflops']:>9.1f}{r['input_size']:>7}"
        )
    print("GFLOPs are multiply-adds (the paper's convention) at the input size shown, 1000 classes.")
    return 0


def _list_weights(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..models import get_variant
    from ..weights import REGISTRY

    entries = [
        e for e in REGISTRY.values() if args.family is None or get_variant(e.arch).family == args.family
    ]
    if args.json:
        for e in entries:
            print(json.dumps(asdict(e)))
        return 0
    print(f"{'tag':<44}{'dataset':<13}{'classes':>8}{'size':>6}{'crop':>7}{'top-1':>7}")
    for e in entries:
        top1 = f"{e.top1:.1f}" if e.top1 is not None else "-"
        print(f"{e.tag:<44}{e.dataset:<13}{e.num_classes:>8}{e.input_size:>6}{e.crop_pct:>7.3f}{top1:>7}")
    print("top-1: ImageNet-1k val as published with the weights. Use a tag as --weights or pretrained=.")
    return 0
