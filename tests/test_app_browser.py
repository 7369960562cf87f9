"""basam app in a real browser: Chromium headless, driven by Playwright, against a live server on a
free loopback port, with a real image from ../shared/data.

Set BASAM_UPDATE_SCREENSHOT=1 to write the screenshot to docs/images/app.png (the README's);
otherwise it goes to the test's tmp dir.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="basam app needs the [app] extra (starlette)")
pytest.importorskip("uvicorn", reason="basam app needs the [app] extra (uvicorn)")
pytest.importorskip("httpx", reason="the app tests need httpx ([test] extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed ([test] extra)")

from conftest import SHARED_DATA  # noqa: E402
from PIL import Image  # noqa: E402
from test_app import live_server  # noqa: E402

from basam.app.server import create_app  # noqa: E402
from basam.io import read_image, read_mask  # noqa: E402

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGE = SHARED_DATA / "duts-te" / "images" / "ILSVRC2012_test_00000105.jpg"
MASK = SHARED_DATA / "duts-te" / "masks" / "ILSVRC2012_test_00000105.png"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "app.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium)")


def _mask(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64)))) == 255


def test_the_page_in_chromium(tmp_path):
    if not IMAGE.is_file() or not MASK.is_file():
        pytest.skip(f"real image not found at {IMAGE} (../shared/data is absent)")
    gt = read_mask(MASK)
    H, W = read_image(IMAGE).shape[:2]
    ys, xs = np.nonzero(gt)
    px, py = int(np.median(xs)), int(np.median(ys))  # a pixel of the salient object
    assert gt[py, px]
    bx, by = 10, 10  # background (a corner; not in the object)
    assert not gt[by, bx]

    app = create_app(everything={"points_per_side": 8}, max_memory="600M")
    with live_server(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page.set_default_timeout(60_000)
            page_errors: list = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.state === 'idle'")
            assert "basam_tiny" in page.locator("#model").inner_text()
            assert page.locator("#preset option").all_inner_texts() == ["vanilla", "nsf", "basam"]

            # 1. open: upload, then the encoder runs with a visible "encoding" state
            page.set_input_files("#file", str(IMAGE))
            page.wait_for_function("document.body.dataset.state === 'ready'")
            history = page.evaluate("basamApp.state.history")
            assert "encoding" in history and history.index("encoding") < history.index("ready"), history
            assert "encoded in" in page.locator("#status-text").inner_text()

            canvas = page.locator("#canvas").bounding_box()

            def screen(x: float, y: float):
                return canvas["x"] + (x + 0.5) * canvas["width"] / W, canvas["y"] + (y + 0.5) * canvas["height"] / H

            # 2. left click: a foreground point; the overlay covers the clicked pixel
            with page.expect_response("**/api/predict") as info:
                page.mouse.click(*screen(px, py))
            assert info.value.status == 200
            sent = info.value.request.post_data_json
            assert len(sent["points"]) == 1 and sent["points"][0][2] == 1
            assert abs(sent["points"][0][0] - (px + 0.5)) < 1 and abs(sent["points"][0][1] - (py + 0.5)) < 1
            first = info.value.json()
            page.wait_for_selector("#canvas[data-overlay=mask]")
            shown = _mask(first["masks"][first["best"]])
            assert shown.shape == (H, W) and shown[py, px], "the mask shown covers the clicked pixel"
            assert 0.005 < shown.mean() < 0.95, f"a trivial mask (fraction {shown.mean():.3f})"
            pix = page.evaluate(f"basamApp.pixelAt({px}, {py})")
            assert pix["canvas"][:3] != pix["image"][:3], "the overlay is drawn over the clicked pixel"
            oy, ox = np.argwhere(~shown)[len(np.argwhere(~shown)) // 2]
            far = page.evaluate(f"basamApp.pixelAt({ox}, {oy})")
            assert far["canvas"][:3] == far["image"][:3], "outside the mask the image is untouched"
            cands = page.locator("#candidates .cand")
            assert cands.count() == 3
            for i, score in enumerate(first["scores"]):
                assert f"{score:.3f}" in cands.nth(i).inner_text()
            assert cands.nth(first["best"]).get_attribute("aria-pressed") == "true"

            # 3. right click: a background point
            with page.expect_response("**/api/predict") as info:
                page.mouse.click(*screen(bx, by), button="right")
            sent = info.value.request.post_data_json
            assert [p[2] for p in sent["points"]] == [1, 0]
            assert info.value.status == 200

            # 4. drag: a box
            x0, y0, x1, y1 = 40, 60, 280, 340
            with page.expect_response("**/api/predict") as info:
                page.mouse.move(*screen(x0, y0))
                page.mouse.down()
                page.mouse.move(*screen(x1, y1), steps=8)
                page.mouse.up()
            sent = info.value.request.post_data_json
            assert len(sent["points"]) == 2, "a drag adds no point"
            assert np.allclose(sent["box"], [x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5], atol=1.5), sent["box"]
            boxed = info.value.json()
            assert info.value.status == 200 and len(boxed["masks"]) == 3
            page.wait_for_function("basamApp.state.predictions >= 3")

            # 5. switch among the candidates; the download link follows
            for i in (2, 0, 1):
                page.click(f"#candidates .cand[data-index='{i}']")
                assert page.locator(f"#candidates .cand[data-index='{i}']").get_attribute("aria-pressed") == "true"
                assert page.locator("#canvas").get_attribute("data-selected") == str(i)
                assert page.locator("#download").get_attribute("href") == f"data:image/png;base64,{boxed['masks'][i]}"

            # 6. download the mask PNG: 0/255 at the image's size, the selected candidate
            with page.expect_download() as dl:
                page.click("#download")
            assert dl.value.suggested_filename == "ILSVRC2012_test_00000105_mask_1.png"
            got = np.array(Image.open(dl.value.path()))
            assert got.shape == (H, W) and set(np.unique(got)) <= {0, 255}
            np.testing.assert_array_equal(got == 255, _mask(boxed["masks"][1]))

            # 7. the screenshot (best candidate shown)
            page.click(f"#candidates .cand[data-index='{boxed['best']}']")
            shot = SCREENSHOT if os.environ.get("BASAM_UPDATE_SCREENSHOT") == "1" else tmp_path / "app.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            assert Image.open(shot).size == (1280, 860)

            # 8. segment everything
            page.click("#everything")
            page.wait_for_selector("#canvas[data-overlay=everything]")
            assert "masks" in page.locator("#candidates").inner_text()

            # 9. a resolution over the memory limit: refused with the reason on the page; back to 256
            error = page.locator("#error")
            page.locator("#resolution").fill("8192")
            page.locator("#resolution").dispatch_event("change")
            error.wait_for(state="visible")
            assert "8192 px" in error.inner_text() and "--max-memory" in error.inner_text()
            page.locator("#resolution").fill("256")
            page.locator("#resolution").dispatch_event("change")
            error.wait_for(state="hidden")
            page.wait_for_function("document.body.dataset.state === 'ready'")

            # 10. a corrupt upload: the error is on the page, and the server keeps serving
            page.set_input_files("#file", files=[{"name": "corrupt.png", "mimeType": "image/png",
                                                  "buffer": b"\x89PNG\r\n\x1a\n" + b"garbage" * 50}])
            error.wait_for(state="visible")
            assert "cannot read image" in error.inner_text() and "corrupt.png" in error.inner_text()
            with page.expect_response("**/api/predict") as info:
                page.mouse.click(*screen(px, py))
            assert info.value.status == 200
            error.wait_for(state="hidden")
            page.wait_for_selector("#canvas[data-overlay=mask]")
            assert not page_errors, page_errors
        finally:
            browser.close()
