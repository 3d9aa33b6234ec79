"""Calibration images for int8 post-training quantization: an image folder, or a training run's own data.

NNCF needs a few hundred representative inputs to pick each activation's int8 range; they go through the
same eval transform as inference (resize, center crop, normalize), so the ranges are those the model sees
when deployed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.config import DataConfig
from ..data.preprocessing import Preprocessing
from ..errors import UserError

DEFAULT_SIZE = 300  # NNCF's default subset; more changes int8 ranges very little


@dataclass
class Calibration:
    images: torch.Tensor  # (N, 3, S, S) float, preprocessed
    source: str  # a sentence: where they came from
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) left out


def _image_files(root: Path) -> list[str]:
    from ..data.images import IMG_EXTENSIONS

    return sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(root, followlinks=True)
        for f in files
        if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")
    )


def from_folder(root: Path, data: DataConfig, limit: int = DEFAULT_SIZE, seed: int = 0) -> Calibration:
    """Up to ``limit`` images found anywhere under ``root`` (a seeded sample when there are more, so every
    class folder is represented); unreadable files are skipped and named."""
    from ..data.images import load_image
    from ..data.transforms import build_eval_transform

    files = _image_files(root)
    if not files:
        raise UserError(f"calibration folder {root} has no image files (.jpg, .png, ...)")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    transform = build_eval_transform(data)
    images, skipped = [], []
    for i in order:
        if len(images) == limit:
            break
        try:
            images.append(transform(load_image(files[i])))
        except ValueError as e:
            msg = str(e)
            skipped.append((files[i], msg[msg.rfind("(") + 1 : -1] if msg.endswith(")") else msg))
    if not images:
        raise UserError(f"calibration folder {root}: none of its {len(files)} image files can be read")
    return Calibration(torch.stack(images), f"{len(images)} images from {root}", sorted(skipped))


def _segmentation_input(
    data: DataConfig,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, None]]:
    """A segmentation sample (uint8 image, mask) as an exported UperNet's input: the image resized to its
    fixed square and normalised, as ``predict`` feeds the graph (inference/dense.py ``seg_input``)."""
    from torchvision.transforms.v2.functional import resize

    from ..data.segmentation import normalize

    def transform(img: torch.Tensor, _mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        size = [data.img_size, data.img_size]
        return normalize(resize(img, size, antialias=True), data.mean, data.std), None

    return transform


def from_dataset(data: DataConfig, where: str, limit: int = DEFAULT_SIZE, seed: int = 0) -> Calibration:
    """A seeded sample of the training split a run was trained on (eval transform, no augmentation; a
    segmentation run's images as its exported graph takes them)."""
    from ..data import build_dataset
    from ..data.catalog import find_dataset
    from ..data.transforms import build_eval_transform

    split = data.train_split
    segmentation = find_dataset(data.dataset).task == "segmentation"
    transform = _segmentation_input(data) if segmentation else build_eval_transform(data)
    ds = build_dataset(data, split, transform)  # names the files it skips, as in training
    n = len(ds)  # type: ignore[arg-type]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    images = torch.stack([ds[i][0] for i in idx])
    skipped = list(getattr(ds, "skipped", []))
    what = (
        f"{len(idx)} images of the {split!r} split of {data.dataset} ({data.root or 'built in'}) from {where}"
    )
    return Calibration(images, what, skipped)


def load_calibration(
    source: str | None,
    data: DataConfig,
    *,
    run_data: bool,
    where: str,
    limit: int = DEFAULT_SIZE,
) -> Calibration:
    """``source``: an image folder or a run folder; None: the run's own training data (``run_data``:
    the weights came from a training run, so ``data`` holds its dataset settings)."""
    if limit < 1:
        raise UserError(f"--calibration-size must be at least 1, got {limit}")
    if source is None:
        if not run_data:
            raise UserError(
                "int8 needs calibration images: pass --calibration DIR (a folder of ~300 typical images), "
                "or export from a training run folder to use its training data"
            )
        return from_dataset(data, where, limit)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"calibration folder {path} does not exist")
    if (path / "config.yaml").is_file():  # a training run folder: its data, this model's preprocessing
        from ..recipe import config_from_dict, read_yaml

        run = config_from_dict(read_yaml(path / "config.yaml"), check_paths=False).data
        return from_dataset(Preprocessing.of(data).apply(run), str(path), limit)
    return from_folder(path, data, limit)
