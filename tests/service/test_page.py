"""The page at / in a real browser: Debian's headless Chromium driven by Playwright (its own browsers are never
downloaded: it launches the system's), against a real `neumeta serve` with API keys. The page asks for the key,
shows the models, follows the control, and its download button saves the file the API serves."""

from __future__ import annotations

import hashlib
import shutil

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.service.conftest import serving

KEY = "page-test-key"


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: `make test` installs it (apt-get install chromium)"
    return path


@pytest.fixture(scope="module")
def live():
    with serving(NEUMETA_API_KEYS=KEY) as server:
        yield server


@pytest.fixture()
def page(live):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 1400})
        requests: list[str] = []
        tab = context.new_page()
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(f"{live.url}/")
        tab.requests = requests  # type: ignore[attr-defined]
        yield tab
        browser.close()


def test_the_page_asks_for_the_key_then_downloads_what_the_api_serves(live, page, tmp_path):
    page.wait_for_selector("#keybox:not([hidden])")  # the service has keys: the page asks first
    page.fill("#key", "wrong")
    page.click("#keyok")
    page.wait_for_function("document.getElementById('status').textContent.includes('refused')")
    page.fill("#key", KEY)
    page.click("#keyok")
    page.wait_for_selector("#main:not([hidden])")
    info = httpx.get(f"{live.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()[0]
    assert info["dataset"] in page.inner_text("#about") and str(len(info["labels"])) in page.inner_text("#about")
    assert page.locator("#plot circle").count() >= len(info["accuracy"])  # one point per measured width

    allowed = info["widths_allowed"]
    measured = sorted(int(w) for w in info["accuracy"] if allowed["min"] <= int(w) < allowed["max"])
    w = measured[0]
    page.select_option("#mode", "width")
    page.fill("#value", str(w))  # move the control to a width the checkpoint's table holds
    page.wait_for_function(f"document.getElementById('o-width').textContent === '{w}'")
    assert page.inner_text("#o-params") == f"{info['params'][str(w)]:,}"
    assert f"{info['accuracy'][str(w)]:.2f} % (float32, held-out)" in page.inner_text("#o-acc")
    assert f"--width {w} --dtype float32" in page.inner_text("#o-fetch")
    between = next(v for v in range(w + 1, allowed["max"]) if str(v) not in info["accuracy"])
    page.fill("#value", str(between))
    page.wait_for_function(f"document.getElementById('o-width').textContent === '{between}'")
    assert "interpolated between measured widths" in page.inner_text("#o-acc")
    page.fill("#value", str(w))
    page.wait_for_function(f"document.getElementById('o-width').textContent === '{w}'")
    with page.expect_download() as caught:
        page.click("#download")
    saved = tmp_path / "downloaded.onnx"
    caught.value.save_as(saved)
    api = httpx.get(f"{live.url}/models", params={"width": w}, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == api.headers["etag"].strip('"')
    assert caught.value.suggested_filename == f"{info['name']}-w{w}.onnx"

    page.select_option("#mode", "max_bytes")  # a byte budget of a served file's size shows that file
    page.select_option("#dtype", "float16")
    size = info["bytes"]["float16"]["20"]
    page.fill("#value", str(size))
    page.wait_for_function("document.getElementById('o-width').textContent === '20'")
    assert f"float16: {size:,}" in page.inner_text("#o-bytes")
    page.fill("#value", "10")
    page.wait_for_function("document.getElementById('o-none').textContent.includes('No served model fits')")
    assert page.is_disabled("#download")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    foreign = [u for u in page.requests if not u.startswith(live.url) and not u.startswith(("blob:", "data:"))]
    assert foreign == []  # nothing from a CDN or anywhere else
