"""Tar shards (convnext.data.shards): `convnext prepare shards` stores every image byte for byte; evaluation
on the shards equals the folder (count, top-1, loss), with each sample counted once across 2 gloo processes;
training resumes exactly after a kill -9 mid-epoch with 2 loader workers; a truncated shard is one sentence.
A few dozen generated 32-40 px images and a ConvNeXt with 8-64 channels keep it fast."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from test_resume import _tensors

from convnext.cli.main import main
from convnext.data import DataConfig, build_dataset, build_eval_transform, build_loader, epoch_iterator
from convnext.data.shards import ShardDataset, ShardList, ShardLoader, _round_robin, prepare_shards
from convnext.engine.checkpoint import load_train_checkpoint
from convnext.errors import UserError
from convnext.evaluation.loop import evaluate

pytest.importorskip("webdataset")

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
CLASSES = ("ant", "bee", "cow")
TINY_OPTS = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, n_train: int = 48, n_val: int = 15) -> Path:
    """ROOT/{train,val}/<class>/ of random JPEGs and PNGs (both formats: the extension must follow them)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = CLASSES[i % 3]
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray((rng.random((32 + i % 9, 40, 3)) * 255).astype("uint8"))
            if i % 2:
                img.save(d / f"{c}{i}.png")
            else:
                img.save(d / f"{c}{i}.jpeg", quality=85)  # .jpeg on disk: stored as .jpg by its format
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shards")
    folder = _folder(base / "folder")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the CLI in this process: a subprocess would cost its imports
        rc = main(
            ["prepare", "shards", str(folder), str(base / "shards"), "--shard-size", "8", "--no-progress"]
        )
    assert rc == 0 and "48 train, 15 val images" in out.getvalue()
    return folder, base / "shards"


def test_prepare_stores_every_file_byte_for_byte(data: tuple[Path, Path]) -> None:
    folder, shards = data
    index = json.loads((shards / "shards.json").read_text())
    assert (shards / "classes.txt").read_text().split() == list(CLASSES) == index["classes"]
    assert [s["file"] for s in index["splits"]["val"]["shards"]] == ["val-000000.tar", "val-000001.tar"]
    assert sorted(p.name for p in shards.glob("*.tar"))[:2] == ["train-000000.tar", "train-000001.tar"]
    for split in ("train", "val"):
        fd = build_dataset(DataConfig(root=str(folder), workers=0), split)
        files = dict(enumerate(fd.samples))
        seen = set()
        for entry in index["splits"][split]["shards"]:
            with tarfile.open(shards / entry["file"]) as tar:
                members = tar.getmembers()
                keys = [m.name.split(".")[0] for m in members]
                for m in members:
                    key, ext = m.name.split(".", 1)
                    data_ = tar.extractfile(m).read()
                    path, target = files[int(key)]
                    if ext == "cls":
                        assert int(data_) == target
                    else:
                        assert data_ == Path(path).read_bytes()  # never re-encoded
                        assert ext == ("png" if path.endswith(".png") else "jpg")
                        seen.add(int(key))
            assert len(set(keys)) == entry["count"] and len(members) == 2 * entry["count"]
        assert seen == set(files)
    # the train split is written shuffled (a shard of one class defeats the shuffle buffer)
    first = index["splits"]["train"]["shards"][0]["targets"]
    assert len(set(first)) > 1


def test_prepare_refuses_a_used_destination_and_a_folder_without_splits(data, tmp_path: Path) -> None:
    folder, shards = data
    with pytest.raises(UserError, match="new or empty folder"):
        prepare_shards(folder, shards, progress=False)
    with pytest.raises(UserError, match="--from"):
        prepare_shards(folder / "train", tmp_path / "x", progress=False)
    # a raw layout (--from): class folders split per class, as `convnext prepare folders` does
    counts = prepare_shards(folder / "train", tmp_path / "y", layout="folders", progress=False)
    assert counts == {"train": 39, "val": 9}


def test_prepare_from_arrays_writes_the_pngs_prepare_writes(tmp_path: Path) -> None:
    """MNIST (images in memory) as PNG shards: the same pixels and classes as `convnext prepare mnist`."""
    from test_prepare import _idx

    from convnext.data.prepare import prepare

    raw = tmp_path / "mnist"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)
    assert prepare_shards(raw, tmp_path / "shards", layout="mnist", progress=False) == {"train": 6, "val": 4}
    prepare("mnist", raw, tmp_path / "folder", progress=False)
    shards = build_dataset(DataConfig(dataset="shards", root=str(tmp_path / "shards")), "val")
    folder = build_dataset(DataConfig(root=str(tmp_path / "folder")), "val")
    assert shards.classes == folder.classes
    where = {Path(p).name: i for i, (p, _) in enumerate(folder.samples)}  # the folder sorts by class
    for k in range(4):  # val is written in the arrays' order: key k is <class>/0000k.png
        (a, ta), (b, tb) = shards[k], folder[where[f"{k:05d}.png"]]
        assert torch.equal(a, b) and ta == tb


