"""Experiment tracking (run.loggers): every number read back from each tracker's own store.

TensorBoard through its EventAccumulator, MLflow through MlflowClient on a file store, W&B from the offline
run's transaction log (run-<id>.wandb: LevelDB-log framed protobuf records, the format `wandb sync` uploads).
Nothing reaches a network: WANDB_MODE=offline, MLFLOW_TRACKING_URI=file:<tmp>.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from convnext.engine.config import load_config
from convnext.engine.logging import MetricsLogger, read_metrics
from convnext.engine.trackers import STATE_FILE, MLflowTracker, flatten_config
from convnext.engine.train import train
from convnext.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = [
    "schedule.warmup_epochs=0",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "train.batch_size=64",  # 22 steps an epoch
    "train.log_every=10",
    "train.progress=false",
    "run.export_samples=0",
    "run.loggers=[tensorboard, mlflow, wandb]",
]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline W&B and a file-store MLflow in ``tmp_path``; the process environment restored afterwards."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's capture of stdout/stderr alone
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    # unset, so that the tracker has to allow its file store itself; set first, so that what it sets is undone
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return tmp_path


def wandb_records(path: Path) -> Iterator:
    """The protobuf records of a W&B transaction log: a 7-byte file header, then LevelDB log framing (32 KiB
    blocks of chunks, each with a 7-byte header: CRC32C, little-endian length, type FULL=1/FIRST=2/MIDDLE=3/
    LAST=4). wandb ships no Python reader of its own since the Go core took over."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        n, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (n == 0 and kind == 0):  # block trailer padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def wandb_run(folder: Path) -> tuple[str, dict, list[dict]]:
    """(run id, config, history rows) of one offline run folder."""
    (log,) = folder.glob("run-*.wandb")
    run_id, config, rows = "", {}, []
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return run_id, config, rows


def test_every_tracker_gets_the_run_and_a_resume_continues_it(stores: Path) -> None:
    run = stores / "run"
    # 1 epoch, then the same run folder resumed for a second: one MLflow run and one W&B id throughout
    train(load_config(QUICK, [*TINY, "epochs=1", f"run.dir={run}"]))
    state = json.loads((run / STATE_FILE).read_text())
    # a killed first run had logged a point past its checkpoint (step 30): the resume must replace it
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tb")) as w:
        w.add_scalar("step/loss", 123.0, 30)
    result = train(load_config(QUICK, [*TINY, "epochs=2", f"run.dir={run}"]))
    assert result.epoch == 2
    ids = {name: {k: v for k, v in entry.items() if k != "logged"} for name, entry in state.items()}
    now = json.loads((run / STATE_FILE).read_text())
    assert {name: {k: v for k, v in entry.items() if k != "logged"} for name, entry in now.items()} == ids
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]

    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    top1 = [(e.step, e.value) for e in acc.Scalars("epoch/val_top1")]
    assert top1 == [(r["epoch"], pytest.approx(r["val_top1"])) for r in records]
    loss = [(e.step, e.value) for e in acc.Scalars("step/loss")]
    assert [s for s, _ in loss] == [10, 20, 30, 40] and all(0 < v < 3 for _, v in loss)  # 123.0 purged
    assert [e.step for e in acc.Scalars("step/lr")] == [10, 20, 30, 40]
    assert [e.step for e in acc.Images("curves")] == [22, 44]  # the end of each process
    assert acc.Images("curves")[-1].width > 500
    assert b"optim:" in acc.Tensors("config/text_summary")[-1].tensor_proto.string_val[0]

    # MLflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["mlflow"]["tracking_uri"])
    (mrun,) = client.search_runs([state["mlflow"]["experiment_id"]])
    assert mrun.info.run_id == state["mlflow"]["run_id"] and mrun.info.status == "FINISHED"
    assert mrun.info.run_name == "run" and client.get_experiment(mrun.info.experiment_id).name == "convnext"
    params = mrun.data.params
    assert params["optim.lr"] == "0.004" and params["model.options.dims"] == "[8, 16, 32, 64]"
    assert (
        params["run.loggers"] == '["tensorboard", "mlflow", "wandb"]' and params["model.pretrained"] == "null"
    )
    assert params["epochs"] == "1" and mrun.data.tags["resumed.epochs"] == "2"  # params are write-once
    history = client.get_metric_history(mrun.info.run_id, "epoch/val_top1")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_top1"]) for r in records]
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "step/loss")] == [10, 20, 30, 40]
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert artifacts == {"curves.png", "config.yaml", "metrics.jsonl"}
    got = Path(client.download_artifacts(mrun.info.run_id, "metrics.jsonl", str(stores)))
    assert read_metrics(got) == records

    # W&B: two offline folders (one per process) of one run id, which `wandb sync` joins
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    (id1, config, rows1), (id2, _, rows2) = (wandb_run(f) for f in folders)
    assert id1 == id2 == state["wandb"]["id"]
    assert config["optim"]["lr"] == 0.004 and config["epochs"] == 1
    rows = rows1 + rows2
    epochs = [r for r in rows if "epoch" in r]
    assert [(r["epoch"], r["epoch/val_top1"]) for r in epochs] == [
        (r["epoch"], r["val_top1"]) for r in records
    ]
    assert [r["global_step"] for r in rows if "step/loss" in r] == [10, 20, 30, 40]
    assert [r["global_step"] for r in rows if r.get("curves/_type") == "image-file"] == [22, 44]
    assert all(len(list(f.glob("files/media/images/curves_*.png"))) == 1 for f in folders)


