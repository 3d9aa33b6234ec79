"""Resume is exact: 4 straight epochs == 2 + resume + 2, bit for bit, also after a SIGTERM mid-epoch;
a diverged loss stops the run with the step named and the last good checkpoint intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convnext.engine.checkpoint import FORMAT, VERSION, load_train_checkpoint
from convnext.engine.config import load_config
from convnext.engine.logging import read_metrics
from convnext.engine.train import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
# A tiny ConvNeXt on the digits, with every source of randomness switched ON (random resized crops,
# random erasing, stochastic depth, EMA), so that exactness is not an accident of a deterministic setup.
TINY = [
    "epochs=4",
    "train.eval_every=4",  # evaluate once, at the end
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "model.drop_path_rate=0.2",
    "data.reprob=0.25",  # random erasing, drawn on the device batch (data.normalize_on_device)
    "train.batch_size=64",
    "train.progress=false",
    "ema.enabled=true",
    "ema.decay=0.9",
    "checkpoint.keep_last=4",
    "run.export_samples=0",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a (nested) state dict, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}.{i}"))
    return out


def assert_identical(a: Path, b: Path) -> None:
    ca, cb = load_train_checkpoint(a), load_train_checkpoint(b)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    for key in ("model", "model_ema", "optimizer"):
        ta, tb = _tensors(ca[key]), _tensors(cb[key])
        assert ta.keys() == tb.keys(), key
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{key}{name} differs"
    lr_a = [g["lr"] for g in ca["optimizer"]["param_groups"]]
    assert lr_a == [g["lr"] for g in cb["optimizer"]["param_groups"]]


def assert_same_metrics(a: Path, b: Path) -> None:
    """Every epoch's line but its timing, exactly (a resumed epoch carries its partial sums)."""
    timing = ("epoch_time_s", "images_per_s")
    ma, mb = read_metrics(a), read_metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    for ra, rb in zip(ma, mb):
        for k in ra.keys() - set(timing):
            assert ra[k] == rb[k], (ra["epoch"], k)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 epochs without interruption; every epoch's checkpoint kept."""
    run = tmp_path_factory.mktemp("straight")
    train(load_config(QUICK, [*TINY, f"run.dir={run}"]))
    return run


def test_two_plus_resume_two_is_bit_identical(straight: Path, tmp_path: Path) -> None:
    ckpt = load_train_checkpoint(straight / "checkpoints" / "epoch_0001.pth")
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 1 and ckpt["class_names"] == [str(i) for i in range(10)]
    # plain types only (it was read with weights_only=True), the schema of checkpoint.train_state
    assert (
        ckpt["format"] == FORMAT
        and ckpt["version"] == VERSION
        and ckpt["arch"] == "convnext_atto"
        and ckpt["model_ema"]
    )
    result = train(
        load_config(QUICK, [*TINY, f"run.dir={tmp_path}"]), resume=straight / "checkpoints" / "epoch_0002.pth"
    )
    assert result.epoch == 4
    assert_identical(straight / "checkpoints" / "last.pth", tmp_path / "checkpoints" / "last.pth")
    assert [r["epoch"] for r in result.metrics] == [3, 4]
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "config.yaml").exists()


def test_cli_resume_needs_only_the_checkpoint(straight: Path, tmp_path: Path) -> None:
    """`convnext train --resume epoch_0003.pth` takes the recipe from the checkpoint itself."""
    from convnext.cli.main import main

    assert (
        main(["train", "--resume", str(straight / "checkpoints" / "epoch_0003.pth"), f"run.dir={tmp_path}"])
        == 0
    )
    assert_identical(straight / "checkpoints" / "last.pth", tmp_path / "checkpoints" / "last.pth")


def test_sigterm_mid_epoch_then_auto_resume_is_bit_identical(straight: Path, tmp_path: Path) -> None:
    """A real pre-emption: SIGTERM a `convnext train` process during epoch 2; it saves and exits 143; the same
    recipe again resumes from the exact batch (auto-resume) and ends bit-identical to the straight run."""
    cmd = [
        sys.executable,
        "-m",
        "convnext.cli.main",
        "train",
        "--config",
        str(QUICK),
        *TINY,
        f"run.dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = tmp_path / "checkpoints" / "epoch_0001.pth"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.exists(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)  # lands somewhere early in epoch 2
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-2000:]  # 128 + SIGTERM: `train && evaluate` does not evaluate
    assert "SIGTERM received" in out
    stopped = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    spe = stopped["steps_per_epoch"]
    assert stopped["epoch"] == 1 and spe < stopped["step"] < 2 * spe  # mid-epoch: resume must skip batches
    # the same recipe and run folder again: resumes by itself from last.pth (in-process, to save a start-up)
    result = train(load_config(QUICK, [*TINY, f"run.dir={tmp_path}"]))
    assert result.epoch == 4 and not result.stopped_early
    assert_identical(straight / "checkpoints" / "last.pth", tmp_path / "checkpoints" / "last.pth")
    # epoch 2's line covers all of its steps, not only those after the resume (the partial sums travel)
    assert_same_metrics(straight, tmp_path)


def test_version_1_checkpoint_still_resumes_exactly(straight: Path, tmp_path: Path) -> None:
    """Checkpoints of the first schema carried a LambdaLR state under "scheduler"; the lr is now a function of
    the step, and such a file resumes to the same weights."""
    new = load_train_checkpoint(straight / "checkpoints" / "epoch_0002.pth")
    old = {k: v for k, v in new.items() if k not in ("epoch_end", "epoch_partial", "best_epoch")}
    groups = old["optimizer"]["param_groups"]
    lrs = [g["lr"] for g in groups]
    for g in groups:
        g["initial_lr"] = 1.0  # LambdaLR's copy of the peak lr, no longer read: the recipe gives it
    old.update(
        version=1,
        scheduler={
            "base_lrs": [1.0] * len(groups),
            "last_epoch": old["step"],
            "_step_count": old["step"] + 1,
            "_get_lr_called_within_step": False,
            "_last_lr": lrs,
            "lr_lambdas": [None],
        },
    )
    path = tmp_path / "v1.pth"
    torch.save(old, path)
    result = train(load_config(QUICK, [*TINY, f"run.dir={tmp_path / 'run'}"]), resume=path)
    assert result.epoch == 4
    assert_identical(straight / "checkpoints" / "last.pth", tmp_path / "run" / "checkpoints" / "last.pth")


def test_diverged_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(
        QUICK, [*TINY, "epochs=1", "optim.lr=1e12", "checkpoint.every_steps=1", f"run.dir={tmp_path}"]
    )
    with pytest.raises(TrainingDiverged, match=r"(at|by) optimizer step (\d+)") as e:
        train(cfg)
    bad_step = int(str(e.value).split("optimizer step ")[1].split()[0])
    assert "is intact" in str(e.value)
    last = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert last["step"] == bad_step - 1  # saved before the bad step, never overwritten by it
    for name, t in _tensors(last["model"]).items():
        assert torch.isfinite(t).all(), name
