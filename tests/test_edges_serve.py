"""`diffusionlab serve` on its normal path: a real process on a real port answers /api/model and /api/sample with
the Python API's grid, pixel for pixel."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusionlab.images import make_grid
from diffusionlab.pipeline import Pipeline

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.usefixtures("one_thread")

STARTUP_S = 90  # importing torch and loading the model on a loaded 2-core machine
SCRIPT = Path(sys.executable).parent / "diffusionlab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a JSON POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.headers["content-type"], response.read()


@pytest.fixture(scope="module")
def server(pets_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``diffusionlab serve pets --port P`` as a subprocess; yields its base URL once it answers; always killed."""
    port = free_port()
    command = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "diffusionlab.cli"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", str(pets_model), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_S
            while True:
                assert process.poll() is None, f"serve exited with {process.returncode}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"serve did not answer in {STARTUP_S} s: {log.read_text()[-2000:]}"
                try:
                    get(f"{url}/api/model", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.2)
            yield url, log
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_serve_describes_the_model(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    status, kind, body = get(f"{url}/api/model")
    assert status == 200 and kind == "application/json"
    info = json.loads(body)
    assert info["name"] == "pets" and info["image_size"] == 8 and info["channels"] == 1
    assert info["class_names"] == ["cat", "dog", "owl"] and info["defaults"]["steps"] == 3


def test_serve_samples_the_python_api_grid(server, pets_model: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    settings = {"sampler": "ddim", "steps": 3, "guidance": 2.0, "seed": 5}
    body = {"num_samples": 5, "labels": [0, 1, 2, 1, 0], "nrow": 3, **settings}
    status, kind, png = get(f"{url}/api/sample", body)
    assert status == 200 and kind == "image/png"
    image = Image.open(io.BytesIO(png))
    # 2 rows of 3 at scale 2 with 2-pixel padding: (2 + 3 * (8 * 2 + 2)) x (2 + 2 * (8 * 2 + 2))
    assert image.size == (56, 38)
    expected = Pipeline.load(pets_model).sample(5, labels=[0, 1, 2, 1, 0], **settings)
    assert np.array_equal(np.asarray(image), np.asarray(make_grid(expected, nrow=3, scale=2)))
    assert image.text["seed"] == "5" and image.text["sampler"] == "ddim" and image.text["task"] == "sample"
