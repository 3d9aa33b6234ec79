"""Semantic segmentation (``model.name: upernet_<backbone>``) through the one training loop, as the official
ConvNeXt ADE20K configs train it (mmseg's ``EncoderDecoder`` with UPerHead + FCNHead):

- the model: ``hub.create_model`` with ``model.pretrained`` (a classifier checkpoint, tag or run folder
  initialises the backbone; an mmseg or transformers UperNet, or one of our runs, loads whole). The
  backbone keeps the official ADE20K settings (models/upernet.py: drop path by size, layer scale 1.0)
  unless the recipe moves ``model.drop_path_rate`` / ``model.layer_scale_init_value`` off the classifier
  defaults of recipe/schema.py (0.1 / 1e-6), which therefore mean "the official value" here. BatchNorm
  becomes SyncBatchNorm under DDP on CUDA (the official SyncBN; torch has no CPU SyncBatchNorm, so a gloo
  run keeps per-process statistics).
- the loss: cross-entropy over the pixels (255 ignored) of the decode head's logits plus 0.4 x that of the
  auxiliary head's, both at the crop's size; each is mmseg's default ``CrossEntropyLoss`` (mean over all
  pixels of the batch, the ignored ones counting 0, ``avg_non_ignore=False``).
- the data: data/segmentation.py (mmseg's pipeline, seeded per sample by the loader: exact resume).
- the evaluation at an epoch's end: mIoU (the best-checkpoint metric), mAcc and aAcc in percent, single
  scale at ``data.seg_scale`` (evaluation/segmentation_loop.py), and the EMA weights' when EMA is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import dist
from ...errors import UserError
from ...recipe import TrainConfig
from .state import Data, Run
from .task import Task

AUX_WEIGHT = 0.4  # the official auxiliary_head loss_weight
IGNORE_INDEX = 255


def _pixel_ce(logits: Tensor, target: Tensor) -> Tensor:
    """mmseg's CrossEntropyLoss (use_sigmoid=False, avg_non_ignore=False): the per-pixel loss, ignored
    pixels 0, averaged over every pixel."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").mean()


class SegmentationLoss(nn.Module):
    """Decode-head loss + ``aux_weight`` x auxiliary-head loss of ``model(x, aux=True)``'s pair."""

    def __init__(self, aux_weight: float = AUX_WEIGHT) -> None:
        super().__init__()
        self.aux_weight = aux_weight

    def forward(self, output: Any, target: Tensor) -> Tensor:
        logits, aux = output if isinstance(output, tuple) else (output, None)
        loss = _pixel_ce(logits, target)
        if aux is not None:
            loss = loss + self.aux_weight * _pixel_ce(aux, target)
        return loss


def build_segmenter(cfg: TrainConfig, num_classes: int, resume_state: dict | None = None) -> nn.Module:
    """The recipe's UperNet: its options, the official backbone settings unless the recipe sets its own,
    ``model.pretrained`` loaded (not when a checkpoint will be restored: it holds every weight)."""
    from ...hub import create_model
    from ...models import family_of_name, layer_scale_option, set_chunked_mlp
    from ...models.factory import dense_backbone
    from ...recipe.schema import ModelConfig

    m, plain = cfg.model, ModelConfig()
    arch = m.name.partition(".")[0]
    opts = dict(m.options)
    if m.drop_path_rate != plain.drop_path_rate:
        opts.setdefault("drop_path_rate", m.drop_path_rate)
    if m.layer_scale_init_value != plain.layer_scale_init_value:
        family = family_of_name(dense_backbone(arch) or arch)
        for key, value in layer_scale_option(family, m.layer_scale_init_value).items():
            opts.setdefault(key, value)
    pretrained = None if resume_state is not None else m.pretrained
    try:
        model = create_model(arch, pretrained=pretrained, num_classes=num_classes, **opts)
    except TypeError as e:
        raise UserError(f"config key model.options: {e}") from None
    except ValueError as e:
        raise UserError(f"config key model.name: {e}") from None
    if m.grad_checkpointing:
        model.backbone.set_grad_checkpointing(True)
    set_chunked_mlp(model, m.chunked_mlp)
    if dist.is_dist() and torch.distributed.get_backend() == "nccl":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_segmentation_data(cfg: TrainConfig, ckpt: dict | None, ckpt_path: Path | None, accum: int) -> Data:
    """Train: the mmseg pipeline's crops (stacked); val: each image and mask as read (lists), the model's
    input resized by the evaluation."""
    from ...data import build_dataset
    from ...data.segmentation import SegEvalTransform, SegTrainTransform, list_collate
    from .setup import loaders

    d = cfg.data
    train_ds = build_dataset(d, d.train_split, SegTrainTransform(d))
    val_ds = build_dataset(d, d.val_split, SegEvalTransform()) if cfg.train.eval_every > 0 else None
    classes = list(train_ds.classes)
    num_classes = cfg.model.num_classes or len(classes)
    if num_classes != len(classes):
        raise UserError(
            f"config key model.num_classes is {num_classes} but dataset {d.dataset} has "
            f"{len(classes)} classes"
        )
    return loaders(
        cfg, train_ds, val_ds, classes, (ckpt, ckpt_path), accum, val_collate_fn=list_collate,
        val_batch=cfg.train.batch_size,
    )  # fmt: skip


def prepare_batch(run: Run, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, int]:
    device = run.proc.device
    images = images.to(device, non_blocking=True)
    if run.cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True), images.shape[0]


def segmentation_loss(model: nn.Module, criterion: nn.Module, images: Tensor, masks: Tensor) -> Tensor:
    return criterion(model(images, aux=True), masks)  # through DDP's forward: gradients are synced


def evaluate_miou(run: Run) -> dict[str, float]:
    """val_miou / val_macc / val_aacc (percent) of the model and, with EMA, of its average."""
    from ...evaluation.segmentation_loop import evaluate_segmentation

    cfg, trainer, d = run.cfg, run.trainer, run.cfg.data
    kw = {"scale": d.seg_scale, "mean": d.mean, "std": d.std, "amp_dtype": run.proc.amp_dtype}
    n = len(run.data.classes)
    out: dict[str, float] = {}
    models = [("val_", trainer.model)]
    if trainer.ema is not None and cfg.ema.eval and run.progress.ema_updates > 0:
        models.append(("ema_val_", trainer.ema.module))
    for prefix, model in models:
        res = evaluate_segmentation(model, run.data.val_loader, run.proc.device, n, **kw)
        out.update(
            {
                f"{prefix}miou": 100 * res["mIoU"],
                f"{prefix}macc": 100 * res["mAcc"],
                f"{prefix}aacc": 100 * res["aAcc"],
            }
        )
    trainer.model.train()
    return out


SEGMENTATION = Task(
    "segmentation",
    labels=True,
    criterion=lambda cfg: SegmentationLoss(),
    build_model=build_segmenter,
    build_data=build_segmentation_data,
    prepare=prepare_batch,
    loss=segmentation_loss,
    evaluate=evaluate_miou,
    metric="miou",
    metric_label="mIoU",
)
