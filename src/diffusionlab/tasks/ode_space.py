"""The model as an invertible map through its probability-flow ODE (floor 5): inversion, regeneration and editing,
interpolation between seeds or inverted images, and variations of a seed.

``invert`` runs the ODE from the data up to a noise level (DDIM inversion, Song et al. 2021a, sec. 4.3 and 5.4,
with any of ``INVERTIBLE``'s deterministic solvers on the model's grid, reversed): the data at t = 0 are taken as
x = alpha(t_min) x0 at the grid's last noise level t_min, then the solver climbs the grid to ``to_t``.
``regenerate`` runs it back down from there; with the same conditioning it reconstructs the input (exactly, as the
steps grow), with another label or prompt it edits it (invert to t = 0.5, regenerate as another class).
``interpolate`` samples along the great circle between two noises (two seeds' or two inverted images'), and
``variations`` mixes a second seed's noise into a sample's by a strength (the "variation seed" of the Stable
Diffusion web UIs), per sample from its own stream, so every result is seed-stable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..pipeline import Pipeline
from ..sampling import NoiseSource, prior_std
from ..sampling.interpolation import slerp, slerp_path
from ..sampling.request import SampleRequest, labels_for
from .common import TaskRun, check_images, run_solver, task_request

__all__ = ["INVERTIBLE", "invert", "regenerate", "interpolate", "variations", "inversion_grid"]

INVERTIBLE = ("ddim", "euler", "heun", "dpmpp_2m")  # deterministic solvers that run up a grid as well as down


def _gaussian(pipe: Pipeline, what: str) -> None:
    if pipe.family.name != "gaussian":
        raise ValueError(f"{what} needs a Gaussian model's probability-flow ODE; this is a {pipe.family.name} model.")


def _invertible(run: TaskRun) -> None:
    sampler = run.spec.sampler or "ddim"
    if sampler not in INVERTIBLE:
        raise ValueError(f"sampler={sampler!r} cannot invert; use a deterministic one: {', '.join(INVERTIBLE)}.")
    if run.spec.options.get("eta"):
        raise ValueError("eta > 0 makes DDIM stochastic; inversion needs eta = 0.")


def inversion_grid(run: TaskRun, to_t: float | None) -> Tensor:
    """The decreasing grid from ``to_t`` (default: the top of the model's grid, or its second point where alpha
    is 0 there, as at flow's t = 1) to the last noise level t_min, then 0."""
    process = run.pipe.process
    ts = run.spec.grid(process)
    top = float(ts[0]) if float(process.alpha(ts[0])) > 0 else float(ts[1])
    t = top if to_t is None else float(to_t)
    t_min = float(ts[-2])
    if not t_min < t <= top + 1e-12:
        raise ValueError(f"to_t={t:g} must lie in ({t_min:g}, {top:g}], above the grid's last noise level.")
    below = ts[(ts < t - 1e-12) & (ts > 0)]
    return torch.cat([torch.tensor([t], dtype=torch.float64), below, torch.zeros(1, dtype=torch.float64)])


def invert(
    pipe: Pipeline,
    images: Tensor,
    *,
    to_t: float | None = None,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    **settings: Any,
) -> Tensor:
    """The model-space state at ``to_t`` (default: the top of the grid) that the probability-flow ODE carries the
    images (N, C, H, W) in [0, 1] to, under the request's conditioning (``labels``, ``prompt``, ``guidance``) and
    deterministic solver (``sampler`` in ``INVERTIBLE``, ``steps``, ``spacing``)."""
    _gaussian(pipe, "inversion")
    images = check_images(pipe, images)
    run = TaskRun.start(pipe, len(images), task_request(pipe, request, settings, sampler="ddim"))
    _invertible(run)
    grid = inversion_grid(run, to_t)
    up = grid[:-1].flip(0)  # t_min .. to_t
    a_min = float(pipe.process.alpha(up[0]))

    def climb(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        x = a_min * pipe.encode(images[idx].to(pipe.device))
        return run_solver(run.denoiser, x, up, run.spec, cond=cond, noise=run.noise(idx)).cpu()

    return run.map(climb, range(len(images)), batch_size)


def regenerate(
    pipe: Pipeline,
    x: Tensor,
    *,
    from_t: float | None = None,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    decode: bool = True,
    **settings: Any,
) -> Tensor:
    """Images in [0, 1] (``decode=False``: the model-space ends) from model-space states ``x`` at ``from_t``
    (what ``invert`` gave, or noise), down the model's grid under the request's conditioning and solver."""
    _gaussian(pipe, "regeneration")
    run = TaskRun.start(pipe, len(x), task_request(pipe, request, settings, sampler="ddim"))
    grid = inversion_grid(run, from_t)

    def descend(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        out = run_solver(run.denoiser, x[idx].to(pipe.device), grid, run.spec, cond=cond, noise=run.noise(idx))
        return (pipe.decode(out) if decode else out).cpu()

    return run.map(descend, range(len(x)), batch_size)


def _per_sample(settings: dict[str, Any], n: int) -> dict[str, Any]:
    """The settings with one label for all broadcast to the n samples."""
    if settings.get("labels") is not None:
        settings = {**settings, "labels": labels_for(settings["labels"], n)}
    return settings


def _sample_from(pipe: Pipeline, run: TaskRun, x: Tensor, batch_size: int = 256) -> Tensor:
    """Images from starting noises ``x`` at t_max down the model's whole grid, as ``Pipeline.sample`` runs it."""
    ts = run.spec.grid(pipe.process)

    def descend(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        out = run_solver(run.denoiser, x[idx].to(pipe.device), ts, run.spec, cond=cond, noise=run.noise(idx))
        return pipe.decode(out).cpu()

    return run.map(descend, range(len(x)), batch_size)


def _seed_noise(pipe: Pipeline, seed: int, indices: list[int], t: Tensor) -> Tensor:
    """The starting noise of samples ``indices`` of a run seeded ``seed`` (what ``Pipeline.sample`` starts from)."""
    return prior_std(pipe.process, t) * NoiseSource(seed, indices, pipe.device)(pipe.sample_shape)


def interpolate(
    pipe: Pipeline,
    frames: int,
    *,
    seeds: tuple[int, int] | None = None,
    noises: tuple[Tensor, Tensor] | None = None,
    prompts: tuple[str, str] | None = None,
    request: SampleRequest | None = None,
    **settings: Any,
) -> Tensor:
    """``frames`` images along one path, both ends included: the great circle between two starting noises (sample 0
    of ``seeds[0]`` and of ``seeds[1]``, or two states ``noises`` at the top of the inversion grid, e.g. two inverted
    images) under one conditioning; or, with ``prompts``, one starting noise (sample 0 of ``seed``) under the
    prompts' token embeddings mixed linearly from the first to the second (the mission's "pin down the seed and
    journey through the prompts")."""
    _gaussian(pipe, "interpolation")
    if sum(v is not None for v in (seeds, noises, prompts)) != 1:
        raise ValueError("give seeds=(a, b), noises=(x_a, x_b) or prompts=(p, q), one of them.")
    if prompts is not None:
        return _along_prompts(pipe, frames, prompts, request, settings)
    run = TaskRun.start(pipe, frames, task_request(pipe, request, _per_sample(settings, frames)))
    if seeds is not None:
        t_max = run.spec.grid(pipe.process)[0]
        a, b = (_seed_noise(pipe, int(s), [0], t_max)[0] for s in seeds)
        return _sample_from(pipe, run, slerp_path(a, b, frames))
    a, b = (n.to(pipe.device) for n in noises)  # type: ignore[union-attr]
    return regenerate(pipe, slerp_path(a, b, frames), request=run.request)


def _along_prompts(
    pipe: Pipeline, frames: int, prompts: tuple[str, str], request: SampleRequest | None, settings: dict[str, Any]
) -> Tensor:
    """Frames from one noise under token embeddings (1 - w) e_p + w e_q, w = 0 .. 1 (masks joined)."""
    if len(prompts) != 2 or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts={prompts!r}: expected two non-empty prompts.")
    if settings.get("prompt") is not None:
        raise ValueError("give prompts=(p, q) or prompt=..., not both.")
    run = TaskRun.start(pipe, frames, task_request(pipe, request, {**settings, "prompt": prompts[0]}))
    emb = pipe.encode_prompts(list(prompts))
    w = torch.linspace(0, 1, frames, dtype=emb.tokens.dtype, device=emb.tokens.device).reshape(-1, 1, 1)
    text = ((1 - w) * emb.tokens[0] + w * emb.tokens[1]).cpu()
    mask = (emb.mask[0] | emb.mask[1]).expand(frames, -1).cpu()
    run = replace(run, cond={**(run.cond or {}), "text": text, "text_mask": mask})
    t_max = run.spec.grid(pipe.process)[0]
    start = _seed_noise(pipe, run.request.seed, [0], t_max)[0]
    return _sample_from(pipe, run, start.expand(frames, *start.shape).clone())


def variations(
    pipe: Pipeline,
    seed: int,
    variation_seed: int,
    strength: float,
    num_samples: int,
    *,
    index: int = 0,
    request: SampleRequest | None = None,
    **settings: Any,
) -> Tensor:
    """``num_samples`` variations of sample ``index`` of ``seed``: variation k starts from
    slerp(noise(seed, index), noise(variation_seed, k), strength) (0: the sample itself, 1: sample k of
    ``variation_seed``)."""
    _gaussian(pipe, "variations")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength={strength!r} must be in [0, 1].")
    run = TaskRun.start(pipe, num_samples, task_request(pipe, request, _per_sample(settings, num_samples)))
    t_max = run.spec.grid(pipe.process)[0]
    base = _seed_noise(pipe, seed, [index], t_max).expand(num_samples, *pipe.sample_shape)
    other = _seed_noise(pipe, variation_seed, list(range(num_samples)), t_max)
    return _sample_from(pipe, run, slerp(base, other, float(strength)))
