"""Batched top-k prediction on image files, with optional Grad-CAM overlays."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.config import DataConfig
from ..data.images import IMG_EXTENSIONS, ImageError, dir_key, load_image, walk_files
from ..data.transforms import build_eval_transform
from ..evaluation.metrics import topk_indices


@dataclass
class Prediction:
    path: str
    indices: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # softmax probabilities in [0, 1]
    error: str | None = None  # why the image could not be read
    cam_path: str | None = None
    cam_prob: float | None = None  # the probability of --cam-class's class, when one is chosen


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _label(names: list[str] | None, c: int) -> str:
    return names[c] if names and c < len(names) else f"class {c}"


def class_index(spec: str, names: list[str], where: str = "the model") -> int:
    """The class ``spec`` names (``predict --cam-class``): a class name as the checkpoint spells it, one
    of the comma-separated names of an ImageNet description ("tench" of "tench, Tinca tinca"), any case,
    or an index. A name no class has is one sentence listing the closest ones (difflib)."""
    from ..errors import UserError

    exact = [i for i, n in enumerate(names) if n == spec]
    if len(exact) == 1:
        return exact[0]
    want = spec.strip().casefold()
    hits = [
        i
        for i, n in enumerate(names)
        if want in {n.casefold(), *(x.strip().casefold() for x in n.split(","))}
    ]
    hits = exact or hits
    if len(hits) == 1:
        return hits[0]
    if hits:
        shown = ", ".join(f"{i} ({names[i]!r})" for i in hits)
        raise UserError(f"class {spec!r} names {len(hits)} classes of {where}: {shown}; pass the index")
    if spec.strip().isdigit() and int(spec) < len(names):
        return int(spec)
    import difflib

    first = {n.split(",")[0].strip(): n for n in names}
    close = difflib.get_close_matches(spec, [*names, *first], n=5, cutoff=0.6)
    close = list(dict.fromkeys(first.get(c, c) for c in close))
    hint = f"close names: {', '.join(repr(c) for c in close)}" if close else "no class name is close"
    raise UserError(
        f"class {spec!r} is not one of the {len(names)} classes of {where} ({hint}; or pass an index "
        f"0-{len(names) - 1})"
    )


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders searched recursively for images, globs expanded; sorted within each input.
    Each file once (by (st_dev, st_ino): a symbolic or hard link to a file already listed adds nothing),
    each real folder walked once (a link loop such as ``loop -> ..`` or a folder given twice adds nothing).
    A name that matches nothing, a broken link, a FIFO or a device is kept, so that it gets its own error
    line (:func:`~convnext.data.images.load_image` refuses the last two without reading them)."""
    out: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def add(path: str, key: tuple[int, ...] | None) -> None:
        if key is None:
            out.append(path)
        elif key[:2] not in seen_files:
            seen_files.add(key[:2])  # type: ignore[arg-type]
            out.append(path)

    def expand(p: Path, shown: str) -> None:
        if p.is_dir():
            if dir_key(p) in seen_dirs:
                return
            for path, _, _, key in walk_files(p, seen_dirs):
                name = os.path.basename(path)
                if name.lower().endswith(IMG_EXTENSIONS):
                    add(path, key)
        elif p.exists():
            st = os.stat(p)
            add(shown, (st.st_dev, st.st_ino))
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
    cam_class: int | None = None,
) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; unreadable files (including images above
    ``data.max_pixels``, refused from their header before decoding) yield an error and do not stop the
    rest.

    Images are decoded with torchvision.io (PIL fallback), transformed exactly as in evaluation, and run
    ``batch_size`` at a time. With ``cam_dir``, a Grad-CAM figure of the top-1 class is written per image
    as ``<cam_dir>/<stem>_cam_<class>.png`` (``cam.cam_figure``: the original and the overlay side by side,
    class and probability on top; ``class_names`` name the classes, "class N" otherwise). ``cam_class``
    (an index, see :func:`class_index`): the Grad-CAM of that class instead of the top-1, the evidence
    the model saw for the class it should have chosen.
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

            chosen = idx[:, 0] if cam_class is None else torch.full_like(idx[:, 0], cam_class)
            maps, _ = cam(x, chosen)
            where = f"{cam.layer_name}, {cam.map_size[0]}x{cam.map_size[1]} map" if cam.map_size else ""
            for i, (pred, (p, orig, _), m) in enumerate(zip(preds, batch, maps)):
                c = int(chosen[i])
                label, prob = _label(class_names, c), float(probs[i, c])
                top1 = None if cam_class is None else (_label(class_names, pred.indices[0]), pred.probs[0])
                stem, j = _CONTROL.sub("_", Path(p).stem), 1  # no newline in a file name of ours
                name = cam_filename(stem, label)
                while name in used_names:  # same file name in two folders
                    name, j = cam_filename(f"{stem}_{j}", label), j + 1
                used_names.add(name)
                box = crop_box(orig.shape[1], orig.shape[2], data.img_size, data.crop_pct, data.crop_mode)
                out = Path(cam_dir) / name  # type: ignore[arg-type]
                write_cam_png(
                    out,
                    orig,
                    m.cpu(),
                    box,
                    label=label,
                    prob=prob,
                    title=p if p.isprintable() else repr(p),
                    layer=where,
                    top1=top1,
                )
                pred.cam_path = str(out)
                if cam_class is not None:
                    pred.cam_prob = prob
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
