"""Segmentation training (``upernet_<backbone>``) through the one loop: the loss (decode + 0.4 x auxiliary,
mmseg's pixel mean), exact resume after a pre-emption (fast, in-process, 0 and 2 loader workers) and after
kill -9 (slow), 2 processes (gloo), the poly schedule, the official backbone defaults, the dataset-task
check, and ``convnext evaluate``'s mIoU / mAcc / aAcc equal to mmseg's formula re-done with numpy and to
scikit-learn's confusion matrix on the same predictions (ignore index and reduce_zero_label included).

Tiny everywhere: a [1, 1, 1, 1] x [8, 16, 32, 64] backbone, a 16-wide head, 32 px digit scenes, 32 train /
8 val scenes, 4 steps per epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_resume import _tensors

from convnext.engine.checkpoint import load_train_checkpoint
from convnext.engine.config import load_config
from convnext.engine.logging import read_metrics
from convnext.engine.pauses import PausePoints
from convnext.engine.train import train
from convnext.errors import UserError

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
RECIPE = "quickstart_segmentation"
TINY = [
    "epochs=2",
    "schedule.warmup_epochs=1",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64], channels: 16, aux_channels: 8}",
    "model.drop_path_rate=0.2",  # stochastic depth on: its RNG must resume too
    "data.scenes=[32, 8]",
    "data.scene_size=32",
    "data.digit_size=null",  # up to 4 digits of 8-14 px: the scenes these tests were written on
    "data.scene_digits=4",
    "data.img_size=32",
    "data.seg_scale=[128, 32]",
    "train.batch_size=8",  # 4 steps per epoch
    "train.eval_batch_size=8",
    "train.progress=false",
    "run.loggers=[]",
]

pytestmark = pytest.mark.usefixtures("one_thread")


class _PreemptAt(PausePoints):
    """SIGUSR1 (Slurm's pre-emption warning) to this process at optimizer step ``n``."""

    def __init__(self, n: int) -> None:
        super().__init__(None)
        self.n = n

    def __call__(self, point: str, n: int, until: object = None) -> None:
        if point == "step" and n == self.n:
            os.kill(os.getpid(), signal.SIGUSR1)


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a = load_train_checkpoint(a_dir / "checkpoints" / "last.pth")
    b = load_train_checkpoint(b_dir / "checkpoints" / "last.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    for key in ("model", "model_ema", "optimizer", "rng"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys(), key
        assert all(ta[n].equal(tb[n]) for n in ta), f"{key} differs"
    ma, mb = read_metrics(a_dir), read_metrics(b_dir)
    for key in ("train_loss", "val_miou", "val_macc", "val_aacc", "ema_val_miou"):
        assert [m.get(key) for m in ma] == [m.get(key) for m in mb], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 epochs uninterrupted, EMA on (its weights resume exactly too), photometric distortion on."""
    run = tmp_path_factory.mktemp("straight")
    train(
        load_config(RECIPE, [*TINY, "data.workers=0", "ema.enabled=true", "ema.decay=0.9", f"run.dir={run}"])
    )
    return run


def test_run_records_miou_and_the_best_checkpoint(straight: Path) -> None:
    metrics = read_metrics(straight)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0 <= m["val_miou"] <= 100 and 0 <= m["val_aacc"] <= 100 and np.isfinite(m["train_loss"])
        assert "ema_val_miou" in m
    ckpt = load_train_checkpoint(straight / "checkpoints" / "best.pth")
    assert ckpt["arch"] == "upernet_convnext_atto" and ckpt["class_names"][0] == "background"
    assert any(k.startswith("auxiliary_head.") for k in ckpt["model"])


def test_evaluate_a_run_folder_repeats_its_best_epoch(straight: Path, tmp_path: Path) -> None:
    """`convnext evaluate --weights RUN` (best.pth, the run's own val split and test scale, its class names)
    gives the mIoU / mAcc / aAcc the run recorded for its best epoch."""
    from convnext.cli.main import main

    out = tmp_path / "m.json"
    assert main(["evaluate", "--weights", str(straight), "--workers", "0", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    best = load_train_checkpoint(straight / "checkpoints" / "best.pth")
    record = next(m for m in read_metrics(straight) if m["epoch"] == best["best_epoch"])
    assert got["n"] == 8 and got["per_class"][0]["class"] == "background"
    for key, mine in (("mIoU", "val_miou"), ("mAcc", "val_macc"), ("aAcc", "val_aacc")):
        assert got[key] == pytest.approx(record[mine], abs=1e-3), key
    # --ema: the EMA weights of that checkpoint, which the run evaluated too (before: --ema was ignored)
    assert main(["evaluate", "--weights", str(straight), "--workers", "0", "--ema", "--json", str(out)]) == 0
    got_ema = json.loads(out.read_text())
    for key, mine in (("mIoU", "ema_val_miou"), ("mAcc", "ema_val_macc"), ("aAcc", "ema_val_aacc")):
        assert got_ema[key] == pytest.approx(record[mine], abs=1e-3), key


def test_predict_and_export_of_a_run_take_its_test_scale(straight: Path) -> None:
    """predict / serve / export of a run folder resize images as the run was evaluated (the short side of its
    data.seg_scale, here 32 px), not at ADE20K's 512 (before: a 64 px scene was read at 512 px, its digits
    eight times the size the model learned, and came out all background)."""
    from convnext.inference.dense import load_dense, loaded_for_export

    dense = load_dense(str(straight))
    assert dense.img_size == 32 and dense.mean == pytest.approx((0.485, 0.456, 0.406))
    assert load_dense(str(straight), img_size=48).img_size == 48  # --img-size still wins
    assert loaded_for_export(str(straight), None, None).data.img_size == 32


def test_exported_run_evaluates_on_its_data_and_int8_calibrates_on_it(straight: Path, tmp_path: Path) -> None:
    """A segmentation run exported (ONNX, its fixed square) evaluates on the run's own val split with the
    PyTorch model's counts; int8's calibration sample is the run's training scenes as the graph takes them
    (before: both looked for an image folder and stopped)."""
    pytest.importorskip("onnxruntime")
    from torchvision.transforms.v2.functional import resize

    from convnext.data.segmentation import DigitScenesSeg, normalize
    from convnext.export import export_model
    from convnext.export.calibration import load_calibration
    from convnext.inference.dense import loaded_for_export
    from convnext.inference.segmentation_eval import evaluate_segmentation_weights

    res = export_model(str(straight), out=tmp_path / "seg.onnx", img_size=32)
    exported = evaluate_segmentation_weights(str(res.path), workers=0)
    torch_ev = evaluate_segmentation_weights(str(straight), workers=0)
    assert exported.data.dataset == "digit-scenes-seg" and exported.metrics["n"] == 8
    hist, ref = exported.metrics["hist"], torch_ev.metrics["hist"]
    assert float((hist - ref).abs().sum()) <= 0.01 * float(ref.sum())  # argmax ties may flip a pixel
    loaded = loaded_for_export(str(straight), None, 32)
    calib = load_calibration(None, loaded.data, run_data=True, where=str(straight), limit=5)
    assert calib.images.shape == (5, 3, 32, 32) and "digit-scenes-seg" in calib.source
    scenes = DigitScenesSeg("train", 32, 32, max_digits=4)
    want = {normalize(resize(scenes.raw(i)[0], [32, 32], antialias=True), loaded.data.mean, loaded.data.std)
            .sum().item() for i in range(32)}  # fmt: skip
    assert all(any(abs(img.sum().item() - w) < 1e-3 for w in want) for img in calib.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_preempted_mid_epoch_then_resumed_equals_straight(
    straight: Path, tmp_path: Path, workers: int
) -> None:
    """Stopped at step 6 of 8 (epoch 2, batch 2), resumed from last.pth: weights, EMA, optimizer, every RNG
    and every logged figure bit-identical to the straight run, with 0 or 2 loader workers (the crops are
    drawn per sample from its own seed)."""
    recipe = [*TINY, f"data.workers={workers}", "ema.enabled=true", "ema.decay=0.9", f"run.dir={tmp_path}"]
    cfg = load_config(RECIPE, recipe)
    stopped = train(cfg, pauses=_PreemptAt(6))
    assert stopped.stopped_early and stopped.step == 6
    assert train(cfg).step == 8
    _assert_same_run(straight, tmp_path)


@pytest.mark.slow  # ~40 s: a second interpreter with 2 loader workers, killed, then resumed
def test_resume_after_kill_mid_epoch_is_bit_identical(straight: Path, tmp_path: Path) -> None:
    """kill -9 in epoch 2 right after a mid-epoch checkpoint (2 persistent loader workers); the same
    command again resumes by itself and ends bit-identical to the straight run."""
    recipe = [
        *TINY,
        "data.workers=2",
        "data.persistent_workers=true",
        "ema.enabled=true",
        "ema.decay=0.9",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=5",
    ]
    killed = tmp_path / "killed"
    env = {**ENV, "CONVNEXT_TEST_PAUSE_AT": "step@7"}  # after the step-6 checkpoint (epoch 2, batch 2)
    cmd = [
        sys.executable,
        "-m",
        "convnext.cli.main",
        "train",
        "--config",
        RECIPE,
        *recipe,
        f"run.dir={killed}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline, out = time.monotonic() + 180, ""
    while proc.poll() is None and time.monotonic() < deadline and "paused at step@7" not in out:
        out += proc.stdout.readline()  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGKILL)
    out += proc.communicate(timeout=60)[0]
    assert "paused at step@7" in out, out[-2000:]
    last = load_train_checkpoint(killed / "checkpoints" / "last.pth")
    assert (last["epoch"], last["step"], last["epoch_end"]) == (1, 6, False)
    assert train(load_config(RECIPE, [*recipe, f"run.dir={killed}"])).step == 8  # auto-resume
    _assert_same_run(straight, killed)


@pytest.mark.slow  # ~75 s on the loaded 2-core host: two torchrun launches, each starting three interpreters
def test_two_processes_gloo_and_exact_evaluation_counts(straight: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes: the batch split between the ranks, each with its own RNG stream; and
    ``convnext evaluate`` under torchrun counts every pixel once (the same int64 counts as one process)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [
        *torchrun,
        "-m",
        "convnext.cli.main",
        "train",
        "--config",
        RECIPE,
        *TINY,
        "train.batch_size=4",
        "data.workers=0",
        f"run.dir={tmp_path / 'two'}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_train_checkpoint(tmp_path / "two" / "checkpoints" / "last.pth")
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (2, 8, 2)
    assert len(ckpt["rng"]) == 2 and not ckpt["rng"][0]["torch"].equal(ckpt["rng"][1]["torch"])
    assert all(np.isfinite(m["val_miou"]) for m in read_metrics(tmp_path / "two"))
    ev = ["-m", "convnext.cli.main", "evaluate", "--weights", str(straight), "--workers", "0", "--flip"]
    one = subprocess.run(
        [sys.executable, *ev, "--json", str(tmp_path / "one.json")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [*torchrun, *ev, "--json", str(tmp_path / "two.json")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["world_size"] == 2 and a["n"] == b["n"] == 8
    assert a["per_class"] == b["per_class"] and a["mIoU"] == b["mIoU"] and a["aAcc"] == b["aAcc"]


def test_loss_is_decode_plus_0_4_auxiliary_over_all_pixels() -> None:
    from convnext.engine.train.segmentation import SegmentationLoss

    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    target = torch.randint(0, 5, (2, 4, 4), generator=g)
    target[0, 0] = 255
    keep = target != 255

    def mmseg_ce(x: torch.Tensor) -> torch.Tensor:  # per pixel, ignored pixels 0, mean over all 32 pixels
        logp = x.log_softmax(1)
        picked = logp.gather(1, target.clamp(max=4)[:, None])[:, 0]
        return -(picked * keep).sum() / target.numel()

    want = mmseg_ce(logits) + 0.4 * mmseg_ce(aux)
    assert torch.allclose(SegmentationLoss()((logits, aux), target), want, atol=1e-6)


def test_poly_schedule_is_mmcv_poly_with_warmup() -> None:
    from convnext.engine.schedule import lr_factor

    kw = {"total_steps": 100, "warmup_steps": 10, "base_lr": 1e-4, "min_lr": 0.0, "name": "poly"}
    assert lr_factor(0, **kw) == 0.0
    assert lr_factor(50, **kw) == pytest.approx(0.5)  # 1 - 50 / 100: poly counts from step 0
    assert lr_factor(5, **kw) == pytest.approx((1 - 5 / 100) * 5 / 10)  # warmup multiplies it
    assert lr_factor(100, **kw) == 0.0


def test_official_backbone_defaults_unless_the_recipe_sets_them() -> None:
    from convnext.engine.train.segmentation import build_segmenter

    cfg = load_config(
        RECIPE,
        [
            "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
            "model.drop_path_rate=0.1",
            "model.layer_scale_init_value=1e-6",
        ],
    )
    model = build_segmenter(cfg, 11)  # the classifier defaults (0.1, 1e-6): the official 0.1 (atto), 1.0
    assert float(model.backbone.stages[0][0].gamma[0]) == 1.0
    cfg = load_config(
        RECIPE,
        ["model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "model.layer_scale_init_value=0.5"],
    )
    assert float(build_segmenter(cfg, 11).backbone.stages[0][0].gamma[0]) == 0.5


def test_dataset_of_another_task_is_one_sentence() -> None:
    with pytest.raises(
        UserError, match="digit-scenes-seg is a segmentation dataset but model.name=convnext_atto"
    ):
        load_config("quickstart_digits", ["data.dataset=digit-scenes-seg"])
    with pytest.raises(UserError, match="digits is a classify dataset but model.name=upernet_convnext_atto"):
        load_config(RECIPE, ["data.dataset=digits"])


# ------------------------------------------------------------------------------------------- evaluate
def _mmseg_hist(preds: list[np.ndarray], labels: list[np.ndarray], n: int) -> np.ndarray:
    """mmseg's intersect_and_union (torch.histc over [0, n - 1] with n bins), re-done with numpy."""
    total = np.zeros((4, n))
    for pred, label in zip(preds, labels):
        keep = label != 255
        pred, label = pred[keep], label[keep]
        inter = pred[pred == label]
        a_i = np.histogram(inter, bins=n, range=(0, n - 1))[0]
        a_p = np.histogram(pred, bins=n, range=(0, n - 1))[0]
        a_l = np.histogram(label, bins=n, range=(0, n - 1))[0]
        total += np.stack([a_i, a_p + a_l - a_i, a_p, a_l])
    return total


def test_evaluate_equals_mmseg_formula_and_sklearn(tmp_path: Path) -> None:
    """Random UperNet weights (varied predictions) on a folder of images + masks with value 0 ('other')
    and 255 pixels, read with reduce_zero_label: ``convnext evaluate --json`` against the same predictions
    scored by mmseg's formula in numpy and by scikit-learn's confusion matrix."""
    from sklearn.metrics import confusion_matrix

    from convnext.evaluation.segmentation_loop import seg_probs
    from convnext.hub import create_model

    n_classes = 4
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for sub in ("images/val", "masks/val"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(n_classes)))
    raws = []
    for i, (h, w) in enumerate([(40, 56), (64, 48), (36, 36)]):
        raw = rng.integers(0, n_classes + 1, (h, w), dtype=np.uint8)  # 0 'other', 1..4 the classes
        raw[: h // 5] = 255
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "images/val" / f"{i}.png"
        )
        Image.fromarray(raw).save(root / "masks/val" / f"{i}.png")
        raws.append(raw)
    torch.manual_seed(0)
    model = create_model(
        "upernet_convnext_atto",
        num_classes=n_classes,
        depths=[1, 1, 1, 1],
        dims=[8, 16, 32, 64],
        channels=16,
        aux_channels=8,
    ).eval()
    torch.save(model.state_dict(), tmp_path / "seg.pth")
    out = tmp_path / "m.json"
    from convnext.cli.main import main  # the CLI as the console script runs it, without a second start-up

    args = [
        "evaluate",
        "--weights",
        str(tmp_path / "seg.pth"),
        "--model",
        "upernet_convnext_atto",
        "--data",
        str(root),
        "--dataset",
        "segmentation-folder",
        "--reduce-zero-label",
        "--img-size",
        "32",
        "--workers",
        "0",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    got = json.loads(out.read_text())

    preds, labels = [], []
    for i, raw in enumerate(raws):
        img = torch.from_numpy(np.asarray(Image.open(root / "images/val" / f"{i}.png"))).permute(2, 0, 1)
        with torch.no_grad():
            scores = seg_probs(
                model, img[None], scale=(128, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
            )
        preds.append(scores.argmax(1)[0].numpy())
        label = raw.astype(np.int64).copy()  # mmseg's reduce_zero_label, on its uint8 arithmetic
        u8 = raw.copy()
        u8[u8 == 0] = 255
        u8 = u8 - 1
        u8[u8 == 254] = 255
        labels.append(u8.astype(np.int64))
        assert (label == 0).any() and (label == 255).any()
    hist = _mmseg_hist(preds, labels, n_classes)
    iou, acc = hist[0] / hist[1], hist[0] / hist[3]
    assert got["n"] == 3
    assert got["aAcc"] == pytest.approx(100 * hist[0].sum() / hist[3].sum(), abs=1e-3)
    assert got["mIoU"] == pytest.approx(100 * np.nanmean(iou), abs=1e-3)
    assert got["mAcc"] == pytest.approx(100 * np.nanmean(acc), abs=1e-3)
    assert [r["iou"] for r in got["per_class"]] == pytest.approx(list(100 * iou), abs=1e-3)

    keep = [lab != 255 for lab in labels]
    cm = confusion_matrix(
        np.concatenate([lab[k] for lab, k in zip(labels, keep)]),
        np.concatenate([p[k] for p, k in zip(preds, keep)]),
        labels=range(n_classes),
    )
    sk_iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert [r["iou"] for r in got["per_class"]] == pytest.approx(list(100 * sk_iou), abs=1e-3)
    assert [r["pixels"] for r in got["per_class"]] == cm.sum(1).tolist()
    assert len(set(np.concatenate([p.ravel() for p in preds]).tolist())) > 1  # the predictions vary


def test_slide_windows_cover_every_pixel_once_averaged() -> None:
    """mmseg's slide inference of a pixel-wise model equals the whole image's: every pixel's windows are
    summed and divided by how many cover it (a 48 x 80 input, 32 px windows every 21 px)."""
    from convnext.evaluation.segmentation_loop import slide_logits

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        assert torch.allclose(slide_logits(model, x, 32, 21, 5), model(x), atol=1e-6)


def test_flip_and_scales_average_the_softmax_as_mmseg_aug_test() -> None:
    """--flip --scales: each (ratio, flip) view resized (mmcv's keep-ratio size, bilinear, to uint8),
    its logits flipped back and resized to the image, softmax, averaged: re-done here with plain torch."""
    import torch.nn.functional as F

    from convnext.evaluation.segmentation_loop import seg_probs
    from convnext.hub import create_model

    torch.manual_seed(0)
    model = create_model(
        "upernet_convnext_atto",
        num_classes=4,
        depths=[1, 1, 1, 1],
        dims=[8, 16, 32, 64],
        channels=16,
        aux_channels=8,
    ).eval()
    img = torch.randint(0, 256, (1, 3, 40, 56), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = torch.zeros(1, 4, 40, 56)
    for r in (0.75, 1.5):
        f = min(256 * r / 56, 64 * r / 40)  # mmcv rescale_size with scale (256, 64) x r
        size = (int(40 * f + 0.5), int(56 * f + 0.5))
        x = F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
        x = (x / 255 - mean) / std
        for flip in (False, True):
            with torch.no_grad():
                out = model(x.flip(-1) if flip else x)
            out = out.flip(-1) if flip else out
            want += F.interpolate(out, size=(40, 56), mode="bilinear", align_corners=False).softmax(1) / 4
    with torch.no_grad():
        got = seg_probs(
            model,
            img,
            scale=(256, 64),
            ratios=(0.75, 1.5),
            flip=True,
            mean=mean.flatten().tolist(),
            std=std.flatten().tolist(),
        )
    # torchvision's uint8 resize kernel rounds a few pixels one level apart from float-then-round
    assert torch.allclose(got, want, atol=1e-3) and (got.argmax(1) == want.argmax(1)).float().mean() > 0.99
