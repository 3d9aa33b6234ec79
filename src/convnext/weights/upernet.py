"""UperNet checkpoints into ``upernet_<backbone>`` (``models/upernet.py``): the official mmsegmentation
layout (our names already), transformers' ``UperNetForSemanticSegmentation`` with a ConvNeXt (V2)
backbone, and any classification checkpoint ``prepare`` reads, which initialises the backbone alone.

transformers names mmseg's modules its own way (``batch_norm`` for ``bn``, ``classifier`` for
``conv_seg``; the backbone as ``ConvNextBackbone``, its per-stage norms ``hidden_states_norms.stage{i+1}``)
and no library ships the translation back, hence the small table here (tested against transformers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UserError
from . import containers, formats
from .fetch import is_run_dir, resolve, run_checkpoint
from .files import hf_class_names, hf_weights, read_file
from .formats import StateDict
from .load import CheckpointInfo, Prepared, load_backbone, load_fitting, prepare

MMSEG, HF_UPERNET = "mmseg-upernet", "transformers-upernet"
HEADS = ("decode_head.", "auxiliary_head.")
# the head-level layers transformers renames (everything else in the heads is mmseg's name already)
_HF_HEAD = (("batch_norm", "bn"), ("classifier", "conv_seg"))

__all__ = [
    "HF_UPERNET",
    "MMSEG",
    "is_upernet",
    "load_upernet",
    "prepare_upernet",
    "upernet_format",
    "upernet_from_ours",
    "upernet_options",
    "upernet_to_ours",
]


def is_upernet(sd: StateDict) -> bool:
    """Whether these are a segmentation model's weights (decode or auxiliary head keys)."""
    return any(k.startswith(HEADS) for k in sd)


def upernet_format(sd: StateDict) -> str:
    """transformers' names or mmseg's (ours)."""
    hf = any(k.startswith("backbone.embeddings.") or ".batch_norm." in k for k in sd)
    return HF_UPERNET if hf else MMSEG


