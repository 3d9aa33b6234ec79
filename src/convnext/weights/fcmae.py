"""FCMAE checkpoints in the official layout (facebookresearch/ConvNeXt-V2, ``convnextv2_*_1k_224_fcmae.pt``),
read and written, and their encoder as a classification model's weights.

The official file is ``{"model": FCMAE.state_dict(), ...}`` with the encoder as MinkowskiEngine modules name
and shape it: a sparse conv's weight is ``kernel``, (k*k, in, out) for the 2x2 downsampling convs and
(k*k, C) for the depthwise 7x7 ones, the kernel offsets running down the columns first (dense
``W[o, i, h, w] == kernel[w * k + h, i, o]``, as the official ``remap_checkpoint_keys`` reads them); its bias
is (1, C); ``MinkowskiLayerNorm`` and ``MinkowskiLinear`` wrap an ``ln`` / ``linear``; ``MinkowskiGRN``'s
gamma and beta are (1, C) where the dense GRN's are (1, 1, 1, C). The stem (a dense conv and LayerNorm)
and the decoder side (``proj``, ``mask_token``, ``decoder.*``, ``pred``: dense modules) keep their names.
Our :class:`~convnext.models.fcmae.FCMAE` holds the dense encoder (``encoder.`` + the classification
model's names), so ``to_official`` / ``from_official`` are exact inverses, and the encoder half is what
``formats.to_ours(sd, "fcmae")`` gives any checkpoint loader (``model.pretrained=<fcmae file>``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .containers import strip_prefixes, unwrap
from .files import read_file
from .formats import FCMAE, StateDict, to_ours

__all__ = [
    "encoder_weights",
    "from_official",
    "is_official_layout",
    "load_fcmae",
    "official_file_name",
    "save_fcmae",
    "to_official",
]

_SPARSE_NORM = re.compile(r"^encoder\.(downsample_layers\.[1-9]\.0|stages\.\d+\.\d+\.norm)\.(weight|bias)$")
_SPARSE_CONV = re.compile(r"^encoder\.(downsample_layers\.[1-9]\.1|stages\.\d+\.\d+\.dwconv)\.(weight|bias)$")
_SPARSE_LINEAR = re.compile(r"^encoder\.stages\.\d+\.\d+\.(pwconv[12])\.(weight|bias)$")
_SPARSE_GRN = re.compile(r"^encoder\.stages\.\d+\.\d+\.grn\.(gamma|beta)$")


def official_file_name(encoder: str) -> str:
    """The official release's file name: ``convnextv2_atto`` -> ``convnextv2_atto_1k_224_fcmae.pt``."""
    return f"{encoder}_1k_224_fcmae.pt"


def is_official_layout(sd: StateDict) -> bool:
    """Whether an FCMAE state dict names its encoder as the official sparse modules do."""
    return any(k.startswith("encoder.") and k.endswith(".kernel") for k in sd)


def _dense_to_kernel(w: Tensor, depthwise: bool) -> Tensor:
    """A dense conv weight (out, in, k, k), or depthwise (C, 1, k, k), as MinkowskiEngine's kernel."""
    out_ch, in_ch, k, _ = w.shape
    flat = w.transpose(3, 2).reshape(out_ch, in_ch, k * k)  # offset index w * k + h
    if depthwise:  # (k*k, C)
        return flat[:, 0, :].permute(1, 0).contiguous()
    return flat.permute(2, 1, 0).contiguous()  # (k*k, in, out)


def to_official(sd: StateDict) -> StateDict:
    """Our FCMAE state dict in the official layout (the inverse of :func:`from_official`)."""
    out: StateDict = {}
    for k, v in sd.items():
        if m := _SPARSE_NORM.match(k):
            out[f"encoder.{m[1]}.ln.{m[2]}"] = v.contiguous()
        elif m := _SPARSE_CONV.match(k):
            if m[2] == "weight":
                out[f"encoder.{m[1]}.kernel"] = _dense_to_kernel(v, depthwise=m[1].endswith("dwconv"))
            else:
                out[f"encoder.{m[1]}.bias"] = v.reshape(1, -1).contiguous()
        elif m := _SPARSE_LINEAR.match(k):
            out[k.replace(f".{m[1]}.", f".{m[1]}.linear.")] = v.contiguous()
        elif _SPARSE_GRN.match(k):
            out[k] = v.reshape(1, -1).contiguous()
        elif k.startswith("encoder.") and k.removeprefix("encoder.").startswith(("norm.", "head.")):
            continue  # not part of the official encoder (pre-training never uses them)
        else:
            out[k] = v.contiguous()
    return out


def encoder_weights(sd: StateDict) -> StateDict:
    """The encoder of an FCMAE state dict (official or our layout) as the classification model's weights
    (dense conv weights, GRN (1, 1, 1, C), flat biases; no ``norm``/``head``, which fine-tuning starts fresh),
    as the official ``remap_checkpoint_keys`` converts them."""
    return to_ours({k: v for k, v in sd.items() if k.startswith("encoder.")}, FCMAE)


def from_official(sd: StateDict) -> StateDict:
    """An official-layout FCMAE state dict in our :class:`~convnext.models.fcmae.FCMAE`'s layout."""
    out = {f"encoder.{k}": v for k, v in encoder_weights(sd).items()}
    out.update({k: v for k, v in sd.items() if not k.startswith("encoder.")})
    return out


def save_fcmae(
    model: nn.Module | StateDict, path: str | Path, *, official: bool = True, **extra: Any
) -> Path:
    """Write an FCMAE (model or state dict) as ``{"model": ..., **extra}``, in the official layout by default
    (what the official ``main_finetune.py --finetune`` and any loader of the released files read)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu() for k, v in strip_prefixes(dict(sd)).items()}
    path = Path(path)
    torch.save({"model": to_official(sd) if official else sd, **extra}, path)
    return path


def load_fcmae(src: str | Path | dict) -> StateDict:
    """An FCMAE checkpoint (official release, one :func:`save_fcmae` wrote, or a training checkpoint whose
    ``model`` is an FCMAE) as our FCMAE's state dict: ``FCMAE(...).load_state_dict(load_fcmae(path))``."""
    where = "<state dict>" if isinstance(src, dict) else str(src)
    obj = src if isinstance(src, dict) else read_file(Path(src))[0]
    sd, _ = unwrap(obj, where)
    sd = strip_prefixes(sd)
    return from_official(sd) if is_official_layout(sd) else sd
