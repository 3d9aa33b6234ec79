"""Every set of weights carries its own eval transform, and every verb applies it.

The registry is checked against timm's pretrained configs and torchvision's weights enum (installed
libraries, read at test time), the transforms against torchvision's own preset on real photos, and
predict/evaluate on 384 px "squash" weights against the squash transform's probabilities.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import convnext
from convnext.cli.main import main
from convnext.data import DataConfig, build_eval_transform, load_image
from convnext.data.preprocessing import Preprocessing
from convnext.errors import UserError
from convnext.weights import registry

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photos(sample: Path, n: int) -> list[Path]:
    return sorted(sample.rglob("*.JPEG"))[:n]


# ---------------------------------------------------------------------------------- registry vs peers
def test_registry_matches_timm_pretrained_cfgs() -> None:
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    checked = 0
    for tag, e in registry.REGISTRY.items():
        try:
            cfg = get_pretrained_cfg(tag)
        except RuntimeError:  # a tag timm lacks (the isotropic models, the 1k-only 384 fine-tunes)
            cfg = None
        if cfg is None:
            continue
        cfg = cfg.to_dict()
        ours = e.pretrained_cfg()
        for key in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes"):
            assert ours[key] == cfg[key], (tag, key, ours[key], cfg[key])
        if cfg.get("url"):
            assert e.url == cfg["url"], tag
        checked += 1
    assert checked >= 40 and timm.__version__


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_torchvision_releases_carry_torchvision_presets(size: str, imagenet_sample: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    weights = getattr(tvm, f"ConvNeXt_{size.capitalize()}_Weights").IMAGENET1K_V1
    e = registry.find_tag(f"convnext_{size}.tv_in1k")
    assert e.url == weights.url and e.num_classes == len(weights.meta["categories"])
    assert e.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    theirs = weights.transforms()
    assert (e.interpolation, e.input_size) == (theirs.interpolation.value, theirs.crop_size[0])
    one_level = 1 / 255 / min(STD) + 1e-6
    for path in photos(imagenet_sample, 3):
        img = load_image(path)
        # float input: the same arithmetic as torchvision's preset, to float precision
        assert torch.allclose(e.transforms()(img.float() / 255), theirs(img.float() / 255), atol=1e-5), path
        # uint8 input: v2's native uint8 bilinear kernel rounds some pixels one level away from the
        # preset's (v1) float resize; never more
        diff = (e.transforms()(img) - theirs(img)).abs()
        assert diff.max() <= one_level and diff.mean() < one_level / 4, path


def test_squash_transform_of_384_weights(imagenet_sample: Path) -> None:
    e = registry.find_tag("convnext_tiny.fb_in22k_ft_in1k_384")
    assert (e.input_size, e.crop_pct, e.crop_mode) == (384, 1.0, "squash")
    squash = v2.Compose(
        [
            v2.Resize((384, 384), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    img = load_image(photos(imagenet_sample, 1)[0])
    assert img.shape[1] != img.shape[2]  # non-square: squash and centre crop differ
    out = e.transforms()(img)
    assert out.shape == (3, 384, 384) and torch.equal(out, squash(img))
    center = build_eval_transform(DataConfig(img_size=384, crop_pct=1.0))(img)
    assert not torch.allclose(out, center, atol=1e-2)
    # timm's squash below crop_pct 1: a floor(size / crop_pct) square, then the centre crop
    cfg = DataConfig(img_size=32, crop_pct=0.8, crop_mode="squash")
    ops = build_eval_transform(cfg).transforms
    assert ops[0].size == [40, 40] and ops[1].size == (32, 32)


def test_crop_mode_is_checked() -> None:
    assert DataConfig().crop_mode == "center"
    with pytest.raises(UserError, match="data.crop_mode: 'stretch' is not one of center, squash"):
        build_eval_transform(DataConfig(crop_mode="stretch"))


# ------------------------------------------------------------------ predict/evaluate use the weights' own
@torch.no_grad()
def _random_atto(num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    model = convnext.create_model("convnext_atto", num_classes=num_classes, layer_scale_init_value=1.0)
    for p in model.parameters():  # far from init, so that the input preprocessing shows in the output
        p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def squash_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registry entry like convnext_tiny.fb_in22k_ft_in1k_384 (384 px, squash), served from a local file
    through the download path (file:// URL, torch.hub cache in tmp_path)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = _random_atto()
    src = tmp_path / "www" / "convnext_atto_squash384.pth"
    src.parent.mkdir()
    torch.save({"model": model.state_dict()}, src)
    entry = registry.WeightEntry(
        "convnext_atto.test_squash384", "convnext_atto", src.as_uri(), "in22k->in1k", 1000,
        preprocessing=Preprocessing(img_size=384, crop_pct=1.0, crop_mode="squash"),
    )  # fmt: skip
    registry.register(entry)
    yield entry.tag, model
    registry.REGISTRY.pop(entry.tag, None)


def _transform(mode: str) -> v2.Compose:
    resize = (384, 384) if mode == "squash" else 384
    ops = [v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if mode == "center":
        ops.append(v2.CenterCrop(384))
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def test_predict_uses_squash_for_384_weights(
    squash_tag, imagenet_sample: Path, capsys: pytest.CaptureFixture
) -> None:
    tag, model = squash_tag
    paths = photos(imagenet_sample, 2)
    assert main(["predict", *map(str, paths), "--weights", tag, "--json", "--topk", "3"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for path, pred in zip(paths, got):
        img = load_image(path)
        with torch.no_grad():
            probs = {m: model(_transform(m)(img)[None]).softmax(1)[0] for m in ("squash", "center")}
        top = probs["squash"].topk(3)
        assert [t["index"] for t in pred["top"]] == top.indices.tolist()
        assert [t["prob"] for t in pred["top"]] == pytest.approx(top.values.tolist(), abs=2e-6)
        assert (probs["squash"] - probs["center"]).abs().max() > 1e-3  # the test can tell them apart


def test_evaluate_uses_squash_for_384_weights(squash_tag, imagenet_sample: Path, tmp_path: Path) -> None:
    tag, model = squash_tag
    data = tmp_path / "val"
    paths = photos(imagenet_sample, 3)
    for p in paths:  # one wnid folder per photo
        (data / p.parent.name).mkdir(parents=True)
        shutil.copy(p, data / p.parent.name / p.name)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--weights", tag, "--data", str(data), "--split", "", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    from convnext.data import imagenet1k_wnids

    index = {w: i for i, w in enumerate(imagenet1k_wnids())}
    losses = {}
    for mode in ("squash", "center"):
        with torch.no_grad():
            x = torch.stack([_transform(mode)(load_image(p)) for p in paths])
            y = torch.tensor([index[p.parent.name] for p in paths])
            losses[mode] = torch.nn.functional.cross_entropy(model(x), y).item()
    assert metrics["loss"] == pytest.approx(losses["squash"], rel=1e-4)
    assert abs(losses["squash"] - losses["center"]) > 1e-3


def test_torchvision_layout_gets_torchvision_preset(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    with torch.device("meta"):
        shapes = tvm.convnext_tiny(weights=None).state_dict()
    path = tmp_path / "my_convnext_tiny.pth"  # any name: the layout says torchvision
    torch.save({k: torch.zeros(v.shape) for k, v in shapes.items()}, path)
    from convnext.inference import load_for_inference

    loaded = load_for_inference(str(path))
    assert loaded.info.format == "torchvision" and loaded.arch == "convnext_tiny"
    d = loaded.data
    assert (d.img_size, d.interpolation, d.crop_mode) == (224, "bilinear", "center")
    assert math.floor(round(224 / d.crop_pct, 6)) == 236
    assert convnext.resolve_data_config(str(path)) == registry.find_tag("convnext_tiny.tv_in1k").data_config()


def test_a_release_downloaded_by_hand_keeps_its_preset(tmp_path: Path) -> None:
    """The official README links convnext_tiny_22k_1k_384.pth: passed as a file, it still gets squash."""
    with torch.device("meta"):
        shapes = convnext.create_model("convnext_tiny").state_dict()
    path = tmp_path / "convnext_tiny_22k_1k_384.pth"
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in shapes.items()}}, path)
    from convnext.inference import load_for_inference

    d = load_for_inference(str(path)).data
    assert (d.img_size, d.crop_pct, d.crop_mode) == (384, 1.0, "squash")
    # and the preset survives a conversion (recorded in the file's metadata)
    dst = tmp_path / "mine.safetensors"
    assert main(["convert", str(path), str(dst)]) == 0
    assert load_for_inference(str(dst)).data.crop_mode == "squash"


# ------------------------------------------------------------------------- pretrained_cfg, timm-style API
def test_pretrained_cfg_resolve_data_config_create_transform(squash_tag, imagenet_sample: Path) -> None:
    tag, _ = squash_tag
    model = convnext.create_model(tag, pretrained=True)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 1.0
    assert cfg["tag"] == "test_squash384" and cfg["url"].startswith("file:") and cfg["num_classes"] == 1000
    assert cfg["license"] == "MIT" and cfg["interpolation"] == "bicubic"
    data = convnext.resolve_data_config(model)
    assert data == registry.find_tag(tag).data_config() == convnext.resolve_data_config(tag)
    img = load_image(photos(imagenet_sample, 1)[0])
    assert torch.equal(convnext.create_transform(data)(img), _transform("squash")(img))
    assert torch.equal(convnext.create_transform(model)(img), registry.find_tag(tag).transforms()(img))
    # fine-tuned on 5 classes: the classifier count is the model's, the preset the weights'
    assert convnext.create_model(tag, pretrained=True, num_classes=5).pretrained_cfg["num_classes"] == 5
    plain = convnext.create_model("convnext_atto", num_classes=3).pretrained_cfg
    assert plain["tag"] is None and plain["input_size"] == (3, 224, 224) and plain["num_classes"] == 3
    assert convnext.resolve_data_config(None, crop_pct=1.0)["crop_pct"] == 1.0
    with pytest.raises(UserError, match="unknown data config key"):
        convnext.resolve_data_config(model, size=3)


def test_import_convnext_is_lazy() -> None:
    code = (
        "import sys, convnext; print('torch' in sys.modules); "
        "convnext.create_model; print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["False", "True"], r.stdout + r.stderr


# ------------------------------------------------------------------------------------------- torch.hub
def test_hubconf_has_every_architecture_and_loads_locally(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "torchvision"]
    for arch in convnext.list_models():
        assert callable(getattr(hubconf, arch)), arch
    model = torch.hub.load(str(ROOT), "convnext_atto", source="local", num_classes=3)
    assert model.num_classes == 3 and model.pretrained_cfg["architecture"] == "convnext_atto"
    src = _random_atto(3)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    loaded = torch.hub.load(str(ROOT), "convnext_atto", source="local", pretrained=str(tmp_path / "w.pth"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), src.state_dict().values()))


def test_pretrained_cfg_carries_label_names(tmp_path: Path) -> None:
    """timm's ``label_names``: the checkpoint's classes, ImageNet-1k's for a nameless 1000-class head,
    None for random weights or a fresh classifier (its outputs mean nothing yet)."""
    named = tmp_path / "named.pth"
    model = convnext.create_model("convnext_atto", num_classes=3)
    torch.save({"model": model.state_dict(), "class_names": ["cat", "dog", "fox"]}, named)
    assert convnext.create_model("convnext_atto", pretrained=named).pretrained_cfg["label_names"] == [
        "cat", "dog", "fox",
    ]  # fmt: skip
    assert convnext.create_model("convnext_atto", pretrained=named, num_classes=5).pretrained_cfg[
        "label_names"
    ] is None  # fmt: skip
    bare = tmp_path / "in1k.pth"
    torch.save(convnext.create_model("convnext_atto").state_dict(), bare)
    names = convnext.create_model("convnext_atto", pretrained=bare).pretrained_cfg["label_names"]
    assert len(names) == 1000 and names[0] == "tench"
    assert convnext.create_model("convnext_atto").pretrained_cfg["label_names"] is None


# ------------------------------------------------------------------ one record, every dialect


def test_preprocessing_is_one_record_in_every_dialect() -> None:
    """timm's dict, the JSON of exported files and DataConfig are views of one Preprocessing: each goes
    there and back unchanged, and the registry, resolve_data_config and the defaults speak through it."""
    tv = registry.find_tag("convnext_tiny.tv_in1k").preprocessing
    assert isinstance(tv, Preprocessing) and tv.interpolation == "bilinear"
    assert Preprocessing.from_timm(tv.to_timm()) == tv
    assert Preprocessing.from_json(json.loads(json.dumps(tv.to_json()))) == tv  # lists become tuples
    assert Preprocessing.of(tv.apply(DataConfig(dataset="digits"))) == tv
    assert tv.apply(DataConfig(dataset="digits")).dataset == "digits"  # the rest of the recipe stays
    assert convnext.resolve_data_config("convnext_tiny.tv_in1k") == tv.to_timm()
    # the paper's defaults are DataConfig's, in one place
    assert Preprocessing.of(DataConfig()) == Preprocessing()
    assert convnext.resolve_data_config(None) == Preprocessing().to_timm()
    assert Preprocessing.from_timm({"input_size": 64}).img_size == 64
    with pytest.raises(UserError, match="not square"):
        Preprocessing.from_timm({"input_size": (3, 224, 256)})


def test_preprocessing_reads_json_written_before_it() -> None:
    """An exported file's "preprocessing" as the code before this record wrote it (no crop_mode before
    squash existed; keys of newer writers) still reads, the missing key keeping the base's value."""
    old = {"img_size": 48, "crop_pct": 0.9, "interpolation": "bilinear", "mean": [0.5] * 3,
           "std": [0.25] * 3, "layout": "NCHW", "input": "input", "output": "logits"}  # fmt: skip
    p = Preprocessing.from_json(old)
    assert (p.img_size, p.crop_pct, p.crop_mode, p.interpolation) == (48, 0.9, "center", "bilinear")
    assert p.mean == (0.5,) * 3 and p.std == (0.25,) * 3
    assert Preprocessing.from_json({}, base=p) == p


