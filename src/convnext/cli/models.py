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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [model_stats(n, args.img_size) for n in list_models(args.family)]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{'model':<28}{'family':<11}{'params (M)':>11}{'GFLOPs':>9}{'input':>7}")
    for r in rows:
        print(f"{r['model']:<28}{r['family']:<11}{r['params_m']:>11.1f}{r['gflops']:>9.1f}{r['input_size']:>7}")
    print("GFLOPs are multiply-adds (the paper's convention) at the input size shown, 1000 classes.")
    return 0
