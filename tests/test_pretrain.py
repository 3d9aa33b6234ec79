"""``convnext pretrain``: FCMAE pre-training through the training loop, on a folder of unlabelled images
outside the checkout; exact resume after a kill mid-epoch (2 loader workers); 2 processes (gloo); the run
folder fine-tuned by ``model.pretrained``; ``data.labels_per_class``; the reconstruction figure; one-sentence
errors.

Tiny everywhere: a [1, 1, 1, 1] x [8, 16, 32, 64] encoder, a 16-wide decoder, 64 px images (2 x 2 patches of
32), 40 images."""

from __future__ import annotations

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

from convnext.data.config import DataConfig
from convnext.engine.checkpoint import load_train_checkpoint
from convnext.engine.config import load_config
from convnext.engine.logging import read_metrics
from convnext.engine.pauses import PausePoints
from convnext.engine.train import build_model, train
from convnext.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TINY = [
    "epochs=2",
    "schedule.warmup_epochs=1",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64], decoder_embed_dim: 16}",
    "data.val_fraction=0.2",  # 32 train / 8 val images
    "train.batch_size=8",  # 4 steps per epoch
    "train.progress=false",
    "run.loggers=[]",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder: Path, n: int = 40) -> Path:
    """``n`` small RGB PNGs straight in ``folder`` (no class folders): blobs on noise, various sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y : y + h // 2, x : x + w // 2] = rng.integers(120, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")
    return folder


def _pretrain(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "convnext.cli.main", "pretrain", "--config", "quickstart_fcmae", *args]
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _images(tmp_path_factory.mktemp("unlabelled") / "photos")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """A pre-training run by the CLI (its main(), in this process: the same code as the console script,
    without a second interpreter's start), from a folder outside the checkout, on a flat folder of images."""
    from convnext.cli.main import main

    work = tmp_path_factory.mktemp("work")
    here = Path.cwd()
    os.chdir(work)
    try:
        rc = main(
            ["pretrain", "--config", "quickstart_fcmae", *TINY, "data.dataset=images", f"data.root={images}"]
        )
    finally:
        os.chdir(here)
    assert rc == 0
    return work / "runs" / "quickstart_fcmae"  # the recipe's run.dir, relative to the working folder


def test_cli_pretrains_on_a_folder_of_images(pretrained: Path) -> None:
    ckpt = load_train_checkpoint(pretrained / "checkpoints" / "last.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 8) and ckpt["arch"] == "fcmae_convnextv2_atto"
    assert any(k.startswith("encoder.") for k in ckpt["model"]) and "mask_token" in ckpt["model"]
    metrics = read_metrics(pretrained)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["val_loss"]) and np.isfinite(m["train_loss"]) for m in metrics)
    assert (pretrained / "curves.png").is_file()


def test_reconstruction_figure_every_epoch(pretrained: Path) -> None:
    for epoch in (1, 2):
        png = pretrained / "reconstructions" / f"epoch_{epoch:04d}.png"
        with Image.open(png) as im:  # a real PNG with three rows of pictures
            assert im.format == "PNG" and im.height > 200 and im.width > 300


def test_curves_plot_the_reconstruction_loss(pretrained: Path) -> None:
    from convnext.engine.plots import curves_figure

    fig = curves_figure(read_metrics(pretrained), num_classes=0, reconstruction=True)
    loss = fig.axes[0]
    assert loss.get_ylabel() == "masked-patch MSE"
    assert [ln.get_label() for ln in loss.get_lines()] == ["train loss", "val loss"]
    assert any("masked patches" in t.get_text() for t in fig.texts)


def test_finetune_from_the_pretrain_run_folder_loads_the_encoder(pretrained: Path) -> None:
    """``model.pretrained=<run folder>`` of a V2 classifier: every encoder tensor equals the run's."""
    cfg = load_config(
        "quickstart_fewshot",
        [
            "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
            f"model.pretrained={pretrained}",
            "train.progress=false",
        ],
        check_paths=False,
    )
    model = build_model(cfg, num_classes=10)
    saved = load_train_checkpoint(pretrained / "checkpoints" / "last.pth")["model"]
    encoder = {k.removeprefix("encoder."): v for k, v in saved.items() if k.startswith("encoder.")}
    own = model.state_dict()
    assert encoder and set(encoder) <= set(own)
    for k, v in encoder.items():
        assert torch.equal(own[k], v), k
    assert model.num_classes == 10


