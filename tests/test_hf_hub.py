"""Weights from the Hugging Face Hub (#21): ``hf-hub:ORG/NAME[@REVISION]`` through huggingface_hub's cache.

A tiny Hub on 127.0.0.1 (the two routes ``hf_hub_download`` asks: HEAD and GET of
``/ORG/NAME/resolve/REVISION/FILE``, with the Hub's X-Repo-Commit / ETag / X-Error-Code headers) serves a
transformers ConvNext and ConvNextV2 repo (save_pretrained + ConvNextImageProcessor) and a timm repo
(timm's save_for_hf), each with random weights and layer scale. One subprocess downloads them with
HF_ENDPOINT / HF_HUB_CACHE set, as a user's first run would; everything after runs offline from that
cache: logits equal to transformers' / timm's, class names and preprocessing from the repo, revisions, the
CLI with HF_HUB_OFFLINE=1, and each failure as one sentence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from PIL import Image
from torch import nn

import convnext
from convnext.cli.main import main
from convnext.errors import UserError

tr = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
hub_constants = pytest.importorskip("huggingface_hub.constants")

DEPTHS, SIZES = [2, 2, 6, 2], [40, 80, 160, 320]  # convnext_atto / convnextv2_atto
HF_NAMES = ["cat", "dog", "fox"]
TIMM_NAMES = ["ant", "bee", "cow"]
MAIN, V1 = "a" * 40, "b" * 40  # commits: main, and the one tag v1 points at
TIMM_PRE = {"input_size": (3, 48, 48), "crop_pct": 0.75, "interpolation": "bilinear",
            "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}  # fmt: skip


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Values of a sensible scale everywhere (layer scale and GRN included), so a dropped op shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = math.prod(p.shape[1:])
            if p.ndim >= 2 and fan_in > 1:
                p.uniform_(-math.sqrt(3 / fan_in), math.sqrt(3 / fan_in))
            elif name.endswith("weight") and p.ndim == 1:
                p.uniform_(0.8, 1.2)
            else:
                p.uniform_(-0.3, 0.3)
    return model.eval()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _transformers_repo(tmp: Path, v2: bool, seed: int, names: list[str]) -> tuple[nn.Module, dict]:
    cls, cfg_cls = (
        (tr.ConvNextV2ForImageClassification, tr.ConvNextV2Config)
        if v2
        else (tr.ConvNextForImageClassification, tr.ConvNextConfig)
    )
    kw = {} if v2 else {"layer_scale_init_value": 1.0}
    cfg = cfg_cls(depths=DEPTHS, hidden_sizes=SIZES, id2label=dict(enumerate(names)), **kw)
    model = randomize_(cls(cfg), seed)
    folder = tmp / f"tr{int(v2)}-{seed}"
    model.save_pretrained(folder)  # config.json + model.safetensors
    tr.ConvNextImageProcessor(
        size={"shortest_edge": 64},
        crop_pct=0.8,
        resample=2,
        image_mean=[0.45, 0.4, 0.35],
        image_std=[0.2] * 3,
    ).save_pretrained(folder)
    return model, _files(folder)


def _upernet_repo(tmp: Path) -> tuple[nn.Module, dict]:
    """transformers' UperNet on a ConvNeXt-atto (as ``openmmlab/upernet-convnext-*``), narrow heads."""
    backbone = tr.ConvNextConfig(
        depths=DEPTHS, hidden_sizes=SIZES, out_features=["stage1", "stage2", "stage3", "stage4"],
        layer_scale_init_value=1.0,
    )  # fmt: skip
    cfg = tr.UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=3,
        id2label=dict(enumerate(["wall", "floor", "sky"])),
    )  # fmt: skip
    torch.manual_seed(4)
    model = randomize_(tr.UperNetForSemanticSegmentation(cfg), 4)
    folder = tmp / "upernet"
    model.save_pretrained(folder)
    return model, _files(folder)


