"""The web page of `convnext serve` in a real browser (headless Chromium driven by Playwright): upload a
photo, wait for the bars, check the top-1 label against `convnext predict`, toggle Grad-CAM, see an error
in words, save a screenshot.

Chromium: Debian's package (`apt-get install chromium`; .ci/run installs it when it runs as root), or the
binary named by $CONVNEXT_CHROMIUM. Without it this test is skipped and says why. docs/serve.png was taken
with this flow: `CONVNEXT_SERVE_WEIGHTS=runs/quickstart_digits CONVNEXT_SERVE_SCREENSHOT=docs/serve.png
pytest tests/test_serve_browser.py` (the 10-epoch quickstart run of `make demo`).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_serve import predict_json, train_digits, wait_ready

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


def test_page_uploads_a_photo_and_shows_top5_and_grad_cam(tmp_path_factory, tmp_path: Path) -> None:
    if CHROMIUM is None:  # a warning too, so that `pytest -q` shows the reason without -rs
        warnings.warn(NO_CHROMIUM, stacklevel=1)
        pytest.skip(NO_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    run = Path(os.environ.get("CONVNEXT_SERVE_WEIGHTS") or train_digits(tmp_path_factory))
    photo = sorted((run / "samples").glob("*.png"))[0]
    expected = predict_json([str(photo)], run)[str(photo)]["top"]
    shot = tmp_path / "serve_cam.png"

    app = create_app(lambda: load_runner(str(run), device="cpu"), ServeSettings())
    with ThreadedServer(app) as srv, sync_api.sync_playwright() as pw:
        wait_ready(srv.url)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 600}, device_scale_factor=1)
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
            browser.close()
    assert shot.stat().st_size > 10_000 and (tmp_path / "serve_bars.png").stat().st_size > 10_000
