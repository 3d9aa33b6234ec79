"""``convnext evaluate`` for a segmentation model (``upernet_<backbone>``): mIoU, mAcc, aAcc and per-class
IoU / Acc as mmsegmentation defines them (evaluation/segmentation.py), single-scale, with ``flip`` and/or
several ``scales`` (mmseg's ``aug_test``: the softmax averaged), whole-image or ``slide`` windows
(evaluation/segmentation_loop.py).

Any weights ``load_dense`` takes (a run folder, our checkpoint, an mmseg or transformers UperNet). The data:
``--data DIR`` with ``--dataset`` (ade20k, segmentation-folder, digit-scenes-seg), else the run's own
validation split and its data settings (test scale, ``reduce_zero_label``). Under torchrun each process
evaluates its shard and the int64 counts are summed: the figures are exact for any number of processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.config import DataConfig
from ..errors import UserError

#: mmseg's multi-scale test ratios (the official ``--aug-test``)
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class SegEvaluation:
    arch: str
    weights: str
    classes: list[str]
    data: DataConfig
    device: torch.device
    metrics: dict[str, Any]  # evaluate_segmentation's (fractions, hist, n, images_per_s, world_size)
    ratios: tuple[float, ...]
    flip: bool
    slide: tuple[int, int] | None
    main: bool

    @property
    def where(self) -> str:
        return str(self.data.root or self.data.dataset)

    def class_table(self) -> list[dict[str, Any]]:
        """One row per class: index, name, IoU and Acc in percent (None where mmseg's is NaN: the class is
        in neither the labels nor the predictions / not in the labels), pixels labelled and predicted."""
        from ..evaluation.segmentation import LABEL, PRED

        hist, m = self.metrics["hist"], self.metrics
        rows = []
        for c, name in enumerate(self.classes):
            iou, acc = m["IoU"][c], m["Acc"][c]
            rows.append(
                {
                    "index": c,
                    "class": name,
                    "iou": None if iou != iou else round(100 * iou, 4),
                    "acc": None if acc != acc else round(100 * acc, 4),
                    "pixels": int(hist[LABEL, c]),
                    "predicted_pixels": int(hist[PRED, c]),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``convnext evaluate --json`` for a segmenter (percent, as mmseg prints)."""
        m = self.metrics

        def pct(x: float) -> float | None:
            return None if x != x else round(100 * x, 4)

        return {
            "task": "segmentation",
            "mIoU": pct(m["mIoU"]),
            "mAcc": pct(m["mAcc"]),
            "aAcc": pct(m["aAcc"]),
            "n": m["n"],
            "images_per_s": m["images_per_s"],
            "world_size": m["world_size"],
            "per_class": self.class_table(),
            "model": self.arch,
            "weights": self.weights,
            "data": self.where,
            "dataset": self.data.dataset,
            "split": self.data.val_split,
            "scale": list(self.data.seg_scale),
            "ratios": list(self.ratios),
            "flip": self.flip,
            "mode": "slide" if self.slide else "whole",
            "reduce_zero_label": self.data.reduce_zero_label,
            "device": str(self.device),
        }


def _run_data(weights: str) -> DataConfig | None:
    """A training run's data settings (its recipe), when ``weights`` is a run folder or its checkpoint, or
    a file exported from one (its run folder's, else the dataset its metadata recorded)."""
    from ..recipe import config_from_dict, read_yaml, rebase_paths
    from ..runtimes import exported_meta, is_exported
    from ..weights.fetch import is_run_dir

    if is_exported(weights):
        doc = exported_meta(weights) or {}
        if not doc.get("dataset"):
            return None
        run_dir = doc.get("run_dir")
        if run_dir and Path(run_dir).is_dir() and is_run_dir(Path(run_dir)):
            return _run_data(run_dir)
        from ..runtimes.base import data_from_dict

        return data_from_dict(doc.get("data"))
    p = Path(str(weights)).expanduser()
    run = p if p.is_dir() and is_run_dir(p) else None
    if run is None and p.is_file() and p.parent.name == "checkpoints" and is_run_dir(p.parent.parent):
        run = p.parent.parent
    if run is None or not (run / "config.yaml").is_file():
        return None
    cfg = rebase_paths(config_from_dict(read_yaml(run / "config.yaml"), check_paths=False), run)
    return dataclasses.replace(cfg.data)


def _data_config(
    run_data: DataConfig | None, data: str | None, dataset: str | None, split: str | None, workers: int
) -> DataConfig:
    from ..data.catalog import find_dataset

    cfg = run_data or DataConfig(dataset="ade20k")
    if data:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist")
        cfg = dataclasses.replace(cfg, root=str(root))
        if dataset is None and run_data is None:
            dataset = "ade20k" if (root / "annotations").is_dir() else "segmentation-folder"
    elif run_data is None and (dataset is None or find_dataset(dataset).name != "digit-scenes-seg"):
        raise UserError(
            "--data is required (an ADE20K folder or a folder of images + masks) unless "
            "--weights is a training run"
        )
    if dataset is not None:
        cfg = dataclasses.replace(cfg, dataset=find_dataset(dataset).name)
    if find_dataset(cfg.dataset).task != "segmentation":
        raise UserError(
            f"--dataset {cfg.dataset} is not a segmentation dataset (ade20k, segmentation-folder, "
            "digit-scenes-seg)"
        )
    if split is not None:
        cfg = dataclasses.replace(cfg, val_split=split)
    cfg.workers = max(int(workers), 0)
    return cfg


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """``--scales 0.5,0.75,1.0`` -> ratios; ``ms``: mmseg's six; None: single scale."""
    if text is None:
        return None
    if text.strip().lower() in ("ms", "aug"):
        return MS_RATIOS
    try:
        out = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--scales {text!r}: give ratios of the test scale, e.g. 0.5,0.75,1.0,1.25") from None
    if not out or any(r <= 0 for r in out):
        raise UserError(f"--scales {text!r}: give positive ratios of the test scale, e.g. 0.5,1.0,1.5")
    return out