def _timm_repo(tmp: Path) -> tuple[nn.Module, dict]:
    model = randomize_(timm.create_model("convnext_atto", num_classes=3), 2)
    folder = tmp / "timm"
    timm.models.save_for_hf(
        model, folder, model_config={"label_names": TIMM_NAMES}, safe_serialization=True, data_config=TIMM_PRE
    )
    files = _files(folder)
    assert (
        "model.safetensors" in files and json.loads(files["config.json"])["architecture"] == "convnext_atto"
    )
    files.pop("pytorch_model.bin", None)
    return model, files


class _Hub(BaseHTTPRequestHandler):
    """The Hub's file routes over ``self.server.repos``: {repo: {"refs": {name: commit}, commit: files}}."""

    def _lookup(self) -> tuple[str, bytes] | None:
        parts = urlparse(self.path).path.lstrip("/").split("/")
        self.server.hits += 1  # type: ignore[attr-defined]
        self.server.auth.add(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if len(parts) < 5 or parts[2] != "resolve":
            return self._fail(404, None)
        repo = self.server.repos.get("/".join(parts[:2]))  # type: ignore[attr-defined]
        if repo is None:
            return self._fail(404, "RepoNotFound")
        rev = unquote(parts[3])
        commit = repo["refs"].get(rev, rev if rev in repo else None)
        if commit is None:
            return self._fail(404, "RevisionNotFound")
        data = repo[commit].get("/".join(parts[4:]))
        if data is None:
            return self._fail(404, "EntryNotFound", commit)
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return commit, data

    def _fail(self, status: int, code: str | None, commit: str | None = None) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._lookup()

    def do_GET(self) -> None:
        found = self._lookup()
        if found is not None:
            self.wfile.write(found[1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Serve the repos, download each once online in a subprocess (HF_ENDPOINT, HF_HUB_CACHE: a user's
    first run), and hand the tests the cache, the reference models and what the subprocess answered."""
    tmp = tmp_path_factory.mktemp("hub")
    v1, v1_files = _transformers_repo(tmp, v2=False, seed=0, names=HF_NAMES)
    old, old_files = _transformers_repo(tmp, v2=False, seed=1, names=["old_a", "old_b", "old_c"])
    v2, v2_files = _transformers_repo(tmp, v2=True, seed=3, names=HF_NAMES)
    tm, tm_files = _timm_repo(tmp)
    up, up_files = _upernet_repo(tmp)
    repos = {
        "acme/upernet-convnext-atto": {"refs": {"main": MAIN}, MAIN: up_files},
        "acme/upernet-swin": {
            "refs": {"main": MAIN},
            MAIN: {"config.json": b'{"model_type": "upernet", "backbone_config": {"model_type": "swin"}}'},
        },
        "acme/convnext-atto": {"refs": {"main": MAIN, "v1": V1}, MAIN: v1_files, V1: old_files},
        "acme/convnextv2-atto": {"refs": {"main": MAIN}, MAIN: v2_files},
        "timm/convnext_atto.test": {"refs": {"main": MAIN}, MAIN: tm_files},
        "acme/vit": {"refs": {"main": MAIN}, MAIN: {"config.json": b'{"model_type": "vit"}'}},
        "acme/readme-only": {"refs": {"main": MAIN}, MAIN: {"README.md": b"# nothing"}},
        "acme/unknown-variant": {
            "refs": {"main": MAIN},
            MAIN: {"config.json": b'{"architecture": "convnext_x"}'},
        },
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.repos, server.hits, server.auth = repos, 0, set()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    cache = tmp / "hf-cache"
    specs = [
        "hf-hub:acme/convnext-atto", "hf-hub:acme/convnext-atto@v1", "hf-hub:acme/convnextv2-atto",
        "hf-hub:timm/convnext_atto.test", "hf-hub:acme/missing", "hf-hub:acme/convnext-atto@v9",
        "hf-hub:acme/vit", "hf-hub:acme/readme-only", "hf-hub:acme/unknown-variant",
        "hf-hub:acme/upernet-convnext-atto", "hf-hub:acme/upernet-swin",
    ]  # fmt: skip
    script = (
        "import json, sys\n"
        "from convnext.errors import UserError\n"
        "from convnext.weights.hf_hub import download\n"
        "out = {}\n"
        "for s in sys.argv[1:]:\n"
        "    try: out[s] = str(download(s))\n"
        "    except UserError as e: out[s] = 'error: ' + str(e)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}
    env["HF_TOKEN"] = "hf_test_token"  # huggingface_hub sends it: private and gated repos work
    r = subprocess.run([sys.executable, "-c", script, *specs], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    online = json.loads(r.stdout.strip().splitlines()[-1])
    yield {"cache": cache, "server": server, "online": online, "endpoint": endpoint,
           "v1": v1, "old": old, "v2": v2, "timm": tm, "upernet": up}  # fmt: skip
    server.shutdown()


@pytest.fixture
def offline(hub: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """In this process: huggingface_hub reads ``hub``'s cache, offline (its settings are module constants,
    read from the environment at import; the CLI test below sets the environment itself)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return hub


def _x(size: int = 64) -> torch.Tensor:
    torch.manual_seed(5)
    return torch.randn(2, 3, size, size)


def test_online_download_lays_out_the_hub_cache(hub: dict) -> None:
    online = hub["online"]
    folder = Path(online["hf-hub:acme/convnext-atto"])
    assert folder == hub["cache"] / "models--acme--convnext-atto" / "snapshots" / MAIN
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json",
    ]  # fmt: skip
    assert Path(online["hf-hub:acme/convnext-atto@v1"]).name == V1
    assert (hub["cache"] / "models--acme--convnext-atto" / "refs" / "v1").read_text() == V1
    assert hub["server"].auth == {"Bearer hf_test_token"}  # HF_TOKEN went with every request
    timm_folder = Path(online["hf-hub:timm/convnext_atto.test"])
    assert sorted(p.name for p in timm_folder.iterdir()) == ["config.json", "model.safetensors"]


def test_online_errors_are_one_sentence_naming_the_repo(hub: dict) -> None:
    online = hub["online"]
    for spec, needle in [
        ("hf-hub:acme/missing", "no such repo on the Hugging Face Hub"),
        ("hf-hub:acme/convnext-atto@v9", "has no revision 'v9'"),
        ("hf-hub:acme/vit", "is a transformers 'vit' model, not a ConvNeXt"),
        ("hf-hub:acme/readme-only", "has no config.json"),
        ("hf-hub:acme/unknown-variant", "holds timm's convnext_x, which convnext cannot build"),
    ]:
        msg = online[spec]
        assert msg.startswith("error: ") and needle in msg and spec in msg and "\n" not in msg, msg
    assert hub["endpoint"] in online["hf-hub:acme/missing"]


@pytest.mark.parametrize("repo", ["acme/convnext-atto", "acme/convnextv2-atto"])
def test_transformers_repo_offline_same_logits_names_preprocessing(offline: dict, repo: str) -> None:
    """What predict / evaluate / export / serve load (``load_for_inference``): transformers' logits, the
    repo's id2label and its image processor's settings, without one request."""
    hits = offline["server"].hits
    ref = offline["v2" if "v2" in repo else "v1"]
    loaded = convnext.load_for_inference(f"hf-hub:{repo}")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_x()), ref(pixel_values=_x()).logits, rtol=1e-4, atol=1e-4)
    assert loaded.arch == ("convnextv2_atto" if "v2" in repo else "convnext_atto")
    assert loaded.class_names == HF_NAMES
    d = loaded.data  # ConvNextImageProcessor: shortest_edge 64, crop_pct 0.8, bilinear, its mean / std
    assert (d.img_size, d.crop_pct, d.crop_mode, d.interpolation) == (64, 0.8, "center", "bilinear")
    assert tuple(d.mean) == pytest.approx((0.45, 0.4, 0.35)) and tuple(d.std) == pytest.approx((0.2,) * 3)
    assert offline["server"].hits == hits  # offline: not one request


