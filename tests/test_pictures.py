"""Pictures people look at: Grad-CAM figures (side by side, class and probability on top, tiny inputs
enlarged, class in the file name), curves.png (one loss basis, a learning-rate panel, integer epochs, no
pointless top-5) and the confusion matrix (integer colour bar, readable ticks, the most confused pairs).

Properties are read from the matplotlib figures the functions build, not from pixels."""

from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.io import decode_png, read_file, write_png

import convnext
from convnext.data import DataConfig
from convnext.data.classes import imagenet1k_descriptions
from convnext.engine.plots import curves_figure, plot_curves
from convnext.evaluation.loop import evaluate
from convnext.inference import predict_paths
from convnext.inference.cam import (
    PANEL_MAX,
    PANEL_MIN,
    GradCAM,
    cam_figure,
    cam_filename,
    display_scale,
)
from convnext.inference.report import (
    MOST_CONFUSED,
    confusion_figure,
    most_confused_pairs,
    tick_names,
    write_confusion_png,
)


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return convnext.create_model("convnext_atto", num_classes=3, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


def _png_hw(path: str | Path) -> tuple[int, int]:
    img = decode_png(read_file(str(path)))
    return img.shape[1], img.shape[2]


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]


# ---------------------------------------------------------------------------------------------- Grad-CAM
def test_cam_files_named_by_class_side_by_side_and_tiny_inputs_enlarged(
    small_net: nn.Module, imagenet_sample: Path, tmp_path: Path
) -> None:
    digit = tmp_path / "digit.png"
    write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), str(digit))
    photo = tmp_path / "photo.JPEG"
    shutil.copy(sorted(imagenet_sample.glob("*/*.JPEG"))[0], photo)
    names = ["zero, nought", "one", "two"]
    out = tmp_path / "cam"
    preds = list(
        predict_paths(small_net, [str(digit), str(photo)], DataConfig(img_size=32, crop_pct=1.0), cam_dir=out,
                      class_names=names)
    )  # fmt: skip
    for p in preds:
        first = names[p.indices[0]].split(",")[0]
        assert p.cam_path == str(out / f"{Path(p.path).stem}_cam_{first}.png")
    (h, w), (ph, pw) = _png_hw(preds[0].cam_path), _png_hw(preds[1].cam_path)
    # 32 px shown x10: two 320 px panels side by side, a colour bar, a header; no larger than that
    assert 2 * 320 < w < 2 * 320 + 200 and 320 < h < 320 + 120
    _, h0, w0 = decode_png(read_file(str(digit))).shape  # the photo: its own size, twice, plus the bar
    from convnext.data import load_image

    _, h1, w1 = load_image(str(photo)).shape
    assert 2 * w1 < pw < 2 * w1 + 200 and h1 < ph < h1 + 120
    assert sorted(os.listdir(out)) == sorted(Path(p.cam_path).name for p in preds)  # no temporary files left


def test_cam_figure_shows_original_and_overlay_with_class_probability_and_colour_bar() -> None:
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    cam = torch.zeros(32, 32)
    cam[4:12, 20:28] = 1.0
    fig = cam_figure(img, cam, (0, 0, 32, 32), label="tench, Tinca tinca", prob=0.873, title="a.png")
    assert any("tench, Tinca tinca (87.3%)" in t for t in _texts(fig))
    left, right, bar = fig.axes
    shown, over = (ax.get_images()[0].get_array() for ax in (left, right))
    assert shown.shape == over.shape == (320, 320, 3)  # enlarged x10 for viewing
    assert torch.equal(
        torch.as_tensor(shown[::10, ::10]), img.permute(1, 2, 0)
    )  # nearest: pixels as they are
    assert (over != shown).any()
    assert getattr(bar, "_colorbar", None) is not None  # the heat map's scale
    # side by side: same row, the overlay right of the original
    lb, rb = left.get_position(), right.get_position()
    assert lb.y0 == pytest.approx(rb.y0) and rb.x0 > lb.x1


def test_display_scale_enlarges_small_and_reduces_large_images() -> None:
    assert display_scale(32, 32) == 10 and display_scale(8, 8) == 40  # whole factors, >= PANEL_MIN
    assert display_scale(375, 500) == 1.0
    assert display_scale(3000, 4000) * 4000 == pytest.approx(PANEL_MAX)
    assert display_scale(60, 900) * 900 == pytest.approx(PANEL_MAX)  # a strip is not blown up
    assert 32 * display_scale(32, 32) >= PANEL_MIN


def test_cam_filename_is_safe_and_names_the_class() -> None:
    assert cam_filename("img", "tench, Tinca tinca") == "img_cam_tench.png"
    assert cam_filename("img", "a/b: c?") == "img_cam_a_b_c.png"
    assert cam_filename("img", "café") == "img_cam_café.png"
    assert cam_filename("img", " , ") == "img_cam_class.png"


