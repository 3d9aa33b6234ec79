"""Evaluate any weights on a labelled image folder (``convnext evaluate``): the data the flags or the run
describe, labelled in the checkpoint's own class order, run through :func:`convnext.engine.evaluate.evaluate`.

Under torchrun each process evaluates its shard (the sums are all-reduced; :attr:`Evaluation.main` says
which process reports). Every readable file counts exactly once; a file that cannot be used (empty, not an
image, truncated, above the pixel limit) is in no metric and is named in :attr:`Evaluation.dropped`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.config import DataConfig
from ..errors import UserError
from .loading import Loaded


@dataclass
class Evaluation:
    loaded: Loaded  # the model, its arch, class names, checkpoint file
    data: DataConfig  # what was evaluated: dataset, root, split, eval geometry
    device: torch.device
    metrics: dict[str, Any]  # convnext.engine.evaluate.evaluate's result (predictions when asked for)
    dropped: list[tuple[str, str]]  # every file left out, (file, why), sorted
    classes_present: int  # classes with at least one counted image
    ema: bool
    main: bool  # this process reports (rank 0 of a torchrun job, or a plain run)

    @property
    def where(self) -> str:
        return str(self.data.root or self.data.dataset)

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``convnext evaluate --json``."""
        res = self.metrics
        out = {k: res[k] for k in ("top1", "top5", "loss", "n", "images_per_s", "world_size") if k in res}
        out["dropped"] = len(self.dropped)
        out["dropped_files"] = [{"path": p, "reason": why} for p, why in self.dropped]
        out.update(
            model=self.loaded.arch,
            weights=self.loaded.checkpoint,
            ema=self.ema,
            data=self.where,
            split=self.data.val_split,
            img_size=self.data.img_size,
            crop_pct=self.data.crop_pct,
            crop_mode=self.data.crop_mode,
            device=str(self.device),
        )
        return out


def _data_config(
    loaded: Loaded,
    data: str | None,
    dataset: str | None,
    split: str | None,
    workers: int,
    max_pixels: int | None,
) -> DataConfig:
    """The data to evaluate: ``data`` (a folder; DIR/val when it exists), else the run's validation split."""
    cfg = loaded.data
    if data:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist")
        split = split if split is not None else ("val" if (root / "val").is_dir() else "")
        cfg = dataclasses.replace(
            cfg, dataset=dataset or "imagefolder", root=str(root), val_split=split, class_list=None
        )
    elif loaded.run_dir is None:
        raise UserError("--data is required (a folder of class folders) unless --weights is a run folder")
    elif split is not None:
        cfg = dataclasses.replace(cfg, val_split=split)
    if dataset and not data:
        cfg = dataclasses.replace(cfg, dataset=dataset)
    folder = Path(cfg.root).expanduser() / (cfg.val_split if cfg.dataset == "imagefolder" else "")
    if not data and cfg.root and not folder.is_dir():  # the run's data moved, or is on another machine
        raise UserError(
            f"the run's validation split {folder} does not exist here; pass --data DIR (a folder of class "
            "folders, or one holding val/)"
        )
    cfg.workers = max(int(workers), 0)
    if max_pixels is not None:
        cfg = dataclasses.replace(cfg, max_pixels=max_pixels)
    return cfg


def _labelled(ds: Any, loaded: Loaded, cfg: DataConfig) -> Any:
    """``ds`` with targets in the checkpoint's class order (wnid folders -> true ImageNet indices)."""
    from ..data.datasets import relabel
    from .loading import imagenet_wnid_names

    names = imagenet_wnid_names(loaded.class_names, loaded.num_classes)
    if names is not None:
        return relabel(ds, names, loaded.checkpoint)
    if len(ds.classes) != loaded.num_classes:
        raise UserError(
            f"{loaded.checkpoint} has a {loaded.num_classes}-class head but {cfg.root or cfg.dataset} "
            f"has {len(ds.classes)} classes and the checkpoint names none of them"
        )
    return ds


def _dropped(ds: Any, res: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """Every file left out (scan time and load time) as sorted (file, why), and the number of classes
    that still have a counted image."""
    from ..data.file_datasets import find_file_dataset

    load_time = list(res.get("dropped_files", []))
    files = sorted({*[(str(p), str(w)) for p, w in getattr(ds, "skipped", [])], *load_time})
    targets = list(ds.targets)
    fd = find_file_dataset(ds) if load_time else None
    gone = {p for p, _ in load_time}
    present = {t for i, t in enumerate(targets) if fd is None or fd.path(i) not in gone}
    return files, len(present)


def evaluate_weights(
    weights: str,
    *,
    model: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    ema: bool | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    amp: str | None = None,
    channels_last: bool = False,
    max_pixels: int | None = None,
    predictions: bool = False,
    progress: bool = False,
) -> Evaluation:
    """Load ``weights`` (file, URL, tag, HF folder or training run folder) and evaluate it on ``data`` (an
    image folder, DIR/<class>/<img> or DIR/val/<class>/<img>; default: a run's validation split).

    ``img_size``/``crop_pct`` default to the weights' own eval settings, ``max_pixels`` to theirs (0: no
    limit). With ``predictions`` the metrics hold every sample's top-5 and target (per-class reports).
    Under torchrun this joins the process group, evaluates this rank's shard and leaves the group.
    """
    from ..data import build_dataset, build_eval_transform, build_loader
    from ..device import amp_dtype, resolve_device
    from ..engine import distributed as D
    from ..engine.evaluate import evaluate
    from .loading import for_bf16_inference, load_for_inference

    want = resolve_device(device)
    _, world, local_rank = D.init_distributed(want.type)
    dev = torch.device("cuda", local_rank) if want.type == "cuda" and world > 1 else want
    main = D.is_main()
    dtype = amp_dtype(amp, dev)
    try:
        loaded = load_for_inference(weights, model, ema=ema, img_size=img_size, crop_pct=crop_pct)
        cfg = _data_config(loaded, data, dataset, split, workers, max_pixels)
        with warnings.catch_warnings():  # the files left out at scan time are in Evaluation.dropped
            warnings.filterwarnings("ignore", message=r".*skipped \d+ unusable file", category=RuntimeWarning)
            ds = build_dataset(cfg, cfg.val_split, build_eval_transform(cfg), on_error="drop")
        ds = _labelled(ds, loaded, cfg)
        loader = build_loader(ds, batch_size, train=False, cfg=cfg, seed=0, distributed=D.is_dist())
        net = for_bf16_inference(loaded.model.to(dev), dev, dtype)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        res = evaluate(
            net,
            loader,
            dev,
            amp_dtype=dtype,
            channels_last=channels_last,
            progress=progress,
            return_predictions=predictions,
            warn_dropped=False,
        )
    finally:
        if D.is_dist():
            D.cleanup()
    dropped, present = _dropped(ds, res)
    return Evaluation(loaded, cfg, dev, res, dropped, present, bool(getattr(loaded.info, "ema", ema)), main)
