"""Any ConvNeXt checkpoint in, the same weights out in our layout or a peer's (``convnext convert``).

The weights are verified against the architecture (every tensor must fit; NaN/inf or non-float values are
refused) on the meta device before anything is written; ``write`` then writes atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError


@dataclass
class Converted:
    path: Path
    target: str  # ours | official | timm | torchvision | hf
    arch: str
    source_format: str  # the layout the weights were read in (timm, torchvision, hf, convnext-train, ...)
    num_classes: int
    class_names: list[str] | None
    num_params: int


def convert(
    src: str,
    dst: str | Path,
    to: str = "ours",
    *,
    model: str | None = None,
    ema: bool | None = None,
    force: bool = False,
) -> Converted:
    """Read ``src`` (file, URL, tag, HF folder, run folder), check it builds ``model`` (default: what its
    shapes say), and write it to ``dst`` in ``to``'s layout. An existing ``dst`` is kept unless ``force``."""
    from ..models.factory import VARIANTS, build_model
    from . import containers, formats, write
    from .load import load_checkpoint, prepare

    dst = Path(dst)
    write.check_destination(dst, to, force)
    model_arch = model.partition(".")[0] if model else None
    if model_arch and model_arch not in VARIANTS:
        raise UserError(f"unknown model {model!r}; see `convnext models` for the architectures")

    prepared = prepare(src, ema=ema)
    info = prepared.info
    if model_arch and info.arch and model_arch != info.arch:
        raise UserError(
            f"--model {model_arch}: {src} holds {info.arch} weights but the model is {model_arch}; "
            f"drop --model or pass --model {info.arch}"
        )
    arch = model_arch or info.arch
    n_classes = info.num_classes or 0
    if arch is None:
        shape = formats.describe_shape(prepared.state_dict)
        raise UserError(f"cannot tell which architecture {src} holds ({shape}); pass --model ARCH")
    opts = {
        **containers.model_options_of(prepared.state_dict, arch),
        **containers.run_model_options(info.metadata.get("model"), arch),
    }
    with torch.device("meta"):  # shapes only: verifies the weights without allocating a second copy
        try:
            net = build_model(arch, num_classes=n_classes, **opts)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot build {arch} with the options of {src} ({e})") from None
    load_checkpoint(net, prepared, assign=True)  # raises one sentence on any mismatch

    sd = prepared.state_dict
    write.write(
        sd, dst, to, arch=arch, class_names=info.class_names, data_config=info.data_config, source=str(src)
    )
    return Converted(
        path=dst,
        target=to,
        arch=arch,
        source_format=info.format,
        num_classes=n_classes,
        class_names=info.class_names,
        num_params=sum(v.numel() for v in sd.values()),
    )
