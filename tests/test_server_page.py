"""The web page in a real browser: it describes the model, samples a grid, inpaints an upload, shows errors.

Needs Playwright (in the test extra) and Debian's chromium at /usr/bin/chromium; skipped without them, except in
CI (CI=true), where .ci/run installs both and a missing browser fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if os.environ.get("CI") and not (CHROMIUM.is_file() and importlib.util.find_spec("playwright")):
    raise RuntimeError("CI must run the browser test: .ci/run installs chromium and the test extra's playwright")
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium", allow_module_level=True)

from diffusionlab.server import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def url(pets_model: Path):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pets_model), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_page_samples_inpaints_and_reports_errors(url: str, tmp_path: Path) -> None:
    image = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(image)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        sync_api.expect(page.locator("#about")).to_contain_text("Model pets: 8×8, 1 channel(s), 3 classes")
        assert page.locator("#label option").all_inner_texts() == [
            "one of each",
            "cat",
            "dog",
            "owl",
            "none (unconditional)",
        ]
        page.fill("#num_samples", "6")
        page.click("#sample")
        page.wait_for_selector("#result-image")
        width = page.eval_on_selector("#result-image", "img => img.naturalWidth")
        assert width == 2 + 6 * (8 * 2 + 2)  # the grid of 6 images at scale 2 with 2-pixel padding
        page.set_input_files("#image", str(image))
        page.select_option("#region", "bottom")
        page.click("#inpaint")
        page.wait_for_function("document.querySelector('#result-image')?.naturalWidth === 8")
        page.fill("#steps", "0")
        page.click("#sample")
        sync_api.expect(page.locator("#error")).to_contain_text("steps")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert errors == []
