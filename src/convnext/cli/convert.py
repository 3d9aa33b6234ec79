"""``convnext convert SRC DST [--to ours|official|timm|torchvision|hf]``: any ConvNeXt checkpoint in, the
same weights out in our layout (default) or in any peer's.

SRC: a file, URL, registry tag, Hugging Face folder, training run folder (its best.pth) or a checkpoint of
the original ConvNext-PyTorch project (``*.pth.tar``; ``--ema`` takes its ``ema_state_dict``). The
weights are verified against the architecture (and refused if they hold NaN/inf or non-float values)
before anything is written; the output is written atomically and an existing DST is kept unless
``--force``. Layouts: see ``convnext.weights.write``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import UserError

TARGETS = ("ours", "official", "timm", "torchvision", "hf")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite any ConvNeXt checkpoint in our layout, or in timm's, torchvision's, HF's, official's",
        description="Convert any ConvNeXt checkpoint (file, URL, registry tag, Hugging Face folder or run "
        "folder) to our layout (.safetensors or .pth) or to a peer's (--to).",
    )
    p.add_argument(
        "src", help="checkpoint file, URL, weights tag (convnext_tiny.fb_in1k), HF folder or run folder"
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
        action="store_true",
        help="take the EMA weights of a training checkpoint "
        "('model_ema', 'ema_state_dict', 'state_dict_ema')",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.factory import VARIANTS, build_model
    from ..weights import containers, formats, write
    from ..weights.load import load_checkpoint, prepare

    dst = Path(args.dst)
    write.check_destination(dst, args.to, args.force)
    if args.model and args.model.partition(".")[0] not in VARIANTS:
        raise UserError(f"unknown model {args.model!r}; see `convnext models` for the architectures")

    prepared = prepare(args.src, ema=args.ema)
    info = prepared.info
    model_arch = args.model.partition(".")[0] if args.model else None
    if model_arch and info.arch and model_arch != info.arch:
        raise UserError(
            f"--model {model_arch}: {args.src} holds {info.arch} weights but the model is {model_arch}; "
            f"drop --model or pass --model {info.arch}"
        )
    arch = model_arch or info.arch
    n_classes = info.num_classes or 0
    if arch is None:
        shape = formats.describe_shape(prepared.state_dict)
        raise UserError(f"cannot tell which architecture {args.src} holds ({shape}); pass --model ARCH")
    opts = {
        **containers.model_options_of(prepared.state_dict),
        **containers.run_model_options(info.metadata.get("model"), arch),
    }
    with torch.device("meta"):  # shapes only: verifies the weights without allocating a second copy
        try:
            model = build_model(arch, num_classes=n_classes, **opts)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot build {arch} with the options of {args.src} ({e})") from None
    load_checkpoint(model, prepared, assign=True)  # raises one sentence on any mismatch

    sd = prepared.state_dict
    write.write(
        sd,
        dst,
        args.to,
        arch=arch,
        class_names=info.class_names,
        data_config=info.data_config,
        source=str(args.src),
    )
    n_params = sum(v.numel() for v in sd.values())
    names = f", {len(info.class_names)} class names" if info.class_names else ""
    print(
        f"wrote {dst} ({args.to} layout): {arch} from {info.format} weights, {n_classes} classes{names}, "
        f"{n_params / 1e6:.1f}M parameters"
    )
    return 0
