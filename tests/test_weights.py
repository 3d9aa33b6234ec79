"""Checkpoints from every ecosystem load safely, with one clear sentence for anything wrong.

Real files (torch.save, safetensors, transformers' save_pretrained), a real HTTP server on 127.0.0.1 for
downloads, and a real malicious pickle: nothing is mocked.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import convnext
from convnext.cli.main import main
from convnext.engine.checkpoint import FORMAT, train_state
from convnext.errors import UserError
from convnext.weights import registry
from convnext.weights.load import load_checkpoint, prepare, read_checkpoint

ARCH = "convnext_atto"
N_CLASSES = 7
CLASSES = [f"class_{i}" for i in range(N_CLASSES)]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    torch.manual_seed(1)
    return convnext.create_model(ARCH, num_classes=N_CLASSES).eval()


@pytest.fixture(scope="module")
def official(source: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("official") / "convnext_atto_official.pth"
    torch.save({"model": source.state_dict(), "epoch": 299, "args": {"lr": 4e-3}}, path)
    return path


# --------------------------------------------------------------------------------------- formats


def test_official_format_loads_exactly(source: torch.nn.Module, official: Path) -> None:
    model = convnext.create_model(ARCH, pretrained=str(official))
    assert model.num_classes == N_CLASSES  # taken from the checkpoint
    assert same_weights(model.state_dict(), source.state_dict())
    assert model.pretrained_info.format == "official" and model.pretrained_info.arch == ARCH


def test_official_training_checkpoint_ema(source: torch.nn.Module, tmp_path: Path) -> None:
    ema = {k: v + 1 for k, v in source.state_dict().items()}
    path = tmp_path / "checkpoint-best.pth"
    args = argparse.Namespace(model=ARCH, lr=4e-3, model_ema=True)  # the official main.py saves its args
    torch.save(
        {"model": source.state_dict(), "model_ema": ema, "optimizer": {}, "epoch": 3, "args": args}, path
    )
    model = convnext.create_model(ARCH, num_classes=N_CLASSES)
    convnext.load_checkpoint(model, path)  # the top-level re-export
    assert same_weights(model.state_dict(), source.state_dict())
    info = load_checkpoint(model, path, ema=True)
    assert info.ema and same_weights(model.state_dict(), ema)

    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(UserError, match="has no EMA weights"):
        load_checkpoint(model, path, ema=True)


def test_ddp_module_prefix(source: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    model = convnext.create_model(ARCH, pretrained=str(path))
    assert same_weights(model.state_dict(), source.state_dict())


def test_our_training_checkpoint(source: torch.nn.Module, tmp_path: Path) -> None:
    opt = torch.optim.AdamW(source.parameters())
    ema = {k: v * 2 for k, v in source.state_dict().items()}
    ckpt = train_state(  # the schema `convnext train` writes
        arch=ARCH,
        model=source.state_dict(),
        model_ema=ema,
        optimizer=opt.state_dict(),
        epoch=3,
        step=120,
        rng=[{"torch": torch.get_rng_state()}],
        config={"model": {"name": ARCH}, "lr": 1e-3},
        class_names=CLASSES,
        metrics={"top1": 12.5},
    )
    path = tmp_path / "last.pth"
    torch.save(ckpt, path)
    model = convnext.create_model(ARCH, pretrained=str(path))
    info = model.pretrained_info
    assert info.format == FORMAT and info.class_names == CLASSES and info.arch == ARCH
    assert model.num_classes == N_CLASSES and same_weights(model.state_dict(), source.state_dict())
    assert info.metadata["epoch"] == 3
    assert same_weights(prepare(path, ema=True).state_dict, ema)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    tr = pytest.importorskip("transformers")
    cfg = tr.ConvNextV2Config(
        depths=[2, 2, 6, 2],
        hidden_sizes=[40, 80, 160, 320],
        num_labels=N_CLASSES,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    torch.manual_seed(2)
    hf = tr.ConvNextV2ForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))  # GRN params away from zero, so a wrong mapping shows
    folder = tmp_path_factory.mktemp("hf") / "convnextv2-atto"
    hf.save_pretrained(folder)
    return folder, hf


@torch.no_grad()
def test_hf_folder_safetensors_and_bin(hf_folder: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, hf = hf_folder
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    x = torch.randn(1, 3, 64, 64)
    expected = hf(pixel_values=x).logits

    model = convnext.create_model("convnextv2_atto", pretrained=str(folder)).eval()
    assert model.pretrained_info.class_names == CLASSES  # from config.json's id2label
    assert model.pretrained_info.format == "transformers-v2"
    assert (model(x) - expected).abs().max() < 1e-4

    model = convnext.create_model("convnextv2_atto", pretrained=str(folder / "model.safetensors")).eval()
    assert (model(x) - expected).abs().max() < 1e-4

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    torch.save(hf.state_dict(), bin_folder / "pytorch_model.bin")
    (bin_folder / "config.json").write_text((folder / "config.json").read_text())
    for src in (bin_folder, bin_folder / "pytorch_model.bin"):
        model = convnext.create_model("convnextv2_atto", pretrained=str(src)).eval()
        assert (model(x) - expected).abs().max() < 1e-4


def test_fine_tuning_drops_the_classifier(
    source: torch.nn.Module, official: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="convnext.weights"):
        model = convnext.create_model(ARCH, pretrained=str(official), num_classes=3)
    assert model.num_classes == 3 and model.head.out_features == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "7-class classifier" in warnings[0] and "starts fresh" in warnings[0]
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    assert model.pretrained_info.dropped_classifier and model.pretrained_info.class_names is None


def test_missing_and_unexpected_keys_are_named(source: torch.nn.Module, tmp_path: Path) -> None:
    sd = dict(source.state_dict())
    del sd["stages.1.0.pwconv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    model = convnext.create_model(ARCH, num_classes=N_CLASSES)
    with pytest.raises(UserError) as e:
        load_checkpoint(model, path)
    msg = str(e.value)
    assert "1 missing keys (stages.1.0.pwconv1.weight)" in msg and "1 unexpected keys (extra.weight)" in msg
    assert str(path) in msg and "\n" not in msg
    info = load_checkpoint(model, path, strict=False)
    assert info.missing == ["stages.1.0.pwconv1.weight"] and info.unexpected == ["extra.weight"]


# ------------------------------------------------------------------------------- bad checkpoints


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker writes
        return (os.system, (f"touch {self.marker}",))


def test_another_variants_weights(official: Path) -> None:
    model = convnext.create_model("convnext_femto", num_classes=N_CLASSES)
    with pytest.raises(UserError, match=r"holds convnext_atto weights but the model is convnext_femto"):
        load_checkpoint(model, official)


def test_tiny_weights_into_small(tmp_path: Path) -> None:
    with torch.device("meta"):
        tiny = convnext.create_model("convnext_tiny")
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: torch.zeros(v.shape) for k, v in tiny.state_dict().items()}, path)
    with pytest.raises(UserError, match="holds convnext_tiny weights but the model is convnext_small"):
        convnext.create_model("convnext_small", pretrained=str(path))


def test_bad_files_are_one_sentence(official: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = official.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    expected = {
        "truncated.pth": "is truncated or corrupt",
        "random.pth": "is not a PyTorch or safetensors checkpoint",
        "empty.pth": "is empty (0 bytes)",
        "truncated.safetensors": "is not a readable safetensors file",
    }
    for name, sentence in expected.items():
        with pytest.raises(UserError) as e:
            convnext.create_model(ARCH, pretrained=str(tmp_path / name))
        assert sentence in str(e.value) and name in str(e.value), str(e.value)
        # the same through the CLI: exit code 2 and a single line, no traceback
        assert main(["convert", str(tmp_path / name), str(tmp_path / "out.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("convnext convert: error: ") and sentence in err
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="neither a file nor a known weights tag"):
        convnext.create_model(ARCH, pretrained="convnext_atto.no_such_tag")


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_run(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    if kind == "torch.save":
        torch.save({"model": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Evil(marker)}, protocol=4))
    with pytest.raises(UserError) as e:
        convnext.create_model(ARCH, pretrained=str(path))
    msg = str(e.value)
    assert "refused" in msg and "not a plain weights file" in msg and "system" in msg and str(path) in msg
    assert not marker.exists()


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save(Evil(marker), tmp_path / "evil.pth")
    exe = Path(sys.executable).parent / "convnext"
    r = subprocess.run(
        [str(exe), "convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convnext convert: error: refused"), r.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------------------------------- convert


def test_convert_timm_to_safetensors_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    ref = timm.create_model("convnext_atto", pretrained=False, num_classes=N_CLASSES).eval()
    src = tmp_path / "timm_atto.pth"
    torch.save(ref.state_dict(), src)  # conv_mlp 1x1-conv weights: (out, in, 1, 1)
    dst = tmp_path / "atto.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0  # no --model: read from the shapes
    assert "convnext_atto" in capsys.readouterr().out

    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "convnext_atto" and meta["num_classes"] == str(N_CLASSES)
    model = convnext.create_model("convnext_atto", pretrained=str(dst)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() < 1e-4

    # .pth output is the official layout {"model": state_dict, ...}; existing files are kept
    pth = tmp_path / "atto.pth"
    assert main(["convert", str(dst), str(pth)]) == 0
    raw = torch.load(pth, weights_only=True)
    assert raw["arch"] == "convnext_atto" and same_weights(raw["model"], model.state_dict())
    assert main(["convert", str(dst), str(pth)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_keeps_class_names_and_ema(source: torch.nn.Module, tmp_path: Path) -> None:
    ema = {k: v * 2 for k, v in source.state_dict().items()}
    src = tmp_path / "last.pth"
    torch.save(train_state(arch=ARCH, model=source.state_dict(), model_ema=ema, class_names=CLASSES), src)
    dst = tmp_path / "ema.safetensors"
    assert main(["convert", str(src), str(dst), "--ema"]) == 0
    model = convnext.create_model(ARCH, pretrained=str(dst))
    assert model.pretrained_info.class_names == CLASSES and same_weights(model.state_dict(), ema)


def test_convert_asks_for_model_when_shapes_are_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from convnext.models import ConvNeXt

    odd = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=2)
    torch.save(odd.state_dict(), tmp_path / "odd.pth")
    assert main(["convert", str(tmp_path / "odd.pth"), str(tmp_path / "odd.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convnext convert: error: cannot tell which architecture") and "--model" in err
    # --model of the weights' family rebuilds their own depths and widths (a run trained with
    # model.options), and the file written loads back as it was; another family does not fit
    assert main(["convert", str(tmp_path / "odd.pth"), str(tmp_path / "o.safetensors"), "--model", ARCH]) == 0
    again = convnext.create_model(ARCH, pretrained=str(tmp_path / "o.safetensors"))
    assert same_weights(again.state_dict(), odd.state_dict())
    v2 = tmp_path / "v2.safetensors"
    argv = ["convert", str(tmp_path / "odd.pth"), str(v2), "--model", "convnextv2_atto"]
    assert main(argv) == 2
    assert "does not fit convnextv2_atto" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ downloads


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    _CountingHandler.hits = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_cache_and_offline(
    server, official: Path, source: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpd, root = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    data = official.read_bytes()
    name = f"convnext_atto_test-{hashlib.sha256(data).hexdigest()[:10]}.pth"  # torch.hub check_hash naming
    (root / name).write_bytes(data)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    entry = registry.WeightEntry("convnext_atto.test_http", ARCH, url, "in1k", N_CLASSES)
    registry.register(entry)
    try:
        model = convnext.create_model("convnext_atto.test_http", pretrained=True)
        assert same_weights(model.state_dict(), source.state_dict())
        assert model.pretrained_info.entry == entry
        cached = tmp_path / "torch_home" / "hub" / "checkpoints" / name
        assert cached.is_file() and _CountingHandler.hits == [f"/{name}"]

        httpd.shutdown()  # offline from now on: the cache serves the tag and the URL
        httpd.server_close()
        model = convnext.create_model("convnext_atto.test_http", pretrained=True)
        model = convnext.create_model(ARCH, pretrained=url)
        assert same_weights(model.state_dict(), source.state_dict()) and len(_CountingHandler.hits) == 1

        missing = url.replace(name, "not_cached.pth")
        with pytest.raises(UserError) as e:
            convnext.create_model(ARCH, pretrained=missing)
        msg = str(e.value)
        assert (
            msg.startswith(f"could not download {missing}") and "download it by hand and pass the file" in msg
        )
    finally:
        registry.REGISTRY.pop("convnext_atto.test_http", None)


def test_download_with_wrong_hash_is_refused(server, official: Path, tmp_path: Path, monkeypatch) -> None:
    httpd, root = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    name = "convnext_atto_test-0123456789.pth"  # hash in the name does not match the content
    (root / name).write_bytes(official.read_bytes())
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    with pytest.raises(UserError, match="is corrupt"):
        convnext.create_model(ARCH, pretrained=url)
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints" / name).exists()


# ------------------------------------------------------------------------------------- registry


def test_registry() -> None:
    tags = registry.list_tags()
    for tag in ("convnext_tiny.fb_in1k", "convnext_tiny.fb_in22k", "convnext_base.fb_in22k_ft_in1k_384",
                "convnextv2_tiny.fcmae_ft_in1k", "convnextv2_huge.fcmae_ft_in22k_in1k_512",
                "convnextv2_atto.fcmae", "convnext_isotropic_small.fb_in1k"):  # fmt: skip
        assert tag in tags
    assert registry.find_tag("convnext_xlarge.fb_in22k").num_classes == 21841
    assert registry.find_tag("convnext_tiny.fb_in1k").top1 == 82.1
    assert registry.find_tag("convnextv2_huge.fcmae_ft_in22k_in1k_512").input_size == 512
    assert registry.find_tag("/some/file.pth") is None
    assert registry.default_tag("convnext_tiny") == "convnext_tiny.fb_in1k"
    assert registry.default_tag("convnext_xlarge") == "convnext_xlarge.fb_in22k_ft_in1k"
    assert registry.default_tag("convnextv2_atto") == "convnextv2_atto.fcmae_ft_in1k"
    archs = set(convnext.list_models())
    for e in registry.REGISTRY.values():
        assert e.arch in archs and e.tag.startswith(e.arch + ".")
        assert e.url.startswith(("https://", "hf-hub:timm/"))  # timm's Hub repos: in12k, CLIP, DINOv3
    json.dumps([e.as_dict() for e in registry.REGISTRY.values()])  # plain data, printable by a CLI
    # `convnext models --weights --json` keeps its flat layout: the eval settings beside the other fields
    row = registry.find_tag("convnext_base.fb_in1k_384").as_dict()
    assert (row["input_size"], row["crop_pct"], row["crop_mode"], row["interpolation"]) == (
        384, 1.0, "squash", "bicubic"
    )  # fmt: skip


# ----------------------------------------------------------------------- shapes, backbones, FCMAE


@pytest.mark.parametrize("arch", convnext.list_models())
def test_arch_is_read_from_the_shapes(arch: str) -> None:
    from convnext.weights.formats import infer_arch

    with torch.device("meta"):  # shapes only, no memory, no init
        model = convnext.create_model(arch)
    assert infer_arch(model.state_dict()) == arch


def test_features_only_backbone_takes_classification_weights(source: torch.nn.Module, official: Path) -> None:
    backbone = convnext.create_model(ARCH, pretrained=str(official), features_only=True)
    for k, v in backbone.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(v, source.state_dict()[k]), k
    assert len(backbone(torch.randn(1, 3, 64, 64))) == 4


def _to_sparse_fcmae(dense: dict) -> dict:
    """Our dense V2 weights in the layout of the official FCMAE pre-training checkpoints (MinkowskiEngine
    encoder under ``encoder.``, plus decoder keys), by inverting the official repo's remap_checkpoint_keys."""
    out = {"mask_token": torch.zeros(1, 512, 1, 1), "proj.weight": torch.zeros(512, 320, 1, 1)}
    out["decoder.0.dwconv.weight"] = torch.zeros(512, 1, 7, 7)
    for k, v in dense.items():
        if k.startswith(("head.", "norm.")):
            continue  # FCMAE has neither
        stage_conv = k.startswith("downsample_layers.") and not k.startswith("downsample_layers.0.")
        if (stage_conv and k.endswith(".1.weight")) or k.endswith("dwconv.weight"):
            cout, cin, ks, _ = v.shape
            if k.endswith("dwconv.weight"):  # depthwise: (k*k, C)
                v = v.transpose(3, 2).reshape(cout, ks * ks).permute(1, 0)
            else:  # (k*k, in, out)
                v = v.transpose(3, 2).reshape(cout, cin, ks * ks).permute(2, 1, 0)
            k = k[: -len(".weight")] + ".kernel"
        elif (stage_conv and k.endswith(".1.bias")) or k.endswith("dwconv.bias"):
            v = v.reshape(1, -1)
        elif stage_conv and ".0." in k[len("downsample_layers.1") :]:
            k = k.replace(".0.weight", ".0.ln.weight").replace(".0.bias", ".0.ln.bias")
        elif ".norm." in k:
            k = k.replace(".norm.", ".norm.ln.")
        elif ".pwconv" in k:
            k = k.replace(".weight", ".linear.weight").replace(".bias", ".linear.bias")
        elif ".grn." in k:
            v = v.reshape(1, -1)
        out["encoder." + k] = v
    return out


