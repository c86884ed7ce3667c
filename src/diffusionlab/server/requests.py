"""The studio's request types and error answers (floor 6): each request's fields are the library's request types'
own (``sampling/request.py``: type, default and range check), checked strictly (JSON types as given, never coerced:
``"5"`` is not a number of steps, ``true`` is not a count) and finite (a NaN or Infinity in the body is refused),
with the server's bounds on top (``MAX_*``; ``create_app`` may lower some). Errors are JSON
``{"detail": "<one sentence>"}`` naming the field and what was expected; never an object's repr or a traceback."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..sampling import request as library

__all__ = [
    "SampleRequest",
    "Img2ImgRequest",
    "InpaintRequest",
    "InfillRequest",
    "JobAnswer",
    "ErrorDetail",
    "one_sentence",
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
MAX_PROMPT_CHARS = 2000  # a prompt (the text encoder truncates long before)
MAX_TEXT_CHARS = 65_536  # an infilling text (a model's own max_len is checked by the task)

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
    prompt=_field(
        "prompt",
        Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]], Field(max_length=MAX_SAMPLES)]
        | None,
    ),
    negative_prompt=_field("negative_prompt", Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None),
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


class InfillRequest(_Request):
    """``tasks.infill``: ``num_samples`` completions of ``text`` whose blanks (``_``) are filled, the rest kept."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    num_samples: int = Field(default=4, ge=1, le=MAX_SAMPLES)
    label: _Label | None = None
    temperature: float | None = Field(default=None, gt=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)


def request_models(max_samples: int = MAX_SAMPLES, max_steps: int = MAX_STEPS) -> tuple[Any, Any, Any, Any]:
    """The sample, img2img, inpaint and infill request models with the counts bounded by ``max_samples`` and
    ``steps`` by ``max_steps`` (the module's own models at the default bounds)."""
    if (max_samples, max_steps) == (MAX_SAMPLES, MAX_STEPS):
        return SampleRequest, Img2ImgRequest, InpaintRequest, InfillRequest
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
    infill = create_model(
        "InfillRequest",
        __base__=InfillRequest,
        __doc__=InfillRequest.__doc__,
        steps=steps,
        num_samples=(int, Field(default=min(4, max_samples), ge=1, le=max_samples)),
    )
    return (sample, *tasks, infill)


class ErrorDetail(BaseModel):
    """An error answer: one sentence naming the field and what was expected."""

    detail: str


class JobAnswer(BaseModel):
    """A job's state: queued, running (steps done of total, ETA in seconds, a preview), or finished (done, failed
    with one sentence, cancelled, interrupted by a restart) with its outputs."""

    id: str
    model: str
    task: str
    state: str
    step: int = 0
    total: int | None = None
    evaluations: int = 0
    eta: float | None = None
    elapsed: float | None = None
    error: str | None = None
    preview: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    created: float | None = None
    position: int | None = None


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
