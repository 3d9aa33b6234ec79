"""torch.export programs (.pt2): the plain model, run by ``torch.export.load`` after a no-pickle check."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import (
    META_KEY,
    ExportMeta,
    Runner,
    WriteContext,
    Written,
    foreign_meta,
    from_meta,
    torch_export,
    verify,
)


def check_pt2_safe(path: str) -> None:
    """Refuse a .pt2 archive that would unpickle anything: ``torch.export.load`` unpickles weights and
    constants flagged ``use_pickle`` and falls back to ``weights_only=False`` for sample inputs that fail the
    safe loader, so a crafted file could run code. Ours hold raw tensors and safe-loadable inputs only."""
    why = None
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    config = json.loads(z.read(name)).get("config", {})
                    if any(v.get("use_pickle") or "tensor_meta" not in v for v in config.values()):
                        why = f"{name} holds pickled objects"
                elif "/sample_inputs/" in name and not name.endswith("/"):
                    try:
                        torch.load(io.BytesIO(z.read(name)), weights_only=True)
                    except Exception:
                        why = f"{name} is not loadable with weights_only=True"
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path} is not a torch.export archive ({e})") from None
    if why:
        raise UserError(f"{path}: {why}, which could run code when loaded; refusing it (re-export it)")


class PT2Runner(Runner):
    """A ``torch.export`` ExportedProgram saved with ``torch.export.save`` (.pt2), checked to hold no
    pickled objects before it is loaded (:func:`check_pt2_safe`)."""

    def __init__(self, path: str, *, device: str = "cpu", **_: Any) -> None:
        check_pt2_safe(path)
        extra = {f"{META_KEY}.json": ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as e:  # a zip that is not an ExportedProgram raises several kinds
            raise UserError(f"torch.export cannot load {path} ({str(e).splitlines()[0]})") from None
        raw = extra[f"{META_KEY}.json"]
        meta = ExportMeta.from_json(raw, path) if raw else foreign_meta(path, "pt2", 0)
        from_meta(self, meta, "pt2", path)
        self.device = torch.device("cpu" if device == "auto" else device)
        self.module = program.module().to(self.device)
        self.precision = meta.precision
        self.fixed_size = meta.data.img_size

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x.to(self.device, torch.float32)).float().to(x.device)


def write(model: nn.Module, meta: ExportMeta, target: Path, ctx: WriteContext) -> Written:
    if meta.extra.get("task") == "detection":
        raise UserError(
            f"torch.export cannot capture {meta.arch} (torchvision's NMS and RoI selection depend on the "
            "data); export it with --format onnx or --format openvino"
        )
    size = int(meta.data.img_size)
    ctx.say(f"exporting {meta.arch} with torch.export (dynamic batch, {size} px)")
    program = torch_export(model, size)
    torch.export.save(program, str(target), extra_files={f"{META_KEY}.json": meta.to_json()})
    runner = PT2Runner(str(target))
    diff = verify(runner, model, size, ctx.images, "the torch.export program")
    return Written(runner.precision, diff, None, [])


RUNNER = PT2Runner
