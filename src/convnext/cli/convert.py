"""``convnext convert SRC DST``: any supported ConvNeXt checkpoint, rewritten in our (the official) layout.

DST ``.safetensors``: the state dict, with metadata ``arch``, ``num_classes``, ``class_names`` (JSON, when
known), ``format`` = "convnext". DST ``.pth``/``.pt``: ``{"model": state_dict, "arch", "num_classes",
"class_names"}``, the official repo's layout, so that its ``--resume``/``--finetune`` and timm read it too.
The weights are verified against the architecture before anything is written; the file is written
atomically and an existing DST is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ..errors import UserError

SUFFIXES = (".safetensors", ".pth", ".pt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite a timm/torchvision/Hugging Face/official/training checkpoint in our layout",
        description="Convert any ConvNeXt checkpoint (file, URL, registry tag or Hugging Face folder) "
        "to our layout, as .safetensors or .pth.",
    )
    p.add_argument("src", help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k) or HF model folder")
    p.add_argument("dst", help="output file: .safetensors (recommended) or .pth")
    p.add_argument(
        "--model", metavar="ARCH", help="architecture (default: read from the checkpoint's shapes)"
    )
    p.add_argument(
        "--ema", action="store_true", help="take the EMA weights ('model_ema') of a training checkpoint"
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.factory import VARIANTS, build_model
    from ..weights import formats
    from ..weights.load import load_checkpoint, prepare

    dst = Path(args.dst)
    if dst.suffix not in SUFFIXES:
        raise UserError(f"output {dst} must end in {', '.join(SUFFIXES)}")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} already exists; pass --force to overwrite it")
    if args.model and args.model not in VARIANTS:
        raise UserError(f"unknown model {args.model!r}; see `convnext models` for the architectures")

    prepared = prepare(args.src, ema=args.ema)
    info = prepared.info
    arch = args.model or info.arch
    n_classes = info.num_classes or 0
    if arch is None:
        shape = formats.describe_shape(prepared.state_dict)
        raise UserError(f"cannot tell which architecture {args.src} holds ({shape}); pass --model ARCH")
    with torch.device("meta"):  # shapes only: verifies the weights without allocating a second copy
        model = build_model(arch, num_classes=n_classes)
    load_checkpoint(model, prepared, assign=True)  # raises one sentence on any mismatch

    sd = {k: v.detach().contiguous().clone() for k, v in prepared.state_dict.items()}
    n_params = sum(v.numel() for k, v in sd.items())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        _write(sd, tmp, arch, n_classes, info, str(args.src))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
    names = f", {len(info.class_names)} class names" if info.class_names else ""
    print(
        f"wrote {dst}: {arch} from {info.format} weights, {n_classes} classes{names}, "
        f"{n_params / 1e6:.1f}M parameters"
    )
    return 0


def _write(sd: dict, tmp: Path, arch: str, n_classes: int, info, source: str) -> None:  # noqa: ANN001
    if tmp.name.endswith(".safetensors.tmp"):
        from safetensors.torch import save_file

        meta = {
            "format": "convnext",
            "arch": arch,
            "num_classes": str(n_classes),
            "source": source,
        }
        if info.class_names:
            meta["class_names"] = json.dumps(info.class_names)
        save_file(sd, str(tmp), metadata=meta)
    else:
        torch.save(
            {
                "model": sd,
                "arch": arch,
                "num_classes": n_classes,
                "class_names": info.class_names,
            },
            tmp,
        )
