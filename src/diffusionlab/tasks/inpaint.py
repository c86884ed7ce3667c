"""Inpainting and outpainting: fill the masked part of an image so it agrees with the rest (floor 5).

Mask convention, everywhere (API, CLI, mask PNGs): the mask marks the region to FILL. In a mask PNG, white
(>= 128) is filled and black is kept; as a tensor, True / 1 is filled. The known pixels are pasted back in
pixel space at the end, so they come back bit for bit (the fault of diffusers #3880, #4782, #9867).

Two methods:
- ``repaint``: RePaint (Lugmayr et al. 2022, Algorithm 1) with its resampling schedule (sec. 4.2): each reverse
  step's unknown part comes from the model and the known part from q(x_s | x0), and the chain repeatedly jumps
  ``jump_length`` steps back up (re-noising) so the two parts harmonise.
- ``replace``: the replacement method (Song et al. 2021, appendix I.2; Ho et al. 2022, video diffusion): any
  sampler runs as usual, and before every denoiser evaluation the known region of x_t is replaced by a fresh
  draw of q(x_t | x0). Optionally with Ho et al.'s reconstruction guidance, which also pulls the filled part
  towards agreeing with the known part through the network's gradient.
For latent models both run in the model space with the mask shrunk to its size (a model-space pixel is known
only if every pixel it covers is), and the known pixels are pasted back after decoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..denoisers import DenoiserLike, Prediction
from ..pipeline import Pipeline
from ..processes import broadcast_like
from ..sampling import NoiseSource, check_eta, ddim_step, prior_std
from ..sampling.request import SampleRequest
from .common import TaskRun, auxiliary_noise, check_count, check_images, read_image, run_solver, task_request

__all__ = [
    "INPAINT_METHODS",
    "InpaintOptions",
    "repaint_schedule",
    "repaint",
    "KnownRegion",
    "rect_mask",
    "read_mask",
    "check_mask",
    "model_space_keep",
    "inpaint",
    "outpaint_canvas",
    "outpaint",
]

INPAINT_METHODS = ("repaint", "replace")


@dataclass(frozen=True)
class InpaintOptions:
    """Inpainting's own options, checked once: the ``method`` ("repaint" or "replace"), RePaint's jumps
    (``jump_length`` j, ``jump_n_sample`` r) and step noise ``eta``, and the replacement method's reconstruction
    guidance weight w_r (Ho et al. 2022)."""

    method: str = "repaint"
    jump_length: int = 10
    jump_n_sample: int = 10
    eta: float = 1.0
    reconstruction_guidance: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in INPAINT_METHODS:
            raise ValueError(f"method={self.method!r} is not known; expected one of {INPAINT_METHODS}.")
        if self.reconstruction_guidance and self.method != "replace":
            raise ValueError("reconstruction_guidance applies to method='replace' only.")
        check_count("jump_length", self.jump_length)
        check_count("jump_n_sample", self.jump_n_sample)
        check_eta(self.eta)
        _check_reconstruction_guidance(self.reconstruction_guidance)


def _check_reconstruction_guidance(weight: float) -> float:
    """Raise one clear error unless the reconstruction guidance weight w_r is >= 0."""
    if not float(weight) >= 0.0:
        raise ValueError(f"reconstruction_guidance={weight} must be >= 0 (0 = none).")
    return float(weight)


def repaint_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The levels RePaint's chain visits (Lugmayr et al. 2022, sec. 4.2 and their ``get_schedule_jump``).

    Level ``steps`` is the start (t_max, noise), level 0 the data; consecutive levels differ by one (down: a
    reverse step, up: a forward re-noising step). Every ``jump_length`` levels, from level 1 up to
    ``steps - jump_length``, the chain jumps ``jump_length`` levels back up ``jump_n_sample - 1`` times, so
    it takes ``steps + jump_length (jump_n_sample - 1) * #jump-levels`` reverse steps in all.
    """
    check_count("steps", steps)
    check_count("jump_length", jump_length)
    check_count("jump_n_sample", jump_n_sample)
    jumps = {level: jump_n_sample - 1 for level in range(1, steps - jump_length + 1, jump_length)}
    level, levels = steps, [steps]
    while level > 0:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    return levels


