"""The studio page in a real browser (Debian's chromium through Playwright): pick a model, the same seed twice gives
the same image, cancel a long job, paint a mask and inpaint (the pixels outside it unchanged), reopen a job from the
gallery, restore settings from a dropped PNG, and every data kind: a table, text and infilling, audio, points.

Needs Playwright (in the test extra) and Debian's chromium at /usr/bin/chromium; skipped without them, except in
CI (CI=true), where .ci/run installs both and a missing browser fails the run. DIFFUSIONLAB_SCREENSHOTS=docs writes
the pages' screenshots to docs/ (the README's pictures).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

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
expect = sync_api.expect


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, pets_model: Path):  # type: ignore[no-untyped-def]
    from studio_models import write_studio_root

    folder = tmp_path_factory.mktemp("studio-page")
    root = write_studio_root(folder / "models", pets_model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(root, data_dir=folder / "data")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(url: str):  # type: ignore[no-untyped-def]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        tab = browser.new_page(viewport={"width": 1100, "height": 900})
        tab.errors = []  # type: ignore[attr-defined]
        tab.on("pageerror", lambda e: tab.errors.append(str(e)))  # type: ignore[attr-defined]
        tab.goto(url)
        expect(tab.locator("#about")).to_contain_text("markov")
        yield tab
        assert tab.errors == []  # type: ignore[attr-defined]
        browser.close()


def get(url: str, path: str) -> Any:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=30) as response:
        body = response.read()
        return json.loads(body) if response.headers["content-type"].startswith("application/json") else body


def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("DIFFUSIONLAB_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"studio-{name}.png"), full_page=True)


PICTURE_SHOWN = "(i => i && i.complete && i.naturalWidth > 0)(document.querySelector('#result img.picture'))"


def run_and_wait(page: Any) -> str:
    """Click Run; the job id of the result it shows."""
    before = page.eval_on_selector("#result", "r => r.firstElementChild?.dataset.job || ''")
    page.click("#run")
    page.wait_for_function(f"(document.querySelector('#result .result')?.dataset.job || '') !== '{before}'")
    return page.eval_on_selector("#result .result", "r => r.dataset.job")


def pick(page: Any, model: str, task: str = "sample") -> None:
    page.select_option("#model", model)
    page.wait_for_function("!studio.loading")
    expect(page.locator("#about")).to_contain_text(model + ":")
    page.select_option("#task", task)


def test_the_same_seed_twice_gives_the_same_image(page: Any, url: str) -> None:
    pick(page, "pets")
    expect(page.locator("#about")).to_contain_text("8×8, 1 channel(s), 3 classes")
    assert page.locator("#label option").all_inner_texts() == [
        "one of each",
        "cat",
        "dog",
        "owl",
        "none (unconditional)",
    ]
    page.fill("#num_samples", "4")
    page.fill("#seed", "5")
    first = run_and_wait(page)
    assert page.locator("#result img.out").count() == 4
    second = run_and_wait(page)
    assert first != second and get(url, f"/api/jobs/{first}/files/grid.png") == get(
        url, f"/api/jobs/{second}/files/grid.png"
    )
    width = page.eval_on_selector("#result img.out", "img => img.getBoundingClientRect().width")
    assert width >= 90  # an 8x8 sample is shown at a readable size, not squeezed
    shoot(page, "create")


def test_a_long_job_shows_progress_and_escape_cancels_it(page: Any, url: str) -> None:
    pick(page, "pets")
    page.fill("#steps", "1000")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("running · step", timeout=20_000)
    page.keyboard.press("Escape")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=5_000)
    latest = get(url, "/api/jobs?limit=1")["jobs"][0]
    assert latest["state"] == "cancelled" and latest["step"] < 1000
    page.fill("#steps", "3")


def test_a_painted_mask_inpaints_and_keeps_the_rest(page: Any, url: str) -> None:
    pick(page, "pets")
    page.fill("#steps", "3")
    job = run_and_wait(page)
    source = np.asarray(Image.open(io.BytesIO(get(url, f"/api/jobs/{job}/files/sample-000.png"))))
    page.locator("#result .send-inpaint").first.click()
    expect(page.locator("#task")).to_have_value("inpaint")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 0.1 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.3 * box["height"], steps=8)
    page.mouse.up()
    mask = np.array(page.evaluate("Array.from(studio.maskData)"), dtype=bool).reshape(8, 8)
    assert 0 < mask.sum() < 64
    shoot(page, "inpaint")
    result = run_and_wait(page)
    filled = np.asarray(Image.open(io.BytesIO(get(url, f"/api/jobs/{result}/files/inpaint-000.png"))))
    assert np.array_equal(filled[~mask], source[~mask])  # every pixel outside the painted mask, unchanged
    page.click("#clear")
    assert page.evaluate("studio.maskData.every(v => v === 0)")


def test_a_gallery_job_reopens_its_settings_and_a_dropped_png_restores_them(page: Any, url: str) -> None:
    pick(page, "pets")
    page.fill("#seed", "77")
    page.fill("#steps", "4")
    job = run_and_wait(page)
    page.fill("#seed", "1")
    page.click("#tab-gallery")
    row = page.locator(f".job[data-id='{job}']")
    expect(row).to_contain_text("seed 77")
    shoot(page, "gallery")
    row.locator("button.open").click()
    expect(page.locator("#seed")).to_have_value("77")
    page.wait_for_function("!studio.loading")
    assert page.input_value("#steps") == "4"
    png = base64.b64encode(get(url, f"/api/jobs/{job}/files/sample-001.png")).decode()
    page.fill("#seed", "2")
    pick(page, "moons")
    page.evaluate(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer(); data.items.add(new File([bytes], "x.png", { type: "image/png" }));
        document.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true })); }""",
        png,
    )
    expect(page.locator("#seed")).to_have_value("77")
    page.wait_for_function("!studio.loading")
    assert page.input_value("#model") == "pets" and page.input_value("#steps") == "4"


