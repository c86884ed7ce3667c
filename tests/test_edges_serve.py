"""`diffusionlab serve` on its normal path and under hostile requests.

A real process on a real port answers /api/model and /api/sample with the Python API's grid, pixel for pixel; it
answers NaN, a 50 MB body and the OpenAPI schema as documented. In-process (``TestClient``): strict types, bounded
numbers, the body limit on streamed bodies, decompression bombs and unexpected errors, each one sentence."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
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
            [
                *command,
                "serve",
                str(pets_model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(log.parent),
            ],
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


# ------------------------------------------------------------------ hostile requests (issue 13)


def raw(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple:
    """(status, content type, body) of one request on a fresh connection, error statuses included."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path, body=body, headers=headers or {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        connection.close()


def test_serve_answers_nan_and_infinity_with_one_sentence(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    for literal in ("NaN", "Infinity", "-Infinity"):
        status, kind, body = raw(f"{url}/api/sample", "POST", f'{{"guidance": {literal}}}'.encode())
        assert (status, kind) == (422, "application/json"), (literal, status, body)
        assert json.loads(body) == {"detail": "guidance: must be a finite number."}


def test_serve_refuses_a_large_body_before_reading_it(server) -> None:  # type: ignore[no-untyped-def]
    """50 MB declared and none of it sent: the 413 comes at once (the server did not wait for the body)."""
    from diffusionlab.server import MAX_BODY_BYTES

    url, _ = server
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", "/api/sample")
        connection.putheader("content-type", "application/json")
        connection.putheader("content-length", str(50 * 10**6))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        detail = json.loads(response.read())["detail"]
    finally:
        connection.close()
    assert detail == f"the request body is larger than the limit of {MAX_BODY_BYTES:,} bytes."
    assert MAX_BODY_BYTES == 16 * 2**20


def test_serve_publishes_its_openapi_schema_and_docs(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    status, kind, body = raw(f"{url}/openapi.json")
    assert (status, kind) == (200, "application/json")
    schema = json.loads(body)
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "diffusionlab"
    jobs = ["/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/events"]
    jobs += ["/api/jobs/{job_id}/files/{name}", "/api/jobs/img2img", "/api/jobs/infill", "/api/jobs/inpaint"]
    expected = ["/api/img2img", "/api/inpaint", "/api/model", "/api/models", "/api/sample", *jobs, "/api/jobs/sample"]
    assert sorted(schema["paths"]) == sorted(expected)  # the page (/) is not part of the API
    for task in ("sample", "img2img", "inpaint"):
        responses = schema["paths"][f"/api/{task}"]["post"]["responses"]
        assert sorted(responses) == ["200", "400", "404", "413", "422", "429"]
        queued = schema["paths"][f"/api/jobs/{task}"]["post"]["responses"]
        assert sorted(queued) == ["202", "400", "404", "413", "422", "429"]
        assert list(responses["200"]["content"]) == ["image/png"]
        error = responses["422"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorDetail"}
    assert schema["components"]["schemas"]["ErrorDetail"]["properties"]["detail"]["type"] == "string"
    status, kind, page = raw(f"{url}/docs")
    assert status == 200 and kind.startswith("text/html")
    assert b"swagger-ui" in page and b"/openapi.json" in page


@pytest.fixture(scope="module")
def client(pets_model: Path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from diffusionlab.server import create_app

    return TestClient(create_app(pets_model), raise_server_exceptions=False)


def post_raw(client, path: str, text: str):  # type: ignore[no-untyped-def]
    """POST ``text`` as the JSON body (so NaN, Infinity and any integer go as written)."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


def detail_of(response) -> str:  # type: ignore[no-untyped-def]
    """The one-sentence ``detail`` of an error answer, read as strict JSON (a NaN or Infinity in it fails)."""
    assert response.headers["content-type"] == "application/json", response.headers
    answer = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer {response.text}"))
    assert set(answer) == {"detail"} and isinstance(answer["detail"], str), answer
    detail = answer["detail"]
    assert "\n" not in detail and len(detail) <= 300 and "Traceback" not in detail and "<" not in detail, detail
    return detail


IMAGE = {"image": "aGVsbG8="}  # base64 that is no image: the request gets past the schema only if the rest is right
NUMBERS = [  # every number field of every endpoint (and a list's element)
    ("/api/sample", '{{"guidance": {}}}', "guidance"),
    ("/api/sample", '{{"guidance_rescale": {}}}', "guidance_rescale"),
    ("/api/sample", '{{"steps": {}}}', "steps"),
    ("/api/sample", '{{"seed": {}}}', "seed"),
    ("/api/sample", '{{"num_samples": {}}}', "num_samples"),
    ("/api/sample", '{{"labels": [1, {}]}}', "labels[1]"),
    ("/api/img2img", '{{"image": "aGVsbG8=", "strength": {}}}', "strength"),
    ("/api/img2img", '{{"image": "aGVsbG8=", "label": {}}}', "label"),
    (
        "/api/inpaint",
        '{{"image": "aGVsbG8=", "mask": "aGVsbG8=", "reconstruction_guidance": {}}}',
        "reconstruction_guidance",
    ),
]


@pytest.mark.parametrize("path, template, field", NUMBERS)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_and_never_echoed(
    client, path: str, template: str, field: str, literal: str
) -> None:  # type: ignore[no-untyped-def]
    response = post_raw(client, path, template.format(literal))
    assert response.status_code == 422, response.text
    detail = detail_of(response)
    assert detail.startswith(f"{field}: must be a "), detail
    assert not any(word in detail.lower() for word in ("nan", "inf")), detail


@pytest.mark.parametrize(
    "path, body, detail",
    [
        ("/api/sample", '{"steps": "5"}', 'steps="5": must be a valid integer.'),
        ("/api/sample", '{"num_samples": true}', "num_samples=true: must be a valid integer."),
        ("/api/sample", '{"seed": 1.5}', "seed=1.5: must be a valid integer."),
        ("/api/sample", '{"guidance": "2"}', 'guidance="2": must be a valid number.'),
        ("/api/sample", '{"nrow": 2.0}', "nrow=2.0: must be a valid integer."),
        ("/api/sample", '{"labels": ["1"]}', 'labels[0]="1": must be a valid integer.'),
        ("/api/sample", '{"labels": true}', "labels=true: must be a valid list or a valid integer."),
        ("/api/sample", '{"mixed_precision": false}', "mixed_precision=false: must be 'auto', 'no' or 'bf16'."),
        ("/api/img2img", '{"image": "aGVsbG8=", "strength": "0.5"}', 'strength="0.5": must be a valid number.'),
        ("/api/img2img", '{"image": "aGVsbG8=", "label": true}', "label=true: must be a valid integer."),
        ("/api/img2img", '{"image": 5}', "image=5: must be a valid string."),
        ("/api/inpaint", '{"image": "aGVsbG8="}', "mask is required."),
        ("/api/sample", '{"colour": "red"}', "colour is not a field of this request (see /docs)."),
        ("/api/sample", '{"colour\\n": 1}', '"colour\\n" is not a field of this request (see /docs).'),
        (
            "/api/sample",
            json.dumps({"x" * 50: 1}),
            "the request has a field that is not one of its fields (see /docs).",
        ),
        ("/api/sample", "[1, 2]", "the request body must be a JSON object of this request's fields (see /docs)."),
        (
            "/api/sample",
            '{"steps": 1,}',
            "the request body is not valid JSON (Expecting property name enclosed in double quotes).",
        ),
    ],
)
def test_types_are_strict_and_each_error_is_one_sentence(client, path: str, body: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    response = post_raw(client, path, body)
    assert response.status_code == 422, response.text
    assert detail_of(response) == detail


def test_the_library_types_still_convert_for_python_callers() -> None:
    """Strictness is the HTTP models' own: the library's request types still take numpy scalars and tuples."""
    from diffusionlab.sampling.request import SampleRequest

    request = SampleRequest.from_settings(steps=np.int64(5), guidance=np.float32(2), seed=np.int64(3), labels=(1, 2))
    assert (request.sampler.steps, request.guidance.guidance, request.seed) == (5, 2.0, 3)
    assert type(request.seed) is int and request.conditioning.labels == [1, 2]


@pytest.mark.parametrize(
    "path, body, status, detail",
    [
        ("/api/sample", f'{{"labels": [{2**70}]}}', 422, "labels[0]: must be less than or equal to 2147483647."),
        ("/api/sample", f'{{"labels": {2**70}}}', 422, "labels: must be less than or equal to 2147483647."),
        ("/api/sample", '{"labels": [0, -1]}', 422, "labels[1]=-1: must be greater than or equal to 0."),
        (
            "/api/img2img",
            f'{{"image": "aGVsbG8=", "label": {2**70}}}',
            422,
            "label: must be less than or equal to 2147483647.",
        ),
        ("/api/sample", f'{{"seed": {2**63}}}', 422, f"seed={2**63}: must be less than or equal to {2**63 - 1}."),
        ("/api/sample", '{"seed": -1}', 422, "seed=-1: must be greater than or equal to 0."),
        ("/api/sample", f'{{"steps": {2**70}}}', 422, "steps: must be less than or equal to 1000."),
        (
            "/api/sample",
            json.dumps({"labels": [0] * 65}),
            422,
            "labels: list should have at most 64 items after validation, not 65.",
        ),
    ],
)
def test_integers_are_bounded(client, path: str, body: str, status: int, detail: str) -> None:  # type: ignore[no-untyped-def]
    response = post_raw(client, path, body)
    assert response.status_code == status, response.text
    assert detail_of(response) == detail


def test_labels_beyond_the_models_classes_are_400(client) -> None:  # type: ignore[no-untyped-def]
    for body in (
        '{"labels": [3]}',
        '{"num_samples": 4, "labels": [0, 1, 2, 3]}',
        '{"num_samples": 2, "labels": 2147483647}',
    ):
        response = post_raw(client, "/api/sample", body)
        assert response.status_code == 400, response.text
        detail = detail_of(response)
        assert "label" in detail and "0..2" in detail and "overflow" not in detail.lower(), detail


def test_the_largest_seed_samples(client) -> None:  # type: ignore[no-untyped-def]
    response = post_raw(client, "/api/sample", f'{{"seed": {2**63 - 1}, "num_samples": 1, "steps": 1}}')
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).text["seed"] == str(2**63 - 1)


def test_the_body_limit_counts_declared_and_streamed_bytes(pets_model: Path) -> None:
    from fastapi.testclient import TestClient

    from diffusionlab.server import MAX_BODY_BYTES, create_app

    client = TestClient(create_app(pets_model, max_body_bytes=100))
    refused = {"detail": "the request body is larger than the limit of 100 bytes."}
    body = b'{"seed": 1, "num_samples": 7, "steps": 1, "sampler": "ddim", "labels": [0, 1, 2, 0, 1, 2, 0]}'

    def padded(size: int) -> bytes:  # the same valid request, ``size`` bytes long
        return body[:-1] + b" " * (size - len(body)) + b"}"

    assert len(body) == 93 and len(padded(101)) == 101
    for declared in (padded(101), padded(10**6)):
        response = post_raw(client, "/api/sample", declared.decode())
        assert (response.status_code, response.json()) == (413, refused)

    def streamed(data: bytes):  # type: ignore[no-untyped-def]
        yield from (data[i : i + 10] for i in range(0, len(data), 10))  # chunked: no Content-Length

    headers = {"content-type": "application/json"}
    response = client.post("/api/sample", content=streamed(padded(101)), headers=headers)
    assert (
        "content-length" not in response.request.headers and response.request.headers["transfer-encoding"] == "chunked"
    )
    assert (response.status_code, response.json()) == (413, refused)
    for ok in (body, padded(100)):  # the bound itself is allowed
        assert client.post("/api/sample", content=streamed(ok), headers=headers).status_code == 200
        assert post_raw(client, "/api/sample", ok.decode()).status_code == 200
    assert client.get("/api/model").json()["max_body_bytes"] == 100
    assert TestClient(create_app(pets_model)).get("/api/model").json()["max_body_bytes"] == MAX_BODY_BYTES


def bilevel_png(side: int) -> bytes:
    """A valid side x side 1-bit PNG, all black, made row by row: ~50 KB on disk for 20000 x 20000, 400 MB decoded
    (the decompression bomb of issue 13)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_huge_images_are_400_in_one_sentence(client) -> None:  # type: ignore[no-untyped-def]
    bomb = base64.b64encode(bilevel_png(20000)).decode()
    assert len(bomb) < 100_000
    over_the_limit = base64.b64encode(bilevel_png(9000)).decode()  # 81 MP: under Pillow's bomb check, over limits.py
    fine = base64.b64encode(bilevel_png(8)).decode()
    cases = [
        ("/api/img2img", {"image": bomb}, "image: "),
        ("/api/inpaint", {"image": fine, "mask": bomb}, "mask: "),
        ("/api/img2img", {"image": over_the_limit}, "image: "),
        ("/api/inpaint", {"image": fine, "mask": over_the_limit}, "mask: "),
    ]
    for path, body, field in cases:
        started = time.perf_counter()
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        detail = detail_of(response)
        assert detail.startswith(field) and "pixels" in detail, detail
        assert time.perf_counter() - started < 5  # refused from the header: decoding would take many seconds
    assert client.post("/api/inpaint", json={"image": fine, "mask": fine, "steps": 1}).status_code == 200


def test_an_unexpected_error_is_a_generic_500_and_a_user_error_one_line(pets_model: Path) -> None:
    from fastapi.testclient import TestClient

    from diffusionlab.server import create_app

    pipe = Pipeline.load(pets_model)
    app = create_app(pipe)

    def fails(*args: object, **kwargs: object) -> None:
        raise error

    pipe.sample = fails  # type: ignore[method-assign]
    error: Exception = ValueError("steps=7: too many for this sampler\n  File 'secret.py', line 1")
    response = TestClient(app).post("/api/sample", json={})
    assert (response.status_code, response.json()) == (400, {"detail": "steps=7: too many for this sampler"})
    error = ValueError("")
    response = TestClient(app).post("/api/sample", json={})
    assert (response.status_code, response.json()) == (400, {"detail": "the request's values were refused."})
    error = RuntimeError(f"internal state {object()!r}")
    response = TestClient(app, raise_server_exceptions=False).post("/api/sample", json={})
    generic = {"detail": "the server failed on this request; its log has the details."}
    assert (response.status_code, response.json()) == (500, generic)
    with pytest.raises(RuntimeError, match="internal state"):  # and the error is raised to the server's log
        TestClient(app).post("/api/sample", json={})
