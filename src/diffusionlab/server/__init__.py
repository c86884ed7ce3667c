"""The HTTP API and its web page (floor 6): one trained model behind FastAPI.

``diffusionlab serve runs/digits`` starts it; ``create_app(pipe)`` builds the app for tests or for another ASGI
server. Every endpoint answers with a PNG whose text metadata holds the settings that made it (as the CLI's
files do), so an image from the page can be reproduced from its file. Requests use the names of the Python API
and the CLI (``sampler``, ``steps``, ``guidance``, ``seed``, ``mixed_precision``, ...): their fields are the
library's request types' own (``sampling/request.py``: type, default and range check), checked strictly (JSON
types as given, never coerced: ``"5"`` is not a number of steps, ``true`` is not a count) and finite (a NaN or
Infinity in the body is refused). The model runs one request at a time.

Bounds on one request, checked before any work: ``MAX_SAMPLES`` images, ``MAX_STEPS`` steps, a ``seed`` of
0..``MAX_SEED`` (a signed 64-bit integer), labels of 0..``MAX_LABEL`` (and, for the model, below its
``num_classes``), and a body of at most ``MAX_BODY_BYTES`` (16 MiB, four times a base64 PNG of a 1024x1024 RGB
photo), refused with 413 before it is read (``create_app`` may lower each). ``GET /api/model`` states them.

Errors are JSON ``{"detail": "<one sentence>"}``: 400 for a value the model or task refuses (a label outside
its classes, an image of the wrong size, a decompression bomb), 413 for a body over the bound, 422 for a body that
does not match the request's schema (``/openapi.json``, ``/docs``). A sentence names the field and what was
expected; it never holds an object's repr, a traceback or a non-finite number. An unexpected error is a 500 with
a generic sentence (and is raised to the server's log: no bug is hidden).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..data import DataError
from ..images import make_grid, png_bytes, to_pil
from ..io import CheckpointError
from ..pipeline import Pipeline
from ..sampling import SAMPLERS, SPACINGS
from ..sampling import request as library
from ..sampling.request import labels_for, text_metadata
from ..tasks import check_images, check_strength, read_image, read_mask
from ..tasks import img2img as img2img_images
from ..tasks import inpaint as inpaint_images

__all__ = [
    "create_app",
    "SampleRequest",
    "Img2ImgRequest",
    "InpaintRequest",
    "BodyLimit",
    "validation_sentence",
    "request_models",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "MAX_SEED",
    "MAX_LABEL",
    "MAX_BODY_BYTES",
]

MAX_SAMPLES = 64  # per request: a page that asks for more waits minutes on a CPU
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # a signed 64-bit integer: every client's JSON library and torch's generators hold it
MAX_LABEL = 2**31 - 1  # a class index; a label at or above the model's num_classes is refused with 400
MAX_BODY_BYTES = 16 * 2**20  # request body (16 MiB): over it is 413, before the body is read
MAX_NAME_CHARS = 64  # a sampler's or spacing's name
MAX_DETAIL_CHARS = 300  # one sentence of an error's detail

# every field of the library's request types by its flat name (the specs' own `sampler` and `guidance` win)
_FIELDS = {
    **library.SampleRequest.model_fields,
    **library.Conditioning.model_fields,
    **library.GuidanceSpec.model_fields,
    **library.SamplerSpec.model_fields,
}

_Label = Annotated[int, Field(ge=0, le=MAX_LABEL)]


def _field(name: str, annotation: Any = None, **check: Any) -> Any:
    """The request types' field ``name`` (its type, default and range check) for an HTTP request model, with
    ``annotation`` in place of its type and ``check`` as a further range check."""
    info = _FIELDS[name]
    annotation = info.annotation if annotation is None else annotation
    return (Annotated[annotation, Field(**check)] if check else annotation, info)


def _optional(name: str) -> Any:
    """A request types' field that a client may leave out (None: the library's default); a request that leaves it
    out answers the same bytes as before the field was served."""
    return (_FIELDS[name].annotation | None, None)


# strict: JSON types as sent (a string is not a number, a bool not a count); finite: NaN and Infinity refused
_HTTP = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

_Request: Any = create_model(
    "_Request",
    __config__=_HTTP,
    sampler=_field("sampler", max_length=MAX_NAME_CHARS),  # None: the model's own (config.sample)
    steps=_field("steps", le=MAX_STEPS),
    guidance=_field("guidance"),
    seed=_field("seed", le=MAX_SEED),
    prompt=_field("prompt"),
    negative_prompt=_field("negative_prompt"),
    mixed_precision=_optional("mixed_precision"),
)

SampleRequest: Any = create_model(
    "SampleRequest",
    __base__=_Request,
    __doc__="``Pipeline.sample``: ``num_samples`` images, one label for all or one each, or a prompt.",
    num_samples=(int, Field(default=8, ge=1, le=MAX_SAMPLES)),
    labels=_field("labels", Annotated[list[_Label], Field(max_length=MAX_SAMPLES)] | _Label | None),
    spacing=_field("spacing", max_length=MAX_NAME_CHARS),
    guidance_rescale=_field("guidance_rescale"),
    nrow=(int, Field(default=8, ge=1, le=MAX_SAMPLES)),
)


class Img2ImgRequest(_Request):
    """``tasks.img2img`` (SDEdit): ``image`` is a base64 PNG of the model's size, noised to ``strength``."""

    image: str
    strength: float = 0.6
    label: _Label | None = None


