"""The studio's HTTP app (floor 6): many models, every data kind, jobs with progress, a history, one page.

``create_app(root)`` serves every model folder under ``root`` (or the one model folder ``root`` is, or one
in-memory ``Pipeline``). Routes (``/docs`` has them all):

- ``GET /``: the studio page. ``GET /api/models``: the models (kind, conditioning, size, defaults) and the bounds;
  ``GET /api/model?model=NAME``: one model and what a request for it may hold.
- ``POST /api/jobs/{task}?model=NAME`` (task: sample, img2img, inpaint, infill): queue a job, 202 with its state;
  429 with ``Retry-After`` when the queue is full. ``GET /api/jobs/{id}``: its state; ``GET /api/jobs/{id}/events``:
  its state as server-sent events until it finishes (a stream that goes away cancels the job, unless
  ``cancel_on_disconnect=false``); ``POST /api/jobs/{id}/cancel``; ``DELETE /api/jobs/{id}`` (its files too);
  ``GET /api/jobs?model=&limit=&before=``: the history, newest first; ``GET /api/jobs/{id}/files/{name}``.
- ``POST /api/sample``, ``/api/img2img``, ``/api/inpaint`` (image models): the same jobs, answered synchronously
  with a PNG (its settings in its text metadata); a client that goes away cancels its job.

Jobs run one at a time off the event loop (``jobs.JobQueue``) and stop within one network evaluation when
cancelled or past ``time_limit_s``. Every job and its files are kept under ``data_dir`` (SQLite and a folder per
job) across restarts. Bounds on one request are checked before any work (``requests``); a ``token`` guards
``/api`` (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``). Errors are one JSON sentence: 400 refused values,
401 no token, 404 an unknown model or job, 413 a body too large, 422 a body off its schema, 429 a full queue.
"""

import asyncio
import json
import re
import secrets
import tempfile
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from ..pipeline import Pipeline
from ..sampling import REQUEST_SPACINGS, SAMPLERS
from .history import History
from .jobs import JOB_ID_PATTERN, SERVER_ERROR, USER_ERROR, Job, JobQueue, QueueFull, new_job_id, watch
from .registry import ModelRegistry, UnknownModel
from .requests import (
    MAX_BODY_BYTES,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    BodyLimit,
    ErrorDetail,
    JobAnswer,
    one_sentence,
    request_models,
    validation_sentence,
)
from .work import IMAGE_KINDS, TASKS

__all__ = ["create_app", "StudioSettings"]

MAX_MODEL_NAME_CHARS = 256
TIME_LIMIT_S = 600.0  # a job's default time limit
MAX_WAITING = 8  # jobs waiting beyond the running one; more is 429
MEMORY_BUDGET_MB = 2048  # weights of loaded models; beyond it the least recently used is unloaded
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")


