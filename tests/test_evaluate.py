"""Evaluation core and `convnext evaluate`: hand-computed accuracy, true ImageNet indices for a subset of
wnid folders, each sample counted once across 2 gloo processes, run folders, and the one-line errors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import SYNSETS
from torch import nn
from torch.utils.data import TensorDataset

from convnext.cli.main import main
from convnext.evaluation.loop import evaluate
from convnext.evaluation.metrics import accuracy

IMG = 64  # reduced resolution: the point is the mapping and the counting, not the accuracy


# ------------------------------------------------------------------------------------------- accuracy
def test_accuracy_hand_computed_with_ties_soft_targets_and_capped_k() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],  # best 1; target 1 -> top-1 hit
            [0.5, 0.2, 0.9, 0.3, 0.1, 0.0, 0.0],  # order 2,0,3,1,4,...; target 4 -> top-5 hit only
            [0.0, 0.7, 0.7, 0.0, 0.0, 0.0, 0.0],  # tie 1 == 2: lower index first; target 2 -> top-1 miss
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 6 -> rank 7: miss in both
        ]
    )
    targets = torch.tensor([1, 4, 2, 6])
    assert accuracy(logits, targets) == [25.0, 75.0]
    # soft / one-hot targets (MixUp) count their argmax class
    soft = torch.zeros(4, 7)
    soft[torch.arange(4), targets] = 0.7
    soft[:, 0] += 0.3
    assert accuracy(logits, soft, topk=(1, 2, 5)) == [25.0, 50.0, 75.0]
    # k beyond the number of classes is capped: top-5 of a 3-class head is top-3 (100%)
    assert accuracy(torch.randn(5, 3), torch.randint(0, 3, (5,)), topk=(5,)) == [100.0]


def test_evaluate_hand_computed_loss_and_predictions() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(9, 4), torch.randint(0, 6, (9,))
    model = nn.Linear(4, 6)
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=4)
    res = evaluate(model, loader, "cpu", progress=False, return_predictions=True)
    with torch.no_grad():
        logits = model(x)
    assert res["n"] == 9
    assert res["top1"] == pytest.approx(accuracy(logits, y)[0])
    assert res["top5"] == pytest.approx(accuracy(logits, y)[1])
    assert res["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert torch.equal(res["predictions"], logits.sort(dim=1, descending=True, stable=True).indices[:, :5])
    assert torch.equal(res["targets"], y)
    assert res["images_per_s"] > 0


# -------------------------------------------------------------------------------- ImageNet-sample mapping
@pytest.fixture(scope="module")
def atto_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random timm convnext_atto, saved as timm saves it (our loader converts it)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    peer = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path_factory.mktemp("w") / "atto_timm.pth"
    torch.save(peer.state_dict(), path)
    return path


def test_evaluate_maps_wnid_folders_to_true_imagenet_indices(imagenet_sample: Path, atto_ckpt: Path) -> None:
    import convnext
    from convnext.data import DataConfig, build_dataset, build_eval_transform, build_loader, load_image

    model = convnext.create_model("convnext_atto")
    convnext.load_checkpoint(model, str(atto_ckpt))
    model.eval()
    cfg = DataConfig(root=str(imagenet_sample), img_size=IMG, workers=0, class_list="imagenet1k")
    tf = build_eval_transform(cfg)
    ds = build_dataset(cfg, "", tf)
    loader = build_loader(ds, 50, train=False, cfg=cfg, seed=0, distributed=False)
    res = evaluate(model, loader, "cpu", progress=False, return_predictions=True)

    # by hand: the true index is the wnid's line in the shared synset list; logits on all 1000 classes
    wnids = [ln.split()[0] for ln in SYNSETS.read_text().splitlines() if ln.strip()]
    files = sorted(imagenet_sample.glob("*/*"))
    truth = torch.tensor([wnids.index(f.parent.name) for f in files])
    with torch.no_grad():
        logits = model(torch.stack([tf(load_image(f)) for f in files]))
    assert res["n"] == len(files) == 100
    assert truth.max() > 100  # the subset's folders are not 0..99
    assert torch.equal(res["targets"], truth)
    assert torch.equal(res["predictions"], logits.sort(dim=1, descending=True, stable=True).indices[:, :5])
    assert res["top1"] == pytest.approx(accuracy(logits, truth)[0])
    assert res["top5"] == pytest.approx(accuracy(logits, truth)[1])


def test_cli_evaluate_outputs(imagenet_sample: Path, atto_ckpt: Path, tmp_path: Path, capsys) -> None:
    subset = tmp_path / "val"  # 10 of the 100 classes (linked): the CLI path, at a tenth of the decoding
    subset.mkdir()
    for d in sorted(imagenet_sample.iterdir())[:10]:
        (subset / d.name).symlink_to(d, target_is_directory=True)
    out = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            "--weights", str(atto_ckpt),
            "--data", str(tmp_path),
            "--img-size", str(IMG),
            "--workers", "0",
            "--batch-size", "50",
            "--json", str(out),
            "--per-class", str(tmp_path / "pc.csv"),
            "--confusion", str(tmp_path / "cm.png"),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "10 images, 10 of 1000 classes" in text  # --data DIR with DIR/val found
    m = json.loads(out.read_text())
    assert m["n"] == 10 and m["split"] == "val" and m["model"] == "convnext_atto" and m["img_size"] == IMG
    assert f"top-1      {m['top1']:.2f}%" in text and f"top-5      {m['top5']:.2f}%" in text
    rows = (tmp_path / "pc.csv").read_text().splitlines()
    assert rows[0] == "index,class,n,top1,top5,precision,recall,f1" and len(rows) == 11
    assert rows[1].startswith('0,"tench, Tinca tinca",1,')
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_data() -> tuple[nn.Module, TensorDataset]:
    g = torch.Generator().manual_seed(3)
    model = nn.Linear(5, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 5, generator=g))
        model.bias.zero_()
    return model, TensorDataset(torch.randn(7, 5, generator=g), torch.randint(0, 4, (7,), generator=g))


UNREADABLE = (2, 5)  # samples a "drop"-mode dataset could not read: target -1 - index


def _with_unreadable(ds: TensorDataset, bad: tuple[int, ...] = UNREADABLE) -> TensorDataset:
    x, y = ds.tensors
    y = y.clone()
    for i in bad:
        y[i] = -1 - i
    return TensorDataset(x, y)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from convnext.data import DataConfig, build_loader

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, ds = _tiny_data()
        results = []
        for data in (ds, _with_unreadable(ds), _with_unreadable(ds, (1, 3, 5))):  # the last: rank 1 has none
            loader = build_loader(data, 2, train=False, cfg=DataConfig(workers=0), seed=0, distributed=True)
            results.append(
                evaluate(model, loader, "cpu", progress=False, return_predictions=True, confusion=True)
            )
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def only_cm(model: nn.Module, ds: TensorDataset) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    return evaluate(model, loader, "cpu", progress=False, confusion=True)["confusion"]


def test_distributed_evaluate_counts_every_sample_once(tmp_path: Path) -> None:
    model, ds = _tiny_data()
    single = evaluate(model, torch.utils.data.DataLoader(ds, batch_size=2), "cpu", progress=False,
                      return_predictions=True, confusion=True)  # fmt: skip
    out = tmp_path / "res.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    res, res_dropped, res_one_rank = torch.load(out, weights_only=True)
    assert res["n"] == single["n"] == 7  # shards of 4 and 3, no padding
    assert res["world_size"] == 2
    assert res["top1"] == pytest.approx(single["top1"]) and res["top5"] == pytest.approx(single["top5"])
    assert res["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert torch.equal(res["targets"], single["targets"])  # gathered back in dataset order
    assert torch.equal(res["predictions"], single["predictions"])
    assert torch.equal(res["indices"], torch.arange(7))
    assert torch.allclose(res["probs"], single["probs"], atol=1e-6)  # a Linear on other batches: ~ulp
    assert torch.equal(res["confusion"], single["confusion"])  # all-reduced counts: exact
    assert int(res["confusion"].sum()) == 7 and int(res["confusion"].trace()) == round(res["top1"] * 7 / 100)
    # unreadable samples (one on each rank) are in no metric, and rank 0 names both
    keep = [i for i in range(7) if i not in UNREADABLE]
    readable = TensorDataset(*(t[keep] for t in ds.tensors))
    only = evaluate(model, torch.utils.data.DataLoader(readable, batch_size=2), "cpu", progress=False)
    assert res_dropped["n"] == only["n"] == 5 and res_dropped["dropped"] == 2
    assert res_dropped["dropped_files"] == [("sample 2", "unreadable"), ("sample 5", "unreadable")]
    assert res_dropped["top1"] == pytest.approx(only["top1"])
    assert res_dropped["loss"] == pytest.approx(only["loss"], rel=1e-6)
    assert res_dropped["targets"].tolist() == readable.tensors[1].tolist()  # dataset order, by index
    assert res_dropped["indices"].tolist() == keep
    assert torch.equal(res_dropped["confusion"], only_cm(model, readable))
    # rank 1 (indices 1, 3, 5) has no readable sample: nothing of it in the gathered predictions
    assert res_one_rank["n"] == 4 and res_one_rank["indices"].tolist() == [0, 2, 4, 6]
    assert res_one_rank["predictions"].shape == (4, 4)  # top-5 of a 4-class head is top-4
    evens = TensorDataset(*(t[::2] for t in ds.tensors))
    assert torch.equal(res_one_rank["confusion"], only_cm(model, evens))


# --------------------------------------------------------------------------------------- run folders
def _image_folder(root: Path, classes: list[str], per_class: int = 2) -> None:
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)
            write_png(img, str(root / c / f"{i}.png"))


def test_run_folder_class_names_define_the_order(tmp_path: Path, capsys) -> None:
    """A run trained on classes [zebra, apple, mango] (its order) evaluated on folders apple/zebra: targets
    follow the checkpoint's names, and the EMA weights are used with --ema."""
    import convnext
    from convnext.engine.checkpoint import train_state
    from convnext.recipe import TrainConfig, to_dict

    names = ["zebra", "apple", "mango"]
    cfg = TrainConfig()
    cfg.model.name = "convnext_atto"
    cfg.data.img_size, cfg.data.crop_pct = 32, 1.0
    cfg.checkpoint.best_by = "model"  # the run ranked by the model: its weights unless --ema
    model = convnext.create_model("convnext_atto", num_classes=3)
    ema = convnext.create_model("convnext_atto", num_classes=3)
    with torch.no_grad():  # the model's head says "zebra" for everything, the EMA's "mango"
        for m, cls in ((model, 0), (ema, 2)):
            m.head.weight.zero_()
            m.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 3) * 10.0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = train_state(
        arch="convnext_atto", model=model.state_dict(), model_ema=ema.state_dict(), epoch=1, step=1,
        config=to_dict(cfg), class_names=names,
    )  # fmt: skip
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    data = tmp_path / "data"
    _image_folder(data / "val", ["apple", "zebra"])
    for ema_flag, top1 in (([], 50.0), (["--ema"], 0.0)):
        js = tmp_path / "m.json"
        argv = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0", "--json", str(js)]
        assert main(argv + ema_flag) == 0
        m = json.loads(js.read_text())
        assert m["n"] == 4 and m["top1"] == top1 and m["img_size"] == 32
        assert m["weights"].endswith("last.pth")
    capsys.readouterr()
    # the same folder, but a class the run never saw: one sentence, exit 2
    _image_folder(data / "val", ["kiwi"], per_class=1)
    rc = main(["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "class 'kiwi' of the data is not one of the 3 classes" in err[0]


# ---------------------------------------------------------------------------------------------- errors
def test_evaluate_errors_are_one_line(tmp_path: Path, atto_ckpt: Path, capsys) -> None:
    data = tmp_path / "data"
    _image_folder(data, ["cat", "dog", "fish"], per_class=1)
    cases = [
        (["--weights", str(tmp_path / "missing.pth"), "--data", str(data)], "does not exist"),
        (["--weights", str(atto_ckpt), "--data", str(data)], "is not one of the 1000 classes"),
        (["--weights", str(atto_ckpt), "--data", str(tmp_path / "nodata")], "does not exist"),
    ]
    for argv, needle in cases:
        rc = main(["evaluate", *argv, "--workers", "0", "--img-size", "32"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, argv
        assert len(err) == 1 and err[0].startswith("convnext evaluate: error: ") and needle in err[0], err


# ------------------------------------------------------------------------- small custom datasets
TINY_NAMES = ["apple", "banana", "cherry"]


def tiny_run(root: Path, names: list[str] = TINY_NAMES, seed: int = 0) -> Path:
    """A training run folder of a seeded random convnext_atto with ``names`` (32 px, crop 1.0): the
    cheapest real weights a verb accepts, with class names."""
    import convnext
    from convnext.engine.checkpoint import train_state
    from convnext.recipe import TrainConfig, to_dict

    cfg = TrainConfig()
    cfg.model.name = "convnext_atto"
    cfg.data.img_size, cfg.data.crop_pct = 32, 1.0
    torch.manual_seed(seed)
    model = convnext.create_model("convnext_atto", num_classes=len(names))
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = train_state(
        arch="convnext_atto",
        model=model.state_dict(),
        epoch=1,
        step=1,
        config=to_dict(cfg),
        class_names=names,
    )
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    return run


def test_class_metrics_are_sklearns() -> None:
    """Per-class precision/recall/F1, macro F1 and balanced accuracy from the confusion counts equal
    sklearn.metrics with its defaults: classes in the data or predicted, zero_division 0."""
    import warnings

    from sklearn import metrics as skm

    from convnext.evaluation.metrics import class_metrics
    from convnext.inference.report import confusion_counts

    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 6, (200,), generator=g)  # classes 0-5 in the data
    p = torch.where(torch.rand(200, generator=g) < 0.6, y, torch.randint(0, 8, (200,), generator=g))
    p[p == 4] = 3  # class 4 is never predicted; 6 and 7 are predicted, never true; 8, 9 neither
    m = class_metrics(confusion_counts(p, y, 10))
    labels = sorted(set(y.tolist()) | set(p.tolist()))
    assert m["classes"] == labels == [0, 1, 2, 3, 4, 5, 6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the ill-defined classes it sets to 0
        pr, rc, f1, support = skm.precision_recall_fscore_support(y, p, zero_division=0)
        macro = skm.f1_score(y, p, average="macro", zero_division=0)
        balanced = skm.balanced_accuracy_score(y, p)
    assert m["precision"] == pytest.approx(100 * pr) and m["recall"] == pytest.approx(100 * rc)
    assert m["f1"] == pytest.approx(100 * f1) and m["support"] == support.tolist()
    assert m["macro_f1"] == pytest.approx(100 * macro) and m["balanced_accuracy"] == pytest.approx(
        100 * balanced
    )
    empty = class_metrics(torch.zeros(4, 4, dtype=torch.long))
    assert empty["classes"] == [] and empty["macro_f1"] is None and empty["balanced_accuracy"] is None


def _small_folder(root: Path, sizes: tuple[int, ...] = (5, 2, 3)) -> None:
    """Classes of unequal size (what a small custom dataset looks like) and one unreadable file."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(1)
    for c, n in zip(TINY_NAMES, sizes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            write_png(
                torch.randint(0, 256, (3, 36, 44), dtype=torch.uint8, generator=g), str(root / c / f"{i}.png")
            )
    (root / "banana" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_small_dataset_report_per_class_predictions_and_no_top5(tmp_path: Path, capsys) -> None:
    import warnings

    from sklearn import metrics as skm

    run, data = tiny_run(tmp_path), tmp_path / "data"
    _small_folder(data)
    odd = data / "cherry" / "two\nlines.png"  # unreadable, and a newline in its name
    odd.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    js, preds, cm = tmp_path / "m.json", tmp_path / "p.csv", tmp_path / "cm.png"
    argv = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0", "--batch-size", "4",
            "--json", str(js), "--predictions", str(preds), "--confusion", str(cm), "--confusion-normalize",
            "--per-class", str(tmp_path / "pc.csv")]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    m = json.loads(js.read_text())
    assert m["n"] == 10 and m["top5"] is None and not any(ln.startswith("top-5") for ln in text)  # 3 classes
    assert f"  {str(odd)!r} (truncated or corrupt)" in text and str(odd) in [
        d["path"] for d in m["dropped_files"]
    ]
    rows = _read_csv(preds)  # every counted image once, in dataset order; the broken file in none
    good = sorted(str(p) for p in data.glob("*/*.png") if p.name[0].isdigit())
    assert [r["path"] for r in rows] == good
    y, p = [int(r["true"]) for r in rows], [int(r["predicted"]) for r in rows]
    assert all(Path(r["path"]).parent.name == r["true_class"] == TINY_NAMES[int(r["true"])] for r in rows)
    assert all(r["correct"] == str(int(r["true"] == r["predicted"])) for r in rows)
    assert all(float(r["predicted_prob"]) >= float(r["true_prob"]) for r in rows)
    assert all(r["predicted_prob"] == r["true_prob"] for r in rows if r["correct"] == "1")
    assert 100 * sum(a == b for a, b in zip(y, p)) / len(y) == pytest.approx(m["top1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = sorted(set(y) | set(p))
        pr, rc, f1, support = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
        macro = skm.f1_score(y, p, average="macro", zero_division=0)
        balanced = skm.balanced_accuracy_score(y, p)
    assert [c["index"] for c in m["per_class"]] == labels
    assert [c["n"] for c in m["per_class"]] == support.tolist()
    for key, want in (("precision", pr), ("recall", rc), ("f1", f1)):
        assert [c[key] for c in m["per_class"]] == pytest.approx(100 * want, abs=1e-4), key
    assert m["macro_f1"] == pytest.approx(100 * macro) and m["balanced_accuracy"] == pytest.approx(
        100 * balanced
    )
    assert (
        f"macro F1   {m['macro_f1']:.2f}% (mean F1 of {len(labels)} classes: in the data or predicted)"
        in text
    )
    assert f"bal. acc.  {m['balanced_accuracy']:.2f}% (mean recall of the 3 classes in the data)" in text
    apple = next(c for c in m["per_class"] if c["class"] == "apple")
    want = (f"           {apple['n']:>6} {apple['predicted']:>9} {apple['precision']:>8.2f}% "
            f"{apple['recall']:>7.2f}% {apple['f1']:>7.2f}%  apple")  # fmt: skip
    assert want in text
    pc = _read_csv(tmp_path / "pc.csv")
    assert [r["top5"] for r in pc] == ["", "", ""] and pc[0]["f1"] == str(apple["f1"])
    assert cm.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_two_processes_write_each_report_once_and_equal(tmp_path: Path, capsys) -> None:
    """Under torchrun (2 gloo processes) the confusion counts are all-reduced and the predictions gathered
    back by dataset index: the same per-class numbers and the same prediction file as one process, each
    file written once (by rank 0), the unreadable file named once."""
    import subprocess
    import sys

    run, data = tiny_run(tmp_path), tmp_path / "data"
    _small_folder(data, (4, 3, 4))
    outs = {}
    for nproc in (1, 2):
        d = tmp_path / f"out{nproc}"
        argv = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0", "--device", "cpu",
                "--batch-size", "2", "--json", str(d / "m.json"),
                "--predictions", str(d / "p.csv")]  # fmt: skip
        if nproc == 1:
            assert main(argv) == 0
            capsys.readouterr()
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "convnext.cli.main", *argv]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert r.returncode == 0, r.stderr[-3000:]
            assert r.stdout.count("top-1 ") == 1 and r.stdout.count("broken.png") == 1  # rank 0 prints
        assert sorted(p.name for p in d.iterdir()) == ["m.json", "p.csv"]  # no temporary file left
        outs[nproc] = json.loads((d / "m.json").read_text()), _read_csv(d / "p.csv")
    (one, csv1), (two, csv2) = outs[1], outs[2]
    assert two["world_size"] == 2 and one["n"] == two["n"] == 11
    assert one["per_class"] == two["per_class"] and one["macro_f1"] == two["macro_f1"]
    assert one["dropped_files"] == two["dropped_files"] and len(two["dropped_files"]) == 1
    exact = ("path", "true", "predicted", "correct")  # each image once, in dataset order
    assert [[r[k] for k in exact] for r in csv1] == [[r[k] for k in exact] for r in csv2]
    for key in ("predicted_prob", "true_prob"):  # other batches, other thread counts: not bit-exact
        assert [float(r[key]) for r in csv1] == pytest.approx([float(r[key]) for r in csv2], abs=1e-5)
