"""Resume is exact where users train: with loader workers (persistent or not), after a kill -9 or a SIGTERM
mid-epoch, and a run does not depend on how it was launched (python or torchrun, 0 or 2 workers).

Every source of randomness is on: random-resized crops, flips and RandAugment in the workers; MixUp/CutMix
and random erasing on the batch; stochastic depth; EMA. Each sample's augmentation is drawn from
(seed, epoch, sample index) only (convnext.data.loader), so the process that loads it does not matter.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import _tensors

from convnext.data.loader import EpochSampler, SeededSamples, build_loader, epoch_iterator
from convnext.engine.checkpoint import load_train_checkpoint
from convnext.engine.config import load_config
from convnext.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
RECIPE = [
    "seed=7",  # not 0: seed 0 hid that python (RandomSampler) and torchrun (DistributedSampler) differed
    "epochs=3",
    "train.eval_every=0",  # the weights are compared; evaluation would only cost time
    "data.val_fraction=0.8",  # 359 training images: 11 steps of 32 per epoch
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "model.drop_path_rate=0.2",
    "data.hflip=0.5",
    "data.randaugment=rand-m9-mstd0.5-inc1",
    "data.reprob=0.25",
    "data.mixup=0.8",
    "data.cutmix=1.0",
    "ema.enabled=true",
    "ema.decay=0.9",
    "train.batch_size=32",
    "train.progress=false",
    "checkpoint.keep_last=5",
    "run.export_samples=0",
    "data.workers=2",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*overrides: str) -> list[str]:
    return ["-m", "convnext.cli.main", "train", "--config", str(QUICK), *RECIPE, *overrides]


def _run(args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights, EMA, optimizer state and main-process RNG state."""
    ca = load_train_checkpoint(a / "checkpoints" / "last.pth")
    cb = load_train_checkpoint(b / "checkpoints" / "last.pth")
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"]) == (3, 33)
    for key in ("model", "model_ema", "optimizer", "rng"):
        ta, tb = _tensors(ca[key]), _tensors(cb[key])
        assert ta.keys() == tb.keys(), key
        diff = {n: (ta[n].double() - tb[n].double()).abs().max().item() for n in ta if not ta[n].equal(tb[n])}
        assert not diff, f"{key} differs: {dict(list(diff.items())[:3])}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 epochs, 2 persistent workers, plain `python -m convnext.cli.main train`."""
    run = tmp_path_factory.mktemp("straight")
    _run(_cli("data.persistent_workers=true", f"run.dir={run}"))
    return run


def _start_and_wait_for_epoch_1(run: Path, persistent: bool) -> subprocess.Popen:
    """A real `convnext train` process (own process group: its workers go with it), once epoch 1 is saved."""
    proc = subprocess.Popen(
        [sys.executable, *_cli(f"data.persistent_workers={str(persistent).lower()}", f"run.dir={run}")],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    first = run / "checkpoints" / "epoch_0001.pth"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not first.exists():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(proc.communicate()[0][-2000:])
    return proc


@pytest.mark.parametrize(
    "persistent", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["persistent", "respawned"]
)
def test_kill9_in_epoch_2_then_resume_from_epoch_1(straight: Path, tmp_path: Path, persistent: bool) -> None:
    proc = _start_and_wait_for_epoch_1(tmp_path, persistent)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, somewhere in epoch 2
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "checkpoints" / "epoch_0003.pth").exists()
    cfg = load_config(QUICK, [*RECIPE, f"data.persistent_workers={persistent}", f"run.dir={tmp_path}"])
    result = train(cfg, resume=tmp_path / "checkpoints" / "epoch_0001.pth")
    assert result.epoch == 3
    assert_same_run(straight, tmp_path)


@pytest.mark.slow  # test_faults' SIGTERM to the process group with workers is the CI variant
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "respawned"])
def test_sigterm_mid_epoch_then_resume(straight: Path, tmp_path: Path, persistent: bool) -> None:
    proc = _start_and_wait_for_epoch_1(tmp_path, persistent)
    proc.send_signal(signal.SIGTERM)  # pre-emption early in epoch 2: saved after the step under way
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and "SIGTERM received" in out, out[-2000:]
    stopped = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert stopped["epoch"] == 1 and 11 < stopped["step"] < 22  # mid-epoch: the resume skips batches
    cfg = load_config(QUICK, [*RECIPE, f"data.persistent_workers={persistent}", f"run.dir={tmp_path}"])
    assert train(cfg).epoch == 3  # auto-resume from last.pth
    assert_same_run(straight, tmp_path)