def test_fcmae_pretraining_checkpoint_is_a_backbone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(4)
    dense = convnext.create_model("convnextv2_atto").state_dict()
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": _to_sparse_fcmae(dense)}, path)
    with caplog.at_level(logging.WARNING, logger="convnext.weights"):
        model = convnext.create_model("convnextv2_atto", pretrained=str(path))
    assert "backbone without classifier" in caplog.text
    assert model.pretrained_info.format == "fcmae" and model.num_classes == 0
    for k, v in model.state_dict().items():
        if not k.startswith("norm."):
            assert torch.equal(v, dense[k]), k
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 320)  # pooled features, ready for a new head
    assert convnext.create_model("convnextv2_atto", pretrained=str(path), num_classes=5).num_classes == 5


@torch.no_grad()
@pytest.mark.parametrize("v2", [False, True], ids=["ConvNextModel", "ConvNextV2Model"])
def test_hf_bare_backbone(v2: bool) -> None:
    tr = pytest.importorskip("transformers")
    shape = {"depths": [2, 2, 6, 2], "hidden_sizes": [40, 80, 160, 320]}
    hf = (
        tr.ConvNextV2Model(tr.ConvNextV2Config(**shape))
        if v2
        else tr.ConvNextModel(tr.ConvNextConfig(**shape))
    )
    for p in hf.parameters():
        p.add_(0.1 * torch.randn_like(p))
    ours = convnext.create_model("convnextv2_atto" if v2 else ARCH, pretrained=hf.eval().state_dict()).eval()
    assert ours.num_classes == 0
    x = torch.randn(1, 3, 64, 96)
    assert (ours(x) - hf(pixel_values=x).pooler_output).abs().max() < 1e-4


