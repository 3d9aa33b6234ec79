"""``run.export_samples``: a few validation images as PNG in the run folder, for `convnext predict` to try."""

from __future__ import annotations

from pathlib import Path

import torch

from ...recipe import TrainConfig


def export_samples(cfg: TrainConfig, run_dir: Path, n: int) -> None:
    """Write ``n`` validation images as PNG (named <index>_<class>.png), for `convnext predict` to try."""
    from torchvision.io import write_png

    from ...data import build_dataset

    ds = build_dataset(cfg.data, cfg.data.val_split, None)
    out = run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    step = max(len(ds) // n, 1)
    for k, i in enumerate(range(0, min(len(ds), step * n), step)):
        img, target = ds[i]
        if int(target) < 0:  # unreadable (the val split drops such files): nothing to export
            continue
        if not isinstance(img, torch.Tensor):  # a PIL image
            from torchvision.transforms.v2.functional import pil_to_tensor

            img = pil_to_tensor(img)
        if img.dtype != torch.uint8:
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ds.classes[int(target)]))
        write_png(img.cpu(), str(out / f"{k:02d}_{safe}.png"))
