"""`convnext serve` against the real server on a free loopback port: predict's answers to 1e-4, Grad-CAM,
dynamic batching (8 concurrent requests in fewer than 8 forwards, each its own answer), every bad input a
4xx with one sentence (the server stays up), /healthz 503 until loaded, /metrics, and SIGTERM that lets an
in-flight request finish and exits 0 (a real subprocess)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import ROOT  # noqa: E402

from convnext.cli.main import main  # noqa: E402
from convnext.errors import UserError  # noqa: E402
from convnext.serve.app import ServeSettings, create_app  # noqa: E402
from convnext.serve.inputs import BadImage, check_image_header  # noqa: E402
from convnext.serve.runners import load_runner  # noqa: E402
from convnext.serve.server import ThreadedServer  # noqa: E402

QUICK = ROOT / "configs" / "quickstart_digits.yaml"
UPLOAD_MB = 1


# ------------------------------------------------------------------------------------------ fixtures
def train_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart recipe for one epoch (~90% top-1, a few seconds): a real trained run folder with
    real sample PNGs. Trained once per session (test_serve_browser.py reuses it)."""
    run = tmp_path_factory.getbasetemp() / "serve_digits_run"
    if (run / "checkpoints" / "last.pth").is_file():
        return run
    threads = torch.get_num_threads()
    try:
        rc = main(["train", "--config", str(QUICK), f"run.dir={run}", "epochs=1", "train.progress=false"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return run


def tiny_weights(path: Path, labels: list[str]) -> Path:
    """An untrained convnext_atto with one class per label, written as ``convnext convert --to ours``
    writes a checkpoint (class names inside): a fine-tune's shape in a fraction of a second."""
    import convnext
    from convnext.weights.write import write

    model = convnext.create_model("convnext_atto", num_classes=len(labels))
    write(
        model.state_dict(),
        path,
        "ours",
        arch="convnext_atto",
        class_names=labels,
        data_config=None,
        source="t",
    )
    return path


def tiny_png(path: Path, side: int = 40, seed: int = 0) -> Path:
    from torchvision.io import encode_png

    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=g)
    path.write_bytes(encode_png(img).numpy().tobytes())
    return path


def predict_json(files: list[str], run: Path, topk: int = 5, cam_dir: Path | None = None) -> dict[str, dict]:
    """`convnext predict --json` on the same files: its code path, in this process."""
    out = io.StringIO()
    argv = ["predict", *files, "--weights", str(run), "--json", "--topk", str(topk), "--device", "cpu"]
    if cam_dir is not None:
        argv += ["--cam", str(cam_dir)]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return {obj["path"]: obj for obj in map(json.loads, out.getvalue().splitlines())}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_digits(tmp_path_factory)


@pytest.fixture(scope="module")
def samples(digits_run: Path) -> list[str]:
    files = sorted(str(p) for p in (digits_run / "samples").glob("*.png"))
    assert len(files) == 8
    return files


@pytest.fixture(scope="module")
def server(digits_run: Path):
    settings = ServeSettings(max_batch=32, max_wait_ms=500, max_upload_mb=UPLOAD_MB)
    app = create_app(lambda: load_runner(str(digits_run), device="cpu"), settings)
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(url + "/healthz", timeout=5)
            if r.status_code == 200:
                return
            assert r.json()["status"] == "loading", r.text
        time.sleep(0.05)
    raise AssertionError(f"{url} never became healthy")


def metric(client, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def assert_same_as_predict(answer: dict, expected: dict) -> None:
    got = answer["predictions"]
    want = expected["top"]
    assert [p["index"] for p in got] == [t["index"] for t in want]
    assert [p["label"] for p in got] == [t["class"] for t in want]
    for p, t in zip(got, want):
        assert abs(p["prob"] - t["prob"]) <= 1e-4


def assert_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    msg = body["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def raw_http(url: str, head: bytes, body: bytes = b"", timeout: float = 20) -> tuple[int, dict]:
    """Send bytes as they are (no client library second-guessing a lying Content-Length); read to EOF."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(payload)


def png_header_only(width: int, height: int, frames_rows: int = 2) -> bytes:
    """A valid PNG that declares width x height but carries a couple of rows: a decompression bomb's shape
    (decoding it would allocate width * height * 3 bytes)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * frames_rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------ endpoints
def test_predict_matches_convnext_predict(
    client, digits_run: Path, samples: list[str], imagenet_sample
) -> None:
    photo = str(sorted(imagenet_sample.glob("*/*.JPEG"))[0])  # a real JPEG (decoded by libjpeg-turbo)
    files = [*samples[:3], photo]
    expected = predict_json(files, digits_run, topk=5)
    for f in files:
        data = Path(f).read_bytes()
        mime = "image/jpeg" if f.endswith("JPEG") else "image/png"
        r = client.post("/v1/predict", files={"file": (Path(f).name, data, mime)})
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans["model"] == "convnext_atto" and ans["latency_ms"] > 0
        assert_same_as_predict(ans, expected[f])
        raw = client.post("/v1/predict", content=data, headers={"Content-Type": mime})  # a raw image/* body
        assert raw.json()["predictions"] == ans["predictions"]
    # topk=3 is the first three of the default five
    png = Path(files[0]).read_bytes()
    three = client.post("/v1/predict", params={"topk": 3}, content=png, headers={"Content-Type": "image/png"})
    five = client.post("/v1/predict", files={"file": ("a.png", png, "image/png")})
    assert three.json()["predictions"] == five.json()["predictions"][:3]


def test_grad_cam_is_predicts_overlay(client, digits_run: Path, samples: list[str], tmp_path: Path) -> None:
    """The overlay is the heat map `convnext predict --cam` draws (its figure puts this next to the photo)."""
    from torchvision.io import decode_png

    from convnext.data.images import load_image
    from convnext.data.transforms import build_eval_transform
    from convnext.inference.cam import GradCAM, cam_overlay, crop_box
    from convnext.inference.loading import load_for_inference

    f = samples[0]
    expected = predict_json([f], digits_run, topk=5, cam_dir=tmp_path)
    r = client.post("/v1/predict", params={"cam": "true"}, files={"file": Path(f).read_bytes()})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["cam_index"] == ans["predictions"][0]["index"] == expected[f]["top"][0]["index"]
    assert Path(expected[f]["cam"]).is_file()
    loaded = load_for_inference(str(digits_run))
    img = load_image(f)
    x = build_eval_transform(loaded.data)(img)[None]
    maps, _ = GradCAM(loaded.model.eval())(x, torch.tensor([ans["cam_index"]]))
    d = loaded.data
    box = crop_box(img.shape[1], img.shape[2], d.img_size, d.crop_pct, d.crop_mode)
    theirs = cam_overlay(img, maps[0], box)
    ours = decode_png(torch.frombuffer(bytearray(base64.b64decode(ans["cam"])), dtype=torch.uint8))
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours.int() - theirs.int()).abs().max() <= 1  # the same heat map over the same picture


def test_model_info_health_page_and_static(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["model"] == "convnext_atto" and info["backend"] == "torch" and info["precision"] == "fp32"
    assert info["num_classes"] == 10 and info["labels"] == [str(i) for i in range(10)]
    prep = info["preprocessing"]
    assert prep["img_size"] == 32 and prep["crop_pct"] == 1.0 and prep["interpolation"] == "bicubic"
    assert len(prep["mean"]) == len(prep["std"]) == 3
    assert info["batching"]["max_batch"] == 32 and info["limits"]["max_upload_mb"] == UPLOAD_MB
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    spec = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    assert set(spec["requestBody"]["content"]) == {"multipart/form-data", "image/*"}


def test_concurrent_requests_share_forwards(client, server, digits_run: Path, samples: list[str]) -> None:
    expected = predict_json(samples, digits_run)
    before = metric(client, "convnext_serve_batch_size_count")
    barrier = threading.Barrier(len(samples))
    answers: dict[str, dict] = {}

    def one(f: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            data = Path(f).read_bytes()
            barrier.wait()
            answers[f] = c.post("/v1/predict", files={"file": (Path(f).name, data, "image/png")}).json()

    threads = [threading.Thread(target=one, args=(f,)) for f in samples]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    forwards = metric(client, "convnext_serve_batch_size_count") - before
    assert len(answers) == 8
    for f in samples:  # each request got its own image's answer, not a neighbour's in the batch
        assert_same_as_predict(answers[f], expected[f])
    assert len({a["predictions"][0]["prob"] for a in answers.values()}) > 1
    assert 1 <= forwards < 8, forwards
    assert metric(client, "convnext_serve_batch_size_sum") >= 8


def test_metrics_are_prometheus_text(client, samples: list[str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/v1/predict", files={"file": Path(samples[0]).read_bytes()})
    client.post("/v1/predict", params={"topk": 0}, files={"file": Path(samples[0]).read_bytes()})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families["convnext_serve_requests"].type == "counter"
    statuses = {s.labels["status"] for s in families["convnext_serve_requests"].samples}
    assert {"200", "400"} <= statuses
    assert families["convnext_serve_request_latency_seconds"].type == "histogram"
    assert families["convnext_serve_batch_size"].type == "histogram"
    assert families["convnext_serve_queue_depth"].type == "gauge"
    assert metric(client, "convnext_serve_model_loaded") == 1
    assert metric(client, "convnext_serve_queue_depth") == 0  # nothing waiting now


def test_topk_over_the_class_count_returns_every_class(client, samples: list[str], tmp_path: Path) -> None:
    """topk=5 (what clients ask by habit) on a 2- or 3-class fine-tune is every class, best first, not a
    400: transformers' image-classification pipeline clamps its top_k the same way."""
    png = Path(samples[0]).read_bytes()
    ten = client.post("/v1/predict", params={"topk": 10}, files={"file": png}).json()["predictions"]
    many = client.post("/v1/predict", params={"topk": 1000}, files={"file": png})
    assert many.status_code == 200 and many.json()["predictions"] == ten and len(ten) == 10
    for labels in (["cat", "dog"], ["red", "green", "blue"]):
        weights = tiny_weights(tmp_path / f"{len(labels)}.safetensors", labels)
        app = create_app(lambda w=weights: load_runner(str(w), device="cpu", img_size=32), ServeSettings())
        with ThreadedServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            wait_ready(srv.url)
            for params in ({"topk": 5}, {}):
                r = c.post("/v1/predict", params=params, files={"file": png})
                assert r.status_code == 200, r.text
                preds = r.json()["predictions"]
                assert sorted(p["label"] for p in preds) == sorted(labels)
                assert [p["prob"] for p in preds] == sorted((p["prob"] for p in preds), reverse=True)
            assert_error(c.post("/v1/predict", params={"topk": 0}, files={"file": png}), 400, "1 or more")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_4xx_with_one_sentence(client, server, samples: list[str]) -> None:
    png = Path(samples[0]).read_bytes()
    five_hundreds = metric(client, "convnext_serve_requests_total", status="500")
    cases = [
        # not an image, named .png
        (client.post("/v1/predict", files={"file": ("a.png", b"hello, this is text", "image/png")}), 415,
         "not an image"),
        # empty: an empty file part, an empty raw body, no body at all
        (client.post("/v1/predict", files={"file": ("a.png", b"", "image/png")}), 400, "empty"),
        (client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "empty"),
        (client.post("/v1/predict"), 400, "empty"),
        # truncated PNG and JPEG
        (client.post("/v1/predict", files={"file": ("a.png", png[: len(png) // 2], "image/png")}), 400,
         "truncated"),
        # wrong field name; a text field called file
        (client.post("/v1/predict", files={"image": ("a.png", png, "image/png")}), 400, "'file'"),
        (client.post("/v1/predict", data={"file": "text"}, files={"x": b"1"}), 400, "file upload"),
        # topk below 1, not a whole number; a cam flag that is neither true nor false
        (client.post("/v1/predict", params={"topk": 0}, files={"file": png}), 400, "topk"),
        (client.post("/v1/predict", params={"topk": -3}, files={"file": png}), 400, "1 or more"),
        (client.post("/v1/predict", params={"topk": "five"}, files={"file": png}), 400, "topk"),
        (client.post("/v1/predict", params={"topk": "2.5"}, files={"file": png}), 400, "topk"),
        (client.post("/v1/predict", params={"cam": "maybe"}, files={"file": png}), 400, "cam"),
        # a body that is neither multipart nor image/*; a multipart body without its boundary
        (client.post("/v1/predict", json={"image": "x"}), 415, "application/json"),
        (client.post("/v1/predict", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}), 400,
         "multipart"),
        # wrong method, unknown path
        (client.get("/v1/predict"), 405, "GET"),
        (client.get("/v2/predict"), 404, "/v2/predict"),
    ]  # fmt: skip
    jpeg = None
    for r, status, word in cases:
        assert_error(r, status, word)
    from conftest import IMAGENET_SAMPLE

    if IMAGENET_SAMPLE.is_dir():
        jpeg = sorted(IMAGENET_SAMPLE.glob("*/*.JPEG"))[0].read_bytes()
        r = client.post("/v1/predict", files={"file": ("a.jpg", jpeg[: len(jpeg) * 2 // 3], "image/jpeg")})
        assert_error(r, 400, "truncated")
    # the server is still up and serving, and none of this was a 500
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", files={"file": png}).status_code == 200
    assert metric(client, "convnext_serve_requests_total", status="500") == five_hundreds


@pytest.mark.parametrize("side", [12_000, 100_000])  # over Pillow's 89 MP limit, and over twice it
def test_decompression_bomb_refused_from_the_header(client, side: int) -> None:
    bomb = png_header_only(side, side)
    assert len(bomb) < 1_000_000  # a small file; decoding it would take side * side * 3 bytes
    r = client.post("/v1/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert_error(r, 413, "pixels", "refused before decoding")
    assert client.get("/healthz").status_code == 200


def test_header_check_counts_every_frame() -> None:
    from PIL import Image

    frames = [Image.new("RGB", (10, 10), (i * 40, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert check_image_header(buf.getvalue(), max_pixels=300)[:1] == ("gif",)
    with pytest.raises(BadImage, match="3 frames") as e:
        check_image_header(buf.getvalue(), max_pixels=250)
    assert e.value.status == 413


def test_uploads_decode_as_load_image_reads_files(tmp_path: Path) -> None:
    """One decoder: every kind of image (16-bit PNGs, animated GIF/WebP, CMYK, float TIFF, ...) gives the
    server the pixels load_image gives predict and training (serve had its own copy that returned uint16
    for 16-bit PNGs)."""
    from test_inputs import image_kinds

    from convnext.data.images import load_image
    from convnext.serve.inputs import read_upload

    for name, (data, _) in image_kinds().items():
        (tmp_path / name).write_bytes(data)
        assert torch.equal(read_upload(data), load_image(tmp_path / name)), name


def test_oversized_upload_refused_before_it_is_read(server, client) -> None:
    # Content-Length over the limit: 413 comes back although not one byte of the 50 MB body was sent
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    status, body = raw_http(server.url, head, b"\x89PNG\r\n\x1a\n")
    assert status == 413 and f"{UPLOAD_MB} MB" in body["error"]
    # no Content-Length (chunked upload): cut off once the stream passes the limit
    sent = 0

    def stream():
        nonlocal sent
        for _ in range(64):  # 4 MiB offered
            sent += 65536
            yield b"\x89PNG\r\n\x1a\n" + b"\0" * (65536 - 8)

    r = client.post("/v1/predict", content=stream(), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "limit")
    assert metric(client, "convnext_serve_requests_total", endpoint="/v1/predict", status="413") >= 2
    assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------------------ lifecycle
def test_healthz_503_until_the_model_is_loaded(digits_run: Path) -> None:
    gate = threading.Event()

    def slow_load():
        assert gate.wait(30)
        return load_runner(str(digits_run), device="cpu")

    with ThreadedServer(create_app(slow_load)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        assert_error(c.post("/v1/predict", files={"file": b"x"}), 503, "loading")
        assert_error(c.get("/v1/model"), 503, "loading")
        assert c.get("/").status_code == 200  # the page can say "loading" by itself
        gate.set()
        wait_ready(srv.url)
        assert c.get("/v1/model").json()["num_classes"] == 10

    def broken():
        raise UserError("checkpoint /nowhere/w.pth does not exist")

    with ThreadedServer(create_app(broken)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for _ in range(200):
            r = c.get("/healthz")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert r.status_code == 503
        assert r.json() == {"status": "error", "error": "checkpoint /nowhere/w.pth does not exist"}
        assert_error(c.post("/v1/predict", files={"file": b"x"}), 503, "/nowhere/w.pth")


def test_cli_refuses_bad_flags_and_unloadable_weights(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--weights", "x.pth", "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--weights", "x.pth", "--read-timeout-s", "0"]) == 2
    assert "--read-timeout-s must be positive" in capsys.readouterr().err
    # weights that do not load: the server stops by itself and the command says why, exit 2
    assert (
        main(["serve", "--weights", str(tmp_path / "none.pth"), "--port", "0", "--log-level", "critical"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("convnext serve: error:") and "none.pth" in err[-1]


def _export(run: Path, out: Path, fmt: str) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "--weights", str(run), "--format", fmt, "--out", str(out)]) == 0
    return out


def test_an_exported_onnx_file_is_served_as_predict_runs_it(
    digits_run: Path, samples: list[str], tmp_path: Path
) -> None:
    """`convnext serve --weights model.onnx`: inference.backends.load_backend runs it in onnxruntime with the
    preprocessing and classes stored in the file; the answers are `convnext predict --json` on the same
    file, to 1e-4; cam=true is one 4xx sentence (no gradients in an exported file)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    onnx_file = _export(digits_run, tmp_path / "digits.onnx", "onnx")
    files = samples[:4]
    expected = predict_json(files, onnx_file, topk=5)
    app = create_app(lambda: load_runner(str(onnx_file), device="cpu"), ServeSettings(max_wait_ms=50))
    with ThreadedServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_ready(srv.url)
        info = c.get("/v1/model").json()
        assert (info["backend"], info["model"], info["cam"]) == ("onnxruntime", "convnext_atto", False)
        assert info["labels"] == [str(i) for i in range(10)] and info["preprocessing"]["img_size"] == 32
        for f in files:
            r = c.post("/v1/predict", files={"file": (Path(f).name, Path(f).read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            assert_same_as_predict(r.json(), expected[f])
        r = c.post("/v1/predict", params={"cam": "true"}, files={"file": Path(files[0]).read_bytes()})
        assert_error(r, 400, "cam=true needs PyTorch weights", "exported onnxruntime file")


def test_exported_files_pick_their_runtime_and_never_offer_grad_cam(digits_run: Path, tmp_path: Path) -> None:
    """A .pt2 file (auto: the pt2 backend) does not claim Grad-CAM either; --backend torch with an exported
    file, or a runtime that cannot run the file, is one sentence."""
    from convnext.serve.runners import resolve_backend

    assert [resolve_backend("auto", f"m{s}") for s in (".onnx", ".xml", ".pt2", ".pth")] == [
        "onnxruntime", "openvino", "pt2", "torch"
    ]  # fmt: skip
    with pytest.raises(UserError, match="--backend torch runs PyTorch weights; m.pt2 is an exported pt2"):
        resolve_backend("torch", "m.pt2")
    pt2 = _export(digits_run, tmp_path / "digits.pt2", "pt2")
    runner = load_runner(str(pt2), device="cpu")
    assert (runner.backend, runner.supports_cam, runner.describe()["cam"]) == ("pt2", False, False)
    x = runner.preprocess(torch.zeros(3, 32, 32, dtype=torch.uint8))[None]
    assert runner.forward(x).shape == (1, 10)
    with pytest.raises(UserError, match="runs on pt2, not on --backend onnxruntime"):
        load_runner(str(pt2), backend="onnxruntime")


def test_sigterm_finishes_in_flight_requests_and_exits_0(digits_run: Path, samples: list[str]) -> None:
    """An upload in flight at SIGTERM finishes and is answered. One whose client stopped mid-body is
    cancelled by uvicorn when --graceful-timeout is over: it used to get a plain-text 500 and print a
    traceback; now 503 JSON, and the exit is still 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "convnext.cli.main", "serve", "--weights", str(digits_run), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--no-access-log", "--device", "cpu", "--graceful-timeout", "5", "--read-timeout-s", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        first = proc.stdout.readline().decode()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert m, first
        url = m.group(0)
        wait_ready(url)
        png = Path(samples[1]).read_bytes()
        expected = predict_json([samples[1]], digits_run)[samples[1]]
        # an upload in flight: headers and half the body sent, then SIGTERM
        u = urlsplit(url)
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        head = "POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
        head += f"Content-Length: {len(png)}\r\n\r\n"
        s.sendall(head.encode() + png[:100])
        stalled = socket.create_connection((u.hostname, u.port), timeout=30)  # will never send the rest
        stalled.sendall(head.encode() + png[:100])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # no new connections once shutting down
        deadline = time.monotonic() + 10
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                socket.create_connection((u.hostname, u.port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                refused = True
        assert refused, "still accepting connections after SIGTERM"
        s.sendall(png[100:])  # the in-flight request finishes and is answered
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert_same_as_predict(json.loads(data.split(b"\r\n\r\n", 1)[1]), expected)
        status, body = _json_answer(_read_all(stalled))  # after the 5 s of --graceful-timeout
        stalled.close()
        assert status == 503 and set(body) == {"error"} and "shutting down" in body["error"], body
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stdout.read().decode()
    assert "Traceback" not in out and "Exception in ASGI application" not in out, out


def test_accepted_connections_send_without_nagle_delay() -> None:
    """Every response goes out as two small writes (headers, body). On a socket without TCP_NODELAY the
    second waits for the client's delayed ACK: each response took ~40 ms longer (/healthz 44 ms, 0.4 ms
    with it). asyncio (what uvicorn serves through) sets it only on sockets that say they are TCP."""
    import asyncio

    from convnext.serve.server import bind

    listener = bind("127.0.0.1", 0)
    port = listener.getsockname()[1]

    async def accept_one() -> int:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                s = transport.get_extra_info("socket")
                got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            nodelay = await asyncio.wait_for(got, 10)
            writer.close()
        return nodelay

    assert asyncio.run(accept_one()) != 0


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _json_answer(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_stalled_clients_are_cut_off_after_the_read_timeout(digits_run: Path, samples: list[str]) -> None:
    """A client that connects and sends nothing, stops inside its headers, or stops inside its body held
    its socket (and, mid-body, its request slot) forever: uvicorn times out only idle keep-alive
    connections. Now each is closed after --read-timeout-s without a byte; a partial request gets 408 JSON.
    A request whose forward takes longer than the timeout is not cut off: only reading is timed."""
    timeout = 0.5
    png = Path(samples[0]).read_bytes()

    def slow_load():
        runner = load_runner(str(digits_run), device="cpu")
        forward = runner.forward
        runner.forward = lambda x: (time.sleep(1.5), forward(x))[1]  # a forward slower than the timeout
        return runner

    app = create_app(slow_load, ServeSettings(read_timeout_s=timeout))
    with ThreadedServer(app, read_timeout_s=timeout) as srv:
        wait_ready(srv.url)
        u = urlsplit(srv.url)
        head = "POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
        cases = {
            "nothing": b"",
            "half a head": head.encode(),
            "half a body": f"{head}Content-Length: {len(png)}\r\n\r\n".encode() + png[:100],
        }
        answers = {}
        for name, sent in cases.items():
            with socket.create_connection((u.hostname, u.port), timeout=30) as s:
                t0 = time.monotonic()
                s.sendall(sent)
                answers[name] = _read_all(s)  # returns once the server closes the connection
                waited = time.monotonic() - t0
            assert timeout * 0.9 <= waited < 20, (name, waited)
        assert answers["nothing"] == b""  # nothing asked, nothing answered (a browser's preconnect)
        status, body = _json_answer(answers["half a head"])
        assert status == 408 and "head" in body["error"] and "--read-timeout-s" in body["error"]
        status, body = _json_answer(answers["half a body"])
        assert status == 408 and "stalled" in body["error"] and "0.5 s" in body["error"]
        # a whole request whose forward takes 3x the read timeout: answered
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            s.sendall(f"{head}Content-Length: {len(png)}\r\nConnection: close\r\n\r\n".encode() + png)
            status, body = _json_answer(_read_all(s))
        assert status == 200 and len(body["predictions"]) == 5
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert metric(c, "convnext_serve_requests_total", endpoint="/v1/predict", status="408") == 1