class _PreemptAt(PausePoints):
    """SIGUSR1 (Slurm's pre-emption warning) to this process at optimizer step ``n``: the loop saves a
    mid-epoch checkpoint and stops, as under a scheduler."""

    def __init__(self, n: int) -> None:
        super().__init__(None)
        self.n = n

    def __call__(self, point: str, n: int, until: object = None) -> None:
        if point == "step" and n == self.n:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_preempted_mid_epoch_then_resumed_equals_straight(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fast variant of the kill test below (no workers, one process): stopped at step 6 of 8 (epoch 2,
    batch 2), resumed from last.pth: weights, optimizer, RNG and every logged loss bit-identical. The stop
    line names the verb that resumes it (pretrain shares training's loop, not its name)."""
    from convnext.messages import install_cli_handler, remove_cli_handler

    recipe = [*TINY, "data.dataset=images", f"data.root={images}", "data.workers=0", "train.eval_every=2"]
    recipe += ["ema.enabled=true", "ema.decay=0.9"]  # EMA on: its weights resume exactly too
    train(load_config("quickstart_fcmae", [*recipe, f"run.dir={tmp_path / 'straight'}"]))
    cfg = load_config("quickstart_fcmae", [*recipe, f"run.dir={tmp_path / 'stopped'}"])
    capsys.readouterr()
    install_cli_handler("pretrain")
    try:
        stopped = train(cfg, pauses=_PreemptAt(6))
    finally:
        remove_cli_handler()
    assert stopped.stopped_early and stopped.step == 6
    err = capsys.readouterr().err
    assert "convnext pretrain: SIGUSR1 received" in err and "convnext pretrain --resume" in err, err
    assert "convnext train" not in err, err
    assert train(cfg).step == 8
    _assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_bf16_autocast_and_ema(images: Path, tmp_path: Path) -> None:
    """AMP (bf16 autocast, emulated where the CPU has no bf16) and the EMA weights' val loss and figure."""
    cfg = load_config(
        "quickstart_fcmae",
        [*TINY, "epochs=1", "schedule.warmup_epochs=0", "data.dataset=images", f"data.root={images}",
         "train.amp=bf16", "train.emulated_bf16=true", "ema.enabled=true", "ema.decay=0.9",
         f"run.dir={tmp_path}"],
    )  # fmt: skip
    train(cfg)
    (record,) = read_metrics(tmp_path)
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    assert np.isfinite(record["ema_val_loss"]) and record["ema_val_loss"] != record["val_loss"]
    assert (tmp_path / "reconstructions" / "epoch_0001.png").is_file()


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a = load_train_checkpoint(a_dir / "checkpoints" / "last.pth")
    b = load_train_checkpoint(b_dir / "checkpoints" / "last.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    for key in ("model", "model_ema", "optimizer", "rng"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys(), key
        assert all(ta[n].equal(tb[n]) for n in ta), f"{key} differs"
    ma, mb = read_metrics(a_dir), read_metrics(b_dir)
    assert [m.get("val_loss") for m in ma] == [m.get("val_loss") for m in mb]
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]


@pytest.mark.slow  # ~45 s: three runs, one of them a second interpreter with 2 loader workers
def test_resume_after_kill_mid_epoch_is_bit_identical(images: Path, tmp_path: Path) -> None:
    """2 loader workers; kill -9 in epoch 2 right after a mid-epoch checkpoint; resumed = uninterrupted
    (weights, optimizer, every RNG: the masks are drawn from the checkpointed RNG)."""
    recipe = [
        *TINY,
        "data.dataset=images",
        f"data.root={images}",
        "data.workers=2",
        "data.persistent_workers=true",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=5",
    ]
    straight = train(load_config("quickstart_fcmae", [*recipe, f"run.dir={tmp_path / 'straight'}"]))
    assert straight.step == 8
    killed = tmp_path / "killed"
    env = {**ENV, "CONVNEXT_TEST_PAUSE_AT": "step@7"}  # after the step-6 checkpoint (epoch 2, batch 2)
    cmd = [sys.executable, "-m", "convnext.cli.main", "pretrain", "--config", "quickstart_fcmae", *recipe]
    proc = subprocess.Popen(
        [*cmd, f"run.dir={killed}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    out = ""
    while proc.poll() is None and time.monotonic() < deadline and "paused at step@7" not in out:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        out += line
    os.killpg(proc.pid, signal.SIGKILL)
    out += proc.communicate(timeout=60)[0]
    assert "paused at step@7" in out, out[-2000:]
    last = load_train_checkpoint(killed / "checkpoints" / "last.pth")
    assert (last["epoch"], last["step"], last["epoch_end"]) == (1, 6, False)
    resumed = train(load_config("quickstart_fcmae", [*recipe, f"run.dir={killed}"]))  # auto-resume
    assert resumed.step == 8
    _assert_same_run(tmp_path / "straight", killed)


@pytest.mark.slow  # ~40 s: torchrun starts three interpreters
def test_two_processes_gloo(images: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes: each rank draws its own masks (its own RNG stream, both checkpointed),
    the batch is split between the ranks, the val loss is counted over all val images once."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "convnext.cli.main",
        "pretrain",
        "--config",
        "quickstart_fcmae",
        *TINY,
        "train.batch_size=4",  # 4 x 2 processes: the single-process runs' batch of 8, 4 steps per epoch
        "data.dataset=images",
        f"data.root={images}",
        f"run.dir={tmp_path / 'two'}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_train_checkpoint(tmp_path / "two" / "checkpoints" / "last.pth")
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (2, 8, 2)
    assert len(ckpt["rng"]) == 2 and not ckpt["rng"][0]["torch"].equal(ckpt["rng"][1]["torch"])
    metrics = read_metrics(tmp_path / "two")
    assert len(metrics) == 2 and all(np.isfinite(m["val_loss"]) for m in metrics)
    assert (tmp_path / "two" / "reconstructions" / "epoch_0002.png").is_file()


def test_labels_per_class_is_the_same_seeded_subset_every_time() -> None:
    from convnext.data import build_dataset
    from convnext.data.fewshot import labels_per_class

    ds = build_dataset(DataConfig(dataset="digits", img_size=32), "train")
    a = labels_per_class(ds, 10, seed=0)
    b = labels_per_class(ds, 10, seed=0)
    assert a.indices == b.indices and len(a) == 100
    assert np.bincount(a.targets, minlength=10).tolist() == [10] * 10
    assert [ds.targets[i] for i in a.indices] == a.targets
    assert labels_per_class(ds, 10, seed=1).indices != a.indices
    assert set(labels_per_class(ds, 5, seed=0).indices) != set(a.indices[:50])  # per class, not a prefix
    with pytest.raises(UserError, match=r"data.labels_per_class=1000: class '0' has only \d+"):
        labels_per_class(ds, 1000, seed=0)
    with pytest.raises(UserError, match="streams its images with no list of labels"):
        labels_per_class(torch.utils.data.TensorDataset(torch.zeros(3)), 1, seed=0)


def test_labels_per_class_reaches_the_training_data(tmp_path: Path) -> None:
    from convnext.engine.train.setup import build_data

    cfg = load_config("quickstart_fewshot", [f"run.dir={tmp_path}", "data.labels_per_class=3"])
    data = build_data(cfg, None, None, 1)
    assert data.n_train == 30 and data.n_val == 360 and len(data.classes) == 10


@pytest.mark.parametrize(
    ("config", "override", "says"),
    [
        (
            "quickstart_fcmae",
            "model.options.mask_ratio=1.5",
            "config key model.options.mask_ratio must be in (0, 1)",
        ),
        (
            "quickstart_fcmae",
            "model.options.decoder_dept=2",
            "config key model.options.decoder_dept: convnextv2_atto",
        ),
        (
            "quickstart_fcmae",
            "data.img_size=48",
            "config key data.img_size=48 must be a multiple of model.options",
        ),
        (
            "quickstart_fcmae",
            "data.labels_per_class=0",
            "config key data.labels_per_class must be a positive",
        ),
        ("quickstart_digits", "epochs=1", "config key model.name is convnext_atto, a classifier"),
    ],
)
def test_bad_recipe_value_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture, config: str, override: str, says: str
) -> None:
    from convnext.cli.main import main

    assert main(["pretrain", "--config", config, override, f"run.dir={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convnext pretrain: error: {says}"), lines
