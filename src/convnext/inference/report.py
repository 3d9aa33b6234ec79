"""Evaluation reports people look at: per-class accuracy (CSV) and a confusion matrix (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

MAX_LABELED = 50  # above this many classes a full matrix is unreadable: show the most confused ones
MOST_CONFUSED = 30


def per_class_rows(predictions: torch.Tensor, targets: torch.Tensor, names: list[str]) -> list[dict]:
    """One row per class present in the data: index, name, n, top1 and top5 (percent)."""
    rows = []
    hit1 = predictions[:, 0] == targets
    hit5 = (predictions == targets[:, None]).any(dim=1)
    for c in torch.unique(targets).tolist():
        m = targets == c
        n = int(m.sum())
        rows.append(
            {
                "index": c,
                "class": names[c] if c < len(names) else f"class {c}",
                "n": n,
                "top1": round(100.0 * float(hit1[m].sum()) / n, 4),
                "top5": round(100.0 * float(hit5[m].sum()) / n, 4),
            }
        )
    return rows


def write_per_class_csv(path: str | Path, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["index", "class", "n", "top1", "top5"])
        w.writeheader()
        w.writerows(rows)


def confusion_labels(top1: torch.Tensor, targets: torch.Tensor) -> tuple[list[int], bool]:
    """The classes to show: every true and predicted class, or, beyond MAX_LABELED of them, the
    MOST_CONFUSED classes with the most errors (as truth or as prediction). Returns (labels, reduced)."""
    labels = sorted(set(targets.tolist()) | set(top1.tolist()))
    if len(labels) <= MAX_LABELED:
        return labels, False
    wrong = top1 != targets
    errors = torch.bincount(targets[wrong], minlength=max(labels) + 1) + torch.bincount(
        top1[wrong], minlength=max(labels) + 1
    )
    order = sorted(labels, key=lambda c: (-int(errors[c]), c))[:MOST_CONFUSED]
    return sorted(order), True


def write_confusion_png(
    path: str | Path, top1: torch.Tensor, targets: torch.Tensor, names: list[str], title: str = ""
) -> None:
    """Rows: true class, columns: predicted class, counts annotated when the matrix is small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    labels, reduced = confusion_labels(top1, targets)
    cm = confusion_matrix(targets.numpy(), top1.numpy(), labels=labels)
    k = len(labels)
    size = min(max(6.0, 0.28 * k + 3), 18.0)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    tick = [(names[c] if c < len(names) else f"class {c}")[:28] for c in labels]
    ax.set_xticks(range(k), tick, rotation=90, fontsize=7)
    ax.set_yticks(range(k), tick, fontsize=7)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if cm[i, j] > cm.max() / 2 else "black"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    what = f"the {k} most confused classes" if reduced else f"{k} classes"
    ax.set_title(f"{title}\nconfusion matrix ({what}, {len(targets)} images)".strip(), fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