def evaluate_segmentation_weights(
    weights: str,
    *,
    model: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    scales: str | None = None,
    flip: bool = False,
    slide: bool = False,
    reduce_zero_label: bool | None = None,
    img_size: int | None = None,
    batch_size: int = 1,
    workers: int = 2,
    device: str = "auto",
    amp: str | None = None,
    progress: bool = False,
    ema: bool | None = None,
) -> SegEvaluation:
    """Load ``weights`` (a segmentation model) and evaluate it on ``data`` or the run's validation split.
    ``img_size``: the test scale's short side (the long side four times it, as mmseg's (2048, 512)),
    default the run's ``data.seg_scale`` or (2048, 512); ``slide``: mmseg's sliding windows of the training
    crop (``data.img_size``) every 2/3 of it (the official 512 / 341)."""
    from .. import dist
    from ..data import build_dataset, build_loader
    from ..data.segmentation import SegEvalTransform, list_collate
    from ..device import amp_dtype, resolve_device
    from ..evaluation.segmentation_loop import evaluate_segmentation
    from .dense import ExportedSegmenter, load_dense

    want = resolve_device(device)
    _, world, local_rank = dist.init_distributed(want.type)
    dev = torch.device("cuda", local_rank) if want.type == "cuda" and world > 1 else want
    dtype = amp_dtype(amp, dev)
    ratios = parse_scales(scales) or (1.0,)
    try:
        dense = load_dense(weights, model, device=dev, ema=ema)
        if dense.task != "segmentation":
            raise UserError(f"{weights} is not a segmentation model")
        net = dense.model
        if net is None:  # an exported UperNet (ONNX / OpenVINO): its fixed square, on the CPU
            net, dev, dtype = (
                ExportedSegmenter(dense.runner, int(dense.fixed_size or dense.img_size)),
                torch.device("cpu"),
                None,
            )
        cfg = _data_config(_run_data(weights), data, dataset, split, workers)
        if img_size is not None:
            cfg = dataclasses.replace(cfg, seg_scale=(4 * int(img_size), int(img_size)))
        if reduce_zero_label is not None:
            cfg = dataclasses.replace(cfg, reduce_zero_label=bool(reduce_zero_label))
        ds = build_dataset(cfg, cfg.val_split, SegEvalTransform())
        if len(ds.classes) != dense.num_classes:
            raise UserError(
                f"{dense.source} has {dense.num_classes} classes but {cfg.root or cfg.dataset} has "
                f"{len(ds.classes)}"
            )
        loader = build_loader(
            ds, batch_size, train=False, cfg=cfg, seed=0, distributed=dist.is_dist(), collate_fn=list_collate
        )
        crop = int(cfg.img_size)
        window = (crop, max(1, round(crop * 2 / 3))) if slide else None
        res = evaluate_segmentation(
            net,
            loader,
            dev,
            dense.num_classes,
            scale=cfg.seg_scale,
            mean=cfg.mean,
            std=cfg.std,
            ratios=ratios,
            flip=flip,
            slide=window,
            amp_dtype=dtype,
            progress=progress,
        )
    finally:
        if dist.is_dist():
            dist.cleanup()
    names = dense.names if len(dense.names) == dense.num_classes else list(ds.classes)
    return SegEvaluation(
        dense.arch,
        dense.source,
        names,
        cfg,
        dev,
        res,
        tuple(ratios),
        flip,
        window,
        dist.get_rank() == 0 if world > 1 else True,
    )


def print_segmentation(ev: SegEvaluation, json_file: str | None, most: int = 20) -> None:
    """The text report: the figures, then per-class IoU / Acc (all up to ``most`` classes, else the
    ``--json`` document has them)."""
    from .report import shown_path

    s, m = ev.summary(), ev.metrics
    how = f"scales x{','.join(f'{r:g}' for r in ev.ratios)}" + (", flip" if ev.flip else "")
    how += f", slide {ev.slide[0]}/{ev.slide[1]}" if ev.slide else ", whole image"
    print(f"model      {ev.arch} ({shown_path(ev.weights)})")
    print(
        f"data       {shown_path(ev.where)} [{ev.data.val_split}]: {m['n']} images, {len(ev.classes)} classes"
    )
    print(f"test       scale {tuple(ev.data.seg_scale)} ({how})")

    def pct(x: float | None) -> str:
        return "nan" if x is None else f"{x:.2f}%"

    print(f"mIoU       {pct(s['mIoU'])}")
    print(f"mAcc       {pct(s['mAcc'])}")
    print(f"aAcc       {pct(s['aAcc'])}")
    print(f"images/s   {m['images_per_s']:.1f} ({ev.device}, {m['world_size']} process(es))")
    rows = ev.class_table()
    if len(rows) <= most:
        print(f"per class  {'IoU':>8} {'Acc':>8}  class")
        for r in rows:
            print(f"           {pct(r['iou']):>8} {pct(r['acc']):>8}  {r['class']}")
    else:
        print(f"per class  {len(rows)} classes: IoU and Acc in {json_file or '--json'} (per_class)")