def _head_key(k: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        k = re.sub(rf"(^|\.){old}\.", rf"\g<1>{new}.", k)
    return k


def upernet_to_ours(sd: StateDict) -> StateDict:
    """A UperNet state dict (mmseg's or transformers' names) in ours; other keys kept, to be named on
    loading as unexpected."""
    if upernet_format(sd) == MMSEG:
        return dict(sd)
    out: StateDict = {}
    backbone: StateDict = {}
    for k, v in sd.items():
        if k.startswith("backbone."):
            k = k[len("backbone.") :]
            if m := re.match(r"^hidden_states_norms\.stage(\d)\.(.*)$", k):
                out[f"backbone.norm{int(m[1]) - 1}.{m[2]}"] = v
            else:
                backbone[k] = v
        elif k.startswith(HEADS):
            out[_head_key(k, _HF_HEAD)] = v
        else:
            out[k] = v
    fmt = formats.HF_V2 if any(".grn." in k for k in backbone) else formats.HF
    out.update({f"backbone.{k}": v for k, v in formats.to_ours(backbone, fmt).items()})
    return out


def upernet_from_ours(sd: StateDict, fmt: str) -> StateDict:
    """Our UperNet state dict in ``fmt``'s names (the inverse of :func:`upernet_to_ours`)."""
    if fmt == MMSEG:
        return dict(sd)
    if fmt != HF_UPERNET:
        raise UserError(f"cannot write UperNet weights as {fmt!r}; targets: {MMSEG}, {HF_UPERNET}")
    reverse = tuple((new, old) for old, new in _HF_HEAD)
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    norms = {k: backbone.pop(k) for k in list(backbone) if re.match(r"^norm\d\.", k)}
    out = {_head_key(k, reverse): v for k, v in sd.items() if not k.startswith("backbone.")}
    hf = formats.from_ours(backbone, formats.HF)  # convnext.* or convnextv2.*: ConvNextBackbone's are bare
    out.update({"backbone." + k.split(".", 1)[1]: v for k, v in hf.items()})
    out.update({f"backbone.hidden_states_norms.stage{int(k[4]) + 1}{k[5:]}": v for k, v in norms.items()})
    return out


def _backbone(sd: StateDict) -> StateDict:
    return {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}


def prepare_upernet(src: str | Path | dict) -> Prepared:
    """Read a UperNet checkpoint (file, URL, Hugging Face folder, in-memory dict) into our names; any
    other checkpoint is ``prepare``'s (a classifier, for the backbone)."""
    class_names = None
    if isinstance(src, dict):
        obj, path, where = src, "<state dict>", "<state dict>"
    else:
        p, _ = resolve(src)
        if p.is_dir() and not is_run_dir(p):
            class_names = hf_class_names(p)
            p = hf_weights(p)
        run = p if is_run_dir(p) else None
        if run is not None:  # a training run: its best.pth (else last.pth), read as a UperNet's below
            p = run_checkpoint(run)
        obj, _ = read_file(p)
        path, where = str(p), str(src)
    sd, _ = containers.unwrap(obj, path, ema=False)
    sd = containers.strip_prefixes(sd)
    if not is_upernet(sd):
        return prepare(src)
    containers.check_tensors(sd, path)
    if class_names is None and isinstance(obj, dict) and isinstance(obj.get("class_names"), (list, tuple)):
        class_names = [str(c) for c in obj["class_names"]]  # a training checkpoint's (convnext train)
    fmt = upernet_format(sd)
    ours = upernet_to_ours(sd)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if class_names is None and isinstance(meta, dict) and isinstance(meta.get("CLASSES"), (list, tuple)):
        class_names = [str(c) for c in meta["CLASSES"]]  # mmseg records its dataset's classes
    w = ours.get("decode_head.conv_seg.weight")
    n = int(w.shape[0]) if w is not None else None
    if class_names is not None and len(class_names) != n:
        class_names = None
    arch = formats.infer_arch(_backbone(ours))
    recorded = obj.get("arch") if isinstance(obj, dict) else None  # a training checkpoint names its model
    if arch is None and isinstance(recorded, str) and recorded.startswith("upernet_"):
        arch = recorded.removeprefix("upernet_")  # its own depths and widths: the shapes tell no variant
    info = CheckpointInfo(
        source=where,
        path=path,
        format=fmt,
        num_classes=n,
        class_names=class_names,
        arch=f"upernet_{arch}" if arch else None,
    )
    return Prepared(ours, info)


def upernet_options(prepared: Prepared, arch: str) -> dict[str, Any]:
    """The constructor options the weights imply: the backbone's (layer scale, shapes: as for a
    classifier) and the heads' widths and whether there is an auxiliary head."""
    sd = prepared.state_dict
    backbone_arch = arch.removeprefix("upernet_")
    if not is_upernet(sd):
        return containers.model_options_of(sd, backbone_arch)
    opts = containers.model_options_of(_backbone(sd), backbone_arch)
    if "decode_head.conv_seg.weight" in sd:
        opts["channels"] = int(sd["decode_head.conv_seg.weight"].shape[1])
    aux = sd.get("auxiliary_head.conv_seg.weight")
    opts["aux"] = aux is not None
    if aux is not None:
        opts["aux_channels"] = int(aux.shape[1])
    return opts


def load_upernet(model: nn.Module, prepared: Prepared) -> CheckpointInfo:
    """Load into a ``UperNet``. A classifier's weights initialise the backbone (its head and final norm
    dropped, the per-stage norms and the segmentation heads start fresh: one note); a UperNet's must fit
    exactly, except a classifier of another class count (fine-tuning: both heads' ``conv_seg`` start
    fresh) and an auxiliary head the model has not (dropped)."""
    sd, info = dict(prepared.state_dict), prepared.info
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise UserError(f"{type(model).__name__} is not a UperNet")
    if not is_upernet(sd):
        return load_backbone(backbone, prepared, "the per-stage norms and the segmentation heads")
    target = model.state_dict()
    notes, fresh = [], set()
    if getattr(model, "auxiliary_head", None) is None and any(k.startswith("auxiliary_head.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
        notes.append("the auxiliary head is not used")
    w = sd.get("decode_head.conv_seg.weight")
    if w is not None and target["decode_head.conv_seg.weight"].shape[0] != w.shape[0]:
        sd = {k: v for k, v in sd.items() if ".conv_seg." not in k}
        notes.append(f"{w.shape[0]} classes, the model {model.num_classes}: the classifiers start fresh")
        info.class_names, fresh = None, {k for k in target if ".conv_seg." in k}
    return load_fitting(model, sd, info, fresh, notes)
