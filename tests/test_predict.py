"""`convnext predict` and Grad-CAM: the same top-5 as timm on every sample image, the original output
format, JSON lines, CAM maps that point at the evidence, and per-image errors that do not stop the rest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SYNSETS
from torch import nn
from torchvision.io import decode_png, read_file

import convnext
from convnext.cli.main import main
from convnext.data import DataConfig, build_eval_transform, load_image
from convnext.inference import GradCAM, predict_paths
from convnext.inference.cam import crop_box

IMG = 64
LINE = re.compile(r"^.{75} \(\d{1,3}\.\d{2}%\)$")  # the original project's "name padded (38.61%)"


@pytest.fixture(scope="module")
def timm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module, Path]:
    """A seeded random timm convnext_atto, its saved state dict, and ours loaded from that file."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    peer = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path_factory.mktemp("w") / "atto_timm.pth"
    torch.save(peer.state_dict(), path)
    ours = convnext.create_model("convnext_atto")
    convnext.load_checkpoint(ours, str(path))
    return peer, ours.eval(), path


def _sample_files(root: Path, n: int | None = None) -> list[str]:
    return [str(p) for p in sorted(root.glob("*/*"))][:n]


def test_top5_matches_timm_on_every_sample_image(imagenet_sample: Path, timm_pair) -> None:
    peer, ours, _ = timm_pair
    files = _sample_files(imagenet_sample)
    cfg = DataConfig(img_size=IMG)
    preds = list(predict_paths(ours, files, cfg, topk=5, batch_size=50))
    tf = build_eval_transform(cfg)
    with torch.no_grad():
        peer_logits = peer(torch.stack([tf(load_image(f)) for f in files]))
    peer_top5 = peer_logits.sort(dim=1, descending=True, stable=True).indices[:, :5]
    assert len(preds) == len(files) == 100
    for p, f, want in zip(preds, files, peer_top5.tolist()):
        assert p.path == f and p.error is None
        assert p.indices == want, f  # same classes, same order
    probs = peer_logits.softmax(1)
    assert preds[0].probs == pytest.approx(probs[0, peer_top5[0]].tolist(), abs=1e-5)


