"""What a studio job does (floor 6): each task as an object (its name, the data kinds it serves, its request
model, its work), and the files a job's results become for each data kind.

A job's results are written to its folder: images as one PNG each (the model's name and weights hash and every
setting in its text metadata, as JSON under ``settings``, so a dropped PNG restores them) and a grid; points as a
CSV and a scatter plot; text as a .txt file; a table as a CSV; audio as WAV files and a spectrogram grid; series as
a CSV and line plots. ``outputs`` describes them for the page: ``view`` (how to show them) and the file names.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from ..images import make_grid, png_bytes, save_animation, save_png, to_pil
from ..io import atomic_write_text
from ..pipeline import Pipeline
from ..sampling import request as library
from ..sampling.request import labels_for, text_metadata
from ..tasks import check_images, check_strength, read_image, read_mask
from ..tasks import img2img as img2img_images
from ..tasks import infill as infill_texts
from ..tasks import inpaint as inpaint_images
from .jobs import Job
from .registry import ModelEntry

__all__ = ["StudioTask", "TASKS", "write_outputs", "decode_base64_image", "GRID_NAME", "PREVIEW_EVERY_S"]

GRID_NAME = "grid.png"
PREVIEW_EVERY_S = 0.4  # at most this often a new preview of x0_hat
PREVIEW_MAX_IMAGES = 16
TABLE_PREVIEW_ROWS = 20
POINTS_SHOWN = 4096
IMAGE_KINDS = ("image", "latent_image")


def decode_base64_image(data: str, what: str) -> bytes:
    """The bytes of a base64 image (a bare string or a ``data:image/png;base64,...`` URL)."""
    import binascii

    try:
        return base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError, IndexError):
        raise ValueError(f"{what} is not base64-encoded image data.") from None


def _png_data_url(image: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def step_reporter(job: Job, pipe: Pipeline, total: int) -> Callable[..., None]:
    """A sampler callback that reports steps to the job and, for pixel-space images, a small grid of x0_hat."""
    last = [0.0]
    previews = pipe.config.space == "image"

    def report(*, step: int, t: Any, x: Any, x0: Any) -> None:
        preview = None
        now = time.time()
        if previews and x0 is not None and now - last[0] >= PREVIEW_EVERY_S:
            last[0] = now
            shown = pipe.space.decode(x0[:PREVIEW_MAX_IMAGES].float()).cpu()
            preview = _png_data_url(make_grid(shown, nrow=min(8, len(shown)), padding=1))
        job.on_step(min(step + 1, total), max(total, step + 1), preview)

    return report


def _metadata(entry: ModelEntry, task: str, settings: dict[str, Any], **extra: Any) -> dict[str, str]:
    """PNG text: the model, its hash, the task, every setting by name, and all of it as JSON under ``settings``."""
    record = {"model": entry.name, "model_hash": entry.hash, "task": task, **settings}
    return text_metadata(**record, **extra, settings=json.dumps(record))


@dataclass(frozen=True)
class _Outputs:
    """Where and for what a job's results are written."""

    pipe: Pipeline
    entry: ModelEntry
    task: str
    settings: dict[str, Any]
    folder: Path
    labels: list[int] | None
    nrow: int

    def metadata(self, **extra: Any) -> dict[str, str]:
        return _metadata(self.entry, self.task, self.settings, **extra)


def _images(out: _Outputs, samples: Any) -> dict[str, Any]:
    names = []
    for i, image in enumerate(samples):
        name = f"{out.task}-{i:03d}.png"
        save_png(to_pil(image), out.folder / name, out.metadata(index=i))
        names.append(name)
    save_png(make_grid(samples, nrow=min(out.nrow, len(samples)), scale=2), out.folder / GRID_NAME, out.metadata())
    h, w = samples.shape[-2:]
    return {"view": "images", "files": names, "grid": GRID_NAME, "size": [int(h), int(w)]}


