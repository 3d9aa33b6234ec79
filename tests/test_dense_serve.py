"""`convnext serve` with a detector and a segmenter: the API answers as `convnext predict` computes (the
same detections with RLE masks; the same class shares and label map, as a base64 PNG), and the page draws
them (headless Chromium, as test_serve_browser.py: skipped without Chromium or Playwright).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from test_dense_predict import DET, SEG, det_checkpoint, seg_checkpoint, small_photo  # noqa: E402
from test_serve import wait_ready  # noqa: E402

from convnext.serve.app import ServeSettings, create_app  # noqa: E402
from convnext.serve.runners import load_runner  # noqa: E402
from convnext.serve.server import ThreadedServer  # noqa: E402

CHROMIUM = os.environ.get("CONVNEXT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _post(url: str, picture: Path, query: str = "") -> httpx.Response:
    with open(picture, "rb") as f:
        return httpx.post(
            f"{url}/v1/predict{query}", files={"file": (picture.name, f, "image/png")}, timeout=60
        )


def test_api_answers_as_predict_computes(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from convnext.inference.dense import detection_json, load_dense, predict_dense

    picture = small_photo(tmp_path / "tench.png")
    seg = seg_checkpoint(tmp_path / "upernet.pth", num_classes=150)
    app = create_app(lambda: load_runner(str(seg), SEG, device="cpu", img_size=64), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        info = httpx.get(srv.url + "/v1/model").json()
        assert info["task"] == "segmentation" and info["labels"][0] == "wall" and len(info["palette"]) == 150
        answer = _post(srv.url, picture).json()
    (pred,) = predict_dense(load_dense(str(seg), SEG, img_size=64), [str(picture)])
    label_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["label_map"]))))
    assert torch.equal(torch.from_numpy(label_map.astype("int64")), pred.label_map)
    assert [c["index"] for c in answer["classes"]] == [c for c, _, _ in pred.fractions]

    det = det_checkpoint(tmp_path / "maskrcnn.pth")
    app = create_app(lambda: load_runner(str(det), DET, device="cpu", img_size=64), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        answer = _post(srv.url, picture, "?score_threshold=0.3").json()
        bad = _post(srv.url, picture, "?score_threshold=high")
    (pred,) = predict_dense(load_dense(str(det), DET, img_size=64), [str(picture)], score_threshold=0.3)
    assert answer["task"] == "detection" and len(answer["detections"]) > 0
    assert answer["detections"] == detection_json(pred.detections)
    assert bad.status_code == 400 and "score_threshold" in bad.json()["error"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install chromium, or set CONVNEXT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    from test_serve_browser import ARGS

    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium, sync_api.expect
        finally:
            chromium.close()


def _drawn_pixels(page) -> dict:
    """How many canvas pixels differ from the photo drawn alone, and the canvas size."""
    return page.evaluate(
        """() => {
          const c = document.getElementById('canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let coloured = 0;
          for (let o = 0; o < d.length; o += 4) if (d[o] !== d[o + 1] || d[o + 1] !== d[o + 2]) coloured++;
          return {w: c.width, h: c.height, coloured};
        }"""
    )


@pytest.mark.parametrize(
    "task",
    [
        pytest.param("detection", marks=pytest.mark.slow),
        "segmentation",
    ],  # detection: 100 RLE masks drawn, ~13 s
)
def test_page_draws_boxes_masks_or_classes_with_a_legend(browser, tmp_path: Path, task: str) -> None:
    chromium, expect = browser
    from PIL import Image

    grey = tmp_path / "grey.png"  # a grey photo: every coloured pixel on the canvas is the model's answer
    Image.open(small_photo(tmp_path / "tench.png")).convert("L").convert("RGB").save(grey)
    if task == "detection":
        weights, arch, n = det_checkpoint(tmp_path / "maskrcnn.pth"), DET, None
    else:
        weights, arch, n = seg_checkpoint(tmp_path / "upernet.pth", num_classes=150), SEG, None
    app = create_app(lambda: load_runner(str(weights), arch, device="cpu", img_size=64), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        answer = _post(srv.url, grey, "?score_threshold=0.3").json()
        page = chromium.new_page()
        try:
            page.goto(srv.url + "/")
            expect(page.locator("#model-info")).to_contain_text(task)
            if task == "detection":
                page.fill("#threshold", "0.3")  # the tiny random detector scores about 0.4
            page.set_input_files("#file", str(grey))
            expect(page.locator("#canvas")).to_have_attribute("data-drawn", "1")
            expect(page.locator("#result")).to_be_hidden()
            drawn = _drawn_pixels(page)
            assert (drawn["w"], drawn["h"]) == (160, 120)
            legend = page.locator("#legend li")
            if task == "detection":
                n = len(answer["detections"])
                expect(legend).to_have_count(n)
                assert n > 0 and drawn["coloured"] > 500  # boxes and masks in the classes' colours
                assert legend.first.locator(".name").inner_text() == answer["detections"][0]["name"]
            else:
                n = len(answer["classes"])
                expect(legend).to_have_count(n)
                names = legend.locator(".name").all_inner_texts()
                assert names == [c["name"] for c in answer["classes"]]  # ADE20K's names, largest first
                assert drawn["coloured"] > 0.9 * 160 * 120  # the coloured classes over the whole image
                page.check("#mask-only")  # the classes alone: the palette's colours, exactly
                expect(page.locator("#canvas")).to_have_attribute("data-drawn", "1")
                top = answer["classes"][0]["index"]
                colours = page.evaluate(
                    """() => { const c = document.getElementById('canvas');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       const seen = {};
                       for (let o = 0; o < d.length; o += 4) seen[[d[o], d[o+1], d[o+2]]] = 1;
                       return Object.keys(seen); }"""
                )
                from convnext.inference.dense import palette_for

                assert ",".join(map(str, palette_for(150)[top])) in colours
            page.screenshot(path=str(tmp_path / f"serve_{task}.png"), full_page=True)
        finally:
            page.close()
