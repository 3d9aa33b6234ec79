"""Detection training (engine/train/detection.py) and evaluation: exact resume after a stop mid-epoch (no
workers, in process) and after kill -9 (2 loader workers, slow); 2 processes under torchrun (gloo, slow);
``convnext evaluate`` equal to pycocotools' COCOeval run here on the same detections; the recipes resolve.

Tiny everywhere: a [1, 1, 1, 1] x [8, 16, 32, 64] backbone, a 16-wide FPN, 64 px digit scenes resized to
64-96 px (multi-scale, drawn from the checkpointed global RNG), flips on (the per-sample seeded RNG), few
proposals, 16 train / 4 val scenes, batches of 4: 4 steps per epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_detection_data import write_coco
from test_pretrain import _PreemptAt
from test_resume import _tensors

from convnext.engine.checkpoint import load_train_checkpoint
from convnext.engine.config import load_config
from convnext.engine.logging import read_metrics
from convnext.engine.train import train
from convnext.errors import UserError

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
RECIPE = "quickstart_detection"
TINY = [
    "epochs=2",
    "schedule.warmup_epochs=0.5",
    "model.pretrained=null",
    "model.drop_path_rate=0.1",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64], fpn_channels: 16, min_size: [64, 80, 96], "
    "max_size: 96, rpn_pre_nms_top_n_train: 64, rpn_post_nms_top_n_train: 32, rpn_pre_nms_top_n_test: 64, "
    "rpn_post_nms_top_n_test: 32, rpn_batch_size_per_image: 32, box_batch_size_per_image: 16, "
    "box_detections_per_img: 10}",
    "data.scene_size=64",
    "data.scenes=[16, 4]",
    "data.hflip=0.5",
    "train.batch_size=4",
    "train.threads=1",
    "train.progress=false",
    "train.log_every=1",
    "run.loggers=[]",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_run(a_dir: Path, b_dir: Path, steps: int = 8) -> None:
    a = load_train_checkpoint(a_dir / "checkpoints" / "last.pth")
    b = load_train_checkpoint(b_dir / "checkpoints" / "last.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, steps)
    for key in ("model", "model_ema", "optimizer", "rng"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys(), key
        assert all(ta[n].equal(tb[n]) for n in ta), f"{key} differs"
    ma, mb = read_metrics(a_dir), read_metrics(b_dir)
    for k in ("train_loss", "val_map", "val_map_50", "val_map_75", "ema_val_map"):
        assert [m.get(k) for m in ma] == [m.get(k) for m in mb], k
    assert "val_map" in ma[-1]


def test_stopped_mid_epoch_then_resumed_equals_straight(tmp_path: Path) -> None:
    """Stopped at step 6 of 8 (epoch 2, batch 2; SIGUSR1 as a scheduler's pre-emption), resumed from
    last.pth: weights, EMA, optimizer, every RNG and every logged number bit-identical to a straight run
    (Faster R-CNN: the quickstart's; the mask head adds no randomness)."""
    recipe = [*TINY, "data.workers=0", "ema.enabled=true", "ema.decay=0.9", "train.eval_every=2"]
    straight = train(load_config(RECIPE, [*recipe, f"run.dir={tmp_path / 'straight'}"]))
    assert straight.step == 8 and straight.best_top1 is not None
    cfg = load_config(RECIPE, [*recipe, f"run.dir={tmp_path / 'stopped'}"])
    stopped = train(cfg, pauses=_PreemptAt(6))
    assert stopped.stopped_early and stopped.step == 6
    assert train(cfg).step == 8
    _assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    ckpt = load_train_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pth")
    assert ckpt["class_names"] == ["__background__", *"0123456789"]


def test_evaluate_equals_pycocotools_on_the_same_detections(tmp_path: Path) -> None:
    """A detector trained one epoch on a COCO-layout folder; `convnext evaluate --weights RUN --json` gives
    the twelve numbers pycocotools' COCOeval gives here for box and mask on the model's own detections
    (labels mapped back to the annotation file's category ids 3 and 7)."""
    import numpy as np
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from convnext.cli.main import main
    from convnext.evaluation.coco import STAT_NAMES
    from convnext.inference.detection_eval import load_detector

    root = write_coco(tmp_path / "coco", "train2017", n=9)
    write_coco(root, "val2017", n=4)
    run = tmp_path / "run"
    recipe = [*TINY, "epochs=1", "data.dataset=coco", f"data.root={root}", "data.workers=0",
              "ema.enabled=false", "schedule.name=cosine", "optim.lr=1e-3", "optim.layer_decay=null",
              "model.name=maskrcnn_convnext_atto", f"run.dir={run}"]  # fmt: skip
    train(load_config("finetune_detection", recipe))
    out = tmp_path / "ev.json"
    argv = ["evaluate", "--weights", str(run), "--workers", "0", "--batch-size", "1", "--json", str(out)]
    assert main(argv) == 0  # one image per forward, as below: the same detections bit for bit
    got = json.loads(out.read_text())
    assert got["n"] == 4 and got["split"] == "val"

    # the run folder is a detector's weights for create_model too (fine-tuning from it, predict)
    import convnext

    opts = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "fpn_channels": 16}
    again = convnext.create_model("maskrcnn_convnext_atto", pretrained=str(run), **opts)
    assert again.pretrained_info.class_names == ["__background__", "square", "ring", "unused"]

    det = load_detector(str(run))
    model = det.model.eval()
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    to_cat = {1: 3, 2: 7, 3: 9}
    boxes, segs = [], []
    from PIL import Image

    with torch.no_grad():
        for image_id in sorted(gt.imgs):
            info = gt.imgs[image_id]
            img = torch.from_numpy(np.array(Image.open(root / "val2017" / info["file_name"]).convert("RGB")))
            (pred,) = model([img.permute(2, 0, 1).float() / 255])
            for b, s, lab, m in zip(pred["boxes"], pred["scores"], pred["labels"], pred["masks"]):
                x0, y0, x1, y1 = b.tolist()
                cat, score = to_cat[int(lab)], float(s)
                boxes.append({"image_id": image_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0],
                              "score": score})  # fmt: skip
                rle = mask_util.encode(np.asfortranarray((m[0] > 0.5).numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                segs.append({"image_id": image_id, "category_id": cat, "segmentation": rle, "score": score})
    assert boxes, "the model detects nothing: the comparison would be vacuous"
    for kind, results, key in (("bbox", boxes, "box"), ("segm", segs, "mask")):
        ev = COCOeval(gt, gt.loadRes(results), kind)
        ev.params.imgIds = sorted(gt.imgs)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert [got[key][n] for n in STAT_NAMES] == pytest.approx(list(ev.stats), abs=1e-12), kind


def test_recipes_resolve_with_the_official_numbers(tmp_path: Path) -> None:
    """The official Mask R-CNN 3x recipes (AdamW, layer decay, step schedule at epochs 27 and 33, multi-scale
    480-800 / 1333, flip), the COCO fine-tuning and the CPU quickstart load and validate by name."""
    tiny = load_config("maskrcnn_convnext_tiny_coco_3x", check_paths=False)
    assert (tiny.epochs, tiny.optim.lr, tiny.optim.weight_decay, tiny.optim.layer_decay) == (
        36,
        1e-4,
        0.05,
        0.95,
    )
    assert (tiny.schedule.name, tiny.schedule.milestones, tiny.model.drop_path_rate) == (
        "step",
        [27, 33],
        0.4,
    )
    assert (
        tiny.model.options["min_size"] == list(range(480, 801, 32)) and tiny.model.options["max_size"] == 1333
    )
    assert tiny.data.hflip == 0.5 and tiny.data.dataset == "coco" and not tiny.ema.enabled
    small = load_config("maskrcnn_convnext_small_coco_3x", check_paths=False)
    assert small.model.name == "maskrcnn_convnext_small" and small.model.drop_path_rate == 0.6
    root = write_coco(tmp_path / "coco", "train2017", n=3)
    ft = load_config("finetune_detection", [f"data.root={root}"])
    assert ft.model.name.startswith("maskrcnn_") and ft.data.dataset == "coco"
    quick = load_config("quickstart_detection", check_paths=False)
    assert quick.data.dataset == "digit-scenes" and quick.data.hflip == 0.0
    with pytest.raises(UserError, match="data.dataset: digits is a classify dataset"):
        load_config("quickstart_detection", ["data.dataset=digits"], check_paths=False)
    with pytest.raises(UserError, match="schedule.milestones"):
        load_config("maskrcnn_convnext_tiny_coco_3x", ["schedule.milestones=[33, 27]"], check_paths=False)


@pytest.mark.slow  # ~60 s on 2 loaded cores: three runs, one a second interpreter with 2 loader workers
def test_resume_after_kill_with_two_workers_is_bit_identical(tmp_path: Path) -> None:
    """2 loader workers; kill -9 in epoch 2 right after a mid-epoch checkpoint; resumed = uninterrupted."""
    recipe = [*TINY, "data.workers=2", "data.persistent_workers=true", "checkpoint.every_steps=2",
              "checkpoint.keep_last=5", "ema.enabled=false", "train.eval_every=2"]  # fmt: skip
    assert train(load_config(RECIPE, [*recipe, f"run.dir={tmp_path / 'straight'}"])).step == 8
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
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline, out = time.monotonic() + 300, ""
    while proc.poll() is None and time.monotonic() < deadline and "paused at step@7" not in out:
        out += proc.stdout.readline()  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGKILL)
    out += proc.communicate(timeout=60)[0]
    assert "paused at step@7" in out, out[-2000:]
    last = load_train_checkpoint(killed / "checkpoints" / "last.pth")
    assert (last["epoch"], last["step"], last["epoch_end"]) == (1, 6, False)
    assert train(load_config(RECIPE, [*recipe, f"run.dir={killed}"])).step == 8  # auto-resume
    _assert_same_run(tmp_path / "straight", killed)


def test_ddp_wrapped_detector_trains_in_a_gloo_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast variant of the torchrun test below: this process as rank 0 of a gloo group of one (torchrun's
    variables), so the detector trains wrapped in DistributedDataParallel (lists of images and targets in,
    its loss dict out) and the val mAP goes through the gathered COCO evaluation."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(
        RECIPE, [*TINY, "epochs=1", "data.workers=0", "ema.enabled=false", f"run.dir={tmp_path}"]
    )
    result = train(cfg)
    assert result.step == 4 and not torch.distributed.is_initialized()
    last = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert last["world_size"] == 1 and "val_map" in read_metrics(tmp_path)[-1]


