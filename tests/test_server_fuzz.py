"""The HTTP API fuzzed: schemathesis over its own OpenAPI schema, and hypothesis over hostile JSON bodies.

Every operation answers what its schema documents (no 500, no undocumented status, content type or body), and
every POST body, however hostile (NaN, Infinity, 2**70, strings for numbers, wrong shapes, not JSON at all),
answers 200 with a PNG or 400/413/422 with one JSON sentence. The fuzzed app serves a tiny model with small bounds
(``create_app(..., max_steps=3, max_samples=3)``) so that a sample costs milliseconds; the production bounds are
those of ``diffusionlab.server`` and are tested in tests/test_server.py and tests/test_edges_serve.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import negative_data_rejection  # noqa: E402

from diffusionlab.config import DataConfig, ModelConfig, NetworkConfig, SampleConfig  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.server import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = 25  # per operation: the CI budget (the whole file runs in well under a minute on 2 slow cores)
MAX_STEPS = 3
MAX_SAMPLES = 3
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,  # strict types: whatever the schema forbids is refused, never coerced
]


def tiny_app() -> Any:
    """A 3-class 8x8 grayscale model of 12k weights behind the API, with at most 3 steps and 3 samples."""
    torch.manual_seed(0)
    network = NetworkConfig(base_channels=8, channel_mults=[1], num_res_blocks=1, num_heads=1, num_classes=3)
    config = ModelConfig(
        network=network, data=DataConfig(image_size=8, channels=1, num_classes=3), sample=SampleConfig(steps=2)
    )
    return create_app(Pipeline(config), "tiny", max_steps=MAX_STEPS, max_samples=MAX_SAMPLES)


APP = tiny_app()  # built at collection: schemathesis makes one test per operation of its schema
# (schemathesis.pytest.from_fixture would build it lazily, but its lazy path fails under pytest 9: no `_nodeid`)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(max_examples=EXAMPLES)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
def test_every_operation_answers_what_its_schema_says(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


# ------------------------------------------------------------------ hostile JSON bodies, by hypothesis

FIELDS = {
    "/api/sample": ["num_samples", "labels", "nrow", "steps", "seed", "guidance", "sampler", "spacing"],
    "/api/img2img": ["image", "strength", "label", "steps", "seed", "guidance"],
    "/api/inpaint": ["image", "mask", "method", "label", "steps", "seed", "reconstruction_guidance"],
}
GOOD = {  # small valid values, so that some bodies get through to the model
    "num_samples": st.integers(1, MAX_SAMPLES),
    "nrow": st.integers(1, 4),
    "labels": st.lists(st.integers(0, 2), min_size=1, max_size=1),
    "label": st.integers(0, 2),
    "steps": st.integers(1, MAX_STEPS),
    "seed": st.integers(0, 2**63 - 1),
    "guidance": st.floats(0, 5),
    "strength": st.floats(0.1, 1),
    "reconstruction_guidance": st.floats(0, 1),
    "sampler": st.sampled_from(["ddim", "euler", "dpmpp_2m", "magic", ""]),
    "spacing": st.sampled_from(["uniform", "karras", "nope"]),
    "method": st.sampled_from(["repaint", "replace", "other"]),
    "image": st.sampled_from(["aGVsbG8=", "not base64!", "data:image/png;base64,", ""]),
    "mask": st.sampled_from(["aGVsbG8=", "", "data:,"]),
}
SPECIAL = [math.nan, math.inf, -math.inf, 2**70, -(2**70), 2**63, -1, 0, 1e308, -1e-308, 1.5, True, False, None]
NASTY = st.one_of(
    st.sampled_from(SPECIAL),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from(["5", "2", "", "NaN", "Infinity", [], {}, [math.nan], [2**70], [-1], [True], ["0"]]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    ),
)


@st.composite
def bodies(draw: st.DrawFn, path: str) -> tuple[bytes, bool]:
    """A POST body for ``path`` and whether its JSON types are wrong (so it must be 422): an object of valid small
    values with one or two hostile ones, sometimes with an unknown field; or another JSON value; or bytes that are
    not JSON. Written with NaN and Infinity as Python's json writes them (and reads them back)."""
    kind = draw(st.sampled_from(["object", "object", "object", "object", "other json", "not json"]))
    if kind == "not json":
        return draw(st.sampled_from([b"{", b"NaN", b"\xff\xfe", b'{"steps": 1,}', b"{'steps': 1}", b""])), True
    if kind == "other json":
        value = draw(NASTY)
        known = isinstance(value, dict) and all(k in FIELDS[path] for k in value)  # e.g. {} or {"seed": 5}
        return json.dumps(value).encode(), not known
    required = [name for name in ("image", "mask") if name in FIELDS[path] and draw(st.integers(0, 3))]
    names = draw(st.lists(st.sampled_from(FIELDS[path]), unique=True, max_size=len(FIELDS[path])))
    names = list(dict.fromkeys(required + names))
    body = {name: draw(GOOD[name]) for name in names}
    for name in draw(st.lists(st.sampled_from(FIELDS[path]), min_size=1, max_size=2)):
        body[name] = draw(NASTY)  # one or two hostile values among good ones: each is refused on its own
    wrong = any(wrong_type(name, value) for name, value in body.items())
    if draw(st.booleans()) and draw(st.booleans()):
        body[draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in FIELDS[path]))] = draw(NASTY)
        wrong = True
    return json.dumps(body).encode(), wrong


INTEGERS = {"num_samples", "nrow", "steps", "seed", "label"}
NUMBERS = {"guidance", "strength", "reconstruction_guidance"}


def wrong_type(name: str, value: Any) -> bool:
    """Whether ``value`` is not of the JSON type the field ``name`` takes (strictly: a bool is not a number, a
    string is not a number, NaN and Infinity are not numbers), so the body must be refused with 422."""
    if value is None:
        return False  # every field may be null (the default) or is required: left to the server's own checks
    if name == "labels":
        values = value if isinstance(value, list) else [value]
        return any(wrong_type("label", v) for v in values)
    if name in INTEGERS:
        return isinstance(value, bool) or not isinstance(value, int)
    if name in NUMBERS:
        return isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    return not isinstance(value, str)


def assert_one_sentence(response: Any) -> None:
    """An error answer: JSON (strict: no NaN or Infinity in it) whose ``detail`` is one short sentence."""
    assert response.headers["content-type"] == "application/json", response.headers
    answer = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in {response.text}"))
    assert set(answer) == {"detail"}, answer
    detail = answer["detail"]
    assert isinstance(detail, str) and 0 < len(detail) <= 300 and "\n" not in detail, answer
    assert "Traceback" not in detail and " object at 0x" not in detail and "<" not in detail, detail


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(APP, raise_server_exceptions=False)


@pytest.mark.parametrize("path", sorted(FIELDS))
def test_hostile_bodies_answer_a_png_or_one_sentence(client: TestClient, path: str) -> None:
    statuses: set[int] = set()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(case=bodies(path))
    def check(case: tuple[bytes, bool]) -> None:
        body, wrong = case
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        statuses.add(response.status_code)
        assert response.status_code in ({422} if wrong else {200, 400, 413, 422}), (body, response.text)
        if response.status_code == 200:
            assert response.headers["content-type"] == "image/png" and response.content[:4] == b"\x89PNG"
        else:
            assert_one_sentence(response)

    check()
    assert 422 in statuses  # the hostile values were refused ...
    if path == "/api/sample":
        assert 200 in statuses  # ... and the valid ones got through to the model
