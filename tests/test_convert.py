"""Weights back out to every peer: ``convnext convert --to ours|official|timm|torchvision|hf``.

Each direction is checked against the peer library itself (timm, torchvision, transformers): the peer
builds its own model, loads the converted file strictly, and must give our logits on an odd, non-square
input (193x257), for V1 and V2 and a fine-tuned 7-class head. Every parameter is random first (layer
scale and GRN too: at their init a dropped or transposed op would not show).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import convnext
from convnext.cli.main import main
from convnext.weights import formats

N_CLASSES = 7
CLASSES = [f"breed_{i}" for i in range(N_CLASSES)]
X = (1, 3, 193, 257)
TOL = 1e-4


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        fan_in = math.prod(p.shape[1:])
        if p.ndim >= 2 and p.shape[0] > 1 and fan_in > 1:
            p.uniform_(-math.sqrt(3 / fan_in), math.sqrt(3 / fan_in))
        elif name.endswith("weight") and p.ndim == 1:
            p.uniform_(0.8, 1.2)
        else:  # biases, layer scale, GRN gamma/beta
            p.uniform_(-0.3, 0.3)
    return model.eval()


def ours(arch: str, num_classes: int = N_CLASSES) -> nn.Module:
    with torch.device("meta"):  # no paper init (seconds for the big variants): random values instead
        m = convnext.create_model(arch, num_classes=num_classes)
    return randomize_(m.to_empty(device="cpu"))


def source_file(model: nn.Module, arch: str, tmp: Path) -> Path:
    """A fine-tuned model as our training would leave it: official layout plus class names."""
    path = tmp / f"{arch}_src.pth"
    torch.save({"model": model.state_dict(), "arch": arch, "class_names": CLASSES}, path)
    return path


@torch.no_grad()
def assert_same_logits(theirs, mine: nn.Module) -> None:
    x = torch.randn(*X)
    diff = (theirs(x) - mine(x)).abs().max().item()
    assert diff <= TOL, f"max |logit difference| {diff:.2e} at 193x257"


# ------------------------------------------------------------------------------------------ round trips
ROUND_TRIP = [
    ("convnext_atto", "timm"),
    ("convnext_tiny", "timm"),
    ("convnextv2_atto", "timm"),
    ("convnextv2_tiny", "timm"),
    ("convnext_tiny", "torchvision"),
    ("convnext_atto", "transformers"),
    ("convnextv2_atto", "transformers-v2"),
    ("convnext_atto", "official"),
    ("convnextv2_atto", "official"),
    ("convnext_isotropic_small", "official"),
]


@pytest.mark.parametrize(("arch", "fmt"), ROUND_TRIP)
def test_from_ours_is_the_inverse_of_to_ours(arch: str, fmt: str) -> None:
    with torch.device("meta"):
        shapes = convnext.create_model(arch, num_classes=N_CLASSES).state_dict()
    sd = {k: torch.randn(v.shape) for k, v in shapes.items()}
    theirs = formats.from_ours(sd, fmt)
    assert formats.detect_format(theirs) == fmt
    back = formats.to_ours(theirs, fmt)
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].shape == sd[k].shape and torch.equal(back[k], sd[k]), k


# ----------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize(
    "arch",
    ["convnext_atto", "convnextv2_atto", pytest.param("convnext_tiny", marks=pytest.mark.slow)],
)
def test_to_timm(arch: str, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    model = ours(arch)
    dst = tmp_path / f"{arch}_timm.safetensors"
    assert main(["convert", str(source_file(model, arch, tmp_path)), str(dst), "--to", "timm"]) == 0
    from safetensors.torch import load_file

    ref = timm.create_model(arch, pretrained=False, num_classes=N_CLASSES).eval()
    ref.load_state_dict(load_file(dst), strict=True)
    assert_same_logits(ref, model)
    # timm's own loader, as a timm user would point it at the file (num_classes in the overlay: timm
    # drops a classifier whose size differs from its pretrained_cfg's)
    overlay = {"file": str(dst), "num_classes": N_CLASSES}
    ref = timm.create_model(arch, pretrained=True, num_classes=N_CLASSES, pretrained_cfg_overlay=overlay)
    assert_same_logits(ref.eval(), model)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["convnext_large", "convnextv2_huge"])
def test_to_timm_large(arch: str) -> None:
    timm = pytest.importorskip("timm")
    model = ours(arch)
    with torch.device("meta"):
        ref = timm.create_model(arch, pretrained=False, num_classes=N_CLASSES)
    ref.load_state_dict(formats.from_ours(model.state_dict(), "timm"), strict=True, assign=True)
    assert_same_logits(ref.eval(), model)


# ---------------------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("arch", ["convnext_tiny", pytest.param("convnext_large", marks=pytest.mark.slow)])
def test_to_torchvision(arch: str, tmp_path: Path) -> None:
    tv = pytest.importorskip("torchvision.models")
    model = ours(arch)
    dst = tmp_path / f"{arch}_tv.pth"
    assert main(["convert", str(source_file(model, arch, tmp_path)), str(dst), "--to", "torchvision"]) == 0
    with torch.device("meta"):
        ref = getattr(tv, arch)(weights=None, num_classes=N_CLASSES).eval()
    ref.load_state_dict(torch.load(dst, weights_only=True), strict=True, assign=True)
    assert_same_logits(ref, model)


@pytest.mark.parametrize(
    ("arch", "sentence"),
    [
        ("convnextv2_atto", "torchvision has no ConvNeXt V2, so it cannot hold convnextv2_atto"),
        ("convnext_atto", "torchvision ships only convnext_tiny, convnext_small, convnext_base"),
    ],
)
def test_torchvision_cannot_hold_is_one_line(
    arch: str, sentence: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = source_file(ours(arch), arch, tmp_path)
    dst = tmp_path / "out.pth"
    assert main(["convert", str(src), str(dst), "--to", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and sentence in err, err
    assert not dst.exists()


def test_isotropic_goes_only_to_official(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arch = "convnext_isotropic_small"
    with torch.device("meta"):
        shapes = convnext.create_model(arch, num_classes=3).state_dict()
    src = tmp_path / "iso.pth"
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in shapes.items()}}, src)
    for target in ("timm", "hf"):
        dst = tmp_path / ("iso_hf" if target == "hf" else "iso_timm.pth")
        assert main(["convert", str(src), str(dst), "--to", target]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "isotropic ConvNeXt, which only the official code has" in err
        assert not dst.exists()


# ------------------------------------------------------------------------------------------------- hf
@pytest.mark.parametrize(
    "arch", ["convnext_atto", "convnextv2_atto", pytest.param("convnextv2_tiny", marks=pytest.mark.slow)]
)
def test_to_hf_folder(arch: str, tmp_path: Path) -> None:
    tr = pytest.importorskip("transformers")
    model = ours(arch)
    dst = tmp_path / f"{arch}-hf"
    assert main(["convert", str(source_file(model, arch, tmp_path)), str(dst), "--to", "hf"]) == 0
    assert {p.name for p in dst.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    cls = tr.ConvNextV2ForImageClassification if "v2" in arch else tr.ConvNextForImageClassification
    ref = tr.AutoModelForImageClassification.from_pretrained(dst).eval()  # config.json alone says which
    assert type(ref) is cls and ref.config.id2label == dict(enumerate(CLASSES))
    assert_same_logits(lambda x: ref(pixel_values=x).logits, model)
    proc = tr.AutoImageProcessor.from_pretrained(dst)
    assert proc.size == {"shortest_edge": 224} and proc.crop_pct == 0.875
    assert tuple(proc.image_mean) == (0.485, 0.456, 0.406)
    # and back: the HF folder converts to ours with its class names
    back = convnext.create_model(arch, pretrained=str(dst)).eval()
    assert back.pretrained_info.class_names == CLASSES
    assert_same_logits(back, model)


def test_hf_preprocessor_follows_the_squash_rule() -> None:
    from convnext.weights.registry import find_tag
    from convnext.weights.write import hf_preprocessor

    squash = hf_preprocessor(find_tag("convnext_tiny.fb_in22k_ft_in1k_384").data_config())
    assert squash["size"] == {"shortest_edge": 384} and squash["resample"] == 3  # >= 384: HF warps
    tv = hf_preprocessor(find_tag("convnext_tiny.tv_in1k").data_config())
    assert tv["resample"] == 2 and int(224 / tv["crop_pct"]) == 236  # HF: int(shortest_edge / crop_pct)
    assert hf_preprocessor({**find_tag("convnext_tiny.fb_in1k").data_config(), "crop_mode": "squash"}) is None


# ------------------------------------------------------------------------------------ official and ours
def test_to_official_is_model_only(tmp_path: Path) -> None:
    model = ours("convnextv2_atto")
    dst = tmp_path / "official.pth"
    assert (
        main(["convert", str(source_file(model, "convnextv2_atto", tmp_path)), str(dst), "--to", "official"])
        == 0
    )
    raw = torch.load(dst, weights_only=True)
    assert list(raw) == ["model"]
    ref = convnext.models.build_model("convnextv2_atto", num_classes=N_CLASSES).eval()
    ref.load_state_dict(raw["model"], strict=True)  # the official names are ours
    assert_same_logits(ref, model)


def test_hf_destination_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = source_file(ours("convnext_atto"), "convnext_atto", tmp_path)
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--to", "hf"]) == 2
    assert "--to hf writes a folder" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--to", "official"]) == 2
    assert "must end in .pth, .pt" in capsys.readouterr().err


def test_force_replaces_an_hf_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = source_file(ours("convnext_atto"), "convnext_atto", tmp_path)
    dst = tmp_path / "hf"
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 0
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--to", "hf", "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left
    assert json.loads((dst / "config.json").read_text())["architectures"] == [
        "ConvNextForImageClassification"
    ]


def unwritable_folders(tmp_path: Path) -> list[Path]:
    """Folders this process cannot write into: a read-only one (not for root, whom modes do not stop) and
    /sys (a kernel filesystem that refuses new files to root too)."""
    import os

    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    folders = [ro] if not os.access(ro, os.W_OK) else []
    try:
        os.mkdir("/sys/convnext-test")
        os.rmdir("/sys/convnext-test")
    except OSError:
        folders.append(Path("/sys"))
    if not folders:
        pytest.skip("no unwritable folder on this machine")
    return folders


def test_an_unwritable_folder_is_one_sentence_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    src = source_file(ours("convnext_atto"), "convnext_atto", tmp_path)
    for folder in unwritable_folders(tmp_path):
        before = sorted(folder.iterdir())
        for dst, to in [("w.safetensors", "ours"), ("w.pth", "ours"), ("w.pth", "timm"), ("hf", "hf")]:
            assert main(["convert", str(src), str(folder / dst), "--to", to]) == 2, (folder, dst, to)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(
                f"convnext convert: error: cannot write {folder / dst}"
            )
            assert err[0].endswith("; nothing was written")
        assert sorted(folder.iterdir()) == before


# ------------------------------------------------------------------------------- self-describing output
def test_to_hf_names_imagenet_classes(tmp_path: Path) -> None:
    """A 1000-class head with no names is ImageNet-1k's: transformers says "tench", not "LABEL_0"."""
    tr = pytest.importorskip("transformers")
    src = tmp_path / "in1k.pth"
    torch.save(ours("convnext_atto", num_classes=1000).state_dict(), src)  # a bare state dict: no names
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = tr.AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.id2label[0] == "tench" and config.id2label[448] == "birdhouse"
    assert config.label2id["birdhouse"] == 448


