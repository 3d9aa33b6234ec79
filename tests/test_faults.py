"""Faults of real use, through the real command line: kill -9 at exact points of a checkpoint write (the
CONVNEXT_TEST_PAUSE_AT hook of convnext.engine.pauses stops the process there), SIGTERM, a damaged
last.pth, a full disk, two trainings on one folder, --fresh over an older run. After each, nothing is lost:
the run ends with weights bit-identical to an uninterrupted run, every checkpoint reads, and best.pth,
metrics.jsonl and the printed summary agree.

Each training is the quickstart recipe with a tiny model, 2 epochs of 22 steps: seconds per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convnext.cli.main import main
from convnext.engine.checkpoint import CheckpointManager, load_train_checkpoint
from convnext.engine.pauses import TEST_PAUSE_ENV, PausePoints

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = [
    "epochs=2",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "train.batch_size=64",
    "train.progress=false",
    "run.export_samples=0",
    "checkpoint.keep_last=2",
]
SPE = 1437 // 64  # optimizer steps per epoch (the digits' training split, drop_last)
TIMING = ("epoch_time_s", "images_per_s")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop(TEST_PAUSE_ENV, None)


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "convnext.cli.main",
        "train",
        "--config",
        str(QUICK),
        *TINY,
        f"run.dir={run_dir}",
        *extra,
    ]


def run_cli(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(run_dir, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )


def test_pause_points_are_handed_in_never_read_by_the_writer(tmp_path: Path, monkeypatch) -> None:
    """The kill tests' hook lives outside the checkpoint code: a CheckpointManager stops only where the
    PausePoints it is given say (train() reads CONVNEXT_TEST_PAUSE_AT once), so a library caller's writes
    never stop, whatever the environment holds."""
    monkeypatch.setenv(TEST_PAUSE_ENV, "last@1")
    state = {"epoch": 1, "step": 3, "w": torch.zeros(4096)}
    CheckpointManager(tmp_path / "plain").save(state, epoch_end=True, is_best=True)  # returns: no pause
    assert (tmp_path / "plain" / "best.pth").is_file()

    seen: list[str] = []

    class Recording(PausePoints):
        def __call__(self, point: str, n: int, until=None) -> None:
            seen.append(f"{point}@{n}")

    CheckpointManager(tmp_path / "hooked", pauses=Recording("last.tmp@1")).save(
        state, epoch_end=True, is_best=True
    )
    # last.tmp is asked at every write once 4 KiB of last.pth are out (the real pause never returns)
    assert list(dict.fromkeys(seen)) == ["last.tmp@1", "last@1", "epoch@1", "best@1"]
    assert torch.load(tmp_path / "hooked" / "best.pth", weights_only=True)["step"] == 3


def start_paused(run_dir: Path, point: str, *extra: str, own_group: bool = False) -> subprocess.Popen:
    """A training that stops at ``point`` (see convnext.engine.pauses) and waits there;
    ``own_group``: in a process group of its own, as a terminal's foreground job (for a Ctrl-C)."""
    proc = subprocess.Popen(
        _cmd(run_dir, *extra),
        cwd=ROOT,
        env={**ENV, TEST_PAUSE_ENV: point},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
    )
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith(f"convnext-test: paused at {point}"):
            return proc
    proc.kill()
    raise AssertionError(f"never reached {point}:\n{''.join(seen)[-3000:]}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _errors(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "error" in ln.lower() or "Traceback" in ln]


def assert_nothing_lost(run_dir: Path, ref: Path, stdout: str | None = None) -> None:
    """``run_dir`` ended as the uninterrupted ``ref``: same weights and optimizer state bit for bit, the same
    metrics once per epoch, best.pth the best epoch of metrics.jsonl, every checkpoint an intact, separate
    file, no temporaries left."""
    ckpts = run_dir / "checkpoints"
    a, b = load_train_checkpoint(ckpts / "last.pth"), load_train_checkpoint(ref / "checkpoints" / "last.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 2 * SPE)
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for i, st in b["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(a["optimizer"]["state"][i][k], v), (i, k)
    got, want = _metrics(run_dir), _metrics(ref)
    assert [r["epoch"] for r in got] == [1, 2]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in TIMING} == {
            k: v for k, v in w.items() if k not in TIMING
        }
        assert g["images_per_s"] > 0
    best_epoch = max(got, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    best = load_train_checkpoint(ckpts / "best.pth")
    assert best["epoch"] == best_epoch and best["metrics"] == got[best_epoch - 1]
    assert a["best_epoch"] == best_epoch and a["best_top1"] == got[best_epoch - 1]["val_top1"]
    files = sorted(ckpts.iterdir())
    assert not [p for p in files if p.name.endswith(".tmp")], files
    inodes = {p.stat().st_ino for p in files}
    assert len(inodes) == len(files) and all(p.stat().st_nlink == 1 for p in files)  # never hard links
    for p in files:
        load_train_checkpoint(p)
    if stdout is not None:
        top1 = got[best_epoch - 1]["val_top1"]
        assert f"best top-1 {top1:.2f}% (epoch {best_epoch}" in stdout, stdout


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("ref")
    r = run_cli(run_dir, "train.log_every=10")  # a progress line every 10 steps (numbers unchanged)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "convnext_atto (depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]; " in r.stderr  # the model as built
    assert "done, 2 epochs in" in r.stdout
    (run_dir / "stdout.txt").write_text(r.stdout)
    (run_dir / "stderr.txt").write_text(r.stderr)
    return run_dir


def test_plain_progress_lines_where_there_is_no_terminal(ref: Path) -> None:
    """stderr to a pipe (Slurm, nohup, CI): no bar, but a plain line every train.log_every steps with the
    epoch, step, loss, lr, speed and time left, and an epoch line with the validation loss and the time."""
    err = (ref / "stderr.txt").read_text()
    assert "\r" not in err and "it/s]" not in err  # no progress bar
    steps = [ln for ln in err.splitlines() if re.match(r"epoch \d/2, step ", ln)]
    assert [ln.split(":")[0] for ln in steps] == [
        f"epoch {1 + s // SPE}/2, step {s - s // SPE * SPE}/{SPE}" for s in (10, 20, 30, 40)
    ], err[-3000:]
    number, hms = r"\d+\.\d{4}", r"\d+:\d\d:\d\d"
    for ln in steps:
        tail = rf": loss {number}, lr [\d.e+-]+, \d+ img/s, ETA {hms} epoch, {hms} run"
        assert re.fullmatch(".*" + tail, ln), ln
    records = _metrics(ref)
    ends = [ln for ln in err.splitlines() if " done: train loss" in ln]
    assert len(ends) == 2
    for ln, rec in zip(ends, records):
        assert ln.startswith(
            f"epoch {rec['epoch']}/2 done: train loss {rec['train_loss']:.4f}, "
            f"val loss {rec['val_loss']:.4f}, val top-1 {rec['val_top1']:.2f}%, "
        ), ln
        assert re.fullmatch(rf".*, \d+ img/s, epoch time {hms}", ln), ln


def test_uninterrupted_run_writes_independent_files_with_the_umask(ref: Path) -> None:
    assert_nothing_lost(ref, ref, (ref / "stdout.txt").read_text())
    umask = os.umask(0)
    os.umask(umask)
    for p in (ref / "checkpoints").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p  # as config.yaml and metrics.jsonl, not 0600
    assert (ref / "metrics.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    "point",
    [
        # during the write of last.pth: a half-written temporary file, last.pth still epoch 1
        pytest.param("last.tmp@2", marks=pytest.mark.slow),
        "last@2",  # last.pth written, best.pth and metrics.jsonl not yet: best.pth would be stale
        pytest.param("epoch@1", marks=pytest.mark.slow),  # epoch_0001.pth copied, no best.pth at all yet
        pytest.param("best@1", marks=pytest.mark.slow),  # best.pth copied, metrics.jsonl not yet
    ],
)
def test_kill_9_during_a_checkpoint_write_loses_nothing(ref: Path, tmp_path: Path, point: str) -> None:
    if point == "last@2":  # the case that catches a stale best.pth needs the last epoch to be the best
        assert max(_metrics(ref), key=lambda r: r["val_top1"])["epoch"] == 2
    kill9(start_paused(tmp_path, point))
    if point == "last.tmp@2":
        assert list((tmp_path / "checkpoints").glob(".last.pth.*.tmp"))  # what the kill left behind
        assert load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")["epoch"] == 1  # still intact
    r = run_cli(tmp_path)  # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert_nothing_lost(tmp_path, ref, r.stdout)


@pytest.mark.parametrize(
    ("step", "sig"),
    [
        (SPE, signal.SIGTERM),
        pytest.param(SPE + 8, signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(SPE, signal.SIGUSR1, marks=pytest.mark.slow),
    ],
)
def test_sigterm_then_resume_logs_the_epoch_as_if_uninterrupted(
    ref: Path, tmp_path: Path, step: int, sig: signal.Signals
) -> None:
    """SIGTERM at an epoch's last step (or mid-epoch): the resumed epoch's line has the same train loss as the
    straight run's (the partial sums travel in the checkpoint), never "train loss 0.0000, 0 img/s". The exit
    code is the shell's for that signal (143, SIGUSR1 138), so `train && evaluate` stops there."""
    proc = start_paused(tmp_path, f"step@{step}")
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + sig and f"{sig.name} received" in out, out[-2000:]
    stopped = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert stopped["step"] == step and not stopped["epoch_end"] and stopped["epoch_partial"]["loss_steps"] > 0
    r = run_cli(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train loss 0.0000" not in r.stderr
    assert_nothing_lost(tmp_path, ref, r.stdout)


@pytest.mark.slow  # the process-group SIGTERM test runs the same stop path in CI
def test_ctrl_c_saves_at_the_next_step_and_resumes_exactly(ref: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group, loader workers included) mid-epoch 2: the
    run checkpoints at that step and exits 130 (so `train && evaluate` stops), and the next run ends as the
    uninterrupted one. Before, a Ctrl-C lost every step since the last epoch's checkpoint."""
    workers = "data.workers=2"  # the workers get the SIGINT too and must keep serving batches
    proc = start_paused(tmp_path, f"step@{SPE + 8}", workers, own_group=True)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-2000:]
    assert "Ctrl-C: saving a checkpoint at the next step" in out, out[-2000:]
    assert "SIGINT received; saved" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    stopped = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert stopped["step"] == SPE + 8 and not stopped["epoch_end"]
    r = run_cli(tmp_path, workers)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_nothing_lost(tmp_path, ref, r.stdout)


def test_sigterm_to_the_process_group_with_workers_saves_and_exits_143(ref: Path, tmp_path: Path) -> None:
    """What `timeout`, Slurm (a job step) and Kubernetes send: SIGTERM to the whole process group, loader
    workers included. Before, the workers died of it ("DataLoader worker ... killed by signal: Terminated",
    a traceback, no checkpoint) and a stop exited 0; now the workers ignore it, the run saves at the next
    step, says so in one line and exits 143 (128 + SIGTERM); the same command resumes it exactly."""
    workers = "data.workers=2"
    proc = start_paused(tmp_path, f"step@{SPE + 8}", workers, own_group=True)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "Traceback" not in out and "killed by signal" not in out, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if "SIGTERM" in ln]
    last = tmp_path / "checkpoints" / "last.pth"
    assert line == (
        f"convnext train: SIGTERM received; saved {last} at step {SPE + 8} (epoch 2, batch 8/{SPE}); resume "
        f"with: convnext train --resume {last}"
    )
    stopped = load_train_checkpoint(last)
    assert stopped["step"] == SPE + 8 and not stopped["epoch_end"]
    r = run_cli(tmp_path, workers)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_nothing_lost(tmp_path, ref, r.stdout)


@pytest.mark.slow  # CI runs another variant of this guarantee (suite under 10 minutes)
def test_double_ctrl_c_during_a_checkpoint_write_finishes_the_write(ref: Path, tmp_path: Path) -> None:
    """Ctrl-C twice while last.pth is being written (the test hook stops the write after 4 KiB): before, the
    second one raised KeyboardInterrupt inside torch.save (a traceback, exit 1); now both wait until every
    file of the checkpoint is complete, then the run stops with 130 and no traceback (the resume from such a
    folder: test_kill_9_during_a_checkpoint_write_loses_nothing)."""
    proc = start_paused(tmp_path, "last.tmp@1", own_group=True)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)  # two signals, not one coalesced by the kernel
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == "convnext train: interrupted", out[-3000:]
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pth", "epoch_0001.pth", "last.pth"]
    for p in ckpts.iterdir():  # each file whole, the state at the end of epoch 1
        assert load_train_checkpoint(p)["step"] == SPE


def test_random_bytes_in_last_pth_are_named_as_not_a_checkpoint(ref: Path, tmp_path: Path) -> None:
    """A last.pth of random bytes: one warning saying it is not a checkpoint, not torch's advice about mmap
    and torch.save's zip format."""
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    last = run_dir / "checkpoints" / "last.pth"
    last.write_bytes(bytes(range(256)) * 64)
    r = run_cli(run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert warnings == [
        f"convnext train: warning: checkpoint {last} cannot be read (not a checkpoint: corrupt or truncated, "
        "it is not the zip archive torch.save writes); resuming from the newest intact checkpoint "
        f"{run_dir / 'checkpoints' / 'epoch_0002.pth'} (epoch 2)"
    ], r.stderr[-3000:]


@pytest.mark.parametrize("kept", [True, False], ids=["rebuilt", "lost"])
def test_torn_metrics_line_before_a_later_checkpoint_is_rebuilt_or_named(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kept: bool
) -> None:
    """metrics.jsonl ends in epoch 1's torn line, but last.pth is at epoch 2: epoch 1's record comes back
    from epoch_0001.pth, which carries it (before, it was dropped without a word); with that checkpoint gone
    one warning says the record is lost."""
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    metrics = run_dir / "metrics.jsonl"
    first = metrics.read_text().splitlines()[0]
    metrics.write_text(first[:30])
    if not kept:
        (run_dir / "checkpoints" / "epoch_0001.pth").unlink()
    assert main(["train", "--config", str(QUICK), *TINY, f"run.dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    got = [r["epoch"] for r in _metrics(run_dir)]
    if kept:
        assert got == [1, 2] and _metrics(run_dir) == _metrics(ref)
        assert f"rebuilt the record of epoch 1 from {run_dir / 'checkpoints' / 'epoch_0001.pth'}" in err, err
    else:
        assert got == [2]
        lost = [ln for ln in err.splitlines() if "lost" in ln]
        assert lost == [
            f"convnext train: warning: {metrics}: the record of epoch 1 is lost (its line is missing or "
            "torn, and no checkpoint of that epoch is kept)"
        ], err


def test_slurm_example_requeues_a_signalled_run_and_ends_a_finished_one(ref: Path, tmp_path: Path) -> None:
    """examples/slurm/train.sbatch as Slurm runs it (srun and scontrol stand-ins on PATH): SIGUSR1 to the job
    step (what --signal=USR1@120 sends) makes convnext train save and exit 138, and the script requeues the
    job; the requeued job (the same script and arguments) resumes and finishes, and is not requeued again.
    One epoch, to be quick."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{ENV['PATH']}", "SLURM_JOB_ID": "4242"}
    run_dir = tmp_path / "run"
    job = ["bash", str(ROOT / "examples" / "slurm" / "train.sbatch"), "--config", str(QUICK), *TINY]
    job += [f"run.dir={run_dir}", "epochs=1"]
    proc = subprocess.Popen(
        job,
        cwd=ROOT,
        env={**env, TEST_PAUSE_ENV: "step@8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("convnext-test: paused at"):
            break
    pid = int(re.search(r"\(pid (\d+)\)", line).group(1))  # the training, not the batch shell (no "B:")
    os.kill(pid, signal.SIGUSR1)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 138, out[-3000:]
    assert "SIGUSR1 received; saved" in out and "requeueing job 4242" in out, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    again = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # done: not requeued again
    assert "resuming" in again.stderr and "done, 1 epoch in" in again.stdout, again.stderr[-3000:]
    assert load_train_checkpoint(run_dir / "checkpoints" / "last.pth")["step"] == SPE


def test_second_training_on_a_folder_is_refused_and_kill_9_leaves_no_stale_lock(
    ref: Path, tmp_path: Path
) -> None:
    first = start_paused(tmp_path, f"step@{SPE + 8}")  # holds the folder, mid-epoch 2
    before = (tmp_path / "checkpoints" / "last.pth").read_bytes()
    second = run_cli(tmp_path)
    assert second.returncode != 0
    (line,) = second.stderr.strip().splitlines()
    assert line == (
        f"convnext train: error: run folder {tmp_path} is in use by another training (PID {first.pid}); wait "
        "for it to end, stop it, or choose another run.dir"
    )
    assert (tmp_path / "checkpoints" / "last.pth").read_bytes() == before  # the second run touched nothing
    kill9(first)
    r = run_cli(tmp_path)  # at once: the lock died with the process
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr
    assert_nothing_lost(tmp_path, ref, r.stdout)


def test_damaged_last_pth_resumes_from_the_newest_intact_checkpoint(ref: Path, tmp_path: Path) -> None:
    """kill -9 mid-epoch 2, then last.pth truncated to 0 bytes in place and metrics.jsonl left with a torn
    line: the other checkpoints are separate files (unharmed), the next run says so in one line each and
    resumes from epoch_0001.pth."""
    kill9(start_paused(tmp_path, f"step@{SPE + 8}"))
    ckpts = tmp_path / "checkpoints"
    os.truncate(ckpts / "last.pth", 0)
    for name in ("epoch_0001.pth", "best.pth"):
        assert load_train_checkpoint(ckpts / name)["epoch"] == 1
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 4')  # a kill during an append
    r = run_cli(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert warnings == [
        f"convnext train: warning: checkpoint {ckpts / 'last.pth'} cannot be read (it is empty: 0 bytes); "
        f"resuming from the newest intact checkpoint {ckpts / 'epoch_0001.pth'} (epoch 1)",
        f"convnext train: warning: {tmp_path / 'metrics.jsonl'}: ignoring its torn last line (a run killed "
        """while writing it): '{"epoch": 2, "step": 4'""",
    ]
    assert_nothing_lost(tmp_path, ref, r.stdout)


def test_no_intact_checkpoint_stops_in_one_line_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (ckpts / "epoch_0001.pth").write_bytes(b"")
    argv = ["train", "--config", str(QUICK), *TINY, f"run.dir={tmp_path}"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"convnext train: error: checkpoint {ckpts / 'last.pth'} cannot be read (")
    assert line.endswith(
        f"and no intact checkpoint is left in {ckpts}; resume another one with --resume PATH or start over "
        "with --fresh"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_0001.pth", "last.pth"]


@pytest.fixture
def small_disk(tmp_path: Path, ref: Path):
    """A tmpfs with room for epoch 1's three checkpoint files but not for epoch 2's (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    size = (ref / "checkpoints" / "last.pth").stat().st_size
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 3.5) // 1024}k", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(
    small_disk: Path, ref: Path, tmp_path: Path
) -> None:
    run_dir = small_disk / "run"
    r = run_cli(run_dir)
    assert r.returncode != 0
    errors = _errors(r.stderr)
    last = run_dir / "checkpoints" / "last.pth"
    assert errors == [
        f"convnext train: error: no space left on the device writing {last}; the previous checkpoint {last} "
        "is intact"
    ], r.stderr[-3000:]
    assert load_train_checkpoint(last)["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp"))
    # with room again (the folder moved to a bigger disk), the same command finishes the run, nothing lost
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    r = run_cli(moved)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_nothing_lost(moved, ref, r.stdout)


def test_fresh_moves_an_older_longer_run_aside(ref: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    r = run_cli(run_dir, "--fresh", "epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done, 1 epoch in" in r.stdout
    (old,) = run_dir.glob("previous-*")
    assert f"--fresh: moved the previous run's checkpoints and metrics to {old}" in r.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pth",
        "epoch_0001.pth",
        "last.pth",
    ]
    assert [m["epoch"] for m in _metrics(run_dir)] == [1]
    assert load_train_checkpoint(run_dir / "checkpoints" / "last.pth")["step"] == SPE
    assert sorted(p.name for p in (old / "checkpoints").iterdir()) == sorted(
        p.name for p in (ref / "checkpoints").iterdir()
    )
    assert [m["epoch"] for m in _metrics(old)] == [1, 2]
    assert load_train_checkpoint(old / "checkpoints" / "epoch_0002.pth")["epoch"] == 2


def test_finished_run_is_done_before_loading_anything(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-running a finished run says so at once: the pretrained file (damaged by now) is not even read."""
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    (tmp_path / "damaged.pth").write_bytes(b"not a checkpoint")
    argv = [
        "train",
        "--config",
        str(QUICK),
        *TINY,
        f"run.dir={run_dir}",
        f"model.pretrained={tmp_path}/damaged.pth",
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "has already completed 2 of 2 epochs" in out.err and "done, 2 epochs in" in out.out


def test_resume_with_other_model_options_is_one_sentence(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    argv = [
        "train",
        "--config",
        str(QUICK),
        *TINY,
        f"run.dir={run_dir}",
        "epochs=3",
        "model.options={depths: [1, 1, 2, 1], dims: [8, 16, 32, 64]}",
    ]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("convnext train: error: config key model.options is {'depths': [1, 1, 2, 1], ")
    assert "was trained with {'depths': [1, 1, 1, 1], " in line
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]


def test_run_dir_that_is_a_file_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for run_dir in (f, f / "sub"):
        assert main(["train", "--config", str(QUICK), *TINY, f"run.dir={run_dir}"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "is a file, not a folder; choose another run.dir" in line and str(f) in line
    assert f.read_text() == "mine" and sorted(tmp_path.iterdir()) == [f]