@pytest.mark.slow  # ~60 s on 2 loaded cores: torchrun starts three interpreters
def test_two_processes_gloo(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes: the batch split between the ranks (2 steps per epoch at 2 x 4 images),
    each rank's RNG in the checkpoint, and the val mAP counted over all val scenes once: equal to evaluating
    the saved weights in one process."""
    from convnext.inference.detection_eval import evaluate_detection_weights

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "convnext.cli.main", "train", "--config", RECIPE, *TINY, "data.workers=0", "ema.enabled=false",
           "data.scenes=[16, 5]", f"run.dir={run}"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    last = load_train_checkpoint(run / "checkpoints" / "last.pth")
    assert (last["epoch"], last["step"], last["world_size"], len(last["rng"])) == (2, 4, 2, 2)
    record = read_metrics(run)[-1]
    ev = evaluate_detection_weights(str(run / "checkpoints" / "last.pth"), device="cpu", workers=0)
    assert ev.n == 5 and "segm" not in ev.metrics
    assert record["val_map"] == pytest.approx(100 * ev.metrics["bbox"]["map"], abs=1e-9)
    # `convnext evaluate` under torchrun: each rank its shard, the results gathered, each scene once
    out = tmp_path / "ev.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "convnext.cli.main", "evaluate", "--weights", str(run / "checkpoints" / "last.pth"),
           "--device", "cpu", "--workers", "0", "--json", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    got = json.loads(out.read_text())
    assert (
        got["n"] == 5
        and got["world_size"] == 2
        and got["box"] == pytest.approx(ev.metrics["bbox"], abs=1e-12)
    )


def test_multiscale_resize_draws_from_the_global_rng() -> None:
    """The official multi-scale training (``min_size`` a list): torchvision's GeneralizedRCNNTransform draws
    one shorter side per image from torch's global RNG, whose state every checkpoint carries: the same seed
    gives the same sizes; evaluation takes the last size."""
    import convnext

    m = convnext.create_model(
        "fasterrcnn_convnext_atto", num_classes=3, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], fpn_channels=16,
        min_size=[64, 80, 96], max_size=200,
    ).train()  # fmt: skip
    img = [torch.rand(3, 50, 60)]

    def sizes(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [m.transform(img)[0].image_sizes[0][0] for _ in range(16)]

    drawn = sizes(0)
    assert set(drawn) == {64, 80, 96} and sizes(0) == drawn and sizes(1) != drawn
    assert m.eval().transform(img)[0].image_sizes[0][0] == 96


def test_step_schedule_is_mmdets() -> None:
    """``schedule.name: step``: linear warmup, then x gamma at each milestone (3x: epochs 27 and 33)."""
    from convnext.engine.schedule import lr_factor

    kw = {"total_steps": 360, "warmup_steps": 5, "base_lr": 1e-4, "min_lr": 0.0, "name": "step"}
    f = [lr_factor(s, milestones=(270, 330), gamma=0.1, **kw) for s in (0, 4, 5, 269, 270, 329, 330, 359)]
    assert f == pytest.approx([0.0, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_warmup_ratio_is_mmcvs_linear_warmup() -> None:
    """mmcv's ``warmup='linear'``: lr = regular_lr * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio)); the
    official Mask R-CNN configs start at 0.001 x the lr, the UperNet ones at 1e-6 x."""
    from convnext.engine.schedule import lr_factor

    def mmcv(i: int, regular: float, warmup_iters: int, ratio: float) -> float:
        return regular * (1 - (1 - i / warmup_iters) * (1 - ratio))

    kw = {"total_steps": 360, "warmup_steps": 500, "base_lr": 1e-4, "min_lr": 0.0}
    for i in (0, 1, 250, 499, 500):
        step = lr_factor(i, name="step", milestones=(800,), warmup_ratio=0.001, **{**kw, "total_steps": 900})
        assert step == pytest.approx(mmcv(i, 1.0, 500, 0.001) if i < 500 else 1.0)
        poly = lr_factor(i, name="poly", warmup_ratio=1e-6, **{**kw, "total_steps": 1000})
        assert poly == pytest.approx(mmcv(i, 1 - i / 1000, 500, 1e-6) if i < 500 else 1 - i / 1000)
    assert lr_factor(0, name="step", warmup_ratio=0.001, **kw) == pytest.approx(0.001)
    assert load_config("maskrcnn_convnext_tiny_coco_3x", check_paths=False).schedule.warmup_ratio == 0.001
    assert load_config("upernet_convnext_tiny_ade20k_160k", check_paths=False).schedule.warmup_ratio == 1e-6
    assert load_config("quickstart_detection", check_paths=False).schedule.warmup_ratio == 0.0
    with pytest.raises(UserError, match="schedule.warmup_ratio"):
        load_config("quickstart_detection", ["schedule.warmup_ratio=2"], check_paths=False)


def test_labels_map_to_category_ids_by_name_else_by_order(tmp_path: Path) -> None:
    """A checkpoint's names pick the categories; without names K + 1 labels are the categories in id order
    (ours, mmdet's) and any other count the ids themselves (torchvision's 91 COCO labels)."""
    from pycocotools.coco import COCO

    from convnext.inference.detection_eval import label_mapping

    root = write_coco(tmp_path / "coco", "val2017", n=2)
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    assert label_mapping(["__background__", "ring", "square"], 3, gt) == {1: 7, 2: 3}
    assert label_mapping(None, 4, gt) == {1: 3, 2: 7, 3: 9}
    assert label_mapping(None, 91, gt) is None
    with pytest.raises(UserError, match=r"classes \['cat'\] are not categories"):
        label_mapping(["__background__", "cat"], 2, gt)