class InpaintRequest(_Request):
    """``tasks.inpaint``: ``mask`` is a base64 PNG of the image's size, white = fill, black = keep."""

    image: str
    mask: str
    method: Literal["repaint", "replace"] = "repaint"
    label: _Label | None = None
    reconstruction_guidance: float = Field(default=0.0, ge=0)


def request_models(max_samples: int = MAX_SAMPLES, max_steps: int = MAX_STEPS) -> tuple[Any, Any, Any]:
    """The sample, img2img and inpaint request models with ``num_samples``/``nrow``/``labels`` and ``steps`` bounded
    by ``max_samples`` and ``max_steps`` (the module's own models at the default bounds)."""
    if (max_samples, max_steps) == (MAX_SAMPLES, MAX_STEPS):
        return SampleRequest, Img2ImgRequest, InpaintRequest
    for name, value in (("max_samples", max_samples), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive whole number.")
    steps = _field("steps", le=max_steps)
    count = (int, Field(default=8, ge=1, le=max_samples))
    labels = Annotated[list[_Label], Field(max_length=max_samples)] | _Label | None
    sample = create_model(
        "SampleRequest",
        __base__=SampleRequest,
        __doc__=SampleRequest.__doc__,
        steps=steps,
        num_samples=count,
        nrow=count,
        labels=_field("labels", labels),
    )
    tasks = (
        create_model(m.__name__, __base__=m, __doc__=m.__doc__, steps=steps) for m in (Img2ImgRequest, InpaintRequest)
    )
    return (sample, *tasks)


class ErrorDetail(BaseModel):
    """An error answer: one sentence naming the field and what was expected."""

    detail: str


def _decode_png(data: str, what: str) -> bytes:
    """The bytes of a base64 image (a bare string or a ``data:image/png;base64,...`` URL)."""
    try:
        return base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError, IndexError):
        raise ValueError(f"{what} is not base64-encoded image data.") from None


def _metadata(task: str, req: BaseModel) -> dict[str, str]:
    """PNG metadata: the task and every setting given, so the file says how to make it again."""
    return text_metadata(task=task, **req.model_dump(exclude={"image", "mask"}))


_TASK_SETTINGS = {"sampler", "steps", "guidance", "seed", "prompt", "negative_prompt", "mixed_precision"}


def _task_settings(req: Any) -> dict[str, Any]:
    """A task request's settings by the library's flat names: its label and the settings given (the task's own
    defaults hold for the others; an empty sampler is none given)."""
    given = req.model_dump(include=_TASK_SETTINGS, exclude_none=True)
    if not given.get("sampler"):
        given.pop("sampler", None)
    return {"labels": labels_for(req.label, 1), **given}


def _image_model(pipe: Pipeline) -> None:
    if not pipe.space.grid_preview:
        raise ValueError("this model makes points, not images; sample it from Python with Pipeline.sample.")


def _task_image(pipe: Pipeline, req: Any) -> torch.Tensor:
    _image_model(pipe)
    try:
        return check_images(pipe, read_image(_decode_png(req.image, "image"))[None])
    except ValueError as err:
        raise ValueError(f"image: {err}") from None


