"""The HTTP API and its web page (floor 6): one trained model behind FastAPI.

``diffusionlab serve runs/digits`` starts it; ``create_app(pipe)`` builds the app for tests or for another ASGI
server. Every endpoint answers with a PNG whose text metadata holds the settings that made it (as the CLI's
files do), so an image from the page can be reproduced from its file. Requests use the names of the Python API
and the CLI (``sampler``, ``steps``, ``guidance``, ``seed``, ``mixed_precision``, ...): their fields are the
library's request types' own (``sampling/request.py``: type, default and range check). Bad input is HTTP 400
(or 422 for a value out of its range) with one sentence in ``detail``; the model runs one request at a time.
"""

from __future__ import annotations

import base64
import binascii
import threading
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

__all__ = ["create_app", "SampleRequest", "Img2ImgRequest", "InpaintRequest", "MAX_SAMPLES", "MAX_STEPS"]

MAX_SAMPLES = 64  # per request: a page that asks for more waits minutes on a CPU
MAX_STEPS = 1000

# every field of the library's request types by its flat name (the specs' own `sampler` and `guidance` win)
_FIELDS = {
    **library.SampleRequest.model_fields,
    **library.Conditioning.model_fields,
    **library.GuidanceSpec.model_fields,
    **library.SamplerSpec.model_fields,
}


def _field(name: str, **check: Any) -> Any:
    """The request types' field ``name`` (its type, default and range check) for an HTTP request model, with
    ``check`` as a further range check."""
    info = _FIELDS[name]
    return (Annotated[info.annotation, Field(**check)] if check else info.annotation, info)


def _optional(name: str) -> Any:
    """A request types' field that a client may leave out (None: the library's default); a request that leaves it
    out answers the same bytes as before the field was served."""
    return (_FIELDS[name].annotation | None, None)


_Request: Any = create_model(
    "_Request",
    __config__=ConfigDict(extra="forbid"),
    sampler=_field("sampler"),  # None: the model's own (config.sample)
    steps=_field("steps", le=MAX_STEPS),
    guidance=_field("guidance"),
    seed=_field("seed"),
    prompt=_field("prompt"),
    negative_prompt=_field("negative_prompt"),
    mixed_precision=_optional("mixed_precision"),
)

SampleRequest: Any = create_model(
    "SampleRequest",
    __base__=_Request,
    __doc__="``Pipeline.sample``: ``num_samples`` images, one label for all or one each, or a prompt.",
    num_samples=(int, Field(default=8, ge=1, le=MAX_SAMPLES)),
    labels=_field("labels"),
    spacing=_field("spacing"),
    guidance_rescale=_field("guidance_rescale"),
    nrow=(int, Field(default=8, ge=1, le=MAX_SAMPLES)),
)


class Img2ImgRequest(_Request):
    """``tasks.img2img`` (SDEdit): ``image`` is a base64 PNG of the model's size, noised to ``strength``."""

    image: str
    strength: float = 0.6
    label: int | None = None


class InpaintRequest(_Request):
    """``tasks.inpaint``: ``mask`` is a base64 PNG of the image's size, white = fill, black = keep."""

    image: str
    mask: str
    method: Literal["repaint", "replace"] = "repaint"
    label: int | None = None
    reconstruction_guidance: float = Field(default=0.0, ge=0)


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
    mask = read_mask(_decode_png(req.mask, "mask"))
    options = {"method": req.method, "reconstruction_guidance": req.reconstruction_guidance}
    result = inpaint_images(pipe, images, mask, **options, **_task_settings(req))
    return png_bytes(to_pil(result[0]), _metadata("inpaint", req))


def model_info(pipe: Pipeline, name: str) -> dict[str, Any]:
    """What a client needs to build a request for this model."""
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
        "max_samples": MAX_SAMPLES,
        "max_steps": MAX_STEPS,
    }


def create_app(model: Pipeline | str | Path, name: str | None = None) -> Any:
    """The FastAPI app serving one model: ``GET /`` the web page, ``GET /api/model``, ``POST /api/sample``,
    ``POST /api/img2img`` and ``POST /api/inpaint`` (the last three answer ``image/png``)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    pipe = model if isinstance(model, Pipeline) else Pipeline.load(model)
    name = name or (Path(model).name if not isinstance(model, Pipeline) else "model")
    info = model_info(pipe, name)
    lock = threading.Lock()  # one request at a time: parallel requests would only fight over the same cores
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="diffusionlab", description=f"The diffusion model {name!r}.", version="1")
    png_answer = {
        "response_class": Response,
        "response_model": None,
        "responses": {200: {"content": {"image/png": {}}}},
    }

    def png(make: Any, req: BaseModel) -> Response:
        """Run a request's work under the lock; a user error becomes HTTP 400 with its one sentence."""
        try:
            with lock, torch.no_grad():
                return Response(make(pipe, req), media_type="image/png")
        except (ValueError, DataError, CheckpointError) as err:
            raise HTTPException(status_code=400, detail=str(err).splitlines()[0] if str(err) else repr(err)) from None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def get_model() -> dict[str, Any]:
        return info

    @app.post("/api/sample", **png_answer)
    def post_sample(req: SampleRequest) -> Response:
        return png(sample_png, req)

    @app.post("/api/img2img", **png_answer)
    def post_img2img(req: Img2ImgRequest) -> Response:
        return png(img2img_png, req)

    @app.post("/api/inpaint", **png_answer)
    def post_inpaint(req: InpaintRequest) -> Response:
        return png(inpaint_png, req)

    return app