def test_gradcam_layer_follows_the_input_size(small_net: nn.Module) -> None:
    """At 32 px the last stage is 1x1 and its CAM is one number (a blank map): use the deepest stage
    with room for a map."""
    cam = GradCAM(small_net)
    (m,), _ = cam(torch.randn(1, 3, 32, 32))
    assert cam.layer_name == "stages[1]" and cam.map_size == (4, 4)
    assert float(m.max() - m.min()) > 0.5
    cam(torch.randn(1, 3, 96, 96))
    assert cam.layer_name == "stages[3]" and cam.map_size == (3, 3)


# ----------------------------------------------------------------------------------------------- curves
def _records(n: int = 3, smoothed: bool = True, top5: float | None = 97.0) -> list[dict]:
    out = []
    for e in range(1, n + 1):
        r = {"epoch": e, "step": 10 * e, "train_loss": 1.5 / e, "lr": 1e-3 / e, "val_top1": 50.0 + e,
             "val_loss": 0.5 / e}  # fmt: skip
        if top5 is not None:
            r["val_top5"] = top5 + e if top5 < 100 else 100.0
        if smoothed:
            r["val_loss_smoothed"] = 1.0 / e
        out.append(r)
    return out


def _lines(ax) -> dict[str, list[float]]:
    return {
        ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if not ln.get_label().startswith("_")
    }


def test_curves_lr_panel_integer_epochs_and_one_loss_basis() -> None:
    recs = _records(3)
    fig = curves_figure(recs, num_classes=10, label_smoothing=0.1, mixup=False)
    loss, acc, lr = fig.axes
    assert "learning rate" in lr.get_title() and _lines(lr)["lr"] == [1e-3, 5e-4, 1e-3 / 3]
    lines = _lines(loss)
    assert lines["train loss"] == [r["train_loss"] for r in recs]
    assert lines["val loss (same smoothing)"] == [r["val_loss_smoothed"] for r in recs]  # not plain val_loss
    assert any("label smoothing 0.1" in t and "same smoothing" in t for t in _texts(fig))
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert "val top-5" in _lines(acc)  # 10 classes: top-5 says something


def test_curves_of_an_old_run_say_the_basis_differs() -> None:
    fig = curves_figure(_records(2, smoothed=False))
    assert "val loss (plain CE)" in _lines(fig.axes[0])
    assert any("basis differs" in t for t in _texts(fig))


def test_no_top5_line_for_five_classes_or_fewer() -> None:
    assert "val top-5" not in _lines(curves_figure(_records(3, top5=97.0), num_classes=5).axes[1])
    assert "val top-5" in _lines(curves_figure(_records(3, top5=97.0), num_classes=6).axes[1])
    # class count unknown (an old call): a top-5 at 100% every epoch is left out, and the legend says so
    acc = curves_figure(_records(3, top5=100.0)).axes[1]
    assert "val top-5" not in _lines(acc)
    assert "top-5: 100% every epoch" in [t.get_text() for t in acc.get_legend().get_texts()]


def test_plot_curves_writes_a_png_atomically_following_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = plot_curves(_records(1), tmp_path / "curves.png", num_classes=3)
    finally:
        os.umask(old)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["curves.png"]