def _model(classes: int = 3) -> torch.nn.Module:
    from convnext.hub import create_model

    torch.manual_seed(0)
    return create_model("convnext_atto", num_classes=classes, **TINY_OPTS).eval()


def _eval(root: Path | str, dataset: str, workers: int, distributed: bool = False) -> dict:
    cfg = DataConfig(dataset=dataset, root=str(root), img_size=32, crop_pct=1.0, workers=workers)
    ds = build_dataset(cfg, "val", build_eval_transform(cfg), on_error="drop")
    loader = build_loader(ds, 4, train=False, cfg=cfg, seed=0, distributed=distributed)
    return evaluate(_model(), loader, "cpu", progress=False)


def test_evaluate_on_shards_equals_the_folder(data: tuple[Path, Path]) -> None:
    folder, shards = data
    ref = _eval(folder, "imagefolder", 0)
    for workers in (0, 2):
        res = _eval(shards, "shards", workers)
        assert res["n"] == ref["n"] == 15
        assert res["top1"] == pytest.approx(ref["top1"]) and res["top5"] == pytest.approx(ref["top5"])
        assert res["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        res = _eval(Path(root), "shards", 0, distributed=True)
        cfg = DataConfig(dataset="shards", root=root, img_size=32, workers=0, randaugment=None)
        val = build_dataset(cfg, "val", build_eval_transform(cfg), on_error="drop")
        seen_val = [int(t) for _, y in build_loader(val, 4, train=False, cfg=cfg, seed=0, distributed=True)
                    for t in y]  # fmt: skip
        train_ds = build_dataset(cfg, "train", build_eval_transform(cfg))
        loader = build_loader(train_ds, 4, train=True, cfg=cfg, seed=1, distributed=True)
        batches = [y.tolist() for _, y in epoch_iterator(loader, 1, 0)]
        torch.save({"res": res, "val": seen_val, "len": len(loader), "batches": batches}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_count_every_sample_once(data: tuple[Path, Path], tmp_path: Path) -> None:
    folder, shards = data
    ref = _eval(folder, "imagefolder", 0)
    out = str(tmp_path / "r")
    # forked: spawned processes would import torch again (~10 s on a busy 2-core machine)
    mp.start_processes(_rank, args=(2, _free_port(), str(shards), out), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=False) for r in range(2))
    assert r0["res"]["n"] == r1["res"]["n"] == 15 and r0["res"]["world_size"] == 2
    assert r0["res"]["top1"] == pytest.approx(ref["top1"]) and r0["res"]["loss"] == pytest.approx(ref["loss"])
    assert (len(r0["val"]), len(r1["val"])) == (8, 7)  # val-000000.tar (8) on rank 0, val-000001 (7) on 1
    # training: 6 shards of 8, 3 per rank: both ranks run the same number of full batches
    assert r0["len"] == r1["len"] == 6
    assert [len(b) for b in r0["batches"]] == [len(b) for b in r1["batches"]] == [4] * 6


def test_resume_plan_replays_every_skip_with_uneven_workers(data: tuple[Path, Path]) -> None:
    """Any number of batches already consumed: the rest of the epoch is the same batches, with 2 workers on 8
    shards of uneven size (the round-robin merge and the worker rotation), the tail dropped."""
    _, shards = data
    cfg = DataConfig(dataset="shards", root=str(shards), img_size=32, workers=2, randaugment=None, hflip=0.5)
    train, val = (build_dataset(cfg, s, build_eval_transform(cfg)) for s in ("train", "val"))
    assert isinstance(train, ShardDataset)
    t, v = train.shards, val.shards  # 6 shards of 8 and val's 8 + 7: 63 samples
    train.shards = ShardList(t.urls + v.urls, t.counts + v.counts, t.targets + v.targets, t.classes)
    loader = ShardLoader(train, 5, train=True, cfg=cfg, seed=4)
    assert len(loader) == 63 // 5

    def batches(epoch: int, skip: int = 0) -> list:
        return [(x.float().sum().item(), y.tolist()) for x, y in loader.epoch_batches(4, epoch, skip)]

    full = batches(2)
    assert len(full) == 12
    for skip in (1, 5, 11):
        assert batches(2, skip) == full[skip:]
    assert full != batches(3)


def test_round_robin_model() -> None:
    # workers of 10, 3 and 7 samples, chunks of 4: a4 b3 c4 a4 | cut at 15; sample 9 is in c's chunk
    given, before, nxt = _round_robin([10, 3, 7], 4, 15, 9)
    assert (given, before, nxt) == ([8, 3, 4], [4, 3, 2], 2)
    assert _round_robin([10, 3, 7], 4, 15, 7) == ([8, 3, 4], [4, 3, 0], 2)  # at a chunk boundary


def test_truncated_shard_is_one_sentence(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, shards = data
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in shards.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    blob = (bad / "val-000001.tar").read_bytes()
    (bad / "val-000001.tar").write_bytes(blob[: len(blob) // 2])
    for workers in (0, 2):
        with pytest.raises(UserError) as e:
            _eval(bad, "shards", workers)
        msg = str(e.value)
        assert "val-000001.tar" in msg and "\n" not in msg and "Traceback" not in msg, msg


def test_url_pattern_through_a_pipe(data: tuple[Path, Path]) -> None:
    """A `pipe:` pattern (what a slow or remote store looks like): counts from the shards.json beside."""
    folder, shards = data
    ref = _eval(folder, "imagefolder", 0)
    res = _eval(f"pipe:cat {shards}/{{split}}-{{000000..000001}}.tar", "shards", 0)
    assert res["n"] == 15 and res["top1"] == pytest.approx(ref["top1"])


def test_fsspec_url_and_one_sample_by_index(data: tuple[Path, Path]) -> None:
    """A folder behind an fsspec URL (here its in-memory file system; s3:// and gcs:// are read the same
    way), and ``ds[i]`` (run.export_samples) giving the folder's image i."""
    fsspec = pytest.importorskip("fsspec")
    folder, shards = data
    fs = fsspec.filesystem("memory")
    for p in shards.iterdir():
        fs.pipe(f"/shards-test/{p.name}", p.read_bytes())
    ref = _eval(folder, "imagefolder", 0)
    res = _eval("memory://shards-test", "shards", 0)
    assert res["n"] == 15 and res["top1"] == pytest.approx(ref["top1"])
    cfg = DataConfig(dataset="shards", root=str(shards))
    ds, fd = build_dataset(cfg, "val"), build_dataset(DataConfig(root=str(folder)), "val")
    for i in (0, 7, 14):  # val is written in the folder's order
        (a, ta), (b, tb) = ds[i], fd[i]
        assert torch.equal(a, b) and ta == tb


# ----------------------------------------------------------------------------------- exact resume, kill -9
RECIPE = [
    "seed=3",
    "epochs=2",
    "data.dataset=shards",
    "data.img_size=32",
    "data.hflip=0.5",
    "data.randaugment=rand-m9-mstd0.5-inc1",
    "data.workers=2",
    "train.eval_every=0",
    "train.batch_size=4",  # 12 steps per epoch
    "train.progress=false",
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "model.drop_path_rate=0.1",
    "checkpoint.every_steps=5",
    "run.export_samples=0",
    "run.loggers=[]",
]


def _train(run: Path, shards: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**ENV, **({"CONVNEXT_TEST_PAUSE_AT": pause} if pause else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "convnext.cli.main", "train", "--config", str(QUICK), *RECIPE,
         f"data.root={shards}", f"run.dir={run}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


# three training processes, ~60 s on 2 busy cores: the resume plan test above is the fast variant in CI
@pytest.mark.slow
def test_kill9_mid_epoch_with_two_workers_resumes_exactly(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, shards = data
    straight = _train(tmp_path / "straight", shards)
    out = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, out[-3000:]
    run = tmp_path / "killed"
    proc = _train(run, shards, pause="step@19")  # epoch 2, step 7 of 12: the last checkpoint is step 15
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if line.startswith("convnext-test: paused at step@19") or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers
    proc.communicate(timeout=60)
    stopped = load_train_checkpoint(run / "checkpoints" / "last.pth")
    assert stopped["step"] == 15 and not stopped["epoch_end"]  # mid-epoch 2: the resume skips 3 batches
    resumed = _train(run, shards)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    a = load_train_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pth")
    b = load_train_checkpoint(run / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == 24
    for key in ("model", "optimizer"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys()
        assert all(ta[k].equal(tb[k]) for k in ta), key