def test_imagenet_tag_names_its_classes(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    httpd, root = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with torch.device("meta"):
        shapes = convnext.create_model(ARCH).state_dict()
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in shapes.items()}}, root / "in1k.pth")
    url = f"http://127.0.0.1:{httpd.server_address[1]}/in1k.pth"
    registry.register(registry.WeightEntry("convnext_atto.test_in1k", ARCH, url, "in1k", 1000))
    try:
        info = prepare("convnext_atto.test_in1k").info
    finally:
        registry.REGISTRY.pop("convnext_atto.test_in1k", None)
    assert info.num_classes == 1000 and info.class_names[0] == "tench" and len(info.class_names) == 1000


def test_shape_mismatch_is_named(official: Path) -> None:
    with pytest.raises(UserError) as e:
        convnext.create_model(ARCH, pretrained=str(official), in_chans=1)
    expected = "downsample_layers.0.0.weight: checkpoint (40, 3, 4, 4) vs model (40, 1, 4, 4)"
    assert f"1 shape mismatches ({expected})" in str(e.value)


def test_any_random_bytes_are_one_sentence(tmp_path: Path) -> None:
    """Garbage drives the weights-only unpickler into many exception types; each must become a UserError."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        path = tmp_path / f"garbage{seed}.pth"
        path.write_bytes(rng.randbytes(rng.choice([1, 7, 64, 1000])))
        with pytest.raises(UserError, match=str(path)):
            read_checkpoint(path)


# ------------------------------------------------------------------------- values that predict nonsense


@pytest.mark.parametrize(
    ("name", "poison", "sentence"),
    [
        (
            "nan",
            lambda t: t.view(-1).index_fill(0, torch.tensor([3]), float("nan")),
            "holds 1 NaN/inf value(s)",
        ),
        ("inf", lambda t: t.view(-1).index_fill(0, torch.tensor([0, 5]), -float("inf")), "holds 2 NaN/inf"),
        ("int64", lambda t: t.long(), "is int64, not floating point"),
        ("bool", lambda t: t > 0, "is bool, not floating point"),
    ],
)
def test_bad_values_are_refused_on_every_path(
    name: str, poison, sentence: str, source: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    key = "stages.1.0.pwconv1.weight"
    sd[key] = poison(sd[key])
    path = tmp_path / f"{name}.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(UserError) as e:  # create_model(pretrained=...), and so train's model.pretrained
        convnext.create_model(ARCH, pretrained=str(path))
    assert key in str(e.value) and sentence in str(e.value), str(e.value)
    dst = tmp_path / "out.safetensors"
    img = tmp_path / "img.png"
    from torchvision.io import write_png

    write_png(torch.zeros(3, 40, 40, dtype=torch.uint8), str(img))
    for argv in (
        ["convert", str(path), str(dst)],
        ["convert", str(path), str(tmp_path / "hf"), "--to", "hf"],
        ["predict", str(img), "--weights", str(path)],
        ["evaluate", "--weights", str(path), "--data", str(tmp_path)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and key in err and sentence in err, err
    assert not dst.exists() and not (tmp_path / "hf").exists()


def test_nan_check_reads_in_place(source: torch.nn.Module) -> None:
    """The check must not copy the weights (a 2.6 GB checkpoint): the state dict comes back untouched,
    each tensor the very same object."""
    from convnext.weights.containers import check_tensors

    sd = source.state_dict()
    ptrs = {k: v.data_ptr() for k, v in sd.items()}
    check_tensors(sd, "x")
    huge = torch.full((4,), 3e38)  # a finite tensor whose sum overflows to inf: not a false alarm
    check_tensors({"w": huge}, "x")
    assert {k: v.data_ptr() for k, v in sd.items()} == ptrs


# ------------------------------------------------------------------------------- oversized or lying files


def _rewrite_zip(src: Path, dst: Path, patch) -> None:
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, patch(info.filename, data))


def _patch_pickle_int(data: bytes, old: int, new: int, nth: int = 0) -> bytes:
    """Replace the nth BININT1/BININT2 ``old`` in a pickle by ``new`` (same opcode width)."""
    import pickletools

    hits = [
        pos for op, arg, pos in pickletools.genops(data) if op.name in ("BININT1", "BININT2") and arg == old
    ]
    pos = hits[nth]
    width = 1 if data[pos : pos + 1] == b"K" else 2
    return data[: pos + 1] + new.to_bytes(width, "little") + data[pos + 1 + width :]


def test_lying_archives_are_one_line(tmp_path: Path) -> None:
    base = tmp_path / "base.pth"
    torch.save({"w": torch.zeros(300)}, base)  # storage numel 300 (BININT2), tensor size (300,)
    # the pickle's storage claims 900 elements while its record holds 300: torch's mmap would read past
    # the record into the rest of the archive without a word
    big_storage = tmp_path / "big_storage.pth"
    _rewrite_zip(
        base, big_storage, lambda n, d: _patch_pickle_int(d, 300, 900, 0) if n.endswith(".pkl") else d
    )
    with pytest.raises(UserError, match=r"storage .*data/0 declares 3600 bytes but the archive holds 1200"):
        read_checkpoint(big_storage)
    # a tensor larger than its storage: torch's RuntimeError becomes one sentence
    big_tensor = tmp_path / "big_tensor.pth"
    _rewrite_zip(
        base, big_tensor, lambda n, d: _patch_pickle_int(d, 300, 600, 1) if n.endswith(".pkl") else d
    )
    with pytest.raises(UserError) as e:
        read_checkpoint(big_tensor)
    assert "is corrupt: torch cannot rebuild its tensors" in str(e.value) and "\n" not in str(e.value)
    # a central directory claiming a record bigger than the whole file
    data = bytearray(base.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the last record's central directory header
    data[cd + 24 : cd + 28] = (2**31).to_bytes(4, "little")  # its uncompressed size
    liar = tmp_path / "liar.pth"
    liar.write_bytes(bytes(data))
    with pytest.raises(UserError, match="more than the whole file"):
        read_checkpoint(liar)


def _write_zip(path: Path, members: list[tuple[str, int, bytes, int, int]]) -> None:
    """A zip archive from (name, method, data as stored, crc32, uncompressed size) members, written by
    hand: zipfile cannot store data compressed elsewhere."""
    import struct

    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        n = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data),
                               size, len(n), 0, 0, 0, 0, 0, len(out)) + n  # fmt: skip
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(n), 0)
        out += n + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def test_pickle_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """A torch.save archive whose data.pkl inflates to 1 GiB: refused from the zip directory, and the
    process grows by little (torch itself would inflate it whole: 3.8 GB RSS)."""
    import zipfile
    import zlib

    torch.save({"w": torch.zeros(3)}, tmp_path / "base.pth")
    chunk, n_chunks = bytes(16 << 20), 64
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    # a full flush makes each chunk's deflate segment independent: 64 copies inflate to 64 chunks
    segment = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)
    deflated = segment * n_chunks + z.flush()
    crc = 0
    for _ in range(n_chunks):
        crc = zlib.crc32(chunk, crc)
    members = []
    with zipfile.ZipFile(tmp_path / "base.pth") as zin:
        for info in zin.infolist():
            if info.filename.endswith("data.pkl"):
                members.append((info.filename, zipfile.ZIP_DEFLATED, deflated, crc, len(chunk) * n_chunks))
            else:
                members.append((info.filename, zipfile.ZIP_STORED, zin.read(info), info.CRC, info.file_size))
    bomb = tmp_path / "bomb.pth"
    _write_zip(bomb, members)
    assert bomb.stat().st_size < 1 << 20  # under a MiB on disk
    with zipfile.ZipFile(bomb) as z:  # a valid archive, honest about its size
        assert z.getinfo("base/data.pkl").file_size == 1 << 30
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from convnext.errors import UserError\n"
        "from convnext.weights.files import read_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_file(Path(sys.argv[1]))\n"
        "except UserError as e:\n"
        "    print(e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=300)
    message, grown_kib = r.stdout.strip().splitlines()
    assert "inflates to 1024 MiB" in message and "refused" in message, r.stdout + r.stderr
    assert int(grown_kib) < 64 * 1024, f"RSS grew by {int(grown_kib) // 1024} MiB"


# ----------------------------------------------------------------- the original project's *.pth.tar files


@pytest.fixture
def seed_checkpoint(source: torch.nn.Module, tmp_path: Path) -> tuple[Path, dict]:
    """A checkpoint as the original ConvNext-PyTorch project's train.py saves it: the model's state_dict
    (official-style names), the EMA model (torch.optim.swa_utils.AveragedModel: ``module.`` prefix and an
    int64 ``n_averaged``), best_acc1, the optimizer and scheduler states, in a ``.pth.tar``."""
    from torch.optim.swa_utils import AveragedModel

    ema_model = AveragedModel(source)
    with torch.no_grad():
        for p in ema_model.module.parameters():
            p.mul_(0.5)
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()  # real optimizer state (momentum buffers; integer "step" counters in other optimizers)
    opt.zero_grad()
    sched = torch.optim.lr_scheduler.StepLR(opt, 30)
    path = tmp_path / "ConvNext_atto-ImageNet_1K-0123abcd.pth.tar"
    torch.save(
        {
            "epoch": 90,
            "best_acc1": torch.tensor(81.25),
            "state_dict": source.state_dict(),
            "ema_state_dict": ema_model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        path,
    )
    return path, {k: v for k, v in ema_model.module.state_dict().items()}


def test_seed_project_checkpoint(
    seed_checkpoint: tuple[Path, dict], source: torch.nn.Module, tmp_path: Path
) -> None:
    path, ema = seed_checkpoint
    model = convnext.create_model(ARCH, pretrained=str(path))
    assert same_weights(model.state_dict(), source.state_dict())
    info = model.pretrained_info
    assert info.format == "official" and info.metadata["best_acc1"] == 81.25 and info.metadata["epoch"] == 90
    assert same_weights(prepare(path, ema=True).state_dict, ema)  # --ema picks ema_state_dict
    dst = tmp_path / "ema.safetensors"
    assert main(["convert", str(path), str(dst), "--ema"]) == 0
    assert same_weights(convnext.create_model(ARCH, pretrained=str(dst)).state_dict(), ema)


# ------------------------------------------------------------------------------- run folders as a source


def _run_folder(tmp_path: Path, model: torch.nn.Module, **model_section) -> Path:
    from convnext.recipe import TrainConfig, dump_yaml, to_dict

    cfg = TrainConfig()
    cfg.model.name = ARCH
    for k, v in model_section.items():
        setattr(cfg.model, k, v)
    cfg.data.img_size, cfg.data.crop_pct, cfg.data.interpolation = 64, 1.0, "bilinear"
    run = tmp_path / "runs" / "pets"
    (run / "checkpoints").mkdir(parents=True)
    dump_yaml(cfg, run / "config.yaml")
    ckpt = train_state(arch=ARCH, model=model.state_dict(), config=to_dict(cfg), class_names=CLASSES, epoch=3)
    torch.save(ckpt, run / "checkpoints" / "best.pth")
    return run


def test_run_folder_is_a_weights_source(tmp_path: Path) -> None:
    torch.manual_seed(5)
    trained = convnext.create_model(ARCH, num_classes=N_CLASSES, layer_scale_init_value=0.0)  # no gamma
    run = _run_folder(tmp_path, trained, layer_scale_init_value=0.0)
    # the run's model options (here: no layer scale) rebuild the same model
    model = convnext.create_model(ARCH, pretrained=str(run))
    assert same_weights(model.state_dict(), trained.state_dict())
    assert model.pretrained_info.class_names == CLASSES
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 64, 64) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert convnext.resolve_data_config(str(run))["input_size"] == (3, 64, 64)
    dst = tmp_path / "pets.safetensors"
    assert main(["convert", str(run), str(dst)]) == 0
    again = convnext.create_model(ARCH, pretrained=str(dst))
    assert (
        same_weights(again.state_dict(), trained.state_dict())
        and again.pretrained_info.class_names == CLASSES
    )
    assert again.pretrained_cfg["input_size"] == (3, 64, 64)  # the eval settings travel with the file


@pytest.mark.parametrize("other", ["convnext_isotropic_small", "convnextv2_atto", "convnext_femto"])
def test_model_naming_another_architecture_is_one_sentence(
    other: str, source: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run_folder(tmp_path, source, options={"depths": [2, 2, 6, 2]})  # an option isotropic lacks
    img = tmp_path / "img.png"
    from torchvision.io import write_png

    write_png(torch.zeros(3, 40, 40, dtype=torch.uint8), str(img))
    for argv in (
        ["predict", str(img), "--weights", str(run), "--model", other],
        ["evaluate", "--weights", str(run), "--model", other],
        ["convert", str(run), str(tmp_path / "o.safetensors"), "--model", other],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--model {other}" in err and "holds convnext_atto" in err, err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("convnext_atto", {"layer_scale_init_value": 0.0}),  # V1 without its default layer scale
        ("convnextv2_atto", {"layer_scale_init_value": 1e-6}),  # V2 (GRN) with one, as timm allows
        ("convnext_isotropic_small", {"depth": 2, "dim": 32, "layer_scale_init_value": 1e-6}),
    ],
)
def test_weights_whose_layer_scale_differs_from_the_familys_default_load_by_name(
    arch: str, options: dict, tmp_path: Path
) -> None:
    # The family's default (models.factory) against what the weights hold, GRN's own gamma not counted.
    src = convnext.create_model(arch, num_classes=3, **options).eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    loaded = convnext.create_model(arch, num_classes=3, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))
