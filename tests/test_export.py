"""`convnext export`: files that compute PyTorch's function (layer scale 1, GRN switched on, so no op can
hide), carry their metadata, run in predict/evaluate like the weights they came from, and fail cleanly.

CI runs the atto-sized models of each family at 32 px; every variant at batch 1, 4 and 32 and the trained
quickstart's accuracy gates are in tests/test_export_slow.py (marked slow).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from convnext.cli.main import main
from convnext.data.config import DataConfig
from convnext.errors import UserError
from convnext.export.core import count_modules, plain_copy, write_verified
from convnext.inference.backends import ExportMeta, open_exported, relative_diff
from convnext.models import build_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

SIZE = 32
QUICK = {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256]}  # the quickstart's model


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Layer scale 1-ish, GRN on, biases off zero: a dropped op or block moves the logits."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") and p.dim() == 1:  # V1 layer scale
                p.copy_(1.0 + 0.2 * torch.rand(p.shape, generator=g))
            elif name.endswith(("grn.gamma", "grn.beta", "bias")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


FAMILIES = {  # one of each family, quickstart-sized in CI (tests/test_export_slow.py: every variant)
    "v1": lambda: build_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0, **QUICK),
    "v2": lambda: build_model("convnextv2_atto", num_classes=10, **QUICK),
    "isotropic": lambda: build_model(
        "convnext_isotropic_small", num_classes=10, depth=2, dim=64, layer_scale_init_value=1.0
    ),
}


def _meta(arch: str, fmt: str, precision: str = "fp32") -> ExportMeta:
    data = DataConfig(img_size=SIZE, crop_pct=1.0)
    meta = ExportMeta(arch, 10, [f"c{i}" for i in range(10)], data, fmt, precision)
    meta.inference_precision = "fp32" if fmt == "openvino" else None
    return meta


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_and_openvino_compute_pytorchs_function(family: str, tmp_path: Path) -> None:
    model = plain_copy(randomise(FAMILIES[family]()))
    x = torch.randn(32, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
    for fmt, name in (("onnx", "m.onnx"), ("openvino", "m.xml")):
        res = write_verified(model, _meta(family, fmt), tmp_path / name)
        assert res.max_rel_diff <= 1e-5 and res.runs_as == "fp32"
        runner = open_exported(tmp_path / name)
        assert runner.precision == "fp32"  # OpenVINO would pick bf16 on this CPU unless told
        for b in (1, 4, 32):  # traced at batch 2: the batch is dynamic
            assert relative_diff(runner(x[:b]), ref[:b]) <= 1e-5, (fmt, b)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("LayerNormalization") == count_modules(model)["LayerNormalization"]  # one per norm
    # OpenVINO gets the channels-first form (export/openvino_form.py): the block's Linear layers are 1x1
    # convolutions and no Transpose is left (the layout moves that made its int8 model 1.8x slower); every
    # norm is still one op (MVN), so nothing was dropped.
    ir = collections.Counter(op.get_type_name() for op in ov.Core().read_model(tmp_path / "m.xml").get_ops())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert ir["Transpose"] == 0 and ir["MatMul"] == 1, ir  # the head
    assert ir["Convolution"] + ir["GroupConvolution"] == count_modules(model)["Conv"] + linears - 1, ir
    assert ir["MVN"] == count_modules(model)["LayerNormalization"], ir
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch


def _fed_by(path: Path) -> list[tuple[str, str]]:
    """(op, the op feeding its input) for every convolution and MatMul of an IR, in graph order."""
    kinds = ("Convolution", "GroupConvolution", "MatMul")
    ops = [o for o in ov.Core().read_model(path).get_ordered_ops() if o.get_type_name() in kinds]
    return [(o.get_type_name(), o.input_value(0).get_node().get_type_name()) for o in ops]


@pytest.mark.parametrize("parts", [None, ("dwconv", "stem", "head"), ()])
def test_int8_float_keeps_the_named_parts_out_of_int8(parts: tuple[str, ...] | None, tmp_path: Path) -> None:
    """The depthwise convs stay float by default (faster: no quantize pass on the residual stream);
    ``--int8-float`` names what stays float, ``none`` quantizes them too."""
    model = plain_copy(randomise(FAMILIES["v1"]()))
    meta = _meta("convnext_atto", "openvino", "int8")
    if parts is not None:
        meta.extra["int8_float"] = list(parts)
    write_verified(model, meta, tmp_path / "q.xml", images=torch.randn(8, 3, SIZE, SIZE))
    fed_by = _fed_by(tmp_path / "q.xml")
    dw = [src for op, src in fed_by if op == "GroupConvolution"]
    if parts == ():
        assert all(src == "FakeQuantize" for src in dw), fed_by
    else:
        assert dw and all(src != "FakeQuantize" for src in dw), fed_by
    if parts:
        assert fed_by[0][1] != "FakeQuantize" and fed_by[-1][1] != "FakeQuantize", fed_by  # stem, head
    assert ("Convolution", "FakeQuantize") in fed_by  # the 1x1 convolutions are int8 in every case


def test_pt2_is_an_exported_program_with_a_dynamic_batch(tmp_path: Path) -> None:
    model = plain_copy(randomise(FAMILIES["v1"]()))
    write_verified(model, _meta("convnext_atto", "pt2"), tmp_path / "m.pt2")
    runner = open_exported(tmp_path / "m.pt2")
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        assert relative_diff(runner(x), model(x)) <= 1e-5
    assert runner.class_names == [f"c{i}" for i in range(10)] and runner.data.img_size == SIZE
    # An archive that would unpickle something is refused before torch.export.load sees it
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt2") as src, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(item, data)
    with pytest.raises(UserError, match="holds pickled objects, which could run code when loaded"):
        open_exported(tmp_path / "evil.pt2")


def test_metadata_round_trip() -> None:
    data = DataConfig(dataset="digits", img_size=48, crop_pct=0.9, interpolation="bilinear", mean=(0.5,) * 3)
    meta = ExportMeta("convnext_atto", 3, ["a", "b", "c"], data, "onnx", "fp32", has_dataset=True)
    doc = json.loads(meta.to_json())
    assert doc["preprocessing"]["crop_pct"] == 0.9 and doc["preprocessing"]["mean"] == [0.5] * 3
    assert doc["dataset"]["dataset"] == "digits" and doc["class_names"] == ["a", "b", "c"]
    back = ExportMeta.from_json(meta.to_json(), "x")
    assert back.data == data and back.class_names == ["a", "b", "c"] and back.has_dataset
    with pytest.raises(UserError, match="unreadable convnext metadata"):
        ExportMeta.from_json("{not json", "m.onnx")


# ------------------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run folder on the digits (the quickstart's model, random weights with layer scale 1)."""
    from convnext.engine.checkpoint import train_state
    from convnext.recipe import TrainConfig, dump_yaml, to_dict

    cfg = TrainConfig()
    cfg.model.name, cfg.model.options, cfg.model.layer_scale_init_value = "convnext_atto", dict(QUICK), 1.0
    cfg.data.dataset, cfg.data.img_size, cfg.data.crop_pct = "digits", SIZE, 1.0
    model = randomise(build_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0, **QUICK))
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    ckpt = train_state(
        arch="convnext_atto", model=model.state_dict(), epoch=1, step=1, config=to_dict(cfg),
        class_names=[str(i) for i in range(10)],
    )  # fmt: skip
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    dump_yaml(cfg, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The run exported to ONNX through the CLI, and what the CLI printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("exp") / "digits.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", "--weights", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out, buf.getvalue()


def _lines(text: str) -> list[str]:
    return [ln for ln in text.strip().splitlines() if ln.strip()]


def test_export_writes_metadata_and_reports(run_dir: Path, exported: tuple[Path, str], capsys) -> None:
    path, out = exported
    runner = open_exported(path)
    assert runner.arch == "convnext_atto" and runner.class_names == [str(i) for i in range(10)]
    assert (runner.data.dataset, runner.data.img_size, runner.data.crop_pct) == ("digits", SIZE, 1.0)
    assert runner.meta.model_options == QUICK and runner.meta.run_dir == str(run_dir.resolve())
    assert re.search(r"verified   onnxruntime vs PyTorch at batch 1 and 3: max relative difference \S+", out)
    assert "runs as    fp32" in out and "VNNI" in out and "dataset digits" in out
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.onnx"]  # nothing partial left


def test_predict_and_evaluate_run_the_exported_file_like_the_run(
    run_dir: Path, exported: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    exported = exported[0]
    from torchvision.io import write_png

    from convnext.data import build_dataset

    ds = build_dataset(DataConfig(dataset="digits"), "val")
    for i in range(3):
        write_png(ds[i][0], str(tmp_path / f"{i}.png"))
    outs = []
    for weights in (run_dir, exported):
        assert main(["predict", str(tmp_path), "--weights", str(weights), "--json", "--topk", "3"]) == 0
        outs.append([json.loads(ln) for ln in _lines(capsys.readouterr().out)])
    for a, b in zip(*outs):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)
    # evaluate with no --data: the run's validation split, from the settings inside the file
    tops = []
    for weights in (run_dir, exported):
        js = tmp_path / "m.json"
        assert main(["evaluate", "--weights", str(weights), "--workers", "0", "--json", str(js)]) == 0
        tops.append(json.loads(js.read_text()))
    assert tops[0]["n"] == tops[1]["n"] == 360 and tops[0]["top1"] == tops[1]["top1"]
    capsys.readouterr()
    # Grad-CAM needs gradients: one sentence
    assert main(["predict", str(tmp_path), "--weights", str(exported), "--cam", str(tmp_path / "c")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--cam needs PyTorch weights" in err[0]
    assert main(["predict", str(tmp_path), "--weights", str(exported), "--img-size", "64"]) == 2
    assert "exported for 32 px inputs" in capsys.readouterr().err
    # autocast cannot reach into onnxruntime: said once, and the file runs as exported
    assert main(["predict", str(tmp_path), "--weights", str(exported), "--amp", "bf16"]) == 0
    err = capsys.readouterr().err
    assert err.count("--amp does not reach into onnxruntime") == 1 and "runs as exported (fp32)" in err


def test_int8_calibrates_on_the_runs_training_data(run_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("nncf")
    out = tmp_path / "q.xml"
    argv = ["export", "--weights", str(run_dir), "--format", "openvino", "--precision", "int8"]
    js = tmp_path / "report" / "q.json"
    assert main([*argv, "--calibration-size", "16", "--out", str(out), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "16 images of the 'train' split of digits" in text
    assert re.search(r"agreement  int8 top-1 equals fp32 on [\d.]+% of 16 images", text)
    assert re.search(r"runs as    int8 \(other layers (bf16|fp32)\)", text)
    runner = open_exported(out)
    assert runner.backend == "openvino-int8" and runner.meta.extra["calibration"]["images"] == 16
    rep = json.loads(js.read_text())  # --json FILE: the same facts as data, the text kept on stdout
    assert rep["calibration"]["images"] == 16 and rep["files"] == [str(out), str(out.with_suffix(".bin"))]
    assert rep["metadata"]["precision"] == "int8" and rep["metadata"]["inference_precision"] == "bf16"
    assert rep["runs_as"].startswith("int8") and 0 <= rep["agreement_top1"] <= 1
    shutil.rmtree(js.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.xml"]
    assert runner.meta.extra["int8_float"] == ["dwconv"]  # the default, recorded in the file
    argv += ["--calibration-size", "8", "--force", "--out", str(out)]
    assert main([*argv, "--int8-float", "none"]) == 0 and open_exported(out).meta.extra["int8_float"] == []
    assert main([*argv, "--int8-float", "stem,head"]) == 0
    assert open_exported(out).meta.extra["int8_float"] == ["stem", "head"]
    assert [src for op, src in _fed_by(out) if op == "GroupConvolution"][0] == "FakeQuantize"


def test_calibration_from_another_run_takes_this_models_whole_eval_transform(
    imagenet_sample: Path, tmp_path: Path
) -> None:
    """A run folder given as --calibration lends its images, never its preprocessing: all six settings are the
    exported model's. crop_mode was left out of a hand-written list of five, so a squash model calibrated on a
    centre-crop run's images saw them cropped."""
    import yaml

    from convnext.export.calibration import load_calibration

    run = tmp_path / "other_run"
    for src in sorted(imagenet_sample.glob("*/*.JPEG"))[:4]:
        (run / "data" / "train" / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, run / "data" / "train" / src.parent.name / src.name)
    other = {"dataset": "imagefolder", "root": str(run / "data"), "crop_mode": "center", "img_size": 64}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": other}))
    got = {
        mode: load_calibration(
            str(run), DataConfig(img_size=SIZE, crop_mode=mode), run_data=False, where="w", limit=4
        ).images
        for mode in ("center", "squash")
    }
    assert got["center"].shape == got["squash"].shape == (4, 3, SIZE, SIZE)
    assert not torch.equal(got["center"], got["squash"])  # the photos are not square: squash differs


def test_calibration_folder_with_broken_images_names_them(imagenet_sample: Path, tmp_path: Path) -> None:
    from convnext.export.calibration import load_calibration

    calib = tmp_path / "calib"
    for src in sorted(imagenet_sample.glob("*/*.JPEG"))[:4]:
        (calib / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, calib / src.parent.name / src.name)
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # a JPEG header, no image
    (calib / "notes.txt").write_text("not an image, not even looked at")
    got = load_calibration(str(calib), DataConfig(img_size=SIZE), run_data=False, where="w")
    assert got.images.shape == (4, 3, SIZE, SIZE) and got.source == f"4 images from {calib}"
    assert [Path(p).name for p, _ in got.skipped] == ["broken.jpg"]
    (calib / "only").mkdir()
    (calib / "only" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(UserError, match="none of its 1 image files can be read"):
        load_calibration(str(calib / "only"), DataConfig(img_size=SIZE), run_data=False, where="w")
    assert (
        len(
            load_calibration(str(calib), DataConfig(img_size=SIZE), run_data=False, where="w", limit=2).images
        )
        == 2
    )


def test_bad_requests_are_one_line_and_leave_nothing(run_dir: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "w.pth"
    torch.save(build_model("convnext_atto", num_classes=10).state_dict(), weights)
    (tmp_path / "old.onnx").write_bytes(b"keep me")
    cases = [
        # int8 with no calibration data at all (a bare state dict has no training data)
        (["--weights", str(weights), "--format", "openvino", "--precision", "int8", "--out", "a.xml"],
         "int8 needs calibration images: pass --calibration DIR"),
        (["--weights", str(weights), "--format", "onnx", "--out", "old.onnx"],
         "old.onnx already exists; pass --force to replace it"),
        (["--weights", str(weights), "--format", "onnx", "--precision", "int8", "--out", "b.onnx"],
         "--format onnx does not support --precision int8"),
        (["--weights", str(weights), "--format", "pt2", "--precision", "bf16", "--out", "b.pt2"],
         "--format pt2 does not support --precision bf16"),
        (["--weights", str(weights), "--format", "onnx", "--out", "b.xml"], "must end with .onnx"),
        (["--weights", str(weights), "--out", "b.tflite"], "cannot tell the format from --out"),
        (["--weights", str(weights), "--precision", "int8", "--calibration", "nope", "--out", "c.xml"],
         "calibration folder nope does not exist"),
        (["--weights", str(weights), "--precision", "int8", "--int8-float", "attn", "--out", "c.xml"],
         "--int8-float 'attn' is not one of dwconv, stem, head or none"),
        (["--weights", str(weights), "--int8-float", "dwconv", "--out", "c.xml"],
         "--int8-float goes with --precision int8"),
    ]  # fmt: skip
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for argv, want in cases:
            assert main(["export", *argv]) == 2, argv
            err = _lines(capsys.readouterr().err)
            assert len(err) == 1 and want in err[0], (argv, err)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx", "w.pth"]
    assert (tmp_path / "old.onnx").read_bytes() == b"keep me"


def test_a_file_that_fails_verification_is_deleted(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import convnext.runtimes.base as base

    monkeypatch.setattr(base, "PARITY_RTOL", -1.0)  # a limit nothing meets: the check must fire
    assert main(["export", "--weights", str(run_dir), "--out", str(tmp_path / "m.pt2")]) == 2
    err = [ln for ln in _lines(capsys.readouterr().err) if not ln.startswith("[export]")]  # progress
    assert len(err) == 1 and "differs from PyTorch by" in err[0] and "the file was deleted" in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the file nor the hidden work folder is left


@pytest.mark.parametrize(
    "module,fmt,extra", [("onnxruntime", "onnx", "export"), ("openvino", "openvino", "openvino")]
)
def test_missing_runtime_says_what_to_install(
    module: str, fmt: str, extra: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import raises ImportError
    out = tmp_path / f"m{'.onnx' if fmt == 'onnx' else '.xml'}"
    assert main(["export", "--weights", "nowhere.pth", "--format", fmt, "--out", str(out)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and f"pip install 'convnext[{extra}]'" in err[0]


def test_load_backend_is_what_serve_plugs_in(exported: tuple[Path, str]) -> None:
    from convnext.inference.backends import load_backend

    b = load_backend(str(exported[0]), "onnxruntime", crop_pct=0.9)
    assert (b.arch, b.num_classes, b.precision, b.data.crop_pct) == ("convnext_atto", 10, "fp32", 0.9)
    assert b.class_names == [str(i) for i in range(10)] and b.forward(
        torch.zeros(2, 3, SIZE, SIZE)
    ).shape == (2, 10)
    with pytest.raises(UserError, match="runs on onnxruntime, not on --backend openvino"):
        load_backend(str(exported[0]), "openvino")
    with pytest.raises(UserError, match="exported for 32 px inputs"):
        load_backend(str(exported[0]), "onnxruntime", img_size=64)


def test_a_foreign_onnx_file_runs_with_default_preprocessing(
    exported: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    proto = onnx.load(str(exported[0]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    from convnext.messages import install_cli_handler, remove_cli_handler

    install_cli_handler("predict")  # the note as the command line shows it
    try:
        runner = open_exported(tmp_path / "foreign.onnx")
    finally:
        remove_cli_handler()
    assert runner.num_classes == 10 and runner.class_names is None and runner.data.img_size == 224
    assert "carries no convnext metadata" in capsys.readouterr().err
    with pytest.raises(UserError, match="does not exist"):
        open_exported(tmp_path / "missing.onnx")


def test_bf16_on_a_cpu_without_native_bf16_is_noted_once(monkeypatch, capsys) -> None:
    import convnext.device as device
    from convnext.models import cpu

    assert cpu.cpu_features(frozenset({"avx2", "avx512f", "avx512_vnni"})) == {
        "AVX2": True, "AVX-512": True, "VNNI": True, "BF16": False, "AMX": False,
    }  # fmt: skip
    assert cpu.cpu_has_native_bf16(frozenset({"amx_bf16"})) and cpu.cpu_has_int8_dot(frozenset({"amx_int8"}))
    assert device.bf16_cpu_note(flags=frozenset({"avx512_bf16"})) is None
    # ONEDNN_MAX_CPU_ISA caps what oneDNN (PyTorch, OpenVINO) may use: the reports follow it
    full = frozenset({"fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert cpu._cap_flags(full, "AVX2") == {"fma", "avx2"}
    assert cpu._cap_flags(full, "avx512_core_vnni") == full - {"avx512_bf16"}
    assert cpu._cap_flags(full, "ALL") == cpu._cap_flags(full, None) == full
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    from convnext.messages import install_cli_handler, remove_cli_handler

    capsys.readouterr()
    install_cli_handler("export")  # a fresh command: its notes, each once
    try:
        for _ in range(2):
            assert device.amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    finally:
        remove_cli_handler()
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "no native bf16" in err[0] and "--amp bf16" in err[0]


_NO_PHONING_HOME = """
import json, os, sys

log = os.environ["CONNECT_LOG"]
LOCAL = {"127.0.0.1", "::1", "localhost", None}


def hook(event, args):
    host = None
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
    else:
        return
    if host not in LOCAL:
        with open(log, "a") as f:  # a telemetry thread swallows exceptions: the file tells
            f.write(json.dumps([event, str(host)]) + "\\n")
        raise ConnectionRefusedError(f"test: {event} to {host}")


sys.addaudithook(hook)
from convnext.cli.main import main

sys.exit(main(sys.argv[1:]))
"""


def test_export_opens_no_connection_and_writes_nothing_home(run_dir: Path, tmp_path: Path) -> None:
    """OpenVINO reports usage to Google Analytics on import and on every conversion (NNCF on quantize) and
    keeps a client id in ~/intel, unless switched off: an export must open no connection it was not asked
    for. Run as a user runs it: a fresh process, a HOME of its own, no CI variables."""
    import os
    import subprocess

    pytest.importorskip("nncf")
    home, log = tmp_path / "home", tmp_path / "connects.log"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI")}
    env.update(HOME=str(home), CONNECT_LOG=str(log))
    for key in ("DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY"):
        env.pop(key, None)
    argv = ["export", "--weights", str(run_dir), "--precision", "int8", "--calibration-size", "8"]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PHONING_HOME, *argv, "--out", str(tmp_path / "q.xml")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not log.exists(), log.read_text()
    assert not (home / "intel" / "openvino_ga_cid").exists()
    assert not (home / "intel").exists()


def test_an_unwritable_folder_is_one_sentence_and_leaves_nothing(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    from test_convert import unwritable_folders

    for folder in unwritable_folders(tmp_path):
        before = sorted(folder.iterdir())
        for out in (folder / "m.onnx", folder / "new" / "m.xml"):
            assert main(["export", "--weights", str(run_dir), "--out", str(out)]) == 2
            err = _lines(capsys.readouterr().err)
            assert len(err) == 1 and f"cannot write {out}" in err[0] and "is not writable" in err[0], err
        assert sorted(folder.iterdir()) == before
    (tmp_path / "a-file").write_text("")
    assert main(["export", "--weights", str(run_dir), "--out", str(tmp_path / "a-file" / "m.onnx")]) == 2
    assert "a file stands in the way of the folder" in capsys.readouterr().err


def test_an_export_removes_what_dead_exports_left(run_dir: Path, tmp_path: Path) -> None:
    """A killed export (SIGKILL, power cut) leaves its hidden work folder; the next export to the same file
    removes it, and leaves alone that of an export still running."""
    import os
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    for pid in (dead_pid, live_pid):
        (tmp_path / f".m.pt2.partial-{pid}").mkdir()
        (tmp_path / f".m.pt2.partial-{pid}" / "m.pt2").write_bytes(b"half")
    (tmp_path / f".other.pt2.partial-{dead_pid}").mkdir()  # another output's: not this export's business
    assert main(["export", "--weights", str(run_dir), "--out", str(tmp_path / "m.pt2")]) == 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".m.pt2.partial-{live_pid}", f".other.pt2.partial-{dead_pid}", "m.pt2"]


@pytest.mark.slow  # CI runs another variant of this guarantee (suite under 10 minutes)
def test_ctrl_c_during_an_int8_export_leaves_nothing_and_exits_130(run_dir: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    pytest.importorskip("nncf")
    out = tmp_path / "q.xml"
    argv = ["export", "--weights", str(run_dir), "--precision", "int8", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "convnext", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal starts it
    )  # fmt: skip
    err = []
    for line in proc.stderr:  # interrupt NNCF at work
        err.append(line)
        if "quantizing to int8" in line:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            break
    err += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 130, "".join(err)[-2000:]
    assert err[-1].strip() == "convnext export: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []  # no file, no hidden work folder


def test_img_size_below_the_models_stride_is_refused_by_its_reduction(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    """The smallest input is the model's own total stride (``model.reduction``), not a constant."""
    assert (
        main(["export", "--weights", str(run_dir), "--img-size", "16", "--out", str(tmp_path / "m.pt2")]) == 2
    )
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--img-size 16 is below the 32 px convnext_atto needs" in err[0]
    assert list(tmp_path.iterdir()) == []
