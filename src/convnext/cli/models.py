"""``convnext models [PATTERN]``: the table of every architecture, measured from the modules themselves (once,
by ``python -m convnext.models.profile``, and shipped), or (``--weights``) of every released weights tag."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .common import add_img_size, add_json, add_progress, json_only, json_output


def _families() -> tuple[str, ...]:
    """The families the shipped table lists (each model's own ``family``, recorded by the profiler): no list
    of family names to keep here, and no torch for ``--help``."""
    return tuple(dict.fromkeys(m["family"] for m in _sizes()["models"].values()))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list every ConvNeXt with params, GFLOPs and input size (or the released weights)",
        description="List the architectures (or, with --weights, the released weights tags), optionally "
        "those whose name matches a glob: convnext models 'convnext_t*'; convnext models --weights "
        "'*in22k*'.",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        metavar="PATTERN",
        help="glob on the name (quote it: 'convnext_t*'); with --weights on the tag or its architecture",
    )
    p.add_argument("--family", choices=_families(), help="only this family")
    add_img_size(p, crop=False, help="count FLOPs at this resolution (default: each model's own)")
    add_json(p, "one object per line")
    p.add_argument(
        "--weights", action="store_true", help="list the released weights (tags for --weights/pretrained=)"
    )
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows, table = _weights(args) if args.weights else _architectures(args)
    if args.json:
        with json_output(args.json) as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if not json_only(args):
        print("\n".join(table))
    return 0


def _architectures(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    rows = _measured(args) if args.img_size else _from_table(args)
    if not rows:
        raise UserError(_no_match("architecture", args))
    table = [f"{'model':<28}{'family':<11}{'params (M)':>11}{'GFLOPs':>9}{'input':>7}"]
    table += [
        f"{r['model']:<28}{r['family']:<11}{r['params_m']:>11.1f}{r['gflops']:>9.1f}{r['input_size']:>7}"
        for r in rows
    ]
    table.append("GFLOPs are multiply-adds (the paper's convention) at the input size shown, 1000 classes.")
    return rows, table


def _sizes() -> dict:
    """models/sizes.json: every architecture's family, parameters, multiply-adds and input size."""
    from importlib.resources import files

    return json.loads(files("convnext").joinpath("models", "sizes.json").read_text(encoding="utf-8"))


def _from_table(args: argparse.Namespace) -> list[dict]:
    """The shipped table (models/sizes.json, written by ``python -m convnext.models.profile``): read, not
    measured, so the answer needs no torch and no model built."""
    from fnmatch import fnmatchcase

    table = _sizes()
    pattern, family = args.pattern, args.family
    if pattern in _families() and family is None:  # as list_models: a family name given as the pattern
        pattern, family = None, pattern
    return [
        {
            "model": name,
            "family": m["family"],
            "params_m": m["params"] / 1e6,
            "gflops": m["macs"] / 1e9,
            "input_size": m["input_size"],
        }
        for name, m in table["models"].items()
        if (family is None or m["family"] == family) and (not pattern or fnmatchcase(name, pattern))
    ]


def _measured(args: argparse.Namespace) -> list[dict]:
    """At another resolution than the table's: build each model on the meta device and count."""
    import warnings

    from ..models import list_models
    from ..models.profile import model_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a family name as the pattern, as above
        names = list_models(args.pattern or "", family=args.family)
    return [model_stats(n, args.img_size) for n in names]


def _weights(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    from fnmatch import fnmatchcase

    from ..weights import REGISTRY  # plain data: no torch, as the architectures' table

    family = {name: m["family"] for name, m in _sizes()["models"].items()}
    entries = [
        e
        for e in REGISTRY.values()
        if (args.family is None or family[e.arch] == args.family)
        and (not args.pattern or fnmatchcase(e.tag, args.pattern) or fnmatchcase(e.arch, args.pattern))
    ]
    if not entries:
        raise UserError(_no_match("released weights tag", args))
    tw = max(44, *(len(e.tag) + 2 for e in entries))  # timm's CLIP tags run past 44 characters
    dw = max(13, *(len(e.dataset) + 2 for e in entries))
    table = [f"{'tag':<{tw}}{'dataset':<{dw}}{'classes':>8}{'size':>6}{'crop':>7}{'top-1':>7}"]
    for e in entries:
        top1 = f"{e.top1:.1f}" if e.top1 is not None else "-"
        table.append(
            f"{e.tag:<{tw}}{e.dataset:<{dw}}{e.num_classes:>8}{e.input_size:>6}{e.crop_pct:>7.3f}{top1:>7}"
        )
    table.append(
        "top-1: ImageNet-1k val as published with the weights. Use a tag as --weights or pretrained=."
    )
    return [e.as_dict() for e in entries], table


def _no_match(what: str, args: argparse.Namespace) -> str:
    family = f" of family {args.family}" if args.family else ""
    verb = "convnext models --weights" if args.weights else "convnext models"
    return f"no {what}{family} matches {args.pattern!r}; `{verb}` lists them all"
