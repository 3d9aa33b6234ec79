"""Batched top-k prediction on image files, with optional Grad-CAM overlays."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.config import DataConfig
from ..data.images import IMG_EXTENSIONS, load_image
from ..data.transforms import build_eval_transform
from ..engine.metrics import topk_indices


@dataclass
class Prediction:
    path: str
    indices: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # softmax probabilities in [0, 1]
    error: str | None = None  # why the image could not be read
    cam_path: str | None = None


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders searched recursively for images, globs expanded; sorted within each input.
    A name that matches nothing is kept, so that it gets its own error line."""
    out: list[str] = []
    for s in inputs:
        p = Path(s).expanduser()
        if p.is_dir():
            found = sorted(
                os.path.join(d, f)
                for d, _, files in os.walk(p, followlinks=True)
                for f in files
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")
            )
            out.extend(found)
        elif p.exists():
            out.append(str(p))
        elif glob.has_magic(s):
            out.extend(sorted(glob.glob(os.path.expanduser(s), recursive=True)) or [s])
        else:
            out.append(s)
    return out


def _reason(path: str, err: Exception) -> str:
    """The short cause from convnext.data.load_image's message (which names the file itself)."""
    msg = str(err)
    if msg.endswith(")") and "(" in msg:
        return msg[msg.rindex("(") + 1 : -1]
    if ": " in msg:
        return msg.rsplit(": ", 1)[-1]
    return msg.replace(str(path), "").replace("  ", " ").strip()


def predict_paths(
    model: nn.Module,
    paths: list[str],
    data: DataConfig,
    *,
    device: torch.device | str = "cpu",
    topk: int = 5,
    batch_size: int = 32,
    cam_dir: str | Path | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; unreadable files yield an error and do not stop the rest.

    Images are decoded with torchvision.io (PIL fallback), transformed exactly as in evaluation, and run
    ``batch_size`` at a time. With ``cam_dir``, a Grad-CAM overlay of the top-1 class is written per image
    as ``<cam_dir>/<stem>_cam.png`` at the original image's size (heat map over the center crop the model
    saw, the rest dimmed).
    """
    from tqdm import tqdm

    device = torch.device(device)
    transform = build_eval_transform(data)
    model.eval().to(device)
    k = min(topk, getattr(model, "num_classes", topk) or topk)
    cam = None
    if cam_dir is not None:
        from .cam import GradCAM

        cam = GradCAM(model)
        Path(cam_dir).mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, leave=False)

    def run(batch: list[tuple[str, torch.Tensor, torch.Tensor]]) -> list[Prediction]:
        x = torch.stack([t for _, _, t in batch]).to(device)
        ctx = (
            torch.autocast(device.type, dtype=amp_dtype)
            if amp_dtype
            else torch.autocast("cpu", enabled=False)
        )
        with torch.no_grad(), ctx:
            logits = model(x).float()
        probs = logits.softmax(dim=1)
        idx = topk_indices(logits, k)  # ties: lower class index first, as in evaluate
        vals = probs.gather(1, idx)
        preds = [Prediction(p, idx[i].tolist(), vals[i].tolist()) for i, (p, _, _) in enumerate(batch)]
        if cam is not None:
            from torchvision.io import write_png

            from .cam import cam_overlay, crop_box

            maps, _ = cam(x, idx[:, 0])
            for pred, (p, orig, _), m in zip(preds, batch, maps):
                stem = Path(p).stem
                name, j = f"{stem}_cam.png", 1
                while name in used_names:  # same file name in two folders
                    name, j = f"{stem}_{j}_cam.png", j + 1
                used_names.add(name)
                box = crop_box(orig.shape[1], orig.shape[2], data.img_size, data.crop_pct)
                out = Path(cam_dir) / name  # type: ignore[arg-type]
                write_png(cam_overlay(orig, m.cpu(), box), str(out))
                pred.cam_path = str(out)
        bar.update(len(batch))
        return preds

    pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for p in paths:
        try:
            img = load_image(p)
        except ValueError as e:
            yield from run(pending) if pending else ()
            pending = []
            bar.update(1)
            yield Prediction(p, error=f"cannot read image ({_reason(p, e)})")
            continue
        pending.append((p, img, transform(img)))
        if len(pending) == batch_size:
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)
    bar.close()