def sample_png(pipe: Pipeline, req: Any) -> bytes:
    """``POST /api/sample``: the grid of ``Pipeline.sample`` for the request, as a PNG with its settings."""
    _image_model(pipe)
    labels = labels_for(req.labels, req.num_samples)
    settings = req.model_dump(exclude={"num_samples", "labels", "nrow"}, exclude_none=True)
    images = pipe.sample(req.num_samples, request=library.SampleRequest.from_settings(labels=labels, **settings))
    grid = make_grid(images, nrow=min(req.nrow, req.num_samples), scale=2)
    return png_bytes(grid, _metadata("sample", req))


def img2img_png(pipe: Pipeline, req: Any) -> bytes:
    """``POST /api/img2img``: ``tasks.img2img`` of the request's image, as a PNG with its settings."""
    check_strength(req.strength)
    result = img2img_images(pipe, _task_image(pipe, req), req.strength, **_task_settings(req))
    return png_bytes(to_pil(result[0]), _metadata("img2img", req))


def inpaint_png(pipe: Pipeline, req: Any) -> bytes:
    """``POST /api/inpaint``: ``tasks.inpaint`` of the request's image and mask, as a PNG with its settings."""
    images = _task_image(pipe, req)
    try:
        mask = read_mask(_decode_png(req.mask, "mask"))
    except ValueError as err:
        raise ValueError(f"mask: {err}") from None
    options = {"method": req.method, "reconstruction_guidance": req.reconstruction_guidance}
    result = inpaint_images(pipe, images, mask, **options, **_task_settings(req))
    return png_bytes(to_pil(result[0]), _metadata("inpaint", req))


