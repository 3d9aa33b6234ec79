"""Regression tests from the hostile pass over issue #14 (trust): weights go back in as they went out, and a
checkpoint that does not fit is one sentence, never a silently fresh classifier.

Every model here has random values everywhere (layer scale and GRN too), so a dropped or mismatched tensor
shows in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_convert import randomize_
from torch import nn

import convnext
from convnext.cli.main import main
from convnext.engine.checkpoint import train_state
from convnext.errors import UserError
from convnext.recipe import TrainConfig, dump_yaml, to_dict

CLASSES = ["ant", "bee", "cat"]


def _image_folder(root: Path, classes: list[str], per_class: int = 2) -> list[Path]:
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    files = []
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)
            write_png(img, str(root / c / f"{i}.png"))
            files.append(root / c / f"{i}.png")
    return files


# ------------------------------------------------------------- a run trained with custom depths and widths
CUSTOM = [
    ("convnext_atto", {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 48]}),
    ("convnextv2_atto", {"depths": [1, 2, 1, 1], "dims": [8, 16, 24, 32]}),
    ("convnext_isotropic_small", {"depth": 2, "dim": 32}),
]


def _custom_run(tmp_path: Path, arch: str, options: dict) -> tuple[Path, nn.Module]:
    """The run folder ``convnext train`` leaves for a recipe with ``model.options`` (depths and widths no
    named variant has), written with the engine's own checkpoint schema."""
    cfg = TrainConfig()
    cfg.model.name = arch
    cfg.model.options = dict(options)
    cfg.model.layer_scale_init_value = 1e-6  # the key's default; V2 has none, isotropic one when set
    cfg.data.img_size, cfg.data.crop_pct, cfg.data.interpolation = 32, 1.0, "bilinear"
    from convnext.engine.train import build_model

    model = randomize_(build_model(cfg, len(CLASSES)))  # the model `convnext train` builds
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    dump_yaml(cfg, run / "config.yaml")
    ckpt = train_state(
        arch=arch, model=model.state_dict(), config=to_dict(cfg), class_names=CLASSES, epoch=1, step=3
    )
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    return run, model


@torch.no_grad()
def _same_logits(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 80)
    diff = (a.eval()(x) - b.eval()(x)).abs().max().item()
    assert diff <= 1e-5, f"max |logit difference| {diff:.2e}"