def _points(out: _Outputs, samples: Any) -> dict[str, Any]:
    array = samples.detach().cpu().double().numpy()
    header = ",".join(f"x{d}" for d in range(array.shape[1]))
    text = header + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in array) + "\n"
    atomic_write_text(out.folder / "points.csv", text)
    out.pipe.space.save(samples, out.folder / "points.png")
    points = np.round(array[:POINTS_SHOWN, :2], 5).tolist()
    return {"view": "points", "files": ["points.csv"], "picture": "points.png", "points": points}


def _texts(out: _Outputs, samples: Any) -> dict[str, Any]:
    texts = samples if isinstance(samples, list) else out.pipe.space.texts(samples)
    atomic_write_text(out.folder / "samples.txt", "\n\n".join(texts) + "\n")
    return {"view": "texts", "files": ["samples.txt"], "texts": texts}


def _table(out: _Outputs, samples: Any) -> dict[str, Any]:
    frame = out.pipe.space.frame(samples)
    out.pipe.space.save(samples, out.folder / "samples.csv")
    shown = frame.head(TABLE_PREVIEW_ROWS)
    rows = [["" if v is None or v != v else str(v) for v in row] for row in shown.itertuples(index=False)]
    columns = [str(c) for c in frame.columns]
    return {"view": "table", "files": ["samples.csv"], "columns": columns, "rows": rows, "rows_total": len(frame)}


def _signals(out: _Outputs, samples: Any) -> dict[str, Any]:
    written = out.pipe.space.write_files(samples, out.folder, out.labels)
    out.pipe.space.save(samples, out.folder / "signals.png", nrow=min(out.nrow, len(samples)))
    files = [p.relative_to(out.folder).as_posix() for p in written]
    return {"view": out.pipe.space.info.kind, "files": files, "picture": "signals.png"}


def _clips(out: _Outputs, samples: Any) -> dict[str, Any]:
    names = []
    for i, clip in enumerate(samples):
        name = f"{out.task}-{i:03d}.gif"
        save_animation(clip, out.folder / name, scale=2)
        names.append(name)
    path = out.folder / "clips.gif"
    out.pipe.space.save(samples, path, nrow=min(out.nrow, len(samples)), metadata=out.metadata())
    return {"view": "clips", "files": names, "picture": out.pipe.space.strip_path(path).name}


# how a job's samples of each data kind are written and shown
_WRITERS = {
    "image": _images,
    "latent_image": _images,
    "points": _points,
    "tokens": _texts,
    "table": _table,
    "signal": _signals,
    "spectrogram": _signals,
    "video": _clips,
}


def write_outputs(
    pipe: Pipeline,
    entry: ModelEntry,
    task: str,
    settings: dict[str, Any],
    samples: Any,
    folder: Path,
    labels: list[int] | None = None,
    nrow: int = 8,
) -> dict[str, Any]:
    """Write a job's results as the files of their data kind; what the page needs to show them."""
    kind = pipe.config.space
    if kind not in _WRITERS:
        raise ValueError(f"the studio cannot show samples of data kind {kind!r}.")
    folder.mkdir(parents=True, exist_ok=True)
    return _WRITERS[kind](_Outputs(pipe, entry, task, settings, folder, labels, nrow), samples)


# ------------------------------------------------------------------------------------------------ the tasks


@dataclass(frozen=True)
class StudioTask:
    """A task the studio runs: its name, the data kinds it serves and its work."""

    name: str
    kinds: tuple[str, ...]
    run: Callable[[Pipeline, ModelEntry, Any, Job, Path], dict[str, Any]]
    about: str

    def check_kind(self, entry: ModelEntry) -> None:
        """One clear error when the model's data kind is not one this task serves."""
        if entry.kind not in self.kinds:
            served = ", ".join(self.kinds)
            raise ValueError(
                f"task {self.name!r} serves {served} models; model {entry.name!r} is a {entry.kind} model."
            )


def request_settings(req: BaseModel, exclude: set[str]) -> dict[str, Any]:
    """A request's settings as given (None left out), without ``exclude``."""
    return req.model_dump(exclude=exclude, exclude_none=True)