def repaint(
    denoiser: DenoiserLike,
    known: Tensor,
    keep: Tensor,
    ts: Tensor,
    levels: Sequence[int],
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    eta: float = 1.0,
    progress: bool = False,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1) in the model space, along ``levels`` on the grid ``ts``.

    ``known`` holds the data x0 where ``keep`` is True (elsewhere it is ignored). Level L sits at time
    ts[len(ts) - 1 - L]. A down move t -> s: x_s^unknown by the DDIM step with ``eta`` (Song et al. 2021a,
    eq. 12; eta = 1 is the DDPM step RePaint uses), x_s^known ~ q(x_s | x0) = N(alpha_s x0, sigma_s^2 I)
    (line 5), x_s = keep * known + (1 - keep) * unknown (line 8). An up move s -> t: x_t ~ q(x_t | x_s) =
    N(alpha_t/alpha_s x_s, (sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2) I) (line 10; VDM, Kingma et al. 2021, sec. 2).
    """
    eta = check_eta(eta)
    process, top = denoiser.process, len(ts) - 1
    if levels[0] != top or levels[-1] != 0:
        raise ValueError(f"levels must run from {top} (the grid's start) to 0, got {levels[0]} to {levels[-1]}.")
    x = prior_std(process, ts[0]) * noise.like(known)
    moves = list(zip(levels[:-1], levels[1:], strict=True))
    for a, b in tqdm(moves, desc="repaint", unit="step", leave=False) if progress else moves:
        if b < a:  # reverse step from level a to b = a - 1
            t, s = ts[top - a], ts[top - b]
            unknown = ddim_step(process, denoiser(x, t, cond), t, s, eta, noise)
            a_s, s_s = float(process.alpha(s)), float(process.sigma(s))
            known_s = a_s * known + s_s * noise.like(x) if s_s > 0 else known
            x = torch.where(keep, known_s, unknown)
        else:  # forward re-noising from level a to b = a + 1
            s, t = ts[top - a], ts[top - b]
            ratio = float(process.alpha(t)) / float(process.alpha(s))
            std = math.sqrt(max(float(process.sigma(t)) ** 2 - ratio**2 * float(process.sigma(s)) ** 2, 0.0))
            x = ratio * x + std * noise.like(x)
    return torch.where(keep, known, x)


class KnownRegion:
    """The replacement method as a denoiser wrapping a denoiser: before each evaluation at time t the known
    region of x is replaced by a fresh draw of q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) (Song et al. 2021,
    appendix I.2), so any sampler inpaints. Build one per batch: ``known``, ``keep`` and ``noise`` are its rows.

    ``reconstruction_guidance`` w_r > 0 also corrects the unknown region's data estimate by Ho et al. 2022
    (video diffusion, eq. 7): x0^b <- x0^b - (w_r alpha_t / 2) grad_{x_t^b} ||x^a - x0_hat^a(x_t)||^2, which
    makes the filled part agree with the known part a (one gradient through the network per evaluation).
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        known: Tensor,
        keep: Tensor,
        noise: NoiseSource,
        reconstruction_guidance: float = 0.0,
    ) -> None:
        self.denoiser, self.process = denoiser, denoiser.process
        self.known, self.keep, self.noise = known, keep, noise
        self.scale = _check_reconstruction_guidance(reconstruction_guidance)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        tt = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        alpha = broadcast_like(self.process.alpha(tt), x)
        sigma = broadcast_like(self.process.sigma(tt), x)
        x = torch.where(self.keep, alpha * self.known + sigma * self.noise.like(x), x)
        if self.scale == 0.0:
            return self.denoiser(x, t, cond)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            pred = self.denoiser(x_in, t, cond)
            error = ((pred.x0 - self.known) ** 2 * self.keep).sum()
            grad = torch.autograd.grad(error, x_in)[0]
        x0 = torch.where(self.keep, pred.x0, pred.x0 - 0.5 * self.scale * alpha * grad).detach()
        return Prediction(x, x0, (x - alpha * x0) / sigma, pred.alpha.detach(), pred.sigma.detach())


def rect_mask(height: int, width: int, box: Sequence[int]) -> Tensor:
    """A (H, W) mask, True (fill) inside the box (x0, y0, x1, y1): columns x0..x1-1, rows y0..y1-1."""
    if len(box) != 4:
        raise ValueError(f"a rectangle is x0,y0,x1,y1 (4 integers), got {list(box)}.")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"rectangle {x0},{y0},{x1},{y1} does not fit a {width}x{height} image; expected 0 <= x0 < x1 <= {width} "
            f"and 0 <= y0 < y1 <= {height}."
        )
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def read_mask(source: str | os.PathLike[str] | bytes) -> Tensor:
    """A mask PNG (a path, or its bytes) as (H, W) bool: white (>= 128 in grayscale) = fill, black = keep."""
    image = read_image(source)
    gray = image[0] if image.shape[0] == 1 else (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])
    return gray >= 128 / 255


def check_mask(mask: Tensor, images: Tensor) -> Tensor:
    """The fill mask as bool (N, 1, H, W) for images (N, C, H, W); one clear error if its size differs."""
    if not isinstance(mask, Tensor) or mask.ndim not in (2, 3, 4):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor (H, W), (N, H, W) or (N, 1, H, W), got {got}.")
    m = mask.bool() if mask.dtype == torch.bool else mask >= 0.5
    m = m[None, None] if m.ndim == 2 else (m[:, None] if m.ndim == 3 else m)
    h, w = images.shape[-2:]
    if tuple(m.shape[-2:]) != (h, w):
        raise ValueError(
            f"the mask is {m.shape[-1]}x{m.shape[-2]} but the image is {w}x{h} (width x height); "
            "give a mask of the image's size."
        )
    if m.shape[1] != 1 or m.shape[0] not in (1, len(images)):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit {len(images)} image(s); give one or one each."
        )
    return m.expand(len(images), 1, h, w).to(images.device)


