"""What a run trains for: a classifier (the default, torchvision's reference loop as it is), FCMAE
pre-training (``model.name: fcmae_<encoder>``, ``convnext pretrain``), semantic segmentation
(``upernet_<backbone>``, segmentation.py) or detection (``maskrcnn_``/``fasterrcnn_<backbone>``,
detection.py). The one loop of loop.py asks the task for: the model to build, the data (loaders and class
names), a batch made ready on the device, the loss of that batch, what to evaluate at an epoch's end and
which of its numbers picks the best checkpoint. Everything else (DDP, AMP, EMA, accumulation, checkpoints,
exact resume, trackers, curves) is the loop's, shared.

Pre-training reads images only: the data's labels (class folders, a catalog dataset's classes) are loaded as
the loader yields them and ignored; the masks come from the global RNG, whose state every checkpoint carries
per rank, so a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ... import dist
from ...recipe import TrainConfig
from ...recipe.pretrain import is_fcmae, split_fcmae

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .state import Data, Run

#: val images shown in each epoch's reconstruction figure (the first of the val split: the same every epoch)
FIGURE_IMAGES = 6


@dataclass(frozen=True)
class Task:
    """A hook left None is the classifier's: setup.build_model / setup.build_data, loop.classifier_batch
    (to the device, normalisation, MixUp/CutMix, channels_last), ``criterion(model(inputs), targets)`` and
    loop.evaluate_epoch (top-1/top-5/loss)."""

    name: str
    labels: bool  # the data's class labels are used (class checks, MixUp/CutMix, labels_per_class)
    criterion: Callable[[TrainConfig], nn.Module]
    # (cfg, class count of the data, the resumed checkpoint's model weights or None) -> the model to train
    build_model: Callable[[TrainConfig, int, dict | None], nn.Module] | None = None
    # (cfg, resumed checkpoint or None, its path, accum_steps) -> state.Data (loaders, classes, counts)
    build_data: Callable[[TrainConfig, dict | None, Path | None, int], Data] | None = None
    # (run, the loader's batch) -> (inputs, targets, images in the batch), on the run's device
    prepare: Callable[[Run, Any, Any], tuple[Any, Any, int]] | None = None
    # (model being trained (DDP-wrapped), criterion, inputs, targets) -> the scalar loss, under autocast
    loss: Callable[[nn.Module, nn.Module, Any, Any], torch.Tensor] | None = None
    evaluate: Callable[[Run], dict[str, float]] | None = None
    # the epoch records' val_<metric> / ema_val_<metric> (percent, higher is better) that pick best.pth and
    # the curves' second panel; None: no best (pre-training keeps last.pth and the epochs)
    metric: str | None = "top1"
    metric_label: str = "top-1"  # how the epoch line, the curves and `convnext train`'s last line name it


class FcmaeLoss(nn.Module):
    """The FCMAE model computes its own loss (mean squared error on the masked patches): the criterion
    hands it on, so the loop's step is the classifier's line for line."""

    def forward(self, output: Any, _targets: torch.Tensor) -> torch.Tensor:
        return output.loss


def build_fcmae(cfg: TrainConfig, _num_classes: int = 0, _resume_state: dict | None = None) -> nn.Module:
    """The recipe's FCMAE model: ``model.name`` fcmae_<encoder>, the encoder's options and the FCMAE
    settings from ``model.options`` (recipe/pretrain.py), at ``data.img_size``."""
    from ...models.fcmae import create_fcmae

    encoder, settings = split_fcmae(cfg.model)
    kw = dict(encoder.options)
    if cfg.model.drop_path_rate:  # the official pre-training has none; a recipe may ask for it
        kw["drop_path_rate"] = cfg.model.drop_path_rate
    model = create_fcmae(cfg.model.name.partition(".")[0], img_size=cfg.data.img_size, **settings, **kw)
    if cfg.model.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    return model


def _classification_criterion(cfg: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)


CLASSIFY = Task("classify", labels=True, criterion=_classification_criterion)


#: model-name prefix -> "module:attribute" of its Task in this package (imported when a run needs it:
#: torchvision's detection models are slow to import)
DENSE_TASKS = {
    "upernet_": "segmentation:SEGMENTATION",
    "maskrcnn_": "detection:DETECTION",
    "fasterrcnn_": "detection:DETECTION",
}


def task_of(cfg: TrainConfig) -> Task:
    """The task of the recipe's ``model.name``: its prefix decides (fcmae_, upernet_, maskrcnn_, fasterrcnn_;
    any other name is a classifier)."""
    name = cfg.model.name.partition(".")[0]
    if is_fcmae(name):
        return FCMAE
    for prefix, where in DENSE_TASKS.items():
        if name.startswith(prefix):
            import importlib

            module, _, attr = where.partition(":")
            return getattr(importlib.import_module(f".{module}", __package__), attr)
    return CLASSIFY


# ------------------------------------------------------------------------------------------ evaluation
def _val_generator(cfg: TrainConfig, device: torch.device) -> torch.Generator:
    """The masks of an evaluation: seeded by the run's seed alone, so every epoch (and every resume) scores
    and draws the same masks, and the global RNG the training continues with is untouched."""
    g = torch.Generator(device=device)
    g.manual_seed(cfg.seed + 1000003 * (1 + dist.get_rank()))
    return g


@torch.no_grad()
def reconstruction_loss(model: nn.Module, run: Run) -> float:
    """The mean FCMAE loss over the val split (each rank its shard; the images counted once)."""
    from ...data.file_datasets import split_unreadable

    proc, loader = run.proc, run.data.val_loader
    model.eval()
    g = _val_generator(run.cfg, proc.device)
    total = torch.zeros(2, dtype=torch.float64, device=proc.device)
    autocast = torch.autocast(proc.device.type, dtype=proc.amp_dtype, enabled=proc.amp_dtype is not None)
    for images, targets in loader:
        keep, _ = split_unreadable(targets)
        if keep is not None:
            images = images[keep]
        if not len(images):
            continue
        images = images.to(proc.device, non_blocking=True)
        with autocast:
            loss = model(images, generator=g).loss
        total += torch.stack([loss.double() * len(images), torch.tensor(len(images), device=proc.device)])
    if dist.is_dist():
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def reconstruction_figure(
    model: nn.Module, images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator, title: str = ""
) -> Figure:
    """Original / masked input / reconstruction (the masked patches predicted, the visible ones kept, as
    the official visualisation shows them) for ``images`` (normalized, N x 3 x H x W)."""
    from matplotlib.figure import Figure

    _, settings = split_fcmae(cfg.model)
    model.eval()
    with torch.no_grad():
        out = model(images, generator=generator)
        pred = out.pred.float()
        if settings["norm_pix_loss"]:  # the prediction is in per-patch normalized units: back to pixels
            target = model.patchify(images).float()
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        recon = model.unpatchify(pred)
        mask = model.unpatchify(out.mask.float().unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1: masked
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)

    def pixels(x: torch.Tensor) -> Any:
        return (x.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    images, recon, mask = images.float().cpu(), recon.cpu(), mask.cpu()
    keep = 1 - mask.permute(0, 2, 3, 1).numpy()
    rows = [
        ("original", pixels(images)),
        ("masked input", pixels(images) * keep + 0.5 * (1 - keep)),  # the masked patches grey
        ("reconstruction", pixels(images * (1 - mask) + recon * mask)),
    ]
    n = images.shape[0]
    fig = Figure(figsize=(1.6 * n + 1.2, 1.6 * 3 + 0.5), dpi=100, facecolor="white")
    for r, (label, pics) in enumerate(rows):
        for c in range(n):
            ax = fig.add_subplot(3, n, r * n + c + 1)
            ax.imshow(pics[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_images(run: Run) -> torch.Tensor:
    """The first :data:`FIGURE_IMAGES` readable val images, eval-transformed (the same every epoch)."""
    ds = run.data.val_loader.dataset
    picked = []
    for i in range(min(len(ds), 4 * FIGURE_IMAGES)):
        img, t = ds[i]
        if int(t) >= 0:
            picked.append(img)
        if len(picked) == FIGURE_IMAGES:
            break
    return torch.stack(picked)


def figure_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "reconstructions" / f"epoch_{epoch:04d}.png"


def evaluate_reconstruction(run: Run) -> dict[str, float]:
    """The epoch's val reconstruction loss (and the EMA weights'), and rank 0's reconstruction figure of a
    few fixed val images in ``<run.dir>/reconstructions/epoch_XXXX.png``."""
    trainer, progress = run.trainer, run.progress
    out = {"val_loss": reconstruction_loss(trainer.model, run)}
    use_ema = trainer.ema is not None and run.cfg.ema.eval and progress.ema_updates > 0
    if use_ema:
        out["ema_val_loss"] = reconstruction_loss(trainer.ema.module, run)
    if run.proc.main:
        import contextlib

        from ...evaluation.figures import save_figure

        model = trainer.ema.module if use_ema else trainer.model
        images = figure_images(run).to(run.proc.device)
        g = _val_generator(run.cfg, run.proc.device)
        epoch = progress.epoch  # end_epoch has counted the epoch already
        which = "EMA weights" if use_ema else "weights"
        title = f"{run.cfg.model.name}, epoch {epoch} ({which}): original / masked input / reconstruction"
        with contextlib.suppress(OSError):  # a full disk: the picture is the least of it
            save_figure(
                reconstruction_figure(model, images, run.cfg, g, title),
                figure_path(Path(run.cfg.run.dir).expanduser(), epoch),
            )
    trainer.model.train()
    return out


FCMAE = Task(
    "fcmae",
    labels=False,
    criterion=lambda cfg: FcmaeLoss(),
    build_model=build_fcmae,
    evaluate=evaluate_reconstruction,
    metric=None,
)
