"""``convnext evaluate`` of a detector (``maskrcnn_``/``fasterrcnn_<backbone>``): COCO box and mask mAP
(``map``, ``map_50``, ``map_75``, per object size, and the recalls) by pycocotools' ``COCOeval`` on a
COCO-layout folder or the digit scenes (evaluation/detection.py, the numbers the training loop records).

The weights: a detection training run folder or checkpoint (its model options, eval size, categories and
data), or any detector file ``create_model`` reads (ours, the official mmdet ones). Labels go back to the
ground truth's category ids by the checkpoint's class names (``["__background__", *names]``); without
names, labels 1..K are the categories in id order when the model has K + 1 labels, else the category ids
themselves (torchvision's 91-label COCO models).
Under torchrun each process predicts its shard; the COCO results are gathered, every image counted once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.config import DataConfig
from ..errors import UserError

__all__ = ["DetectionEvaluation", "evaluate_detection_weights", "label_mapping", "load_detector"]


@dataclass
class DetectionEvaluation:
    arch: str
    checkpoint: str
    data: DataConfig  # dataset, root, val_split evaluated
    metrics: dict[str, dict[str, float]]  # "bbox" / "segm" -> COCOeval's twelve numbers (fractions)
    n: int  # images evaluated
    images_per_s: float
    device: torch.device
    world: int
    ema: bool
    main: bool
    eval_size: tuple[int, int]  # the detector's (min_size, max_size) at evaluation

    def summary(self) -> dict[str, Any]:
        """``--json``: the numbers as pycocotools gives them (fractions; -1 where COCOeval has no ground
        truth of a size), with what was evaluated."""
        return {
            "task": "detection",
            "model": self.arch,
            "checkpoint": self.checkpoint,
            "ema": self.ema,
            "dataset": self.data.dataset,
            "data": self.data.root or None,
            "split": self.data.val_split,
            "n": self.n,
            "eval_size": list(self.eval_size),
            **{("box" if k == "bbox" else "mask"): v for k, v in self.metrics.items()},
            "images_per_s": self.images_per_s,
            "world_size": self.world,
        }


@dataclass
class _Detector:
    model: nn.Module
    arch: str
    class_names: list[str] | None
    checkpoint: str
    train_cfg: Any  # the run's TrainConfig, or None
    ema: bool


def load_detector(weights: str, model_name: str | None = None, *, ema: bool | None = None) -> _Detector:
    """A detector from a run folder / training checkpoint (built with its recipe's options) or any
    detector file (``inference/dense.py``'s loading)."""
    from ..hub import create_model
    from ..recipe import config_from_dict
    from ..weights.containers import TRAIN_FORMAT
    from ..weights.detection import is_detection, prepare_detection
    from ..weights.fetch import is_run_dir, resolve, run_checkpoint
    from ..weights.files import read_file

    p, _ = resolve(weights)
    ckpt_file = run_checkpoint(p) if is_run_dir(p) else p
    obj = read_file(ckpt_file)[0] if ckpt_file.is_file() else None
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        cfg = config_from_dict(obj.get("config") or {}, check_paths=False)
        arch = cfg.model.name.partition(".")[0]
        if model_name and model_name.partition(".")[0] != arch:
            raise UserError(f"--model {model_name}: {ckpt_file} holds a {arch}; drop --model")
        prepared = prepare_detection(obj, ema=ema)
        if not is_detection(prepared.state_dict):
            raise UserError(f"{ckpt_file} is a {arch} training checkpoint, not a detector's")
        opts = {k: v for k, v in cfg.model.options.items()}
        model = create_model(arch, pretrained=prepared.state_dict, **opts)
        names = list(obj.get("class_names") or []) or None
        return _Detector(model, arch, names, str(ckpt_file), cfg, bool(prepared.info.ema))
    from .dense import DETECTION, load_dense

    if ema:
        raise UserError(f"--ema: {weights} is not a training checkpoint (it holds one set of weights)")
    dense = load_dense(weights, model_name)
    if dense.task != DETECTION or dense.model is None:
        raise UserError(f"{weights} holds a {dense.arch}, not a detector (maskrcnn_*, fasterrcnn_*)")
    info = getattr(dense.model, "pretrained_info", None)
    names = list(info.class_names) if info is not None and info.class_names else None
    return _Detector(dense.model, dense.arch, names, dense.source, None, False)


def label_mapping(names: list[str] | None, n_labels: int, coco: Any) -> dict[int, int] | None:
    """Label -> the ground truth's category id: by the checkpoint's class names; without names, labels
    1..K in category-id order when the model has K + 1 labels (ours, mmdet's), else None: the labels are
    the category ids themselves (torchvision's 91-label COCO models)."""
    from ..data.coco import label_to_category

    if names and len(names) == n_labels and n_labels > 1:
        return label_to_category(names, coco)
    ids = sorted(int(c["id"]) for c in coco.dataset.get("categories", []))
    if n_labels == len(ids) + 1:
        return {i + 1: c for i, c in enumerate(ids)}
    return None


def _data_config(det: _Detector, data: str | None, dataset: str | None, split: str | None) -> DataConfig:
    """``--data`` (a COCO-layout folder; ``--dataset`` digit-scenes needs none), else the run's val split."""
    if data or dataset:
        base = det.train_cfg.data if det.train_cfg is not None else DataConfig()
        root = str(Path(data).expanduser()) if data else ""
        if data and not Path(root).is_dir():
            raise UserError(f"data folder {root} does not exist")
        return dataclasses.replace(
            base, dataset=dataset or "coco", root=root, val_split=split or base.val_split or "val"
        )
    if det.train_cfg is None:
        raise UserError("--data is required (a COCO-layout folder) unless --weights is a detection run")
    cfg = dataclasses.replace(det.train_cfg.data)
    if split:
        cfg.val_split = split
    return cfg


def evaluate_detection_weights(
    weights: str,
    *,
    model: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    ema: bool | None = None,
    img_size: int | None = None,
    batch_size: int = 4,
    workers: int = 0,
    device: str = "auto",
    amp: str | None = None,
    progress: bool = False,
) -> DetectionEvaluation:
    """COCO box (and mask) mAP of ``weights`` on ``data`` (default: a run's val split). ``img_size``: the
    detector's eval ``min_size`` (``max_size`` scaled as 800 -> 1333); default the weights' own."""
    from .. import dist
    from ..data import build_loader
    from ..data.coco import build_detection_dataset, collate
    from ..device import amp_dtype, resolve_device
    from ..evaluation.detection import evaluate_detector

    want = resolve_device(device)
    _, world, local_rank = dist.init_distributed(want.type)
    dev = torch.device("cuda", local_rank) if want.type == "cuda" and world > 1 else want
    dtype = amp_dtype(amp, dev)
    try:
        det = load_detector(weights, model, ema=ema)
        net = det.model.eval().to(dev)
        if img_size is not None:
            net.transform.min_size, net.transform.max_size = (int(img_size),), round(img_size * 1333 / 800)
        cfg = _data_config(det, data, dataset, split)
        cfg.workers = max(int(workers), 0)
        masks = hasattr(net.roi_heads, "mask_head") and net.roi_heads.mask_head is not None
        ds = build_detection_dataset(cfg, cfg.val_split, train=False, masks=False)
        n_labels = int(net.roi_heads.box_predictor.cls_score.out_features)
        mapping = label_mapping(det.class_names, n_labels, ds.coco)
        kw = {"cfg": cfg, "seed": 0, "distributed": dist.is_dist(), "collate_fn": collate}
        loader = build_loader(ds, batch_size, train=False, **kw)
        res = evaluate_detector(
            net,
            loader,
            dev,
            ds.coco,
            label_to_category=mapping,
            iou_types=("bbox", "segm") if masks else ("bbox",),
            amp_dtype=dtype,
            progress=progress,
        )
    finally:
        if dist.is_dist():
            dist.cleanup()
    metrics = {k: v for k, v in res.items() if k in ("bbox", "segm")}
    size = (int(net.transform.min_size[-1]), int(net.transform.max_size))
    return DetectionEvaluation(
        det.arch, det.checkpoint, cfg, metrics, res["n"], res["images_per_s"], dev, world, det.ema,
        dist.get_rank() == 0 if world > 1 else True, size,
    )  # fmt: skip


def format_detection(ev: DetectionEvaluation) -> list[str]:
    """The text ``convnext evaluate`` prints: what was evaluated, then box and mask mAP as COCO names them."""
    from .report import shown_path

    where = shown_path(ev.data.root) if ev.data.root else ev.data.dataset
    lines = [
        f"model      {ev.arch} ({shown_path(ev.checkpoint)}{', EMA' if ev.ema else ''})",
        f"data       {where} [{ev.data.val_split}]: {ev.n} images, eval size {ev.eval_size[0]} "
        f"(max {ev.eval_size[1]})",
    ]
    for key, label in (("bbox", "box"), ("segm", "mask")):
        m = ev.metrics.get(key)
        if m is None:
            continue

        def pct(v: float) -> str:
            return f"{100 * v:.2f}" if v >= 0 else "n/a"

        lines.append(
            f"{label + ' mAP':<10} {pct(m['map'])} (@0.5 {pct(m['map_50'])}, @0.75 {pct(m['map_75'])}; "
            f"small {pct(m['map_small'])}, medium {pct(m['map_medium'])}, large {pct(m['map_large'])})"
        )
    lines.append(f"images/s   {ev.images_per_s:.1f} ({ev.device}, {ev.world} process(es))")
    return lines
