"""Video: prediction of future frames and interpolation of missing ones, as inpainting of whole frames (floor 5).

One idea, as for images and series: the known frames are kept and the others are drawn so they agree with them,
by RePaint (Lugmayr et al. 2022, Algorithm 1) or the replacement method with Ho et al.'s reconstruction guidance
(Video Diffusion Models 2022, sec. 3.1, eq. 7), the routines of ``tasks.inpaint`` with a mask of frames. Prediction
keeps the first frames, interpolation the ends; the known frames come back bit for bit. The space-time network
takes frame counts it was not trained on, so a clip can be extended past the model's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..pipeline import Pipeline
from ..sampling.request import SampleRequest
from .common import TaskRun, task_request
from .inpaint import InpaintOptions, fill_known

__all__ = ["parse_frames", "check_clips", "fill_frames"]


def parse_frames(text: str, frames: int) -> list[int]:
    """Frame indices from text such as ``0-3`` or ``0,7`` or ``0-1,6-7`` (ranges inclusive) in [0, frames - 1];
    one clear error naming the text otherwise."""
    indices: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ValueError(f"known_frames={text!r} must be frame indices or ranges such as 0-3 or 0,7.") from None
        if not 0 <= lo <= hi < frames:
            raise ValueError(f"known_frames={text!r}: frames run from 0 to {frames - 1}; got {part!r}.")
        indices.update(range(lo, hi + 1))
    return sorted(indices)


def check_clips(pipe: Pipeline, clips: Tensor) -> Tensor:
    """Clips as a float (N, F, C, H, W) batch in [0, 1] of the video model's channels and frame size (any number
    of frames), or one clear error naming what is off."""
    if pipe.space.name != "video":
        raise ValueError(f"frame prediction and interpolation take a video model; this is a {pipe.space.name} model.")
    if not isinstance(clips, Tensor) or clips.ndim not in (4, 5) or not clips.is_floating_point():
        got = f"{type(clips).__name__} {tuple(clips.shape)}" if isinstance(clips, Tensor) else type(clips).__name__
        raise ValueError(f"clips must be a float tensor (N, F, C, H, W) or (F, C, H, W), got {got}.")
    clips = clips[None] if clips.ndim == 4 else clips
    _, c, h, w = pipe.sample_shape
    if tuple(clips.shape[2:]) != (c, h, w):
        raise ValueError(
            f"the clip's frames are {tuple(clips.shape[2:])} (C, H, W); this model makes frames of {(c, h, w)}."
        )
    if not bool(torch.isfinite(clips).all()) or clips.min() < 0 or clips.max() > 1:
        raise ValueError("clip values must be finite and lie in [0, 1].")
    return clips.float()


def fill_frames(
    pipe: Pipeline,
    clips: Tensor,
    known_frames: Sequence[int],
    *,
    method: str = "repaint",
    jump_length: int = 10,
    jump_n_sample: int = 10,
    eta: float = 1.0,
    reconstruction_guidance: float = 0.0,
    request: SampleRequest | None = None,
    batch_size: int = 64,
    progress: bool = False,
    **settings: Any,
) -> Tensor:
    """Clips (N, F, C, H, W) in [0, 1] with every frame not in ``known_frames`` drawn by the video model; the known
    frames are returned exactly as given. Prediction: ``known_frames`` = the first frames; interpolation: the ends.

    ``method`` and its options as for ``tasks.inpaint``; ``settings`` are the request's fields by name
    (``steps``, ``labels``, ``guidance``, ``seed``, ...). Clip i uses the noise of (seed, i) at any batch size.
    """
    options = InpaintOptions(method, jump_length, jump_n_sample, eta, reconstruction_guidance)
    clips = check_clips(pipe, clips)
    frames = clips.shape[1]
    known = sorted({int(f) for f in known_frames})
    if not known or known[0] < 0 or known[-1] >= frames:
        raise ValueError(f"known_frames={list(known_frames)} must name some of the clip's frames 0..{frames - 1}.")
    if len(known) == frames:
        raise ValueError(f"known_frames={list(known_frames)} names every frame of the clip: nothing to fill.")
    keep = torch.zeros(1, frames, 1, 1, 1, dtype=torch.bool)
    keep[:, known] = True
    run = TaskRun.start(pipe, len(clips), task_request(pipe, request, settings, sampler="ddpm"))

    def fill_in(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        batch = clips[idx].to(pipe.device)
        x_known = pipe.encode(batch)
        mask = keep.to(pipe.device).expand_as(x_known)
        decoded = pipe.decode(fill_known(run, options, x_known, mask, idx, cond, progress)).to(batch.dtype)
        return torch.where(mask, batch, decoded).cpu()  # the known frames, bit for bit

    return run.map(fill_in, range(len(clips)), batch_size)