def test_cli_text_and_json_output(imagenet_sample: Path, timm_pair, capsys) -> None:
    _, _, path = timm_pair
    files = _sample_files(imagenet_sample, 3)
    assert main(["predict", *files, "--weights", str(path), "--img-size", str(IMG), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 6
    for i, f in enumerate(files):
        assert lines[6 * i] == f
        assert all(LINE.match(ln) for ln in lines[6 * i + 1 : 6 * i + 6]), lines[6 * i + 1 : 6 * i + 6]
    # ImageNet-1k names in full, as the original prints them ("tench, Tinca tinca")
    assert (
        main(["predict", files[0], "--weights", str(path), "--img-size", str(IMG), "--json", "--topk", "3"])
        == 0
    )
    obj = json.loads(capsys.readouterr().out)
    assert obj["path"] == files[0] and len(obj["top"]) == 3
    names = [ln.split(" ", 1)[1].strip() for ln in SYNSETS.read_text().splitlines() if ln.strip()]
    assert all(t["class"] == names[t["index"]] for t in obj["top"])
    assert obj["top"][0]["prob"] >= obj["top"][1]["prob"] >= obj["top"][2]["prob"]


def test_json_file_keeps_the_text_and_bars_only_on_a_terminal(
    imagenet_sample: Path, timm_pair, tmp_path: Path, capsys, monkeypatch
) -> None:
    """--json FILE writes one object per image there and the text stays on stdout (the shared --json
    convention); --json - is stdout only; a non-.json value after --json is refused, not overwritten; the
    progress bar draws only on a terminal, and --no-progress switches it off there too."""
    import io
    import sys

    _, _, path = timm_pair
    files = _sample_files(imagenet_sample, 3)
    base = ["predict", *files, "--weights", str(path), "--img-size", str(IMG), "--topk", "2"]
    base += ["--batch-size", "1"]  # 3 images in 3 batches: enough for a bar
    dst = tmp_path / "out" / "preds.jsonl"
    assert main([*base, "--json", str(dst)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3 * 3  # path + 2 classes per image
    objs = [json.loads(ln) for ln in dst.read_text().splitlines()]
    assert [o["path"] for o in objs] == files and all(len(o["top"]) == 2 for o in objs)
    assert main([*base, "--json", "-"]) == 0
    assert [json.loads(ln) for ln in capsys.readouterr().out.splitlines()] == objs
    with pytest.raises(SystemExit):
        main(["predict", "--json", files[0], "--weights", str(path)])
    assert "is not a .json/.jsonl file name" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for extra, bar in (((), True), (("--no-progress",), False)):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        assert main([*base, *extra]) == 0
        assert ("predict" in term.getvalue()) is bar, term.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    assert main(base) == 0
    assert sys.stderr.getvalue() == ""


# ---------------------------------------------------------------------------------------------- Grad-CAM
class ColourNet(nn.Module):
    """A real two-layer CNN whose class c is "how much of colour channel c": stage 0 pools each channel
    over 4x4 patches, the head is the identity on the pooled channels. The evidence for "red" is where the
    red pixels are, so Grad-CAM for "red" must light up there and nowhere else."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, kernel_size=4, stride=4)
        with torch.no_grad():
            conv.weight.zero_()
            for c in range(3):
                conv.weight[c, c] = 1 / 16
            conv.bias.zero_()
        self.stages = nn.ModuleList([nn.Sequential(conv, nn.ReLU())])
        self.feature_info = [{"num_chs": 3, "reduction": 4, "module": "stages.0"}]  # its taps, as timm's say
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()
        self.num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            x = s(x)
        return self.head(x.mean((2, 3)))


def test_gradcam_points_at_the_evidence() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 4:20, 6:22] = 1.0  # red square, top-left quadrant
    x[0, 1, 44:60, 40:56] = 0.6  # smaller green evidence, bottom-right quadrant
    cam = GradCAM(ColourNet())
    (red,), cls = cam(x)  # top-1 by default: red
    assert cls.tolist() == [0]
    (green,), _ = cam(x, torch.tensor([1]))
    for m, (y, xx) in ((red, (12, 14)), (green, (52, 48))):
        assert m.shape == (64, 64) and float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0)
        peak = divmod(int(m.argmax()), 64)
        assert abs(peak[0] - y) <= 8 and abs(peak[1] - xx) <= 8, peak
    assert float(red[32:, 32:].max()) < 0.05 and float(green[:32, :32].max()) < 0.05


def test_gradcam_on_convnext_is_normalized_and_not_constant(timm_pair) -> None:
    _, ours, _ = timm_pair
    x = torch.randn(2, 3, IMG, IMG)
    maps, cls = GradCAM(ours)(x)
    assert maps.shape == (2, IMG, IMG) and cls.shape == (2,)
    assert cls.tolist() == ours(x).argmax(1).tolist()
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert all(float(m.max() - m.min()) > 0.5 for m in maps)
    iso = convnext.create_model("convnext_isotropic_small", num_classes=5, depth=2, dim=32)
    (m,), _ = GradCAM(iso)(torch.randn(1, 3, 64, 64))  # target: the last block
    assert m.shape == (64, 64) and float(m.max()) == pytest.approx(1.0)


def test_crop_box_is_the_center_crop_the_model_sees() -> None:
    from torchvision.transforms import v2

    img = torch.arange(375 * 500, dtype=torch.float32).reshape(1, 375, 500)  # pixel value = position
    cfg = DataConfig(img_size=224, crop_pct=0.875)
    top, left, h, w = crop_box(375, 500, cfg.img_size, cfg.crop_pct)
    resized = v2.Resize(256, interpolation=v2.InterpolationMode.NEAREST)(img)
    crop = v2.CenterCrop(224)(resized)
    # the crop's first and last pixels come from the box's corners (nearest resize: exact positions)
    r0, c0 = divmod(int(crop[0, 0, 0]), 500)
    r1, c1 = divmod(int(crop[0, -1, -1]), 500)
    assert abs(r0 - top) <= 2 and abs(c0 - left) <= 2
    assert abs(r1 - (top + h)) <= 3 and abs(c1 - (left + w)) <= 3


def test_cli_cam_writes_overlay_at_original_size(
    imagenet_sample: Path, timm_pair, tmp_path: Path, capsys
) -> None:
    _, _, path = timm_pair
    files = _sample_files(imagenet_sample, 2)
    out = tmp_path / "cam"
    args = ["predict", *files, "--weights", str(path), "--img-size", str(IMG), "--cam", str(out), "--json"]
    assert main(args) == 0
    for f, line in zip(files, capsys.readouterr().out.splitlines()):
        obj = json.loads(line)
        top1 = obj["top"][0]["class"].split(",")[0].replace(" ", "_")  # "tench, Tinca tinca" -> tench
        assert Path(obj["cam"]) == out / f"{Path(f).stem}_cam_{top1}.png"
        png = decode_png(read_file(obj["cam"]))
        _, h, w = load_image(f).shape  # the original image side by side with its overlay, not the 64 px crop
        assert png.shape[1] > h and png.shape[2] > 2 * w


# ------------------------------------------------------------------------------------------- bad inputs
def test_unreadable_image_among_good_ones(imagenet_sample: Path, timm_pair, tmp_path: Path, capsys) -> None:
    _, _, path = timm_pair
    good = _sample_files(imagenet_sample, 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)  # a JPEG header and nothing decodable
    a, b = tmp_path / "a.JPEG", tmp_path / "b.JPEG"
    shutil.copy(good[0], a)
    shutil.copy(good[1], b)
    rc = main(["predict", str(a), str(bad), str(b), str(tmp_path / "absent.jpg"), "--weights", str(path),
               "--img-size", str(IMG), "--batch-size", "2"])  # fmt: skip
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert rc == 1
    assert lines[0] == str(a) and lines[6] == f"{bad}: error: cannot read image (truncated or corrupt)"
    assert lines[7] == str(b) and all(LINE.match(ln) for ln in lines[8:13])
    assert lines[13].startswith(f"{tmp_path / 'absent.jpg'}: error: cannot read image (")
    assert "2 of 4 image(s) could not be read" in cap.err


def test_weights_errors_are_one_line(timm_pair, imagenet_sample: Path, tmp_path: Path, capsys) -> None:
    _, _, path = timm_pair
    img = _sample_files(imagenet_sample, 1)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nfish\n")
    cases = [
        (
            ["--weights", str(tmp_path / "nope.pth")],
            "checkpoint " + str(tmp_path / "nope.pth") + " does not exist",
        ),
        (["--weights", str(path), "--classes", str(classes)], "1000-class head but class list"),
        (
            ["--weights", str(path), "--model", "convnext_tiny"],
            "convnext_atto weights but the model is convnext_tiny",
        ),
    ]
    for argv, needle in cases:
        rc = main(["predict", *img, *argv, "--img-size", str(IMG)])
        cap = capsys.readouterr()
        err = cap.err.strip().splitlines()
        assert rc == 2 and cap.out == ""
        assert len(err) == 1 and err[0].startswith("convnext predict: error: ") and needle in err[0], err


def test_class_names_shown() -> None:
    from convnext.cli.common import weights_source
    from convnext.inference import display_names

    assert display_names(None, 1000)[0] == "tench, Tinca tinca"  # ImageNet-1k: full synonym list
    assert display_names(["n01440764", "my_cat"], 2) == ["tench, Tinca tinca", "my_cat"]  # run folders
    assert display_names(None, 21841)[0] == "organism, being"  # ImageNet-22k: WordNet's words (#21)
    assert display_names(None, 7)[6] == "class 6"  # nothing names them
    assert weights_source(None, "convnext_tiny.fb_in1k") == "convnext_tiny.fb_in1k"
    assert weights_source("w.pth", "convnext_tiny") == "w.pth"


def test_expand_inputs_lists_each_real_file_once(tmp_path: Path) -> None:
    """os.walk(followlinks=True) went round ``loop -> ..`` until the path was too long; each real folder
    is walked once and each real file listed once, across all inputs (a folder and a file in it, a glob)."""
    import os

    from convnext.inference.predict import expand_inputs

    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.PNG", "sub/c.jpeg", "notes.txt", ".hidden.jpg"):
        (d / name).write_bytes(b"x")
    os.symlink("..", d / "sub" / "loop")
    os.symlink("a.jpg", d / "a_again.jpg")
    os.symlink(d / "sub", d / "sub_again")
    got = expand_inputs([str(d), str(d / "sub" / "c.jpeg"), str(d / "*.jpg"), str(tmp_path / "absent.jpg")])
    assert got == [
        str(d / "a.jpg"),
        str(d / "b.PNG"),
        str(d / "sub" / "c.jpeg"),
        str(tmp_path / "absent.jpg"),
    ]


# ------------------------------------------------------------------------------ --cam-class, hostile names
def test_class_index_by_name_synonym_case_or_index_and_close_names() -> None:
    from convnext.errors import UserError
    from convnext.inference.predict import class_index

    names = ["tench, Tinca tinca", "crane", "crane", "goldfish, Carassius auratus", "7"]
    assert class_index("tench, Tinca tinca", names) == 0
    assert class_index("Tinca tinca", names) == class_index("TENCH", names) == 0  # a synonym, any case
    assert class_index("3", names) == 3 and class_index("7", names) == 4  # a name before an index
    with pytest.raises(UserError, match=r"'crane' names 2 classes of the model: 1 \('crane'\), 2"):
        class_index("crane", names)
    with pytest.raises(UserError) as e:
        class_index("goldfsh", names, "w.pth")
    assert str(e.value) == (
        "class 'goldfsh' is not one of the 5 classes of w.pth (close names: 'goldfish, Carassius auratus'; "
        "or pass an index 0-4)"
    )
    with pytest.raises(UserError, match="no class name is close"):
        class_index("zebra", names)


def test_cli_cam_class_draws_the_chosen_class(tmp_path: Path, capsys) -> None:
    from test_evaluate import tiny_run
    from torchvision.io import write_png

    run = tiny_run(tmp_path)
    img = tmp_path / "x.png"
    write_png(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8), str(img))
    out, js = tmp_path / "cams", tmp_path / "p.jsonl"
    base = ["predict", str(img), "--weights", str(run), "--topk", "3", "--cam", str(out)]
    assert main([*base, "--cam-class", "BANANA", "--json", str(js)]) == 0  # a name, any case
    obj = json.loads(js.read_text())
    banana = next(t for t in obj["top"] if t["class"] == "banana")  # --topk 3: every class's probability
    assert obj["cam_class"] == banana and obj["cam"] == str(out / "x_cam_banana.png")
    text = capsys.readouterr().out.splitlines()
    assert text[-1] == f"Grad-CAM of banana ({banana['prob'] * 100:.2f}%): {obj['cam']}"
    for argv, needle in (
        ([*base, "--cam-class", "banan"], "class 'banan' is not one of the 3 classes of"),
        ([*base[:-2], "--cam-class", "banana"], "--cam-class needs --cam"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert "(close names: 'banana'; or pass an index 0-2)" in err[0] or "needs" in needle


def test_fifo_and_device_link_are_refused_unread(tmp_path: Path, capsys) -> None:
    """A FIFO blocked predict until a writer came, a link to /dev/zero read until memory ran out: both are
    one error line, unread, and the other images are predicted (exit 1). Run with a timeout, so that a hang
    fails the test instead of stalling the suite."""
    import os

    from test_evaluate import tiny_run
    from test_inputs import _within
    from torchvision.io import write_png

    run = tiny_run(tmp_path)
    d = tmp_path / "imgs"
    d.mkdir()
    write_png(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8), str(d / "good.png"))
    os.mkfifo(d / "pipe.jpg")
    os.symlink("/dev/zero", d / "zero.jpg")
    argv = ["predict", str(d), str(d / "pipe.jpg"), "--weights", str(run), "--json", "--no-progress"]
    assert _within(120, main, argv) == 1
    cap = capsys.readouterr()
    lines = {json.loads(ln)["path"]: json.loads(ln) for ln in cap.out.splitlines()}
    assert sorted(lines) == [str(d / n) for n in ("good.png", "pipe.jpg", "zero.jpg")]  # the FIFO once
    assert "top" in lines[str(d / "good.png")]
    assert lines[str(d / "pipe.jpg")]["error"] == "cannot read image (not a regular file: a named pipe)"
    assert lines[str(d / "zero.jpg")]["error"] == "cannot read image (not a regular file: a character device)"
    assert "2 of 3 image(s) could not be read" in cap.err


def test_control_characters_in_names_are_quoted_in_text_exact_in_json(tmp_path: Path, capsys) -> None:
    from test_evaluate import tiny_run
    from torchvision.io import write_png

    run = tiny_run(tmp_path)
    d = tmp_path / "imgs"
    d.mkdir()
    names = ["new\nline.png", "tab\there.png", "esc\x1b[31mred.png", "plain name.png"]
    for n in names:
        write_png(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8), str(d / n))
    (d / "broken\nfile.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    out = tmp_path / "cams"
    assert main(["predict", str(d), "--weights", str(run), "--topk", "1", "--cam", str(out)]) == 1
    text = capsys.readouterr().out.splitlines()
    broken = str(d / "broken\nfile.png")
    assert f"{broken!r}: error: cannot read image (truncated or corrupt)" in text
    for n in names[:3]:
        assert repr(str(d / n)) in text  # one line, quoted and escaped
    assert str(d / "plain name.png") in text  # printable names as they are
    assert not any(ln.startswith(("line.png", "here.png", "file.png")) for ln in text)
    assert all(ln.isprintable() for ln in text)
    cams = [p.name for p in out.iterdir()]  # the figures' own names have no control characters
    assert len(cams) == 4 and all(n.isprintable() for n in cams), cams
    assert main(["predict", str(d), "--weights", str(run), "--topk", "1", "--json"]) == 1
    got = [json.loads(ln)["path"] for ln in capsys.readouterr().out.splitlines()]
    assert sorted(got) == sorted(str(d / n) for n in [*names, "broken\nfile.png"])


@pytest.mark.parametrize("verb", ["evaluate", "predict", "export", "prepare", "benchmark", "convert", "serve",
                                  "train", "pretrain", "models", "recipes"])  # fmt: skip
def test_every_verb_accepts_no_progress(verb: str) -> None:
    """A script that passes --no-progress to every verb it runs (a CI log, a cron job) must not fail on the
    verbs that draw no bar; export did."""
    from convnext.cli.main import VERBS, build_parser

    assert verb in VERBS and len(VERBS) == 11  # a new verb: add it above
    sub = build_parser((verb,))._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
    action = next(a for a in sub._actions if "--no-progress" in a.option_strings)
    assert action.dest == "no_progress" and action.default is False
