"""curves.png: loss (train and validation on one basis), accuracy and learning rate per epoch.

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global backend is switched
(a notebook user's inline backend stays as it was), nothing needs a display, and figures are freed with
their last reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation.figures import save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MARKERS_UP_TO = 40  # epochs; beyond, markers only clutter the lines


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], float(r[key])) for r in records if r.get(key) is not None and "epoch" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_basis(
    records: list[dict[str, Any]], label_smoothing: float | None = None, mixup: bool | None = None
) -> tuple[str, str, str]:
    """(validation loss key, EMA validation loss key, caption) for the loss panel.

    The training loss is the criterion's: cross-entropy with the recipe's label smoothing and, when
    enabled, MixUp/CutMix soft targets, averaged over each epoch's augmented batches while the weights
    change. ``val_loss_smoothed`` (same smoothing, end-of-epoch weights) is on that basis; plain
    ``val_loss`` is not (with smoothing 0.1 over 10 classes the train loss floors near 0.5, val near 0):
    runs that predate the smoothed key are plotted with it and the caption says so.
    """
    if label_smoothing is None:
        ls = "the recipe's label smoothing"
    else:
        ls = f"label smoothing {label_smoothing:g}" if label_smoothing else "no label smoothing"
    mix = {True: " and MixUp/CutMix targets", False: "", None: " (and MixUp/CutMix targets if enabled)"}[
        mixup
    ]
    if any(r.get("val_loss_smoothed") is not None for r in records):
        caption = (
            f"Loss basis: train = mean over each epoch's augmented batches with {ls}{mix}; "
            f"val = cross-entropy with the same smoothing, end-of-epoch weights."
        )
        if mixup is not False:
            caption += " Mixed targets alone keep train above val."
        return "val_loss_smoothed", "ema_val_loss_smoothed", caption
    caption = (
        f"Loss basis differs (these metrics predate val_loss_smoothed): train has {ls}{mix}, "
        "val is plain cross-entropy, so train sits higher by construction."
    )
    return "val_loss", "ema_val_loss", caption


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def curves_figure(
    records: list[dict[str, Any]],
    *,
    num_classes: int | None = None,
    label_smoothing: float | None = None,
    mixup: bool | None = None,
    title: str = "",
    reconstruction: bool = False,
    metric: tuple[str | None, str] = ("top1", "top-1"),
) -> Figure:
    """Three panels from metrics.jsonl records: loss (train vs validation on one basis, see
    ``loss_basis``), accuracy (top-1, top-5, EMA; the best epoch marked) and the learning rate at the end
    of each epoch. Top-5 is left out with 5 classes or fewer (always 100%), or, when ``num_classes`` is
    unknown, when it is 100% at every epoch (the legend says so). ``metric``: the records' val_<key> and its
    label for the second panel (segmentation's mIoU, detection's box mAP; top-5 belongs to top-1 only)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.6), dpi=100, facecolor="white")
    grid = fig.add_gridspec(
        1, 3, width_ratios=[1.15, 1.15, 0.9], left=0.05, right=0.99, top=0.86, bottom=0.22
    )
    ax_loss, ax_acc, ax_lr = (fig.add_subplot(grid[0, i]) for i in range(3))
    n_epochs = len({r.get("epoch") for r in records})
    style: dict[str, Any] = {"marker": "o", "ms": 4} if n_epochs <= MARKERS_UP_TO else {}

    val_key, ema_key, caption = loss_basis(records, label_smoothing, mixup)
    smoothed = val_key.endswith("_smoothed")
    kind = "" if reconstruction else " (same smoothing)" if smoothed else " (plain CE)"
    dense = metric[0] not in ("top1", None)  # segmentation, detection: the task's own loss
    if reconstruction:  # FCMAE pre-training: no classes, the loss is the masked patches' error
        val_key, ema_key = "val_loss", "ema_val_loss"
        caption = (
            "Loss: mean squared error on the masked patches (per-patch normalised pixels); train over each "
            "epoch's batches, val with fixed masks at the end of the epoch."
        )
    elif dense:
        val_key, ema_key, kind = "val_loss", "ema_val_loss", ""
        caption = (
            "Loss: the model's training loss (a segmenter's pixel cross-entropy with its 0.4-weighted "
            "auxiliary head, a detector's sum of RPN and RoI-head losses), mean over each epoch's batches; "
            f"the second panel is the val {metric[1]}, percent."
        )
    for key, label, color in (
        ("train_loss", "train loss", "C0"),
        (val_key, "val loss" + kind, "C1"),
        (ema_key, "EMA val loss" + kind, "C2"),
    ):
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, label=label, color=color, **style)
    ax_loss.set_ylabel(
        "masked-patch MSE" if reconstruction else "training loss" if dense else "cross-entropy"
    )
    ax_loss.set_title("loss")

    key, name = metric
    val_metric, ema_metric = f"val_{key}", f"ema_val_{key}"
    x5, top5 = _series(records, "val_top5") if key == "top1" else ([], [])
    few = num_classes is not None and num_classes <= 5
    flat = num_classes is None and top5 and all(v >= 99.995 for v in top5)
    for k, label, color in ((val_metric, f"val {name}", "C1"), (ema_metric, f"EMA val {name}", "C2")):
        x, y = _series(records, k)
        if x:
            ax_acc.plot(x, y, label=label, color=color, **style)
    if x5 and not few and not flat:
        ax_acc.plot(x5, top5, label="val top-5", color="C1", ls="--", alpha=0.7, **style)
    for key, color in ((val_metric, "C1"), (ema_metric, "C2")):
        x, y = _series(records, key)
        if x:
            i = max(range(len(y)), key=lambda j: (y[j], -j))  # the first epoch with the best value
            ax_acc.plot([x[i]], [y[i]], marker="*", ms=13, color=color, ls="none", zorder=5)
            right = len(x) > 1 and x[i] > (x[0] + x[-1]) / 2
            ax_acc.annotate(
                f"best {y[i]:.2f}% @ {x[i]}", (x[i], y[i]), textcoords="offset points",
                xytext=(-9 if right else 9, -4), ha="right" if right else "left", va="top", fontsize=8,
                color=color,
            )  # fmt: skip
    if flat:
        ax_acc.plot([], [], " ", label="top-5: 100% every epoch")
    ax_acc.set_ylabel("accuracy (%)" if metric[0] == "top1" else f"{metric[1]} (%)")
    if reconstruction:
        ax_acc.text(0.5, 0.5, "pre-training: no labels", ha="center", color="0.4", transform=ax_acc.transAxes)
    what = "accuracy" if metric[0] == "top1" else metric[1]
    ax_acc.set_title(f"validation {what} (* best)")

    xl, lr = _series(records, "lr")
    if xl:
        ax_lr.plot(xl, lr, color="C4", label="lr", **style)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning rate (end of each epoch)")

    for ax in (ax_loss, ax_acc, ax_lr):
        _integer_epochs(ax)
        if ax.get_legend_handles_labels()[0] and ax is not ax_lr:
            ax.legend(fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11, x=0.05, ha="left")
    fig.text(0.05, 0.02, caption, fontsize=9, color="0.3", ha="left", va="bottom")
    return fig


def plot_curves(
    records: list[dict[str, Any]],
    path: str | Path,
    *,
    num_classes: int | None = None,
    label_smoothing: float | None = None,
    mixup: bool | None = None,
    title: str = "",
    reconstruction: bool = False,
    metric: tuple[str | None, str] = ("top1", "top-1"),
) -> Path:
    """``curves_figure`` written atomically to ``path`` (the run's curves.png); ``reconstruction``: a
    pre-training run's (the loss panel is the masked patches' error)."""
    fig = curves_figure(
        records,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        mixup=mixup,
        title=title,
        reconstruction=reconstruction,
        metric=metric,
    )
    return save_figure(fig, path)