def model_space_keep(fill: Tensor, size: Sequence[int]) -> Tensor:
    """The known region in a model space of spatial ``size``: the pixel mask itself when sizes agree; when the
    model space is smaller (a latent space), a model pixel is known only if every pixel it covers is known."""
    keep = ~fill
    if tuple(keep.shape[-2:]) == tuple(size):
        return keep
    if size[0] < keep.shape[-2] or size[1] < keep.shape[-1]:
        return F.interpolate(keep.float(), size=tuple(size), mode="area") > 1.0 - 1e-6
    return F.interpolate(keep.float(), size=tuple(size), mode="nearest") > 0.5


def inpaint(
    pipe: Pipeline,
    images: Tensor,
    mask: Tensor,
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
    """Fill the masked region of images (N, C, H, W) in [0, 1]; returns images in [0, 1] whose unmasked pixels
    are exactly the input's.

    ``mask``: True / 1 = fill (one (H, W) mask for all, or one per image). ``method``: "repaint" (with
    ``jump_length``, ``jump_n_sample``, ``eta``) or "replace" (with any ``sampler``, default ddpm, and its options,
    and optionally Ho et al.'s ``reconstruction_guidance`` weight w_r). ``settings`` are the request's fields by
    name, as for ``Pipeline.sample`` (``steps``, ``labels``, ``guidance``, ``prompt``, ``seed``, ...), or pass one
    ``request``. No ``labels`` on a class-conditional model samples the unconditional model, so the content comes
    from the known pixels alone. Image i uses the noise of (seed, i), at any batch size.
    """
    options = InpaintOptions(method, jump_length, jump_n_sample, eta, reconstruction_guidance)
    images = check_images(pipe, images)
    fill = check_mask(mask, images)
    run = TaskRun.start(pipe, len(images), task_request(pipe, request, settings, sampler="ddpm"))

    def fill_in(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        batch, batch_fill = images[idx].to(pipe.device), fill[idx].to(pipe.device)
        known = pipe.encode(batch)
        keep = model_space_keep(batch_fill, known.shape[-2:])
        cond = {**(cond or {}), **pipe.inpaint_condition(batch, batch_fill)} or None
        decoded = pipe.decode(fill_known(run, options, known, keep, idx, cond, progress)).to(batch.dtype)
        return torch.where(batch_fill, decoded, batch).cpu()  # the known pixels, bit for bit

    return run.map(fill_in, range(len(images)), batch_size)


def fill_known(
    run: TaskRun,
    options: InpaintOptions,
    known: Tensor,
    keep: Tensor,
    idx: list[int],
    cond: dict[str, Tensor] | None,
    progress: bool = False,
) -> Tensor:
    """Model-space samples ``idx`` of a run that agree with ``known`` where ``keep`` (True = known): RePaint
    (Lugmayr et al. 2022), or replacement on the run's solver with Ho et al.'s reconstruction guidance; the task
    pastes the known data back after decoding."""
    ts = run.spec.grid(run.pipe.process)
    noise = run.noise(idx)
    if options.method == "repaint":
        levels = repaint_schedule(len(ts) - 1, options.jump_length, options.jump_n_sample)
        return repaint(
            run.denoiser, known, keep, ts, levels, cond=cond, noise=noise, eta=options.eta, progress=progress
        )
    known_noise = auxiliary_noise(run.request.seed, idx, known.device, stream=1)
    wrapped = KnownRegion(run.denoiser, known, keep, known_noise, options.reconstruction_guidance)
    x0 = prior_std(run.pipe.process, ts[0]) * noise.like(known)
    return run_solver(wrapped, x0, ts, run.spec, cond=cond, noise=noise, progress=progress)


def outpaint_canvas(images: Tensor, pad: Sequence[int], fill_value: float = 0.5) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) on a canvas extended by ``pad`` = (left, top, right, bottom) pixels, and the fill mask
    (N, 1, H', W') of the new border (True = fill)."""
    if len(pad) != 4 or any(isinstance(p, bool) or int(p) != p or p < 0 for p in pad):
        raise ValueError(f"pad must be 4 non-negative integers left,top,right,bottom, got {list(pad)}.")
    left, top, right, bottom = (int(p) for p in pad)
    n, c, h, w = images.shape
    canvas = torch.full((n, c, top + h + bottom, left + w + right), float(fill_value), dtype=images.dtype)
    canvas[:, :, top : top + h, left : left + w] = images
    mask = torch.ones(n, 1, top + h + bottom, left + w + right, dtype=torch.bool)
    mask[:, :, top : top + h, left : left + w] = False
    return canvas, mask


def outpaint(pipe: Pipeline, images: Tensor, pad: Sequence[int], **kwargs: Any) -> Tensor:
    """Extend images (N, C, H, W) in [0, 1] by ``pad`` = (left, top, right, bottom) pixels and inpaint the border;
    the result must have the model's image size. Keyword arguments as for ``inpaint``."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, C, H, W), got {got}.")
    canvas, mask = outpaint_canvas(images, pad)
    return inpaint(pipe, canvas, mask, **kwargs)
