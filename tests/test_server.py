"""The HTTP API and web page: the same images as the Python API, settings in the PNG, one-sentence errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.images import make_grid, png_bytes, to_pil
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks import img2img, inpaint

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from diffusionlab.server import MAX_SAMPLES, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(pets_model: Path) -> Path:
    return pets_model


@pytest.fixture(scope="module")
def client(model_dir: Path) -> TestClient:
    return TestClient(create_app(model_dir))


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode(response) -> Image.Image:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_page_and_model_description(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="run"' in page.text and "/api/jobs/" in page.text
    info = client.get("/api/model").json()
    assert info["kind"] == "image" and info["image_size"] == 8 and info["channels"] == 1
    assert info["class_names"] == ["cat", "dog", "owl"] and info["defaults"]["steps"] == 3
    assert "dpmpp_2m" in info["samplers"] and info["text"] is False


def test_sample_is_the_python_api_grid_and_carries_its_settings(client: TestClient, model_dir: Path) -> None:
    body = {"num_samples": 4, "labels": [0, 1, 2, 1], "sampler": "ddim", "steps": 3, "guidance": 2.0, "seed": 5}
    first = client.post("/api/sample", json=body)
    again = client.post("/api/sample", json=body)
    assert first.content == again.content  # same request, same bytes
    image = decode(first)
    pipe = Pipeline.load(model_dir)
    expected = pipe.sample(4, labels=[0, 1, 2, 1], sampler="ddim", steps=3, guidance=2.0, seed=5)
    assert np.array_equal(np.asarray(image), np.asarray(make_grid(expected, nrow=4, scale=2)))
    assert image.text["seed"] == "5" and image.text["sampler"] == "ddim" and image.text["labels"] == "[0, 1, 2, 1]"
    other = client.post("/api/sample", json={**body, "seed": 6})
    assert other.content != first.content


@pytest.fixture(scope="module")
def noisy_model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pets model with every weight moved by N(0, 0.05^2) noise: an untrained UNet's last layer is zero, so
    its samples would not depend on the network's precision at all."""
    pipe = Pipeline.load(model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("noisy") / "pets"
    pipe.save(out)
    return out


def test_bf16_over_http_is_the_python_apis_bf16(noisy_model: Path) -> None:
    body = {"num_samples": 4, "labels": [0, 1, 2, 1], "steps": 10, "seed": 2, "mixed_precision": "bf16"}
    response = TestClient(create_app(noisy_model)).post("/api/sample", json=body)
    image = decode(response)
    assert image.text["mixed_precision"] == "bf16"
    pipe = Pipeline.load(noisy_model)
    bf16 = pipe.sample(4, labels=[0, 1, 2, 1], steps=10, seed=2, mixed_precision="bf16")
    assert response.content == png_bytes(make_grid(bf16, nrow=4, scale=2), image.text)  # the same PNG, bit for bit
    fp32 = pipe.sample(4, labels=[0, 1, 2, 1], steps=10, seed=2)
    # bf16 ran (measured on this model: mean |bf16 - fp32| 0.0014-0.0020 over seeds 0-2, 0.0028-0.0033 at 3 steps)
    assert 0 < float((bf16 - fp32).abs().mean()) <= 0.004


def uint8_tensor(array: np.ndarray) -> torch.Tensor:
    """A grayscale uint8 (H, W) array as the (1, 1, H, W) batch in [0, 1] the Python API takes."""
    return torch.from_numpy(array).float()[None, None] / 255


def test_img2img_over_http_is_the_python_apis_img2img(noisy_model: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    settings = {"label": 2, "sampler": "dpmpp_2m", "steps": 6, "guidance": 3.0, "seed": 4}
    body = {"image": png_b64(image), "strength": 0.7, **settings}
    client = TestClient(create_app(noisy_model))
    response = client.post("/api/img2img", json=body)
    answer = decode(response)
    assert answer.text["task"] == "img2img" and answer.text["strength"] == "0.7" and answer.text["label"] == "2"
    pipe = Pipeline.load(noisy_model)
    expected = img2img(pipe, uint8_tensor(image), 0.7, labels=[2], sampler="dpmpp_2m", steps=6, guidance=3.0, seed=4)
    assert np.array_equal(np.asarray(answer), np.asarray(to_pil(expected[0])))  # the same pixels
    assert response.content == png_bytes(to_pil(expected[0]), answer.text)  # the same PNG, bit for bit
    # the edit is not the input, and each setting counts (so the test would see one dropped on the way)
    assert not np.array_equal(np.asarray(answer), image)
    for changed in ({"strength": 0.5}, {"label": 0}, {"seed": 5}, {"steps": 5}, {"guidance": 1.0}):
        other = client.post("/api/img2img", json={**body, **changed})
        assert not np.array_equal(np.asarray(decode(other)), np.asarray(answer)), changed


@pytest.mark.parametrize(
    "method, options", [("repaint", {}), ("replace", {"sampler": "ddim", "reconstruction_guidance": 0.5})]
)
def test_inpaint_over_http_is_the_python_apis_inpaint(noisy_model: Path, method: str, options: dict) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 3:] = 255  # fill a block on the right
    settings = {"label": 1, "steps": 4, "guidance": 2.5, "seed": 7, **options}
    body = {"image": png_b64(image), "mask": png_b64(mask), "method": method, **settings}
    client = TestClient(create_app(noisy_model))
    response = client.post("/api/inpaint", json=body)
    answer = decode(response)
    assert answer.text["task"] == "inpaint" and answer.text["method"] == method
    pipe = Pipeline.load(noisy_model)
    fill = torch.from_numpy(mask >= 128)
    kwargs = {"labels": [1], **{k: v for k, v in settings.items() if k != "label"}}
    expected = inpaint(pipe, uint8_tensor(image), fill, method=method, **kwargs)
    assert np.array_equal(np.asarray(answer), np.asarray(to_pil(expected[0])))  # the same pixels
    assert response.content == png_bytes(to_pil(expected[0]), answer.text)  # the same PNG, bit for bit
    result = np.asarray(answer)
    assert np.array_equal(result[mask == 0], image[mask == 0])  # kept pixels
    assert not np.array_equal(result[mask > 0], image[mask > 0])  # filled pixels are new
    changes = [{"label": 0}, {"seed": 8}, {"steps": 3}, {"guidance": 1.0}]
    other_method = {"method": "repaint", "sampler": None, "reconstruction_guidance": 0.0}
    changes += [{"reconstruction_guidance": 0.0}, other_method] if method == "replace" else []
    for changed in changes:
        other = client.post("/api/inpaint", json={**body, **changed})
        assert not np.array_equal(np.asarray(decode(other)), result), changed


def test_request_models_are_the_library_request_types(client: TestClient) -> None:
    from diffusionlab.sampling.request import GuidanceSpec, SamplerSpec
    from diffusionlab.server import SampleRequest

    schema = client.get("/openapi.json").json()["components"]["schemas"]["SampleRequest"]["properties"]
    assert schema["mixed_precision"]["anyOf"][0]["enum"] == ["auto", "no", "bf16"]
    assert schema["steps"]["anyOf"][0]["maximum"] == 1000  # the server's own limit on top of the library's check
    for name, spec in (("guidance_rescale", GuidanceSpec), ("spacing", SamplerSpec), ("guidance", GuidanceSpec)):
        served, library = SampleRequest.model_fields[name], spec.model_fields[name]
        assert served.default == library.default and all(check in served.metadata for check in library.metadata)


def test_one_label_for_all_samples(client: TestClient) -> None:
    one = client.post("/api/sample", json={"num_samples": 3, "labels": [2], "seed": 1})
    each = client.post("/api/sample", json={"num_samples": 3, "labels": [2, 2, 2], "seed": 1})
    assert np.array_equal(np.asarray(decode(one)), np.asarray(decode(each)))


def test_inpaint_keeps_the_known_pixels_and_img2img_answers(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 255  # fill the bottom half
    result = np.asarray(decode(client.post("/api/inpaint", json={"image": png_b64(image), "mask": png_b64(mask)})))
    assert result.shape == (8, 8)
    assert np.array_equal(result[:4], image[:4])
    assert not np.array_equal(result[4:], image[4:])
    edited = decode(client.post("/api/img2img", json={"image": png_b64(image), "strength": 0.5, "label": 1}))
    assert edited.size == (8, 8) and edited.text["strength"] == "0.5" and edited.text["task"] == "img2img"


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/api/sample", {"labels": [7]}, 400, "label"),
        ("/api/sample", {"num_samples": 3, "labels": [0, 1]}, 400, "got 2 labels for 3 samples"),
        ("/api/sample", {"sampler": "magic"}, 400, "magic"),
        ("/api/sample", {"prompt": "a cat"}, 400, "prompt"),
        ("/api/sample", {"steps": 0}, 422, "steps"),
        ("/api/sample", {"num_samples": MAX_SAMPLES + 1}, 422, "num_samples"),
        ("/api/sample", {"guidance": -1}, 422, "guidance"),
        ("/api/sample", {"colour": "red"}, 422, "colour"),
        ("/api/sample", {"mixed_precision": "fp16"}, 422, "mixed_precision"),
        ("/api/img2img", {"image": "not base64!", "strength": 0.5}, 400, "base64"),
        ("/api/img2img", {"image": png_b64(np.zeros((8, 8), np.uint8)), "strength": 1.5}, 400, "strength"),
        ("/api/img2img", {"image": png_b64(np.zeros((6, 8), np.uint8))}, 400, "8x8"),
        ("/api/img2img", {"image": png_b64((np.eye(8)[:, :, None] * [255, 0, 0]).astype(np.uint8))}, 400, "3 channels"),
        (
            "/api/inpaint",
            {"image": png_b64(np.zeros((8, 8), np.uint8)), "mask": png_b64(np.zeros((4, 4), np.uint8))},
            400,
            "mask is 4x4",
        ),
    ],
)
def test_bad_input_is_one_clear_sentence(client: TestClient, path: str, body: dict, status: int, fragment: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else " ".join(f"{d['loc'][-1]} {d['msg']}" for d in detail)
    assert fragment in text and "\n" not in text and "Traceback" not in text, text


def test_serve_command_checks_its_options(model_dir: Path, tmp_path: Path) -> None:
    from cli_helpers import assert_clear_error, run

    assert_clear_error(run("serve", model_dir, "--port", "70000"), "--port=70000")
    assert_clear_error(run("serve", tmp_path / "nothing"), "nothing")
    (tmp_path / "empty").mkdir()
    assert_clear_error(run("serve", tmp_path / "empty"), "holds no model folder")