@pytest.mark.slow  # test_ddp's two gloo processes equal one process in CI
def test_torchrun_one_process_equals_plain_run(straight: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1"]
    _run([*launcher, f"--master_port={port}", *_cli("data.persistent_workers=true", f"run.dir={tmp_path}")])
    assert load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")["world_size"] == 1
    assert_same_run(straight, tmp_path)


@pytest.mark.slow
def test_torchrun_two_processes_save_on_sigterm_to_the_group(tmp_path: Path) -> None:
    """SIGTERM to a torchrun job's process group (torchrun, 2 ranks, their loader workers): torchrun forwards
    it too; the ranks agree on the step, rank 0 saves and says so once, no worker dies of it. torchrun itself
    then exits 1 with its own SignalException traceback, which is torchrun's, not ours."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, *launcher, f"--master_port={port}", *_cli("epochs=2", f"run.dir={tmp_path}")],
        cwd=ROOT,
        env={**ENV, "CONVNEXT_TEST_PAUSE_AT": "step@8"},  # 5 steps per epoch with 2 ranks: mid-epoch 2
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    paused = 0
    for line in proc.stdout:
        paused += line.startswith("convnext-test: paused at step@8")
        if paused == 2:
            break
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert paused == 2, out[-3000:]
    assert "killed by signal" not in out, out[-3000:]
    assert len([ln for ln in out.splitlines() if "SIGTERM received; saved" in ln]) == 1, out[-3000:]
    stopped = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert stopped["world_size"] == 2 and stopped["epoch"] == 1 and not stopped["epoch_end"]


def test_no_workers_equals_two_workers(straight: Path, tmp_path: Path) -> None:
    """The samples are loaded in the main process, between the draws of MixUp, erasing and stochastic
    depth: the same run, because each sample's RNG is seeded and then restored."""
    train(load_config(QUICK, [*RECIPE, "data.workers=0", f"run.dir={tmp_path}"]))
    assert_same_run(straight, tmp_path)


# ------------------------------------------------------------------------------------ sampler and samples
def test_sampler_shards_like_one_process_and_skips_without_redrawing() -> None:
    one = EpochSampler(103, seed=5)
    one.set_epoch(2)
    order = [i for i, _, _ in one]
    assert sorted(order) == list(range(103)) and len(one) == 103
    assert order != [i for i, _, _ in EpochSampler(103, seed=5)]  # epoch 0 is another permutation
    shards = []
    for rank in range(2):
        s = EpochSampler(103, seed=5, rank=rank, world=2)
        s.set_epoch(2)
        shards.append([i for i, _, _ in s])
    assert [len(x) for x in shards] == [51, 51]  # the tail is dropped: every rank as many batches
    # global batch k of 2 ranks x 8 == batch k of 1 process x 16 (same samples, hence same augmentation)
    for k in range(51 // 8):
        assert sorted(shards[0][8 * k : 8 * k + 8] + shards[1][8 * k : 8 * k + 8]) == sorted(
            order[16 * k : 16 * k + 16]
        )
    one.set_epoch(2, start=40)
    assert [i for i, _, _ in one] == order[40:] and len(one) == 103  # len stays the epoch's (schedule)


class _Draws:
    """A "transform" that draws from each RNG a user transform might use."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float, float]:
        return torch.rand(2), random.random(), float(np.random.rand())


def test_seeded_samples_depend_on_seed_epoch_and_index_only_and_leave_the_main_rng_alone() -> None:
    draw = SeededSamples(_Draws())
    torch.manual_seed(1)
    a = draw[(7, 0, 3)][0]
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # the main torch stream is untouched
    torch.manual_seed(99)
    assert torch.equal(draw[(7, 0, 3)][0], a)  # not the state the process was in
    for other in ((8, 0, 3), (7, 1, 3), (7, 0, 4)):
        assert not torch.equal(draw[other][0], a)
    # in loader workers (whose own seeds differ from loader to loader) also Python's and numpy's draws
    keys = [(i, 0, 3) for i in range(6)]

    def through_workers(base: int) -> list:
        loader = torch.utils.data.DataLoader(
            draw, sampler=keys, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(base)
        )
        return [(t.tolist(), r, n) for t, r, n in loader]

    first = through_workers(0)
    assert first == through_workers(1) and len({r for _, r, _ in first}) == 6
    assert [t for t, _, _ in first] == [draw[k][0].tolist() for k in keys]  # = in the main process


def test_epoch_iterator_resumes_mid_epoch_with_the_same_batches() -> None:
    from convnext.data import DataConfig, build_dataset, build_train_transform

    cfg = DataConfig(dataset="digits", img_size=24, workers=0, randaugment="rand-m9-mstd0.5-inc1")
    ds = build_dataset(cfg, "val", build_train_transform(cfg))
    loader = build_loader(ds, 32, train=True, cfg=cfg, seed=0, distributed=False)
    full = list(epoch_iterator(loader, 0, 1))
    resumed = list(epoch_iterator(loader, 0, 1, skip=3))
    assert len(full) == len(loader) and len(resumed) == len(full) - 3
    for (x, y), (u, v) in zip(full[3:], resumed):
        assert torch.equal(x, u) and torch.equal(y, v)
    assert not torch.equal(full[0][0], next(epoch_iterator(loader, 0, 2))[0])
