"""Evaluation reports people look at: per-class accuracy, precision, recall and F1 (CSV), every image's
prediction (CSV, to find the mistakes), a confusion matrix (PNG; counts, or rows in percent) and the most
confused pairs (in the figure beyond MAX_LABELED classes, and always as a CSV beside it)."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_LABELED = 50  # above this many classes a full matrix is unreadable: show the most confused ones
MOST_CONFUSED = 30  # classes in the reduced matrix
PAIRS_SHOWN = 25  # confused pairs listed beside the reduced matrix (the CSV has them all)


def shown_path(path: str) -> str:
    """A file name as the text output prints it: as it is, unless it holds a newline, a tab, an escape
    sequence or another unprintable character (a name with a newline would read as two names, neither of
    which exists); then Python's repr, quoted and escaped. The JSON outputs keep the exact name."""
    return path if path.isprintable() else repr(path)


def per_class_rows(
    predictions: torch.Tensor, targets: torch.Tensor, names: list[str], top5: bool = True
) -> list[dict]:
    """One row per class present in the data: index, name, n, top1 and top5 (percent; None without
    ``top5``: with 5 classes or fewer it is 100% by definition)."""
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
                "top5": round(100.0 * float(hit5[m].sum()) / n, 4) if top5 else None,
            }
        )
    return rows


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """A CSV written to a temporary name and renamed: a full disk leaves no empty or half file behind,
    and is one sentence naming the file."""
    from ..errors import UserError

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except OSError as e:
        why = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
        raise UserError(f"cannot write {path} ({why or e}); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


PER_CLASS_FIELDS = ["index", "class", "n", "top1", "top5", "precision", "recall", "f1"]
PREDICTION_FIELDS = [
    "path", "true", "true_class", "predicted", "predicted_class", "predicted_prob", "true_prob", "correct",
]  # fmt: skip


def write_per_class_csv(path: str | Path, rows: list[dict], table: list[dict] | None = None) -> None:
    """``rows`` (:func:`per_class_rows`) as CSV; with ``table`` (``Evaluation.class_table``) each row gets
    its class's precision, recall and F1 too. A ``top5`` of None is an empty cell (5 classes or fewer)."""
    by = {r["index"]: r for r in table or []}
    out = [
        {**r, **{k: by.get(r["index"], {}).get(k, "") for k in ("precision", "recall", "f1")}} for r in rows
    ]
    _write_csv(Path(path), PER_CLASS_FIELDS if table is not None else PER_CLASS_FIELDS[:5], out)


def write_predictions_csv(path: str | Path, rows: list[dict]) -> Path:
    """``evaluate --predictions``: one row per counted image (``Evaluation.prediction_rows``), written to
    a temporary name and renamed like every report."""
    path = Path(path)
    _write_csv(path, PREDICTION_FIELDS, rows)
    return path


def confusion_counts(top1: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows the true class, columns the predicted one."""
    k = num_classes
    return torch.bincount(targets.long() * k + top1.long(), minlength=k * k).view(k, k)


def most_confused_pairs(
    top1: torch.Tensor, targets: torch.Tensor, names: list[str], limit: int | None = None
) -> list[dict]:
    """Every (true, predicted) pair with at least one error, most errors first (ties: the larger share of
    the true class, then class index). Each row: true, predicted (indices), true_class, predicted_class,
    count, and percent (of the true class's images)."""
    if not len(targets):
        return []
    k = int(max(int(targets.max()), int(top1.max()))) + 1
    cm = confusion_counts(top1, targets, k)
    n_true = cm.sum(dim=1)
    off = cm.clone()
    off.fill_diagonal_(0)
    t, p = off.nonzero(as_tuple=True)
    rows = [
        {
            "true": int(a),
            "predicted": int(b),
            "true_class": _name(names, int(a)),
            "predicted_class": _name(names, int(b)),
            "count": int(off[a, b]),
            "percent": round(100.0 * float(off[a, b]) / float(n_true[a]), 2),
        }
        for a, b in zip(t.tolist(), p.tolist())
    ]
    rows.sort(key=lambda r: (-r["count"], -r["percent"], r["true"], r["predicted"]))
    return rows[:limit] if limit is not None else rows


def write_pairs_csv(path: str | Path, pairs: list[dict]) -> Path:
    path = Path(path)
    _write_csv(path, ["true", "predicted", "true_class", "predicted_class", "count", "percent"], pairs)
    return path


def _name(names: list[str], c: int) -> str:
    return names[c] if c < len(names) else f"class {c}"


def tick_names(names: list[str], classes: list[int], width: int = 28) -> list[str]:
    """Short tick labels: an ImageNet description's first name ("tench, Tinca tinca" -> "tench") unless
    two shown classes share it, then the full name, then the index too (ImageNet-1k has two classes
    named just "crane", the bird and the machine); cut to ``width``."""

    def unique(labels: list[str], fallback: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for x in labels:
            seen[x] = seen.get(x, 0) + 1
        return [x if seen[x] == 1 else f for x, f in zip(labels, fallback)]

    full = [_name(names, c) for c in classes]
    first = [n.split(",")[0].strip() or n for n in full]
    out = unique(unique(first, full), [f"{first[i]} #{c}" for i, c in enumerate(classes)])
    return [o if len(o) <= width else o[: width - 1] + "…" for o in out]


def confusion_labels(top1: torch.Tensor, targets: torch.Tensor) -> tuple[list[int], bool]:
    """The classes to show: every true and predicted class, or, beyond MAX_LABELED of them, up to
    MOST_CONFUSED classes taken from the most confused pairs in order (so that a confused pair sits side
    by side in the matrix). Returns (labels, reduced)."""
    labels = sorted(set(targets.tolist()) | set(top1.tolist()))
    if len(labels) <= MAX_LABELED:
        return labels, False
    order: list[int] = []
    for pair in most_confused_pairs(top1, targets, []):
        for c in (pair["true"], pair["predicted"]):
            if c not in order and len(order) < MOST_CONFUSED:
                order.append(c)
        if len(order) >= MOST_CONFUSED:
            break
    return order, True


def confusion_figure(
    top1: torch.Tensor,
    targets: torch.Tensor,
    names: list[str],
    title: str = "",
    pairs_shown: int = PAIRS_SHOWN,
    pairs_file: str = "",
    normalize: bool = False,
) -> Figure:
    """Rows: true class, columns: predicted class; counts written in the cells up to 20 classes.

    Up to MAX_LABELED classes every class is shown and labelled. Beyond, the matrix shows the
    MOST_CONFUSED classes of the most confused pairs, next to a list of the ``pairs_shown`` most confused
    pairs (true -> predicted, count, share of the true class; ``pairs_file`` names where all of them
    are). The colour scale is a square root (a single
    error still shows next to a diagonal of hundreds); the colour bar is labelled in whole images.

    ``normalize``: each row as the percentage of its true class's images (rows sum to 100%; sklearn's
    ``normalize="true"``), on a linear scale: classes of very different sizes compare, and the diagonal
    is each class's recall.
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels, reduced = confusion_labels(top1, targets)
    k = len(labels)
    if not k:
        fig = Figure(figsize=(4, 1), dpi=100, facecolor="white")
        fig.text(0.5, 0.5, f"{title}\nno images: no confusion matrix".strip(), ha="center", va="center")
        return fig
    index = torch.full((max(int(targets.max()), int(top1.max())) + 1,), -1, dtype=torch.long)
    index[torch.tensor(labels, dtype=torch.long)] = torch.arange(k)
    t, p = index[targets.long()], index[top1.long()]
    keep = (t >= 0) & (p >= 0)
    cm = confusion_counts(p[keep], t[keep], k).numpy() if k else torch.zeros(0, 0).numpy()
    if normalize:  # of every image of the true class, also those predicted as a class not shown
        row_n = torch.bincount(t[t >= 0], minlength=k).clamp_min(1).double().numpy()
        cm = 100.0 * cm / row_n[:, None]

    cell = min(0.6, max(0.2, 7.0 / max(k, 1)))  # inches per class: 0.2 in (20 px) at 35+ classes
    side = max(k * cell, 3.0)
    font = 9 if cell >= 0.3 else 7
    ticks = tick_names(names, labels)
    longest = max((len(x) for x in ticks), default=4)
    margin = 0.5 + 0.075 * longest * font / 7  # room for the tick labels, inches
    table_w = 5.6 if reduced else 0.0
    fig_w, fig_h = margin + side + 1.3 + table_w, margin + side + 0.9
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    ax = fig.add_axes((margin / fig_w, margin / fig_h, side / fig_w, side / fig_h))
    cax = fig.add_axes(((margin + side + 0.15) / fig_w, margin / fig_h, 0.18 / fig_w, side / fig_h))
    if normalize:
        vmax = 100
        im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
        bar = fig.colorbar(im, cax=cax)
        bar.set_ticks([0, 25, 50, 75, 100])
        bar.set_label("% of the true class's images (row)", fontsize=8)
    else:
        vmax = max(int(cm.max()) if cm.size else 1, 1)
        im = ax.imshow(cm, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=vmax), interpolation="nearest")
        bar = fig.colorbar(im, cax=cax)
        roots = MaxNLocator(integer=True, nbins=7).tick_values(0, vmax**0.5)  # whole squares: evenly spaced
        bar.set_ticks(sorted({int(r) ** 2 for r in roots if 0 <= r and int(r) ** 2 <= vmax}))
        bar.set_label("images (square-root colour scale)", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    ax.set_xticks(range(k), ticks, rotation=90, fontsize=font)
    ax.set_yticks(range(k), ticks, fontsize=font)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    v = cm[i, j]
                    if normalize:
                        color, cell_text = ("white" if v > 60 else "black"), (f"{v:.0f}" if v >= 1 else "<1")
                    else:  # ~0.6 of the sqrt scale
                        color, cell_text = ("white" if v > vmax * 0.35 else "black"), str(int(v))
                    ax.text(j, i, cell_text, ha="center", va="center", fontsize=font - 1, color=color)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    n_classes = len(set(targets.tolist()) | set(top1.tolist()))
    if reduced:
        what = f"the {k} classes of the most confused pairs, of {n_classes} seen"
    else:
        what = f"{k} classes"
    acc = 100.0 * float((top1 == targets).float().mean()) if len(targets) else 0.0
    rows = "; rows in % of each true class" if normalize else ""
    head = f"confusion matrix: {what}; {len(targets)} images, top-1 {acc:.2f}%{rows}"
    fig.text(margin / fig_w, 1 - 0.15 / fig_h, title, fontsize=10, weight="bold", va="top")
    fig.text(margin / fig_w, 1 - 0.42 / fig_h, head, fontsize=9, va="top", wrap=True)  # small k: 2 lines
    if reduced:
        every = most_confused_pairs(top1, targets, names)
        pairs = every[:pairs_shown]
        x0 = (margin + side + 1.3) / fig_w
        lines = [f"{'n':>4} {'% of true':>9}  true -> predicted"]
        for r in pairs:
            a, b = tick_names(names, [r["true"], r["predicted"]], width=22)
            lines.append(f"{r['count']:>4} {r['percent']:>8.1f}%  {a} -> {b}")
        where = f"; all in {pairs_file}" if pairs_file else ""
        lines += ["", f"{len(every)} confused pairs in all{where}"]
        fig.text(x0, (margin + side) / fig_h, f"the {len(pairs)} most confused pairs", fontsize=9,
                 weight="bold", va="bottom")  # fmt: skip
        fig.text(x0, (margin + side - 0.08) / fig_h, "\n".join(lines), fontsize=7.5, family="monospace",
                 va="top", linespacing=1.35)  # fmt: skip
    return fig


def write_confusion_png(
    path: str | Path,
    top1: torch.Tensor,
    targets: torch.Tensor,
    names: list[str],
    title: str = "",
    normalize: bool = False,
) -> list[Path]:
    """``confusion_figure`` as a PNG (atomically), and beside it ``<stem>_pairs.csv``: every confused
    pair, most errors first (``most_confused_pairs``) — the figure holds the top of that list, the CSV all
    of it (a 1000-class evaluation has thousands of pairs), to sort and grep. Returns both paths."""
    from ..evaluation.figures import save_figure

    path = Path(path)
    csv_path = path.with_name(f"{path.stem}_pairs.csv")
    fig = confusion_figure(top1, targets, names, title=title, pairs_file=csv_path.name, normalize=normalize)
    png = save_figure(fig, path)
    return [png, write_pairs_csv(csv_path, most_confused_pairs(top1, targets, names))]