def _sample(pipe: Pipeline, entry: ModelEntry, req: Any, job: Job, folder: Path) -> dict[str, Any]:
    labels = labels_for(req.labels, req.num_samples)
    settings = request_settings(req, {"num_samples", "labels", "nrow"})
    request = library.SampleRequest.from_settings(labels=labels, **settings)
    total = request.resolve(pipe.config.sample).sampler.steps or 1
    samples = pipe.sample(req.num_samples, request=request, callback=step_reporter(job, pipe, total))
    recorded = req.model_dump(exclude_none=True)
    return write_outputs(pipe, entry, "sample", recorded, samples, folder, labels, nrow=req.nrow)


def task_image(pipe: Pipeline, image: str) -> torch.Tensor:
    """A request's base64 image, checked against the model's size and channels (an RGB file whose three channels
    are equal is the grayscale image it holds, as a browser's canvas writes one)."""
    try:
        pixels = read_image(decode_base64_image(image, "image"))
        if pipe.config.data.channels == 1 and pixels.shape[0] == 3 and bool((pixels == pixels[:1]).all()):
            pixels = pixels[:1]
        return check_images(pipe, pixels[None])
    except ValueError as err:
        raise ValueError(f"image: {err}") from None


_TASK_SETTINGS = {"sampler", "steps", "guidance", "seed", "prompt", "negative_prompt", "mixed_precision"}


def task_settings(req: Any) -> dict[str, Any]:
    """A task request's settings by the library's flat names: its label and the settings given (the task's own
    defaults hold for the others; an empty sampler is none given)."""
    given = req.model_dump(include=_TASK_SETTINGS, exclude_none=True)
    if not given.get("sampler"):
        given.pop("sampler", None)
    return {"labels": labels_for(req.label, 1), **given}


def _recorded(req: Any) -> dict[str, Any]:
    return req.model_dump(exclude={"image", "mask"}, exclude_none=True)


def _img2img(pipe: Pipeline, entry: ModelEntry, req: Any, job: Job, folder: Path) -> dict[str, Any]:
    check_strength(req.strength)
    result = img2img_images(pipe, task_image(pipe, req.image), req.strength, **task_settings(req))
    return write_outputs(pipe, entry, "img2img", _recorded(req), result, folder)


def _inpaint(pipe: Pipeline, entry: ModelEntry, req: Any, job: Job, folder: Path) -> dict[str, Any]:
    images = task_image(pipe, req.image)
    try:
        mask = read_mask(decode_base64_image(req.mask, "mask"))
    except ValueError as err:
        raise ValueError(f"mask: {err}") from None
    options = {"method": req.method, "reconstruction_guidance": req.reconstruction_guidance}
    result = inpaint_images(pipe, images, mask, **options, **task_settings(req))
    return write_outputs(pipe, entry, "inpaint", _recorded(req), result, folder)


def _infill(pipe: Pipeline, entry: ModelEntry, req: Any, job: Job, folder: Path) -> dict[str, Any]:
    settings = task_settings(req) | request_settings(req, {"text", "num_samples", "label"} | _TASK_SETTINGS)
    settings["labels"] = labels_for(req.label, req.num_samples)
    texts = infill_texts(pipe, req.text, req.num_samples, **settings)
    return write_outputs(pipe, entry, "infill", req.model_dump(exclude_none=True), texts, folder)


TASKS: dict[str, StudioTask] = {
    t.name: t
    for t in (
        StudioTask("sample", tuple(_WRITERS), _sample, "new samples of the model's data"),
        StudioTask("img2img", IMAGE_KINDS, _img2img, "an image re-drawn from noise of a strength (SDEdit)"),
        StudioTask("inpaint", IMAGE_KINDS, _inpaint, "the masked region of an image filled (white = fill)"),
        StudioTask("infill", ("tokens",), _infill, "the blanks (_) of a text filled, the rest kept"),
    )
}