def test_tables_texts_audio_and_points(page: Any) -> None:
    pick(page, "people")
    page.fill("#num_samples", "25")
    run_and_wait(page)
    assert page.locator("#result table.rows th").all_inner_texts() == ["age", "income", "city", "member", "y"]
    assert page.locator("#result table.rows tbody tr").count() == 20
    shoot(page, "table")
    pick(page, "markov")
    page.fill("#num_samples", "3")
    run_and_wait(page)
    assert page.locator("#result .texts pre").count() == 3
    pick(page, "markov", "infill")
    prompt = "abab" + "_" * 20 + "dcba"
    page.fill("#infill-text", prompt)
    run_and_wait(page)
    for text in page.locator("#result .texts pre").all_inner_texts():
        assert len(text) == 32 and text.startswith("abab") and text[24:28] == "dcba"
    pick(page, "tones/clips")
    page.fill("#num_samples", "2")
    run_and_wait(page)
    assert page.locator("#result audio").count() == 2
    page.wait_for_function(PICTURE_SHOWN)
    shoot(page, "audio")
    pick(page, "moons")
    page.fill("#num_samples", "40")
    run_and_wait(page)
    assert page.locator("#result canvas.scatter").count() == 1
    pick(page, "moving")
    page.fill("#num_samples", "2")
    run_and_wait(page)
    assert page.locator("#result img.clip").count() == 2
    page.wait_for_function(PICTURE_SHOWN)


def test_bad_input_shows_one_sentence_and_the_page_fits_a_phone(page: Any) -> None:
    pick(page, "pets")
    page.fill("#steps", "0")
    page.click("#run")
    expect(page.locator("#error")).to_contain_text("steps")
    page.fill("#steps", "3")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.keyboard.press("Enter")  # Enter runs from anywhere but a text box
    expect(page.locator("#error")).to_have_text("", timeout=20_000)
    page.set_viewport_size({"width": 1100, "height": 900})
