"""Detection training (``maskrcnn_<backbone>`` / ``fasterrcnn_<backbone>``, models/detection.py):
torchvision's detection references' step in the one loop of loop.py. The model in train mode takes
(images, targets) and returns its loss dict (RPN objectness and boxes, the RoI classifier and boxes,
Mask R-CNN's masks); the loss is their sum, as the references and mmdet train. An epoch ends with COCO
box mAP (and mask mAP) by pycocotools on the val split (evaluation/detection.py); ``val_map`` (box
mAP@[.5:.95], percent) picks best.pth.

The model is built here, not by setup.build_model: the classifier defaults of a recipe's model section
(layer scale 1e-6, ``head_init_scale``) are not the detector's, whose backbone takes the official detection
settings (layer scale 1.0; models/detection.py). ``model.drop_path_rate`` is the recipe's (the official
configs: 0.4 tiny, 0.6 small), ``model.layer_scale_init_value`` only when a recipe sets it to something else
than the classifier's 1e-6. ``model.pretrained`` is anything ``create_model`` takes for a detector: a
classifier's tag, file or run folder (the backbone), an mmdet or our detection checkpoint.

Randomness: the flip is drawn per sample from the seeded loader (data/coco.py); the multi-scale resize
(``model.options.min_size`` a list), the RPN's and RoI heads' samplers draw from torch's global RNG, which
every checkpoint carries per rank, so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import UserError
from ...recipe import TrainConfig
from ...recipe.schema import ModelConfig
from .state import Data
from .task import Task

if TYPE_CHECKING:
    from .state import Run


def has_masks(cfg: TrainConfig) -> bool:
    """Mask R-CNN trains on masks too; Faster R-CNN reads boxes only."""
    return cfg.model.name.startswith("maskrcnn_")


def build_detector(cfg: TrainConfig, num_classes: int, resume_state: dict | None = None) -> nn.Module:
    """The recipe's detector with ``num_classes`` labels (the background counted), ``model.pretrained``
    loaded; on a resume, shaped as the checkpoint's weights and left for setup.restore to fill."""
    from ...hub import create_model
    from ...models import set_chunked_mlp

    arch = cfg.model.name.partition(".")[0]
    opts = dict(cfg.model.options)
    opts.setdefault("drop_path_rate", cfg.model.drop_path_rate)
    if cfg.model.layer_scale_init_value != ModelConfig.layer_scale_init_value:
        opts.setdefault("layer_scale_init_value", cfg.model.layer_scale_init_value)
    pretrained = cfg.model.pretrained
    if resume_state is not None:  # the shapes a pretrained file implied, from the checkpoint itself
        from ...weights.detection import detection_options

        opts = {**detection_options(SimpleNamespace(state_dict=resume_state), arch), **opts}  # type: ignore[arg-type]
        pretrained = None
    try:
        model = create_model(arch, pretrained=pretrained, num_classes=num_classes, **opts)
    except TypeError as e:
        raise UserError(f"config key model.options: {e}") from None
    except ValueError as e:
        raise UserError(f"config key model.name: {e}") from None
    if cfg.model.grad_checkpointing:
        model.backbone.body.set_grad_checkpointing(True)
    set_chunked_mlp(model, cfg.model.chunked_mlp)
    return model


def build_detection_data(cfg: TrainConfig, ckpt: dict | None, ckpt_path: Path | None, accum: int) -> Data:
    """COCO-layout or digit-scene loaders (lists of images and targets, data/coco.py); the classes are
    ``["__background__", *category names]``, one per label."""
    from ...data.coco import build_detection_dataset, collate
    from .setup import loaders

    masks = has_masks(cfg)
    train_ds = build_detection_dataset(cfg.data, cfg.data.train_split, train=True, masks=masks)
    val_ds = None
    if cfg.train.eval_every > 0:
        val_ds = build_detection_dataset(cfg.data, cfg.data.val_split, train=False, masks=masks)
    classes = list(train_ds.classes)
    if val_ds is not None and list(val_ds.classes) != classes:
        raise UserError(
            f"the {cfg.data.val_split!r} split has the categories {val_ds.classes[1:6]}... but the "
            f"{cfg.data.train_split!r} split has {classes[1:6]}...; both need the same categories"
        )
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(classes):
        raise UserError(
            f"config key model.num_classes is {cfg.model.num_classes} but the dataset has "
            f"{len(classes) - 1} categories (+ the background: {len(classes)} labels)"
        )
    return loaders(
        cfg, train_ds, val_ds, classes, (ckpt, ckpt_path), accum, what="categories", collate_fn=collate,
        num_classes=len(classes),
    )  # fmt: skip


def detection_batch(run: Run, images: Any, targets: Any) -> tuple[list[torch.Tensor], list[dict], int]:
    """The loader's lists on the device: images as float 0..1 (the detector normalises and resizes),
    targets' tensors as plain tensors."""
    from ...evaluation.detection import detector_inputs

    device = run.proc.device
    moved = [
        {k: v.as_subclass(torch.Tensor).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
         for k, v in t.items()}
        for t in targets
    ]  # fmt: skip
    return detector_inputs(images, device), moved, len(images)


def detection_loss(model: nn.Module, _criterion: nn.Module, images: Any, targets: Any) -> torch.Tensor:
    """The sum of torchvision's loss dict (the references' and mmdet's total)."""
    losses = model(images, targets)
    return torch.stack([v.float() for v in losses.values()]).sum()


def _val_scores(model: nn.Module, run: Run, prefix: str) -> dict[str, float]:
    from ...data.coco import label_to_category
    from ...evaluation.detection import evaluate_detector, percent_metrics

    loader = run.data.val_loader
    ds = loader.dataset
    res = evaluate_detector(
        model,
        loader,
        run.proc.device,
        ds.coco,
        label_to_category=label_to_category(run.data.classes, ds.coco),
        iou_types=("bbox", "segm") if has_masks(run.cfg) else ("bbox",),
        amp_dtype=run.proc.amp_dtype,
    )
    return percent_metrics(res, prefix)


def evaluate_detection(run: Run) -> dict[str, float]:
    """COCO box (and mask) mAP, mAP@0.5 and mAP@0.75 in percent of the model (and of the EMA weights) on
    the val split, every rank's images counted once."""
    trainer = run.trainer
    out = _val_scores(trainer.model, run, "val_")
    if trainer.ema is not None and run.cfg.ema.eval and run.progress.ema_updates > 0:
        out.update(_val_scores(trainer.ema.module, run, "ema_val_"))
    trainer.model.train()
    return out


class _Unused(nn.Module):
    """The loop's criterion slot: a detector computes its own losses (:func:`detection_loss`)."""

    def forward(self, *_: Any) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("a detector computes its own loss")


DETECTION = Task(
    "detection",
    labels=True,
    criterion=lambda cfg: _Unused(),
    build_model=build_detector,
    build_data=build_detection_data,
    prepare=detection_batch,
    loss=detection_loss,
    evaluate=evaluate_detection,
    metric="map",
    metric_label="box mAP",
)