def test_evaluate_loss_smoothed_is_the_training_criterion() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    net = nn.Linear(6, 4)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    res = evaluate(net, loader, "cpu", progress=False, label_smoothing=0.1)
    with torch.no_grad():
        logits = net(x)
    assert res["loss_smoothed"] == pytest.approx(float(nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)))
    assert res["loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert res["loss_smoothed"] != pytest.approx(res["loss"])
    plain = evaluate(net, loader, "cpu", progress=False)
    assert plain["loss_smoothed"] == plain["loss"]


# ------------------------------------------------------------------------------------- confusion matrix
def _predictions(k: int, per: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image right except known confusions: 3 -> 4 (20), 4 -> 3 (12), 10 -> 11 (9), 1 -> 0 (7),
    and one each i -> i + 1 for i >= 20 (background)."""
    t = torch.arange(k).repeat_interleave(per)
    p = t.clone()
    for a, b, n in [(3, 4, 20), (4, 3, 12), (10, 11, 9), (1, 0, 7)] + [
        (i, i + 1, 1) for i in range(20, k - 1)
    ]:
        p[(t == a).nonzero()[:n, 0]] = b
    return p, t


def test_confusion_ticks_every_class_readably_up_to_50() -> None:
    names = imagenet1k_descriptions()
    p, t = _predictions(50)
    fig = confusion_figure(p, t, names)
    ax, bar = fig.axes
    labels = [x.get_text() for x in ax.get_xticklabels()]
    assert len(labels) == len(ax.get_yticklabels()) == 50
    assert labels[:2] == ["tench", "goldfish"]  # first names: short enough to read
    cell_px = ax.get_position().width * fig.get_figwidth() * fig.dpi / 50
    assert cell_px >= 18 and all(x.get_fontsize() >= 7 for x in ax.get_xticklabels())


def test_confusion_colour_bar_counts_whole_images() -> None:
    p, t = _predictions(10, per=37)
    fig = confusion_figure(p, t, [str(i) for i in range(10)])
    bar = fig.axes[1]
    ticks = [v for v in bar.get_yticks() if 0 <= v <= 37]
    assert ticks == [0, 1, 4, 9, 16, 25, 36]  # whole numbers, evenly spaced on the square-root scale
    assert sum(1 for x in fig.axes[0].texts) == 10 + 3  # counts written in every non-empty cell


def test_confusion_normalized_rows_are_percent_of_the_true_class() -> None:
    """--confusion-normalize: classes of unequal size compare; each row sums to 100% of its true class,
    also beyond 50 classes, where a row's errors may go to classes the matrix does not show."""
    t = torch.tensor([0] * 200 + [1] * 3 + [2] * 10)
    p = t.clone()
    p[:1] = 1  # 0.5% of class 0
    p[200:202] = 0  # 2 of the 3 images of class 1
    fig = confusion_figure(p, t, ["big", "small", "mid"], normalize=True)
    ax, bar = fig.axes
    cells = {(round(x.get_position()[1]), round(x.get_position()[0])): x.get_text() for x in ax.texts}
    assert cells == {(0, 0): "100", (0, 1): "<1", (1, 0): "67", (1, 1): "33", (2, 2): "100"}
    assert ax.images[0].get_array().sum(axis=1).tolist() == pytest.approx([100, 100, 100])
    assert bar.get_ylabel() == "% of the true class's images (row)"
    assert any("rows in % of each true class" in x for x in _texts(fig))
    p, t = _predictions(80, per=10)  # reduced to the 30 most confused classes
    shown = confusion_figure(p, t, [str(i) for i in range(80)], normalize=True).axes[0].images[0].get_array()
    assert shown.max() <= 100 and shown.sum(axis=1).max() <= 100 + 1e-9


def test_most_confused_pairs_beyond_50_classes(tmp_path: Path) -> None:
    names = imagenet1k_descriptions()
    p, t = _predictions(100)
    pairs = most_confused_pairs(p, t, names)
    top = [(r["true"], r["predicted"], r["count"], r["percent"]) for r in pairs[:4]]
    assert top == [(3, 4, 20, 40.0), (4, 3, 12, 24.0), (10, 11, 9, 18.0), (1, 0, 7, 14.0)]
    assert len(pairs) == 4 + 79 and pairs[0]["true_class"] == names[3]
    png, pairs_csv = write_confusion_png(tmp_path / "cm.png", p, t, names, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pairs_csv == tmp_path / "cm_pairs.csv"
    rows = list(csv.DictReader(pairs_csv.open()))
    assert len(rows) == len(pairs) and rows[0]["true"] == "3" and rows[0]["count"] == "20"
    fig = confusion_figure(p, t, names, pairs_file="cm_pairs.csv")
    ax = fig.axes[0]
    ticks = [x.get_text() for x in ax.get_yticklabels()]
    assert len(ticks) == MOST_CONFUSED and ticks[:6] == tick_names(names, [3, 4, 10, 11, 1, 0])
    text = "\n".join(_texts(fig))
    assert "the 25 most confused pairs" in text and "tiger shark -> hammerhead" in text
    assert "83 confused pairs in all; all in cm_pairs.csv" in text


def test_tick_names_keep_full_names_when_first_names_collide() -> None:
    names = imagenet1k_descriptions()
    cranes = [i for i, n in enumerate(names) if n.split(",")[0] == "crane"]
    assert len(cranes) == 2
    shown = tick_names(names, [0, *cranes])  # the bird and the machine are both just "crane"
    assert shown == ["tench", f"crane #{cranes[0]}", f"crane #{cranes[1]}"]
    shown = tick_names(["cat, kitty", "cat, lion", "dog"], [0, 1, 2])
    assert shown == ["cat, kitty", "cat, lion", "dog"]


def test_curves_of_a_segmenter_plot_its_miou_and_name_its_loss() -> None:
    """A dense run's records carry val_miou / val_map, not top-1: the second panel plots them (and marks
    the best), the loss panel says it is the task's own loss, not a smoothed cross-entropy."""
    recs = [
        {"epoch": e, "train_loss": 2.0 / e, "lr": 1e-3, "val_miou": 10.0 * e, "val_macc": 12.0 * e}
        for e in (1, 2, 3)
    ]
    fig = curves_figure(recs, num_classes=11, label_smoothing=0.0, mixup=False, metric=("miou", "mIoU"))
    loss, acc, _ = fig.axes
    assert _lines(acc) == {"val mIoU": [10.0, 20.0, 30.0]} and "mIoU" in acc.get_title()
    assert loss.get_ylabel() == "training loss"
    assert not any("smoothing" in t for t in _texts(fig))