@pytest.mark.slow  # CI runs another variant of this guarantee (suite under 10 minutes)
def test_a_resume_after_kill_9_logs_each_step_once(stores: Path) -> None:
    """kill -9 at step 31 (step 30 logged, the checkpoint at step 22): the resumed run does steps 23-31 again,
    and MLflow (which keeps every point it gets) must not get step 30 twice."""
    run = stores / "run"
    mlflow_only = [*TINY, "epochs=2", "run.loggers=[mlflow]"]  # W&B: see the end
    argv = [sys.executable, "-m", "convnext.cli.main", "train", "--config", str(QUICK), *mlflow_only]
    proc = subprocess.Popen(
        [*argv, f"run.dir={run}"],
        cwd=ROOT,
        env={**os.environ, "CONVNEXT_TEST_PAUSE_AT": "step@31", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("convnext-test: paused at step@31"):
            break
    proc.kill()
    proc.communicate(timeout=60)
    assert seen and seen[-1].startswith("convnext-test: paused"), "".join(seen)[-3000:]
    result = train(load_config(QUICK, [*mlflow_only, f"run.dir={run}"]))  # resumes at step 22
    assert result.epoch == 2
    state = json.loads((run / STATE_FILE).read_text())
    assert state["mlflow"]["logged"] == {"step": 40, "epoch": 2} and "wandb" not in state

    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["mlflow"]["tracking_uri"])
    run_id = state["mlflow"]["run_id"]
    for key in ("step/loss", "step/lr"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [10, 20, 30, 40], key
    assert [m.step for m in client.get_metric_history(run_id, "epoch/train_loss")] == [1, 2]
    # W&B is not checked: what its service writes of a killed run before it goes too is a race (offline, a
    # process group killed at once left nothing of the killed run); the tracker does not skip for it


def test_only_a_resumed_run_continues_its_mlflow_run(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new run in a folder that has trackers.json (one killed before its first checkpoint) is a new MLflow
    run; a resumed one finds its run again, in the store it started in, from any working directory."""
    run, elsewhere = stores / "run", stores / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(stores)

    def open_(resumed_step: int | None) -> str:
        t = MLflowTracker(run, {"optim": {"lr": 0.1}, "epochs": 3}, resumed_step)
        t.close("stopped")
        return t.run_id

    first = open_(None)
    assert (stores / "mlruns").is_dir()  # the default store: ./mlruns
    monkeypatch.chdir(elsewhere)
    assert open_(resumed_step=12) == first
    assert (
        json.loads((run / STATE_FILE).read_text())["mlflow"]["tracking_uri"] == (stores / "mlruns").as_uri()
    )
    assert open_(None) != first  # not resumed: a run of its own
    assert (elsewhere / "mlruns").is_dir()


def test_fresh_start_moves_the_tracker_ids_aside(tmp_path: Path) -> None:
    """--fresh (or no checkpoint to resume) moves trackers.json and wandb/ with the earlier run's files."""
    from convnext.engine.rundir import RunFolder

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / STATE_FILE).write_text('{"mlflow": {"run_id": "abc"}}\n')
    (tmp_path / "wandb" / "offline-run-1-abc").mkdir(parents=True)
    moved = RunFolder(tmp_path).move_aside()
    assert sorted(p.name for p in moved.iterdir()) == ["metrics.jsonl", STATE_FILE, "wandb"]
    assert not (tmp_path / STATE_FILE).exists() and not (tmp_path / "wandb").exists()


def test_a_failing_tracker_is_dropped_with_one_warning(
    stores: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracking store going away mid-run costs its tracker, never the training or metrics.jsonl."""
    logger = MetricsLogger(stores / "run", loggers=["mlflow"], config={"a": 1})
    logger.log_step(1, {"loss": 2.0})
    shutil.rmtree(stores / "mlruns")
    with caplog.at_level(logging.WARNING, logger="convnext"):
        logger.log_step(2, {"loss": 1.5})
        logger.log_epoch({"epoch": 1, "train_loss": 1.7})
        logger.close()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("convnext")]
    assert len(said) == 1 and said[0].startswith("mlflow failed logging a step (")
    assert said[0].endswith("continuing without it (metrics.jsonl has every record)")
    assert read_metrics(stores / "run") == [{"epoch": 1, "train_loss": 1.7}]


def test_unreachable_mlflow_server_is_one_sentence_at_once(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not minutes of the client's retries: a probe of the server's /health first."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as e:
        MetricsLogger(stores / "run", loggers=["tensorboard", "mlflow"], config={"a": 1})
    assert str(e.value) == (
        f"MLflow tracking server http://127.0.0.1:{port} is not reachable (connection failed); start it, fix "
        "MLFLOW_TRACKING_URI, or drop mlflow from run.loggers"
    )
    assert not (stores / "run" / STATE_FILE).exists()


def test_unknown_logger_is_one_sentence() -> None:
    with pytest.raises(UserError) as e:
        load_config(None, ["run.loggers=[tensorboard, neptune]"], check_paths=False)
    assert str(e.value) == (
        "config key run.loggers must be a list of tensorboard, mlflow and/or wandb ([] for none), "
        "got ['tensorboard', 'neptune']"
    )
    assert load_config(None, ["run.loggers=[]"], check_paths=False).run.loggers == []
    assert load_config(None, [], check_paths=False).run.loggers == ["tensorboard"]


def test_flattened_params_paste_back_as_overrides() -> None:
    flat = flatten_config({"optim": {"lr": 4e-3, "betas": [0.9, 0.999]}, "model": {"pretrained": None}})
    assert flat == {"optim.lr": "0.004", "optim.betas": "[0.9, 0.999]", "model.pretrained": "null"}
    cfg = load_config(None, [f"{k}={v}" for k, v in flat.items()], check_paths=False)
    assert cfg.optim.lr == 4e-3 and cfg.optim.betas == (0.9, 0.999) and cfg.model.pretrained is None


MISSING = """
import sys
sys.modules["mlflow"] = sys.modules["wandb"] = None  # what a Python without them sees: their import fails
from convnext.cli.main import main
for name in ("mlflow", "wandb"):
    loggers = f"run.loggers=[tensorboard, {{name}}]"
    code = main(["train", "--config", {quick!r}, "run.dir=" + {run!r}, loggers])
    print("exit", code, flush=True)
"""


def test_missing_package_is_one_sentence_before_anything_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = MISSING.format(quick=str(QUICK), run=str(run))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["exit", "2", "exit", "2"], r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"convnext train: error: config key run.loggers names {name}, but the {name} package is not "
        f"installed; pip install 'convnext[{name}]' (or drop {name} from run.loggers)"
        for name in ("mlflow", "wandb")
    ]
    assert not run.exists()  # checked before the run folder, a process group or a model


@pytest.mark.slow
def test_only_rank_0_logs_under_torchrun(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 processes (gloo): one TensorBoard event file, one MLflow run, one W&B run, all from rank 0."""
    run = stores / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "convnext.cli.main",
        "train",
        "--config",
        str(QUICK),
        *TINY,
        "epochs=1",
        "train.batch_size=32",
        f"run.dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=stores, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the file store here
    state = json.loads((run / STATE_FILE).read_text())
    runs = MlflowClient(state["mlflow"]["tracking_uri"]).search_runs([state["mlflow"]["experiment_id"]])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert r.stderr.count("convnext train: tracking:") == 1