def test_timm_repo_offline_same_logits_names_preprocessing(offline: dict) -> None:
    """timm itself reading the same cached repo (timm.create_model("hf-hub:...")) is the reference: its
    logits, its eval settings; the class names are the config's label_names."""
    theirs = timm.create_model("hf-hub:timm/convnext_atto.test", pretrained=True).eval()
    loaded = convnext.load_for_inference("hf-hub:timm/convnext_atto.test")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_x(48)), theirs(_x(48)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loaded.model(_x(48)), offline["timm"](_x(48)), rtol=1e-4, atol=1e-4)
    assert loaded.class_names == TIMM_NAMES
    peer = timm.data.resolve_data_config({}, model=theirs)
    d = loaded.data  # config.json's pretrained_cfg
    assert (d.img_size, d.crop_pct, d.interpolation) == (peer["input_size"][1], peer["crop_pct"], "bilinear")
    assert (tuple(d.mean), tuple(d.std)) == (tuple(peer["mean"]), tuple(peer["std"]))
    assert (d.img_size, d.crop_pct, tuple(d.mean)) == (48, 0.75, TIMM_PRE["mean"])  # not timm's defaults


def test_create_model_with_the_repo_as_name_like_timm(offline: dict) -> None:
    """``create_model("hf-hub:ORG/NAME", pretrained=True)``, timm's spelling: the repo names the
    architecture (timm's config.json; transformers' depths and widths) and gives the weights."""
    model = convnext.create_model("hf-hub:acme/convnextv2-atto", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), offline["v2"](pixel_values=_x()).logits, rtol=1e-4, atol=1e-4)
    assert model.pretrained_cfg["label_names"] == HF_NAMES
    fresh = convnext.create_model("hf-hub:timm/convnext_atto.test", num_classes=7)  # timm: no weights
    assert type(fresh).__name__ == type(model).__name__ and fresh.head.out_features == 7
    assert fresh.downsample_layers[0][0].weight.shape == (40, 3, 4, 4) and len(fresh.stages[2]) == 6  # atto


