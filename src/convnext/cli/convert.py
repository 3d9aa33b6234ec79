"""``convnext convert SRC DST [--to ours|official|timm|torchvision|hf]``: any ConvNeXt checkpoint in, the
same weights out in our layout (default) or in any peer's.

SRC: a file, URL, registry tag, Hugging Face folder, training run folder (its best.pth) or a checkpoint of
the original ConvNext-PyTorch project (``*.pth.tar``; ``--ema`` takes its ``ema_state_dict``). The
weights are verified against the architecture (and refused if they hold NaN/inf or non-float values)
before anything is written; the output is written atomically and an existing DST is kept unless
``--force``. Layouts: see ``convnext.weights.write``; the work: ``convnext.weights.convert``.
"""

from __future__ import annotations

import argparse

from .common import add_progress

# The layouts of convnext.weights.write.TARGETS, spelled here so that the parser needs no torch import
# (tests/test_conventions.py checks that both agree).
TARGETS = ("ours", "official", "timm", "torchvision", "hf")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite any ConvNeXt checkpoint in our layout, or in timm's, torchvision's, HF's, official's",
        description="Convert any ConvNeXt checkpoint (file, URL, registry tag, Hugging Face folder or run "
        "folder) to our layout (.safetensors or .pth) or to a peer's (--to).",
    )
    p.add_argument(
        "src",
        help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k), HF folder, Hugging Face Hub repo "
        "(hf-hub:ORG/NAME[@REVISION]) or run folder",
    )
    p.add_argument("dst", help="output file (.safetensors recommended, or .pth); a folder for --to hf")
    p.add_argument(
        "--to",
        choices=TARGETS,
        default="ours",
        help="layout to write: ours (default; the official names plus metadata), official "
        "({'model': state_dict}), timm, torchvision (state dicts their models load strictly), hf "
        "(a transformers model folder)",
    )
    p.add_argument(
        "--model", metavar="ARCH", help="architecture (default: read from the checkpoint's shapes)"
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take the EMA weights of a training checkpoint "
        "('model_ema', 'ema_state_dict', 'state_dict_ema'); --no-ema the model's; default: the weights a "
        "training run ranked its best by (checkpoint.best_by), else the model's",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..weights.convert import convert

    c = convert(args.src, args.dst, args.to, model=args.model, ema=args.ema, force=args.force)
    names = f", {len(c.class_names)} class names" if c.class_names else ""
    print(
        f"wrote {c.path} ({c.target} layout): {c.arch} from {c.source_format} weights, {c.num_classes} "
        f"classes{names}, {c.num_params / 1e6:.1f}M parameters"
    )
    return 0