def test_exported_metadata_written_before_the_record_reads_and_writes_the_same() -> None:
    """An exported file's metadata as the code before ``Preprocessing`` wrote it (its "preprocessing"
    wins over its "data" section) loads with the same settings and is written back the same; a file from
    before crop_mode existed reads as "center"."""
    from convnext.inference.backends import ExportMeta

    pre = {"img_size": 48, "crop_pct": 0.9, "crop_mode": "squash", "interpolation": "bilinear",
           "mean": [0.5, 0.5, 0.5], "std": [0.229, 0.224, 0.225], "layout": "NCHW", "input": "input",
           "output": "logits"}  # fmt: skip
    old = {"convnext_export": 1, "arch": "convnext_atto", "num_classes": 3, "class_names": ["a", "b", "c"],
           "format": "onnx", "precision": "fp32", "inference_precision": None, "preprocessing": pre,
           "dataset": {"dataset": "digits", "root": "", "train_split": "train", "val_split": "val",
                       "class_list": None, "val_fraction": 0.2, "split_seed": 0},
           "data": {"dataset": "digits", "img_size": 224, "crop_pct": 0.875, "workers": 0},
           "model_options": {}, "source": "", "run_dir": None}  # fmt: skip
    meta = ExportMeta.from_json(json.dumps(old), "old.onnx")
    assert Preprocessing.of(meta.data) == Preprocessing(48, 0.9, "squash", "bilinear", (0.5,) * 3)
    assert meta.data.dataset == "digits" and meta.has_dataset
    assert json.loads(meta.to_json())["preprocessing"] == pre
    older = {**old, "preprocessing": {k: v for k, v in pre.items() if k != "crop_mode"}}
    del older["data"]
    back = ExportMeta.from_json(json.dumps(older), "older.onnx")
    assert (back.data.crop_mode, back.data.img_size, back.data.mean) == ("center", 48, (0.5,) * 3)