def test_transformers_upernet_repo_by_name_and_as_weights(offline: dict) -> None:
    """A transformers UperNet repo (``openmmlab/upernet-convnext-*``'s layout): ``create_model`` with the
    repo as name builds ``upernet_<backbone>`` from its config and gives transformers' per-pixel logits and
    the repo's class names; a UperNet on another backbone is one sentence."""
    assert offline["online"]["hf-hub:acme/upernet-swin"].startswith("error: hf-hub:acme/upernet-swin is a ")
    assert "UperNet on a 'swin' backbone, not a ConvNeXt" in offline["online"]["hf-hub:acme/upernet-swin"]
    model = convnext.create_model("hf-hub:acme/upernet-convnext-atto", pretrained=True).eval()
    assert type(model).__name__ == "UperNet" and model.pretrained_info.class_names == ["wall", "floor", "sky"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = offline["upernet"](pixel_values=x).logits
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        named = convnext.create_model("upernet_convnext_atto", pretrained="hf-hub:acme/upernet-convnext-atto")
        torch.testing.assert_close(named.eval()(x), ref, rtol=1e-4, atol=1e-4)
    # what predict / evaluate / export / serve load (`--weights hf-hub:...`, no --model): the segmenter
    from convnext.inference.dense import dense_task, load_dense

    assert dense_task("hf-hub:acme/upernet-convnext-atto", None) == "segmentation"
    assert dense_task("hf-hub:acme/convnext-atto", None) is None  # a classifier repo
    loaded = load_dense("hf-hub:acme/upernet-convnext-atto")
    assert (loaded.arch, loaded.names) == ("upernet_convnext_atto", ["wall", "floor", "sky"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref, rtol=1e-4, atol=1e-4)


def test_revision_tag_and_commit_resolve_offline(offline: dict) -> None:
    """``create_model(pretrained="hf-hub:...@REV")``: a tag and a commit give the weights and names of
    that commit, not main's."""
    for spec in ("hf-hub:acme/convnext-atto@v1", f"hf-hub:acme/convnext-atto@{V1}"):
        model = convnext.create_model("convnext_atto", pretrained=spec).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                model(_x()), offline["old"](pixel_values=_x()).logits, rtol=1e-4, atol=1e-4
            )
        assert model.pretrained_cfg["label_names"] == ["old_a", "old_b", "old_c"]


def test_offline_errors_are_one_sentence(offline: dict) -> None:
    cases = [
        ("hf-hub:acme/never-fetched", "is not in the Hugging Face cache"),
        ("hf-hub:acme/convnext-atto@v9", "is not in the Hugging Face cache"),  # a revision never fetched
        ("hf-hub:acme", "is not a Hub repo; spell it hf-hub:ORG/NAME[@REVISION]"),
    ]
    for spec, needle in cases:
        with pytest.raises(UserError, match="^[^\n]+$") as e:
            convnext.create_model("convnext_atto", pretrained=spec)
        assert needle in str(e.value) and spec.partition("@")[0] in str(e.value), str(e.value)
    assert "HF_HUB_OFFLINE" in str(e.value) or "ORG/NAME" in str(e.value)


def test_cli_predict_offline_from_the_cache(
    offline: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``convnext predict --weights hf-hub:...`` in a fresh process with HF_HUB_OFFLINE=1 and no endpoint:
    the repo's class names, the transformers model's top-1 under the repo's preprocessing; a repo not in
    the cache exits 2 with one line."""
    img = tmp_path / "x.png"
    Image.new("RGB", (80, 70), (200, 120, 40)).save(img)
    env = {**os.environ, "HF_HUB_CACHE": str(offline["cache"]), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ENDPOINT", None)
    cmd = [sys.executable, "-m", "convnext", "predict", str(img), "--json", "--no-progress"]
    r = subprocess.run(
        [*cmd, "--weights", "hf-hub:acme/convnext-atto"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[0])
    top = row["top"][0]
    loaded = convnext.load_for_inference("hf-hub:acme/convnext-atto")
    x = convnext.data.build_eval_transform(loaded.data)(convnext.data.load_image(img))[None]
    with torch.no_grad():
        want = int(offline["v1"](pixel_values=x).logits.argmax())
    assert (top["index"], top["class"]) == (want, HF_NAMES[want]), row
    # the CLI's error path, in this process (same cache, offline): exit 2, one line naming the repo
    assert main(["predict", str(img), "--weights", "hf-hub:acme/gone", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convnext predict: error: hf-hub:acme/gone is not in the"), err


def test_train_model_pretrained_from_the_hub(offline: dict, tmp_path: Path) -> None:
    """train's ``model.pretrained=hf-hub:...`` passes the recipe check (before: "does not exist") and the
    run's model starts from the repo's weights."""
    from convnext.engine.config import load_config
    from convnext.engine.train.setup import build_model

    configs = Path(convnext.__file__).parent / "configs"
    overrides = [
        f"data.root={tmp_path}",
        "model.name=convnext_atto",
        "model.pretrained=hf-hub:acme/convnext-atto",
    ]
    cfg = load_config(configs / "convnext_tiny_in1k.yaml", [*overrides, f"run.dir={tmp_path / 'run'}"])
    model = build_model(cfg, num_classes=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), offline["v1"](pixel_values=_x()).logits, rtol=1e-4, atol=1e-4)