def model_info(
    pipe: Pipeline,
    name: str,
    max_samples: int = MAX_SAMPLES,
    max_steps: int = MAX_STEPS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> dict[str, Any]:
    """What a client needs to build a request for this model, and the bounds on one request."""
    cfg = pipe.config
    k = cfg.network.num_classes
    return {
        "name": name,
        "kind": "image" if pipe.space.grid_preview else "points",
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "num_classes": k,
        "class_names": (cfg.data.class_names or [str(c) for c in range(k)]) if k else None,
        "text": cfg.text_encoder is not None,
        "image_condition": cfg.data.image_condition,
        "latent": cfg.latent is not None,
        "defaults": {"sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance},
        "samplers": sorted(SAMPLERS),
        "spacings": list(SPACINGS),
        "max_samples": max_samples,
        "max_steps": max_steps,
        "max_seed": MAX_SEED,
        "max_body_bytes": max_body_bytes,
    }


def one_sentence(text: str, fallback: str) -> str:
    """An error's first line, at most ``MAX_DETAIL_CHARS`` long, or ``fallback`` when it has none."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        return fallback
    return line if len(line) <= MAX_DETAIL_CHARS else line[: MAX_DETAIL_CHARS - 1].rstrip() + "…"


def _shown(value: Any) -> str | None:
    """A sent value as JSON text when it is short and finite (never a NaN, an Infinity or a huge number)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else None
    if isinstance(value, float):
        return json.dumps(value) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 32:
        return json.dumps(value)
    return None


def _field_name(loc: Sequence[Any]) -> str:
    """The field an error is about: its name and list positions (``labels[0]``); union branches are left out."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path") else list(loc)
    if not parts or not isinstance(parts[0], str):
        return "body"
    name = parts[0] if parts[0].isidentifier() else json.dumps(parts[0])
    if len(name) > 40:
        return "a field"
    return name + "".join(f"[{p}]" for p in parts[1:] if isinstance(p, int))


def _expected(msg: str) -> str:
    """Pydantic's "Input should be ..." as "must be ..."."""
    msg = msg.strip().rstrip(".")
    for prefix in ("Input should be ", "Value should be "):
        if msg.startswith(prefix):
            return "must be " + msg.removeprefix(prefix)
    return msg[:1].lower() + msg[1:]


def validation_sentence(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for a request that did not validate: the first bad field, its value when short and finite, and
    what was expected (of a union's branches, the one the value came closest to)."""
    if not errors:
        return "the request is not valid."
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error")
        return (
            f"the request body is not valid JSON ({reason})."
            if isinstance(reason, str)
            else "the request body is not valid JSON."
        )
    if _field_name(loc) == "body":
        return "the request body must be a JSON object of this request's fields (see /docs)."
    if kind == "extra_forbidden":
        name = _field_name(loc)
        if name == "a field":
            return "the request has a field that is not one of its fields (see /docs)."
        return f"{name} is not a field of this request (see /docs)."
    if kind == "missing":
        return f"{_field_name(loc)} is required."
    top = loc[:2]
    same = [e for e in errors if tuple(e.get("loc", ()))[:2] == top]
    best = min(same, key=lambda e: (str(e.get("type", "")).endswith("_type"), -len(e.get("loc", ()))))
    expected = _expected(str(best.get("msg", "")))
    if str(best.get("type", "")).endswith("_type"):
        alike = [e for e in same if len(e.get("loc", ())) == len(best.get("loc", ()))]
        options = dict.fromkeys(_expected(str(e.get("msg", ""))).removeprefix("must be ") for e in alike)
        expected = "must be " + " or ".join(options) if len(options) > 1 else expected
    value = _shown(best.get("input"))
    where = _field_name(best.get("loc", ()))
    sentence = f"{where}={value}: {expected}." if value is not None else f"{where}: {expected}."
    return one_sentence(sentence, "the request is not valid.")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` answers 413 before the app reads any of it, by its
    Content-Length or, for a streamed (chunked) body, by counting the bytes as they arrive."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        detail = f"the request body is larger than the limit of {self.max_bytes:,} bytes."
        await JSONResponse({"detail": detail}, status_code=413, headers={"connection": "close"})(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives the whole (already read) body once, then waits on the client as before."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _endpoint(task: str, make: Any, request_model: Any, png: Any) -> Any:
    """The route function ``post_<task>`` taking a ``request_model`` body (a type object, not a name: the model
    may be this app's own) and answering ``png(make, req)``."""

    def post(req: Any) -> Any:
        return png(make, req)

    post.__name__ = post.__qualname__ = f"post_{task}"
    post.__annotations__ = {"req": request_model}
    return post


def _png_answer(max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI description of a POST endpoint: a PNG, or one of the documented errors with one sentence."""
    from fastapi.responses import Response

    errors = {
        400: {"model": ErrorDetail, "description": "A value the model or the task refuses (one sentence)."},
        413: {"model": ErrorDetail, "description": f"A body over {max_body_bytes:,} bytes."},
        422: {"model": ErrorDetail, "description": "A body that does not match the request's schema."},
    }
    return {
        "response_class": Response,
        "response_model": None,
        "responses": {200: {"content": {"image/png": {}}}, **errors},
    }


def _answer_errors_in_one_sentence(app: Any) -> None:
    """A body that does not fit its schema answers 422 with one sentence; anything unexpected a 500 that leaks
    nothing (the exception still reaches the server's log)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_sentence(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        detail = "the server failed on this request; its log has the details."
        return JSONResponse({"detail": detail}, status_code=500)


def create_app(
    model: Pipeline | str | Path,
    name: str | None = None,
    *,
    max_samples: int = MAX_SAMPLES,
    max_steps: int = MAX_STEPS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app serving one model: ``GET /`` the web page, ``GET /api/model``, ``POST /api/sample``,
    ``POST /api/img2img`` and ``POST /api/inpaint`` (the last three answer ``image/png``); ``max_*`` bound one
    request (a host may lower them; its schema says so)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    sample_request, img2img_request, inpaint_request = request_models(max_samples, max_steps)
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes={max_body_bytes!r} must be a positive whole number.")
    pipe = model if isinstance(model, Pipeline) else Pipeline.load(model)
    name = name or (Path(model).name if not isinstance(model, Pipeline) else "model")
    info = model_info(pipe, name, max_samples, max_steps, max_body_bytes)
    lock = threading.Lock()  # one request at a time: parallel requests would only fight over the same cores
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="diffusionlab", description=f"The diffusion model {name!r}.", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _answer_errors_in_one_sentence(app)

    def png(make: Any, req: BaseModel) -> Response:
        """Run a request's work under the lock; a user error becomes HTTP 400 with its one sentence."""
        try:
            with lock, torch.no_grad():
                return Response(make(pipe, req), media_type="image/png")
        except (ValueError, DataError, CheckpointError) as err:
            detail = one_sentence(str(err), "the request's values were refused.")
            raise HTTPException(status_code=400, detail=detail) from None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def get_model() -> dict[str, Any]:
        return info

    for task, make, request_model in (
        ("sample", sample_png, sample_request),
        ("img2img", img2img_png, img2img_request),
        ("inpaint", inpaint_png, inpaint_request),
    ):
        app.post(f"/api/{task}", **_png_answer(max_body_bytes))(_endpoint(task, make, request_model, png))

    return app
