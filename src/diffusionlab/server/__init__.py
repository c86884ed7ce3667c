"""The HTTP API and its web page (floor 6): one trained model behind FastAPI.

``diffusionlab serve runs/digits`` starts it; ``create_app(pipe)`` builds the app for tests or for another ASGI
server. Every endpoint answers with a PNG whose text metadata holds the settings that made it (as the CLI's
files do), so an image from the page can be reproduced from its file. Requests use the names of the Python API
and the CLI (``sampler``, ``steps``, ``guidance``, ``seed``, ...). Bad input is HTTP 400 (or 422 for a value
out of its range) with one sentence in ``detail``; the model runs one request at a time.
"""

from __future__ import annotations

import base64
import binascii
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError
from ..images import make_grid, png_bytes, to_pil
from ..io import CheckpointError
from ..pipeline import Pipeline
from ..sampling import SAMPLERS, SPACINGS
from ..tasks import check_images, check_strength, read_image, read_mask
from ..tasks import img2img as img2img_images
from ..tasks import inpaint as inpaint_images

__all__ = ["create_app", "SampleRequest", "Img2ImgRequest", "InpaintRequest", "MAX_SAMPLES", "MAX_STEPS"]

MAX_SAMPLES = 64  # per request: a page that asks for more waits minutes on a CPU
MAX_STEPS = 1000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sampler: str | None = None  # None: the model's own (config.sample)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(default=None, ge=0)
    seed: int = Field(default=0, ge=0)
    prompt: str | None = None
    negative_prompt: str | None = None


class SampleRequest(_Request):
    """``Pipeline.sample``: ``num_samples`` images, one label for all or one each, or a prompt."""

    num_samples: int = Field(default=8, ge=1, le=MAX_SAMPLES)
    labels: list[int] | None = None
    spacing: str | None = None
    guidance_rescale: float = Field(default=0.0, ge=0, le=1)
    nrow: int = Field(default=8, ge=1, le=MAX_SAMPLES)


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


def _conditioning(req: _Request) -> dict[str, Any]:
    return {k: v for k, v in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)) if v is not None}


def _settings(kind: str, req: BaseModel) -> dict[str, str]:
    """PNG metadata: the task and every setting given, so the file says how to make it again."""
    given = req.model_dump(exclude_none=True, exclude={"image", "mask"})
    return {"task": kind, **{k: str(v) for k, v in given.items()}}


def model_info(pipe: Pipeline, name: str) -> dict[str, Any]:
    """What a client needs to build a request for this model."""
    cfg = pipe.config
    k = cfg.network.num_classes
    return {
        "name": name,
        "kind": "image" if len(pipe.sample_shape) == 3 else "points",
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

    def png(fn: Any) -> Response:
        """Run a request's work under the lock; a user error becomes HTTP 400 with its one sentence."""
        try:
            with lock, torch.no_grad():
                return Response(fn(), media_type="image/png")
        except (ValueError, DataError, CheckpointError) as err:
            raise HTTPException(status_code=400, detail=str(err).splitlines()[0] if str(err) else repr(err)) from None

    def image_model() -> None:
        if info["kind"] != "image":
            raise ValueError("this model makes points, not images; sample it from Python with Pipeline.sample.")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def get_model() -> dict[str, Any]:
        return info

    @app.post("/api/sample", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def post_sample(req: SampleRequest) -> Response:
        def run() -> bytes:
            image_model()
            labels = req.labels
            if labels is not None and len(labels) not in (1, req.num_samples):
                raise ValueError(f"got {len(labels)} labels for {req.num_samples} samples; give one, or one each.")
            if labels is not None and len(labels) == 1:
                labels = labels * req.num_samples
            images = pipe.sample(
                req.num_samples,
                labels=labels,
                sampler=req.sampler,
                steps=req.steps,
                spacing=req.spacing,
                guidance=req.guidance,
                guidance_rescale=req.guidance_rescale,
                seed=req.seed,
                **_conditioning(req),
            )
            grid = make_grid(images, nrow=min(req.nrow, req.num_samples), scale=2)
            return png_bytes(grid, _settings("sample", req))

        return png(run)

    def task_image(req: Img2ImgRequest | InpaintRequest) -> torch.Tensor:
        image_model()
        try:
            return check_images(pipe, read_image(_decode_png(req.image, "image"))[None])
        except ValueError as err:
            raise ValueError(f"image: {err}") from None

    @app.post("/api/img2img", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def post_img2img(req: Img2ImgRequest) -> Response:
        def run() -> bytes:
            check_strength(req.strength)
            images = task_image(req)
            result = img2img_images(
                pipe,
                images,
                req.strength,
                labels=None if req.label is None else [req.label],
                guidance=req.guidance,
                sampler=req.sampler,
                steps=req.steps,
                seed=req.seed,
                **_conditioning(req),
            )
            return png_bytes(to_pil(result[0]), _settings("img2img", req))

        return png(run)

    @app.post("/api/inpaint", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def post_inpaint(req: InpaintRequest) -> Response:
        def run() -> bytes:
            images = task_image(req)
            mask = read_mask(_decode_png(req.mask, "mask"))
            result = inpaint_images(
                pipe,
                images,
                mask,
                method=req.method,
                labels=None if req.label is None else [req.label],
                guidance=req.guidance,
                steps=req.steps,
                seed=req.seed,
                reconstruction_guidance=req.reconstruction_guidance,
                **({"sampler": req.sampler} if req.sampler else {}),
                **_conditioning(req),
            )
            return png_bytes(to_pil(result[0]), _settings("inpaint", req))

        return png(run)

    return app
