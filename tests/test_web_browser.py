"""The web page in a real browser: Debian chromium driven by Playwright against a live uvicorn server.

Screenshots go to test-artifacts/ (gitignored) so a human can look at the page.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

if not CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    import httpx
    import uvicorn

    from facelens.api import Analyzer
    from facelens.errors import ModelLoadError
    from facelens.serve.app import create_app

    try:
        analyzer = Analyzer()
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(analyzer=analyzer), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("server did not start")
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    out = {"face": folder / "astronaut.jpg", "plain": folder / "plain.png", "text": folder / "notes.txt"}
    Image.fromarray(data.astronaut()).save(out["face"], quality=90)
    yy, xx = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([xx % 256, yy % 256, np.full_like(xx, 128)], 2).astype(np.uint8)).save(out["plain"])
    out["text"].write_text("this is not a photo\n")
    return out


def _open(browser, server_url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server_url) or r.url.startswith("data:")
            else external.append(r.url))
    page.goto(server_url + "/")
    return page, external


@pytest.mark.parametrize(("width", "height", "shot"), [(1280, 900, "web.png"), (390, 844, "web-390.png")])
def test_upload_shows_face_card(browser, server_url, photos, width, height, shot):
    page, external = _open(browser, server_url, width, height)
    assert "estimate" in page.inner_text(".notice").lower()
    page.set_input_files("#file", str(photos["face"]))
    card = page.locator(".face-card").first
    card.wait_for(timeout=60_000)
    age = card.locator(".age-value").inner_text()
    assert re.fullmatch(r"\d{1,3} years", age), age
    assert re.search(r"80% interval: \d+–\d+", card.locator(".age-interval").inner_text())
    female = card.locator(".p-female").inner_text()
    assert re.fullmatch(r"P\(female\) \d{1,3}%", female), female
    bar_f = card.locator(".bar-female").bounding_box()
    bar_m = card.locator(".bar-male").bounding_box()
    bar = card.locator(".bar").bounding_box()
    assert bar["width"] > 100 and abs(bar_f["width"] + bar_m["width"] - bar["width"]) <= 2
    p_f = int(female.split()[-1].rstrip("%")) / 100
    assert bar_f["width"] / bar["width"] == pytest.approx(p_f, abs=0.02)
    # The crops the models saw and the annotated photo are actually rendered images.
    # (the face, and each eye or both eyes in one crop, as the eye model reads them; crops not sent are removed)
    assert page.eval_on_selector(".face-card .crop-face", "img => img.complete && img.naturalWidth > 0")
    assert page.eval_on_selector_all(".face-card .crops img",
                                     "imgs => imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector(".annotated img", "img => img.naturalWidth > 0")
    # The interval is as prominent as the value, and the card's number badge matches the photo's.
    size = "el => getComputedStyle(el).fontSize + ' ' + getComputedStyle(el).fontWeight"
    assert card.locator(".age-interval").evaluate(size) == card.locator(".age-value").evaluate(size)
    assert card.locator(".face-number").inner_text() == "1"
    # The answer is brought into view (at phone width it lies below the drop zone).
    page.wait_for_function("() => { const r = document.querySelector('.photo').getBoundingClientRect();"
                           " return r.top >= -1 && r.top < window.innerHeight / 2; }", timeout=10_000)
    assert page.evaluate("window.scrollY") > 0
    # Nothing overflows sideways (usable at phone width).
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    assert external == [], f"page requested other hosts: {external}"
    page.close()


def test_error_and_no_face_messages(browser, server_url, photos):
    page, external = _open(browser, server_url, 1000, 800)
    page.set_input_files("#file", [str(photos["plain"]), str(photos["text"])])
    page.locator(".photo-state.error").wait_for(timeout=60_000)
    page.locator(".photo-state.warn").wait_for(timeout=60_000)
    assert "not an image" in page.inner_text(".photo-state.error").lower()
    assert "no face" in page.inner_text(".photo-state.warn").lower()
    assert page.locator(".face-card").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-errors.png"), full_page=True)
    assert external == []
    page.close()



def _fake_face(x: float, p_left: float, p_right: float) -> dict:
    eyes = [{"side": "left", "p_female": p_left, "p_male": 1 - p_left, "box": [x + 30, 30, 10, 10]},
            {"side": "right", "p_female": p_right, "p_male": 1 - p_right, "box": [x + 10, 30, 10, 10]}]
    disagree = (p_left - 0.5) * (p_right - 0.5) < 0 and abs(p_left - p_right) > 0.5
    return {"box": [x, 20, 50, 60], "score": 0.9, "landmarks": {},
            "age": {"value": 30, "low": 25, "high": 40, "interval": 0.8},
            "sex": {"p_female": (p_left + p_right) / 2, "p_male": 1 - (p_left + p_right) / 2, "eyes": eyes,
                    "eyes_disagree": disagree, "caution": None}}


def test_disagreeing_eyes_are_flagged_on_the_card(browser, server_url, photos):
    """The page shows sex.eyes_disagree (the answer is faked here: the real models rarely produce it on demand)."""
    import json

    page, external = _open(browser, server_url, 1000, 800)
    body = {"schema": "facelens/1", "path": "x.jpg", "width": 200, "height": 100, "error": None, "message": None,
            "faces": [_fake_face(0, 0.9, 0.1), _fake_face(100, 0.9, 0.8)], "timings_ms": {"total": 5}}
    page.route("**/v1/analyze*", lambda route: route.fulfill(status=200, content_type="application/json",
                                                             body=json.dumps(body)))
    page.set_input_files("#file", str(photos["face"]))
    page.locator(".face-card").nth(1).wait_for(timeout=30_000)
    cards = page.locator(".face-card")
    assert [cards.nth(i).locator(".face-number").inner_text() for i in range(2)] == ["1", "2"]
    assert "eyes disagree" in cards.nth(0).locator(".eyes-disagree").inner_text()
    assert cards.nth(1).locator(".eyes-disagree").count() == 0
    assert external == []
    page.close()