class StudioSettings:
    """The studio's knobs (the CLI's ``serve`` options): bounds, queue, time limit, memory budget, data folder."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        max_samples: int = MAX_SAMPLES,
        max_steps: int = MAX_STEPS,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_waiting: int = MAX_WAITING,
        time_limit_s: float = TIME_LIMIT_S,
        memory_budget_mb: int = MEMORY_BUDGET_MB,
        token: str | None = None,
    ) -> None:
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("max_waiting", max_waiting),
            ("memory_budget_mb", memory_budget_mb),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive whole number.")
        if not time_limit_s > 0:
            raise ValueError(f"time_limit_s={time_limit_s!r} must be a positive number of seconds.")
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="diffusionlab-"))
        self.max_samples, self.max_steps, self.max_body_bytes = max_samples, max_steps, max_body_bytes
        self.max_waiting, self.time_limit_s, self.memory_budget_mb = max_waiting, float(time_limit_s), memory_budget_mb
        self.token = token or None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    about = {
        400: "A value the model or the task refuses (one sentence).",
        401: "No or a wrong token (the server was started with one).",
        404: "No such model or job.",
        413: "A body over the size limit.",
        422: "A body or query that does not match the schema.",
        429: "The queue is full; Retry-After says when to try again.",
    }
    return {code: {"model": ErrorDetail, "description": about[code]} for code in codes}


def create_app(
    model: Pipeline | str | Path,
    name: str | None = None,
    *,
    data_dir: str | Path | None = None,
    max_samples: int = MAX_SAMPLES,
    max_steps: int = MAX_STEPS,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_waiting: int = MAX_WAITING,
    time_limit_s: float = TIME_LIMIT_S,
    memory_budget_mb: int = MEMORY_BUDGET_MB,
    token: str | None = None,
) -> Any:
    """The FastAPI app of the studio for a folder of model folders, one model folder, or one ``Pipeline``."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse

    requests = request_models(max_samples, max_steps)
    studio = StudioSettings(
        data_dir, max_samples, max_steps, max_body_bytes, max_waiting, time_limit_s, memory_budget_mb, token
    )
    if isinstance(model, Pipeline):
        registry = ModelRegistry.of_pipeline(model, name or "model")
    else:
        registry = ModelRegistry(model, memory_budget_bytes=memory_budget_mb * 2**20)
    history = History(studio.data_dir)
    queue = JobQueue(history, max_waiting=max_waiting)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    bounds = {
        "max_samples": max_samples,
        "max_steps": max_steps,
        "max_seed": MAX_SEED,
        "max_body_bytes": max_body_bytes,
    }

    app = FastAPI(
        title="diffusionlab",
        description="Diffusion models of every data kind: sample, edit, fill; jobs with progress and a history.",
        version="2",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _answer_errors_in_one_sentence(app)
    app.state.queue, app.state.history, app.state.registry = queue, history, registry

    @app.on_event("shutdown")
    def stop_jobs() -> None:
        """A server that stops cancels its jobs (the queue and database stay usable: an app may be started again)."""
        queue.cancel_all()

    if studio.token is not None:

        @app.middleware("http")
        async def need_token(request: Request, call_next: Any) -> Any:
            if request.url.path.startswith("/api"):
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                given = given or request.query_params.get("token", "")
                if not secrets.compare_digest(given.encode(), studio.token.encode()):
                    return JSONResponse({"detail": "this server needs its token (Authorization: Bearer ...)."}, 401)
            return await call_next(request)

    def model_name(name: str | None) -> str:
        """The request's model: the one named, or the only one served."""
        if name is None:
            names = registry.names()
            if len(names) == 1:
                return names[0]
            raise HTTPException(400, "model is required: this server serves several (see /api/models).")
        try:
            return registry.entry(name).name
        except UnknownModel as err:
            raise HTTPException(404, one_sentence(str(err), "no such model.")) from None

    def describe(name: str) -> dict[str, Any]:
        entry = registry.entry(name)
        tasks = [t.name for t in TASKS.values() if entry.kind in t.kinds]
        return (
            registry.describe(name)
            | bounds
            | {"tasks": tasks, "samplers": sorted(SAMPLERS), "spacings": list(REQUEST_SPACINGS)}
        )

    def submit(task_name: str, name: str | None, req: Any, png: bool = False) -> Job:
        """Check the model and task, record the job, queue it (429 when full); ``png``: for an endpoint that
        answers with an image."""
        name = model_name(name)
        entry = registry.entry(name)
        task = TASKS[task_name]
        try:
            if png and entry.kind not in IMAGE_KINDS:
                raise ValueError(
                    f"model {name!r} makes {entry.kind} samples, not images; queue a job: POST /api/jobs/{task_name}."
                )
            task.check_kind(entry)
            _check_labels(entry.config.network.num_classes, req)
        except ValueError as err:
            raise HTTPException(400, one_sentence(str(err), USER_ERROR)) from None
        job_id = new_job_id()
        folder = history.job_folder(job_id)

        def work(job: Job) -> dict[str, Any]:
            pipe = registry.get(name)
            modules = [m for m in (pipe.network, pipe.ema) if m is not None]
            with watch(job, modules):
                return task.run(pipe, entry, req, job, folder)

        job = Job(job_id, name, task_name, req.model_dump(exclude_none=True), work, studio.time_limit_s)
        history.add(job_id, name, entry.hash, entry.kind, task_name, _recorded_settings(req))
        try:
            return queue.submit(job)
        except QueueFull as err:
            history.delete(job_id)
            raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from None

    def answer(job_id: str) -> dict[str, Any]:
        """A job's state: live while this process runs it, else from the history."""
        if not re.match(JOB_ID_PATTERN, job_id):
            raise HTTPException(404, "no such job (a job id is 16 hex digits).")
        row = history.get(job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id}.")
        live = queue.get(job_id)
        base = {
            "id": job_id,
            "model": row["model"],
            "task": row["task"],
            "state": row["state"],
            "error": row["error"],
            "outputs": row["outputs"],
            "settings": row["settings"],
            "created": row["created"],
            "elapsed": None
            if not row["finished"] or not row["started"]
            else round(row["finished"] - row["started"], 2),
        }
        if live is not None:
            base |= live.public() | {"position": queue.position(live)}
        return base

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/models")
    def get_models() -> dict[str, Any]:
        return {"models": [registry.describe(n) for n in registry.names()], **bounds}

    @app.get("/api/model", responses=_errors(400, 404, 422))
    def get_model(model: Annotated[str | None, Query(max_length=MAX_MODEL_NAME_CHARS)] = None) -> dict[str, Any]:
        return describe(model_name(model))

    for task_name, request_model in zip(("sample", "img2img", "inpaint", "infill"), requests, strict=True):
        app.post(
            f"/api/jobs/{task_name}",
            status_code=202,
            response_model=JobAnswer,
            responses=_errors(400, 404, 413, 422, 429),
            summary=f"Queue a {task_name} job: {TASKS[task_name].about}",
        )(_job_endpoint(task_name, request_model, submit, answer))

    for task_name, request_model in zip(("sample", "img2img", "inpaint"), requests, strict=False):
        app.post(
            f"/api/{task_name}",
            response_class=Response,
            response_model=None,
            responses={200: {"content": {"image/png": {}}}, **_errors(400, 404, 413, 422, 429)},
            summary=f"{TASKS[task_name].about}, answered with a PNG (image models)",
        )(_png_endpoint(task_name, request_model, submit, queue, history))

    @app.get("/api/jobs", responses=_errors(404, 422))
    def list_jobs(
        model: Annotated[str | None, Query(max_length=MAX_MODEL_NAME_CHARS)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    ) -> dict[str, Any]:
        rows = history.list(model, limit, before)
        return {"jobs": [answer(r["id"]) for r in rows]}

    @app.get("/api/jobs/{job_id}", response_model=JobAnswer, responses=_errors(404))
    def get_job(job_id: str) -> dict[str, Any]:
        return answer(job_id)

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobAnswer, responses=_errors(404))
    def cancel_job(job_id: str) -> dict[str, Any]:
        answer(job_id)
        queue.cancel(job_id)
        return answer(job_id)

    @app.delete("/api/jobs/{job_id}", responses=_errors(404))
    def delete_job(job_id: str) -> dict[str, Any]:
        answer(job_id)
        queue.cancel(job_id)
        live = queue.get(job_id)
        if live is not None:
            live.done.wait(timeout=30)
            queue.forget(job_id)
        history.delete(job_id)
        return {"deleted": job_id}

    @app.get(
        "/api/jobs/{job_id}/files/{name:path}",
        response_class=FileResponse,
        response_model=None,
        responses={
            200: {"content": {"image/png": {}, "text/csv": {}, "audio/wav": {}, "text/plain": {}}},
            **_errors(404),
        },
    )
    def job_file(job_id: str, name: str) -> Any:
        job = answer(job_id)
        listed = set(job["outputs"].get("files", [])) | {job["outputs"].get(k) for k in ("grid", "picture")}
        if not _FILE_NAME.match(name) or name not in listed:
            raise HTTPException(404, f"job {job_id} has no file {name[:64]!r}.")
        path = history.job_folder(job_id) / name
        if not path.is_file():
            raise HTTPException(404, f"job {job_id} has no file {name[:64]!r}.")
        return FileResponse(path, filename=Path(name).name)

    @app.get(
        "/api/jobs/{job_id}/events",
        response_model=None,
        responses={200: {"content": {"text/event-stream": {}}}, **_errors(404, 422)},
    )
    async def job_events(request: Request, job_id: str, cancel_on_disconnect: bool = True) -> Any:
        answer(job_id)

        async def stream() -> Any:
            seen = -1
            while True:
                job = queue.get(job_id)
                if job is None:  # finished in another life of the server: its record, once
                    yield f"data: {json.dumps(answer(job_id))}\n\n"
                    return
                if job.version != seen:
                    seen = job.version
                    yield f"data: {json.dumps(answer(job_id))}\n\n"
                if job.done.is_set() and job.version == seen:
                    return
                if await request.is_disconnected():
                    if cancel_on_disconnect:
                        queue.cancel(job_id)
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app


def _check_labels(num_classes: int, req: Any) -> None:
    """A label at or above the model's classes is one clear error, before the job is queued."""
    labels = getattr(req, "labels", None)
    label = getattr(req, "label", None)
    given = ([labels] if isinstance(labels, int) else list(labels or [])) + ([label] if label is not None else [])
    for value in given:
        if num_classes and value >= num_classes:
            raise ValueError(f"labels: {value} is not a class of this model (0..{num_classes - 1}).")


def _recorded_settings(req: Any) -> dict[str, Any]:
    """A request's settings as the history keeps them: uploads left out (they can be megabytes)."""
    return req.model_dump(exclude={"image", "mask"}, exclude_none=True)


def _job_endpoint(task: str, request_model: Any, submit: Any, answer: Any) -> Any:
    from fastapi import Query

    def post(req: Any, model: Any = Query(default=None, max_length=MAX_MODEL_NAME_CHARS)) -> Any:
        job = submit(task, model, req)
        return answer(job.id)

    post.__name__ = post.__qualname__ = f"queue_{task}"
    post.__annotations__ = {"req": request_model, "model": str | None}
    return post


def _png_endpoint(task: str, request_model: Any, submit: Any, queue: JobQueue, history: History) -> Any:
    from fastapi import HTTPException, Query, Request
    from fastapi.responses import Response

    async def post(
        request: Request, req: Any, model: Any = Query(default=None, max_length=MAX_MODEL_NAME_CHARS)
    ) -> Any:
        job = submit(task, model, req, png=True)
        while not job.done.is_set():
            if await request.is_disconnected():
                queue.cancel(job.id)
                raise HTTPException(400, "the client went away; the job was cancelled.")
            await asyncio.sleep(0.02)
        if job.state != "done":
            if job.bug and job.exception is not None:
                raise job.exception
            raise HTTPException(400, job.error or USER_ERROR)
        outputs = job.outputs
        name = outputs["grid"] if task == "sample" else outputs["files"][0]
        return Response((history.job_folder(job.id) / name).read_bytes(), media_type="image/png")

    post.__name__ = post.__qualname__ = f"post_{task}"
    post.__annotations__ = {"request": Request, "req": request_model, "model": str | None}
    return post


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
        return JSONResponse({"detail": SERVER_ERROR}, status_code=500)
