"""The web page of `convnext serve` in a real browser (headless Chromium driven by Playwright): upload a
photo, wait for the bars, check the top-1 label against `convnext predict`, toggle Grad-CAM, see an error
in words, save a screenshot; a 2- and a 3-class fine-tune show their 2 and 3 bars; an error clears the
previous result.

Chromium: Debian's package (`apt-get install chromium`; .ci/run installs it when it runs as root), or the
binary named by $CONVNEXT_CHROMIUM. Without it this test is skipped and says why. docs/serve.png was taken
with this flow: `CONVNEXT_SERVE_WEIGHTS=runs/quickstart_digits CONVNEXT_SERVE_SCREENSHOT=docs/serve.png
pytest tests/test_serve_browser.py` (the 10-epoch quickstart run of `make demo`).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_serve import predict_json, tiny_png, tiny_weights, train_digits, wait_ready

from convnext.serve.app import ServeSettings, create_app
from convnext.serve.runners import load_runner
from convnext.serve.server import ThreadedServer

CHROMIUM = os.environ.get("CONVNEXT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# The network is closed in CI: no Playwright browser download, no Google services, no GPU.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

NO_CHROMIUM = "no Chromium here (apt-get install chromium, or set CONVNEXT_CHROMIUM): browser test skipped"


def _sync_api():
    if CHROMIUM is None:  # a warning too, so that `pytest -q` shows the reason without -rs
        warnings.warn(NO_CHROMIUM, stacklevel=2)
        pytest.skip(NO_CHROMIUM)
    return pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (each test opens its own page)."""
    sync_api = _sync_api()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_page_uploads_a_photo_and_shows_top5_and_grad_cam(browser, tmp_path_factory, tmp_path: Path) -> None:
    sync_api = _sync_api()
    run = Path(os.environ.get("CONVNEXT_SERVE_WEIGHTS") or train_digits(tmp_path_factory))
    photo = sorted((run / "samples").glob("*.png"))[0]
    expected = predict_json([str(photo)], run)[str(photo)]["top"]
    shot = tmp_path / "serve_cam.png"

    app = create_app(lambda: load_runner(str(run), device="cpu"), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        page = browser.new_page(viewport={"width": 960, "height": 600}, device_scale_factor=1)
        try:
            expect = sync_api.expect
            page.goto(srv.url + "/")
            expect(page.locator("#model-info")).to_contain_text("convnext_atto")
            # upload: the bars appear, top-1 first, the same label and order as `convnext predict`
            page.set_input_files("#file", str(photo))
            bars = page.locator("#bars li")
            expect(bars).to_have_count(5)
            labels = [bars.nth(i).locator(".label").inner_text() for i in range(5)]
            assert labels == [t["class"] for t in expected]
            assert bars.first.locator(".pct").inner_text() == f"{expected[0]['prob'] * 100:.2f}%"
            expect(page.locator("#latency")).to_contain_text("ms on the server")
            page.screenshot(path=str(tmp_path / "serve_bars.png"), full_page=True)
            if os.environ.get("CONVNEXT_SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["CONVNEXT_SERVE_SCREENSHOT"], full_page=True)
            # Grad-CAM: the heat map replaces the photo, with its colour bar
            expect(page.locator("#cam-image")).to_be_hidden()
            page.check("#cam-toggle")
            expect(page.locator("#cam-image")).to_be_visible()
            expect(page.locator("#colorbar")).to_be_visible()
            expect(page.locator("#photo")).to_be_hidden()
            assert page.get_attribute("#cam-image", "src").startswith("data:image/png;base64,")
            page.wait_for_function("document.getElementById('cam-image').naturalWidth > 0")
            page.screenshot(path=str(shot), full_page=True)
            # toggled off: the photo again
            page.uncheck("#cam-toggle")
            expect(page.locator("#photo")).to_be_visible()
            # a file that is not an image: the server's sentence, on the page
            page.set_input_files(
                "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hi"}]
            )
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error")).to_contain_text("not an image")
        finally:
            page.close()
    assert shot.stat().st_size > 10_000 and (tmp_path / "serve_bars.png").stat().st_size > 10_000


@pytest.mark.parametrize("labels", [["cat", "dog"], ["red", "green", "blue"]])
def test_page_works_for_a_model_with_fewer_than_5_classes(browser, labels: list[str], tmp_path: Path) -> None:
    """Most fine-tunes have fewer than 5 classes. The page asked for topk=5 and the API answered 400, so
    the page showed only an error; now the page asks for min(5, classes) and the API clamps topk."""
    sync_api = _sync_api()
    expect = sync_api.expect
    weights = tiny_weights(tmp_path / "model.safetensors", labels)
    photo = tiny_png(tmp_path / "photo.png")
    app = create_app(lambda: load_runner(str(weights), device="cpu", img_size=32), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        page = browser.new_page()
        try:
            page.goto(srv.url + "/")
            expect(page.locator("#model-info")).to_contain_text(f"{len(labels)} classes")
            with page.expect_request("**/v1/predict?*") as request:
                page.set_input_files("#file", str(photo))
            assert f"topk={len(labels)}" in request.value.url  # min(5, classes), from /v1/model
            bars = page.locator("#bars li")
            expect(bars).to_have_count(len(labels))
            expect(page.locator("#error")).to_be_hidden()
            assert sorted(bars.locator(".label").all_inner_texts()) == sorted(labels)
            expect(page.locator("#k")).to_have_text(str(len(labels)))
        finally:
            page.close()


def test_an_error_clears_the_previous_result(browser, tmp_path: Path) -> None:
    """A good image (bars and Grad-CAM on screen), then a bad one: the error stood beside the first
    image's bars and heat map, as if they were the second image's answer. Now only the error remains,
    and the next good image shows its result again."""
    sync_api = _sync_api()
    expect = sync_api.expect
    weights = tiny_weights(tmp_path / "model.safetensors", ["cat", "dog"])
    photo = tiny_png(tmp_path / "photo.png")
    app = create_app(lambda: load_runner(str(weights), device="cpu", img_size=32), ServeSettings())
    with ThreadedServer(app) as srv:
        wait_ready(srv.url)
        page = browser.new_page()
        try:
            page.goto(srv.url + "/")
            expect(page.locator("#model-info")).to_contain_text("2 classes")
            page.set_input_files("#file", str(photo))
            expect(page.locator("#bars li")).to_have_count(2)
            page.check("#cam-toggle")
            expect(page.locator("#cam-image")).to_be_visible()
            bad = {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"}
            page.set_input_files("#file", files=[bad])
            expect(page.locator("#error")).to_contain_text("not an image")
            expect(page.locator("#result")).to_be_hidden()
            expect(page.locator("#bars li")).to_have_count(0)
            expect(page.locator("#cam-image")).to_be_hidden()
            expect(page.locator("#photo")).not_to_have_attribute("src", re.compile("."))
            # the next good image: its result, and the error gone
            page.set_input_files("#file", str(photo))
            expect(page.locator("#bars li")).to_have_count(2)
            expect(page.locator("#result")).to_be_visible()
            expect(page.locator("#error")).to_be_hidden()
        finally:
            page.close()