def test_to_timm_folder_and_sidecar_describe_the_weights(tmp_path: Path) -> None:
    """--to timm FOLDER is timm's hub layout (model.safetensors + config.json), which timm builds and loads
    by itself with the classes and eval preprocessing; --to timm FILE puts the same config.json beside."""
    timm = pytest.importorskip("timm")
    model = ours("convnext_atto")
    src = source_file(model, "convnext_atto", tmp_path)
    assert main(["convert", str(src), str(tmp_path / "timm"), "--to", "timm"]) == 0
    assert {p.name for p in (tmp_path / "timm").iterdir()} == {"config.json", "model.safetensors"}
    ref = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert_same_logits(ref, model)
    cfg = ref.pretrained_cfg
    assert cfg["label_names"] == CLASSES and cfg["num_classes"] == N_CLASSES
    assert tuple(cfg["input_size"]) == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert (cfg["crop_mode"], cfg["interpolation"]) == ("center", "bicubic")
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["std"]) == (0.229, 0.224, 0.225)
    data = timm.data.resolve_data_config({}, model=ref)
    assert data["crop_pct"] == 0.875 and data["interpolation"] == "bicubic"

    dst = tmp_path / "atto_timm.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "timm"]) == 0
    sidecar = json.loads(dst.with_suffix(".json").read_text())
    assert sidecar == json.loads((tmp_path / "timm" / "config.json").read_text())
    assert main(["convert", str(src), str(tmp_path / "atto_timm.pth"), "--to", "timm"]) == 2  # its .json
