"""curves.png: training loss, validation loss and top-1 (model and EMA) per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train loss")
    for key, label in (("val_loss", "val loss"), ("ema_val_loss", "EMA val loss")):
        x, y = series(key)
        if x:
            ax_loss.plot(x, y, marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key, label in (
        ("val_top1", "val top-1"),
        ("val_top5", "val top-5"),
        ("ema_val_top1", "EMA val top-1"),
    ):
        x, y = series(key)
        if x:
            ax_acc.plot(x, y, marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