def _predict_json(img: Path, weights: Path, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    assert main(["predict", str(img), "--weights", str(weights), "--json", "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("arch", "options"), CUSTOM, ids=[a for a, _ in CUSTOM])
def test_custom_shape_run_loads_back_from_every_converted_file(
    arch: str, options: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run trained with ``model.options`` converted to a file (which records only the arch name) loads
    back with its own depths and widths in create_model, predict, evaluate and a second convert: the same
    logits, the same probabilities and accuracy as the run folder itself."""
    run, trained = _custom_run(tmp_path, arch, options)
    _same_logits(convnext.create_model(arch, pretrained=str(run)), trained)

    ours = tmp_path / "ours.safetensors"
    assert main(["convert", str(run), str(ours)]) == 0
    _same_logits(convnext.create_model(arch, pretrained=str(ours)), trained)
    official = tmp_path / "official.pth"  # converting the converted file: the shapes must survive twice
    assert main(["convert", str(ours), str(official), "--to", "official"]) == 0
    _same_logits(convnext.create_model(arch, pretrained=str(official)), trained)
    if arch != "convnext_isotropic_small":  # timm's layout holds V1 and V2 (isotropic: official only)
        timm_file = tmp_path / "timm.pth"
        assert main(["convert", str(run), str(timm_file), "--to", "timm"]) == 0
        _same_logits(convnext.create_model(arch, pretrained=str(timm_file)), trained)
    capsys.readouterr()

    data = tmp_path / "data"
    files = _image_folder(data / "val", CLASSES)
    by_run = _predict_json(files[0], run, capsys)
    by_file = _predict_json(files[0], ours, capsys)
    assert by_file["top"] == by_run["top"]

    results = []
    for weights in (run, ours):
        js = tmp_path / f"{weights.name}.json"
        argv = ["evaluate", "--weights", str(weights), "--data", str(data), "--workers", "0"]
        argv += ["--json", str(js)]
        assert main(argv) == 0, capsys.readouterr().err
        m = json.loads(js.read_text())
        results.append((m["n"], m["top1"], round(m["loss"], 5)))
    assert results[0] == results[1] and results[0][0] == len(files)


# ------------------------------------------------------------- a classifier of another input width
def test_classifier_of_another_input_width_is_one_sentence_not_a_fresh_head(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """head.weight (3, 64) for a model whose head reads 320 features: the same class count, so not a
    fine-tune's fresh classifier but weights of another architecture. predict and create_model refuse it
    in one line naming the file and the tensor (before: a warning, then predictions by a random head)."""
    model = randomize_(convnext.create_model("convnext_atto", num_classes=3))
    sd = model.state_dict()
    sd["head.weight"] = torch.randn(3, 64)
    bad = tmp_path / "bad.pth"
    torch.save({"model": sd, "arch": "convnext_atto", "class_names": CLASSES}, bad)
    img = _image_folder(tmp_path / "img", ["x"], per_class=1)[0]

    assert main(["predict", str(img), "--weights", str(bad)]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "head.weight" in err[0], out.err
    assert out.out == ""
    with pytest.raises(UserError, match="head.weight: checkpoint \\(3, 64\\) vs model \\(3, 320\\)"):
        convnext.create_model("convnext_atto", pretrained=str(bad))
    assert main(["convert", str(bad), str(tmp_path / "o.safetensors")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_wrong_architecture_for_a_fine_tune_warns_nothing_before_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fine-tuning (another class count) from weights of another width: the error alone, no "the
    classifier starts fresh" warning first (said only once the rest of the weights fit)."""
    femto = convnext.create_model("convnext_femto", num_classes=5)
    src = tmp_path / "femto.pth"
    torch.save({"model": femto.state_dict()}, src)
    with caplog.at_level("WARNING", logger="convnext"), pytest.raises(UserError, match="convnext_femto"):
        convnext.create_model("convnext_atto", pretrained=str(src), num_classes=3)
    assert not [r for r in caplog.records if "starts fresh" in r.getMessage()]
    # and when the weights do fit, the fresh classifier is still said
    atto = tmp_path / "atto.pth"
    torch.save({"model": convnext.create_model("convnext_atto", num_classes=5).state_dict()}, atto)
    caplog.clear()
    with caplog.at_level("WARNING", logger="convnext"):
        convnext.create_model("convnext_atto", pretrained=str(atto), num_classes=3)
    assert [r for r in caplog.records if "starts fresh" in r.getMessage()]


# ------------------------------------------------------------- a training checkpoint that inflates
def _pickle_bomb(path: Path, inflated_mib: int = 128) -> None:
    """A torch.save archive whose data.pkl inflates to ``inflated_mib`` MiB from ~100 KB on disk (above the
    64 MiB cap on a checkpoint's pickle)."""
    import struct
    import zipfile
    import zlib

    base = path.with_name("base.pth")
    torch.save({"w": torch.zeros(3)}, base)
    chunk = bytes(16 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)  # independent segments: n copies inflate n times
    n = inflated_mib // 16
    deflated, crc = segment * n + z.flush(), 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)
    out, central = bytearray(), bytearray()
    with zipfile.ZipFile(base) as zin:
        infos = zin.infolist()
        for info in infos:
            if info.filename.endswith("data.pkl"):
                method, data, c, size = zipfile.ZIP_DEFLATED, deflated, crc, len(chunk) * n
            else:
                method, data, c, size = zipfile.ZIP_STORED, zin.read(info), info.CRC, info.file_size
            name = info.filename.encode()
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, c, len(data),
                                   size, len(name), 0, 0, 0, 0, 0, len(out)) + name  # fmt: skip
            out += struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, c, len(data), size, len(name), 0
            )
            out += name + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(infos), len(infos), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    base.unlink()


def test_resume_refuses_an_inflating_last_pth_from_the_zip_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A last.pth whose pickle inflates far beyond any checkpoint's: the resume check refuses it from the zip
    directory in one line (before: torch inflated all of it, 2.8 GB RSS for a 1 GiB pickle, then failed),
    and the file is kept."""
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _pickle_bomb(ckpts / "last.pth")
    before = (ckpts / "last.pth").read_bytes()
    quick = Path(__file__).resolve().parents[1] / "configs" / "quickstart_digits.yaml"
    argv = [
        "train",
        "--config",
        str(quick),
        "epochs=1",
        "train.progress=false",
        f"run.dir={tmp_path / 'run'}",
    ]
    argv.append("model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}")
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"convnext train: error: checkpoint {ckpts / 'last.pth'} cannot be read (refused ")
    assert "inflates to 128 MiB" in line and "no intact checkpoint is left" in line, line
    assert (ckpts / "last.pth").read_bytes() == before


# ------------------------------------------------------------- a full disk while converting
@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 64 KiB tmpfs: too small for any converted model (root only)."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a leaked descriptor must not pin it


@pytest.mark.parametrize(
    ("to", "name"),
    [("ours", "x.safetensors"), ("ours", "x.pth"), ("official", "x.pth"), ("timm", "x.pth"), ("hf", "hf")],
)
def test_convert_onto_a_full_disk_is_one_line_and_leaves_nothing(
    tiny_disk: Path, to: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: a traceback (torch's "iostream error" / "unexpected pos", safetensors' "os error 28")."""
    src = tmp_path / "atto.pth"
    torch.save({"model": convnext.create_model("convnext_atto", num_classes=3).state_dict()}, src)
    dst = tiny_disk / name
    assert main(["convert", str(src), str(dst), "--to", to]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"convnext convert: error: no space left on the device writing {dst}; nothing was written"
    assert list(tiny_disk.iterdir()) == []


# ------------------------------------------------------------- config values that crash later
@pytest.mark.parametrize("fraction", ["0.0001", "0.999"])
def test_digits_val_fraction_that_cannot_split_is_refused_before_any_work(
    fraction: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """data.val_fraction in (0, 1) that leaves a class without a validation (or training) image: before, it
    passed --dry-run, created the run folder and ended in scikit-learn's ValueError traceback."""
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "quickstart_digits", f"run.dir={run_dir}", f"data.val_fraction={fraction}"]
    for extra in (["--dry-run"], []):
        assert main(argv + extra) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"convnext train: error: config key data.val_fraction={fraction} gives "), line
        assert "at least one of each of the 10 classes" in line
        assert not run_dir.exists()
    from convnext.data import build_dataset
    from convnext.data.config import DataConfig

    with pytest.raises(UserError, match="config key data.val_fraction"):  # the library path too
        build_dataset(DataConfig(dataset="digits", val_fraction=float(fraction)), "train")
    assert len(build_dataset(DataConfig(dataset="digits", val_fraction=0.0056), "val")) == 11


def test_outputs_onto_a_full_disk_are_one_line_and_leave_nothing(
    tiny_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """predict --json, evaluate --json / --per-class, export: a full disk is one line, exit 2, and no empty
    or half-written file (before: tracebacks, and an empty per-class CSV)."""
    run, _ = _custom_run(tmp_path, *CUSTOM[0])
    data = tmp_path / "data"
    img = _image_folder(data / "val", CLASSES)[0]
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass
    evaluate = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0"]
    for argv, named in (
        (["predict", str(img), "--weights", str(run), "--json", str(tiny_disk / "p.jsonl")], None),
        ([*evaluate, "--json", str(tiny_disk / "m.json")], tiny_disk / "m.json"),
        ([*evaluate, "--per-class", str(tiny_disk / "pc.csv")], tiny_disk / "pc.csv"),
        (["export", "--weights", str(run), "--out", str(tiny_disk / "m.onnx")], None),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        line, verb = err[-1], argv[0]
        assert not [ln for ln in err[:-1] if "error" in ln.lower() or "Traceback" in ln], (
            err
        )  # export: progress
        if named is None:
            assert line.startswith(f"convnext {verb}: error: no space left on the device"), line
        else:
            assert (
                line
                == f"convnext {verb}: error: cannot write {named} (no space left on the device); nothing "
                "was written"
            )
        assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"], argv


# ------------------------------------------------------------- prepare into a folder prepared before
def test_prepare_refuses_a_destination_prepared_with_another_split(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same Caltech source prepared again into the same folder with another --seed: before, the second
    run added its split to the first (an image in both train and val, 6 train / 4 val on disk while it
    printed 4 / 2). Now one sentence and nothing written; the same settings again still add nothing."""
    from torchvision.io import write_jpeg

    src = tmp_path / "caltech"
    for c in ("cat", "dog"):
        (src / "101_ObjectCategories" / c).mkdir(parents=True)
        for i in range(3):
            img = torch.full((3, 40, 48), 40 * i + (c == "dog") * 100, dtype=torch.uint8)
            write_jpeg(img, str(src / "101_ObjectCategories" / c / f"image_{i:04d}.jpg"))
    dst = tmp_path / "prepared"
    argv = ["prepare", "caltech101", str(src), str(dst), "--no-progress"]
    assert main(argv) == 0
    first = sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
    assert main(argv) == 0  # a re-run of the same preparation (e.g. after a kill) is fine
    capsys.readouterr()
    assert main([*argv, "--seed", "5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"convnext prepare: error: destination {dst} already holds ") and "--seed" in line
    assert sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file()) == first
    names = [p.name for p in (dst / "train").rglob("*.jpg")] + [p.name for p in (dst / "val").rglob("*.jpg")]
    assert len(names) == 6


# ------------------------------------------------------------- a run that ranked its best by the EMA
def test_run_ranked_by_ema_evaluates_to_its_printed_best(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """checkpoint.best_by=ema (every ImageNet recipe): the summary prints the EMA's top-1 for best.pth, so
    evaluate/predict/convert/create_model on the run folder take the EMA weights by default (before: the
    model's, whose top-1 is another number); --no-ema gives the model's, as metrics.jsonl records it."""
    from convnext.engine.checkpoint import load_train_checkpoint

    run = tmp_path / "run"
    quick = Path(__file__).resolve().parents[1] / "configs" / "quickstart_digits.yaml"
    argv = ["train", "--config", str(quick), "epochs=2", "train.progress=false", "run.export_samples=1",
            "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "ema.enabled=true",
            "ema.decay=0.9", "checkpoint.best_by=ema", f"run.dir={run}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(metrics, key=lambda m: (m["ema_val_top1"], -m["epoch"]))
    assert f"best top-1 {best['ema_val_top1']:.2f}% (epoch {best['epoch']}" in out
    assert best["ema_val_top1"] != best["val_top1"]  # the test can tell the two apart

    def top1(*flags: str) -> float:
        js = tmp_path / "m.json"
        assert main(["evaluate", "--weights", str(run), "--workers", "0", "--json", str(js), *flags]) == 0
        return json.loads(js.read_text())

    by_default = top1()
    assert by_default["top1"] == pytest.approx(best["ema_val_top1"]) and by_default["ema"] is True
    assert top1("--ema")["top1"] == by_default["top1"]
    model = top1("--no-ema")
    assert model["top1"] == pytest.approx(best["val_top1"]) and model["ema"] is False

    ckpt = load_train_checkpoint(run / "checkpoints" / "best.pth")
    loaded = convnext.create_model("convnext_atto", pretrained=str(run)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ckpt["model_ema"].items())
    dst = tmp_path / "best.safetensors"
    assert main(["convert", str(run), str(dst)]) == 0
    again = convnext.create_model("convnext_atto", pretrained=str(dst)).state_dict()
    assert all(torch.equal(again[k], v) for k, v in ckpt["model_ema"].items())
    capsys.readouterr()
    (sample,) = (run / "samples").iterdir()
    assert _predict_json(sample, run, capsys) == _predict_json(sample, run, capsys, "--ema")
    assert _predict_json(sample, run, capsys) != _predict_json(sample, run, capsys, "--no-ema")


# ------------------------------------------------------------- a Hugging Face folder's preprocessing
def test_hf_folder_keeps_its_preprocessing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """384 px weights written as a Hugging Face folder (preprocessor_config.json: shortest_edge 384, which
    transformers warps to 384x384) and read back: predict gives the squash transform's probabilities, as
    from the file they came from (before: the folder's preprocessor was ignored, 224 px centre crop)."""
    from convnext.inference import load_for_inference

    squash = {"input_size": [3, 384, 384], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "crop_mode": "squash"}  # fmt: skip
    model = randomize_(convnext.create_model("convnext_atto", num_classes=3, layer_scale_init_value=1.0))
    src = tmp_path / "atto384.pth"
    torch.save({"model": model.state_dict(), "arch": "convnext_atto", "data_config": squash}, src)
    hf = tmp_path / "hf"
    assert main(["convert", str(src), str(hf), "--to", "hf"]) == 0
    d = load_for_inference(str(hf)).data
    assert (d.img_size, d.crop_pct, d.crop_mode, d.interpolation) == (384, 1.0, "squash", "bicubic")
    from torchvision.io import write_png

    img = tmp_path / "wide.png"
    g = torch.Generator().manual_seed(1)
    write_png(torch.randint(0, 256, (3, 200, 480), dtype=torch.uint8, generator=g), str(img))
    capsys.readouterr()
    assert _predict_json(img, hf, capsys)["top"] == _predict_json(img, src, capsys)["top"]
    # a 224 px folder as transformers' hub has them: shortest_edge 224, its crop_pct, bilinear
    (hf / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 224},
                "crop_pct": 0.9,
                "resample": 2,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )  # fmt: skip
    )
    d = load_for_inference(str(hf)).data
    assert (d.img_size, d.crop_pct, d.crop_mode, d.interpolation) == (224, 0.9, "center", "bilinear")
    assert tuple(d.mean) == (0.5, 0.5, 0.5)


# ------------------------------------------------------------- an input size below the model's stride
def test_img_size_below_the_stride_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """predict/evaluate --img-size 8 on a 32x-downsampling model: before, torch's RuntimeError traceback
    ("Kernel size can't be greater than actual input size") on the first image."""
    run, _ = _custom_run(tmp_path, *CUSTOM[0])
    data = tmp_path / "data"
    img = _image_folder(data / "val", CLASSES)[0]
    for argv in (
        ["predict", str(img), "--weights", str(run), "--img-size", "8"],
        ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0", "--img-size", "16"],
    ):
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "is below the 32 px convnext_atto needs (it downsamples 32x)" in line, line
    assert main(["predict", str(img), "--weights", str(run), "--img-size", "32"]) == 0
