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
from ..data.images import IMG_EXTENSIONS, ImageError, dir_key, load_image, walk_files
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
    Each real file once, each real folder walked once (a link loop such as ``loop -> ..`` or a folder
    given twice adds nothing). A name that matches nothing is kept, so that it gets its own error line."""
    out: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def add(path: str, real: str) -> None:
        if real not in seen_files:
            seen_files.add(real)
            out.append(path)

    def expand(p: Path, shown: str) -> None:
        if p.is_dir():
            if dir_key(p) in seen_dirs:
                return
            for path, real, _ in walk_files(p, seen_dirs):
                name = os.path.basename(path)
                if name.lower().endswith(IMG_EXTENSIONS):
                    add(path, real)
        elif p.exists():
            add(shown, os.path.realpath(p))
        else:
            out.append(shown)

    for s in inputs:
        p = Path(s).expanduser()
        if p.exists() or not glob.has_magic(s):
            expand(p, str(p) if p.exists() else s)
        else:
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            for m in matches:
                expand(Path(m), m)
            if not matches:
                out.append(s)
    return out


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
    class_names: list[str] | None = None,
) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; unreadable files (including images above
    ``data.max_pixels``, refused from their header before decoding) yield an error and do not stop the
    rest.

    Images are decoded with torchvision.io (PIL fallback), transformed exactly as in evaluation, and run
    ``batch_size`` at a time. With ``cam_dir``, a Grad-CAM figure of the top-1 class is written per image
    as ``<cam_dir>/<stem>_cam_<class>.png`` (``cam.cam_figure``: the original and the overlay side by side,
    class and probability on top; ``class_names`` name the classes, "class N" otherwise).
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
            from .cam import cam_filename, crop_box, write_cam_png

            maps, _ = cam(x, idx[:, 0])
            where = f"{cam.layer_name}, {cam.map_size[0]}x{cam.map_size[1]} map" if cam.map_size else ""
            for pred, (p, orig, _), m in zip(preds, batch, maps):
                c = pred.indices[0]
                label = class_names[c] if class_names and c < len(class_names) else f"class {c}"
                stem, j = Path(p).stem, 1
                name = cam_filename(stem, label)
                while name in used_names:  # same file name in two folders
                    name, j = cam_filename(f"{stem}_{j}", label), j + 1
                used_names.add(name)
                box = crop_box(orig.shape[1], orig.shape[2], data.img_size, data.crop_pct, data.crop_mode)
                out = Path(cam_dir) / name  # type: ignore[arg-type]
                write_cam_png(out, orig, m.cpu(), box, label=label, prob=pred.probs[0], title=p, layer=where)
                pred.cam_path = str(out)
        bar.update(len(batch))
        return preds

    pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for p in paths:
        try:
            img = load_image(p, max_pixels=data.max_pixels)
        except ImageError as e:
            yield from run(pending) if pending else ()
            pending = []
            bar.update(1)
            yield Prediction(p, error=f"cannot read image ({e.why})")
            continue
        pending.append((p, img, transform(img)))
        if len(pending) == batch_size:
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)
    bar.close()
