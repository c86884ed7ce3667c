"""The model as an invertible map through its probability-flow ODE (floor 5): inversion, regeneration and editing,
interpolation between seeds or inverted images, and variations of a seed.

``invert`` runs the ODE from the data up to a noise level (DDIM inversion, Song et al. 2021a, sec. 4.3 and 5.4,
with any of ``INVERTIBLE``'s deterministic solvers on the model's grid, reversed): the data at t = 0 are taken as
x = alpha(t_min) x0 at the grid's last noise level t_min, then the solver climbs the grid to ``to_t``.
``regenerate`` runs it back down from there; with the same conditioning it reconstructs the input (exactly, as the
steps grow), with another label or prompt it edits it (invert to t = 0.5, regenerate as another class).
``invert_null`` adds null-text inversion (Mokady et al. 2023) for guided models: DDIM inversion without guidance
gives a pivot trajectory, then, step by step down the grid, the unconditional branch's condition (a prompt's null
token embeddings, or a class model's null label as soft-label weights) is optimised so that the guided DDIM step
lands on the pivot; ``regenerate(..., nulls=...)`` then reconstructs under guidance, or edits.
``interpolate`` samples along the great circle between two noises (two seeds' or two inverted images'), or from
one noise along a path between two classes' or prompts' embeddings (linear or spherical), and
``variations`` mixes a second seed's noise into a sample's by a strength (the "variation seed" of the Stable
Diffusion web UIs), per sample from its own stream, so every result is seed-stable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from ..conditioning import iter_batches
from ..denoisers import DenoiserLike, Prediction
from ..networks import LabelEmbedding
from ..pipeline import Pipeline
from ..processes import GaussianProcess
from ..sampling import NoiseSource, prior_std
from ..sampling.guidance import ClassifierFreeGuidance, soft_labels, with_uncond
from ..sampling.interpolation import slerp, slerp_path, slerp_weights
from ..sampling.request import SampleRequest, labels_for, precision
from ..sampling.solvers import ddim_step
from .common import TaskRun, check_images, run_solver, task_request

__all__ = [
    "INVERTIBLE",
    "invert",
    "invert_null",
    "NullInversion",
    "regenerate",
    "interpolate",
    "variations",
    "inversion_grid",
]

EMBEDDING_PATHS = ("linear", "spherical")  # how interpolate moves between two classes' or prompts' embeddings

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
    nulls: NullInversion | None = None,
    **settings: Any,
) -> Tensor:
    """Images in [0, 1] (``decode=False``: the model-space ends) from model-space states ``x`` at ``from_t``
    (what ``invert`` gave, or noise), down the model's grid under the request's conditioning and solver; with
    ``nulls`` (``invert_null``'s result) each step's unconditional branch is the optimised one."""
    _gaussian(pipe, "regeneration")
    run = TaskRun.start(pipe, len(x), task_request(pipe, request, settings, sampler="ddim"))
    grid = inversion_grid(run, from_t)
    if nulls is not None and len(nulls.noise) != len(x):
        raise ValueError(f"nulls holds {len(nulls.noise)} inputs' null conditions, but {len(x)} states were given.")

    def descend(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        den = run.denoiser if nulls is None else _StepNulls(run.denoiser, nulls, idx, pipe.device)
        out = run_solver(den, x[idx].to(pipe.device), grid, run.spec, cond=cond, noise=run.noise(idx))
        return (pipe.decode(out) if decode else out).cpu()

    return run.map(descend, range(len(x)), batch_size)


@dataclass(frozen=True)
class NullInversion:
    """Null-text inversion's result: the inputs' states at ``times[0]`` and, for each step of the descending grid
    ``times`` (from ``times[k]``), every input's optimised unconditional condition (on the CPU)."""

    noise: Tensor
    times: Tensor
    nulls: list[dict[str, Tensor]]


def _guidance_of(denoiser: DenoiserLike) -> ClassifierFreeGuidance:
    """The classifier-free guidance inside a guided denoiser chain."""
    while not isinstance(denoiser, ClassifierFreeGuidance):
        denoiser = getattr(denoiser, "denoiser", None)
        if denoiser is None:
            raise ValueError("null-text inversion needs a model with labels or prompts (classifier-free guidance).")
    return denoiser


def _initial_null(run: TaskRun, cond: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """The unconditional branch's condition before optimisation: the null label as soft-label weights, or the
    empty (or negative) prompt's token embeddings, one row per input."""
    if "text" in cond:
        tokens = _guidance_of(run.denoiser).uncond["text"].to(cond["text"].device)
        return {"text": tokens.expand(n, *tokens.shape[1:]).clone().float()}
    rows = int(run.pipe.config.network.num_classes) + 1
    return {"labels": soft_labels(torch.full((n,), -1, device=cond["labels"].device), rows)}


def invert_null(
    pipe: Pipeline,
    images: Tensor,
    *,
    to_t: float | None = None,
    iterations: int = 10,
    lr: float = 0.01,
    tolerance: float = 1e-5,
    request: SampleRequest | None = None,
    batch_size: int = 64,
    **settings: Any,
) -> NullInversion:
    """Null-text inversion (Mokady et al. 2023, Algorithm 1) of images (N, C, H, W) in [0, 1] under the request's
    labels or prompt and guidance w > 1, with DDIM: the pivot is DDIM inversion at w = 1; then from the pivot's top
    state, at each step down the grid the unconditional condition is optimised (Adam, ``lr``, at most
    ``iterations`` steps, stopping below ``tolerance``; warm-started from the step above) so that the guided DDIM
    step lands on the pivot's next state, with MSE."""
    _gaussian(pipe, "null-text inversion")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be a positive integer.")
    if not (lr > 0 and tolerance >= 0):
        raise ValueError(f"lr={lr!r} must be positive and tolerance={tolerance!r} not negative.")
    images = check_images(pipe, images)
    run = TaskRun.start(pipe, len(images), task_request(pipe, request, settings, sampler="ddim"))
    if (run.spec.sampler or "ddim") != "ddim" or run.spec.options.get("eta"):
        raise ValueError(f"null-text inversion runs deterministic DDIM; got sampler={run.spec.sampler!r}.")
    scale = run.request.guidance.guidance
    given = run.request.conditioning
    if (given.labels is None and not given.prompt) or not run.cond:
        raise ValueError("null-text inversion needs the labels or the prompt the images are inverted under.")
    if scale <= 1.0:
        raise ValueError(f"null-text inversion needs guidance > 1 (got guidance={scale:g}); at guidance 1 plain "
                         "`invert` is the same map.")  # fmt: skip
    unguided = run.request.guidance.model_copy(update={"guidance": 1.0})
    pivot_run = TaskRun.start(pipe, len(images), run.request.model_copy(update={"guidance": unguided}))
    times = inversion_grid(run, to_t)
    process = pipe.process
    tops, per_step = [], [[] for _ in range(len(times) - 1)]
    batches = iter_batches(range(len(images)), batch_size, run.cond, pipe.device)
    with precision(run.request.guidance.mixed_precision):
        for idx, cond in batches:
            x0 = pipe.encode(images[idx].to(pipe.device))
            pivot = _pivot(pivot_run.denoiser, process, x0, times, cond)
            z, null = pivot[0], _initial_null(run, cond, len(idx))
            for k in range(len(times) - 1):
                t, s = times[k], times[k + 1]
                null = _fit_null(run.denoiser, process, z, t, s, cond, null, pivot[k + 1], iterations, lr, tolerance)
                with torch.no_grad():
                    z = ddim_step(process, with_uncond(run.denoiser, null)(z, t, cond), t, s, 0.0, None)
                per_step[k].append({key: v.cpu() for key, v in null.items()})
            tops.append(pivot[0].cpu())
    nulls = [{key: torch.cat([part[key] for part in step]) for key in step[0]} for step in per_step]
    return NullInversion(torch.cat(tops), times, nulls)


def _pivot(
    denoiser: DenoiserLike, process: GaussianProcess, x0: Tensor, times: Tensor, cond: dict[str, Tensor] | None
) -> list[Tensor]:
    """DDIM inversion's states on the descending grid ``times`` (top .. t_min, then the data x0 at 0)."""
    up = times[:-1].flip(0)
    states = [float(process.alpha(up[0])) * x0]
    with torch.no_grad():
        for i in range(len(up) - 1):
            states.append(ddim_step(process, denoiser(states[-1], up[i], cond), up[i], up[i + 1], 0.0, None))
    return [*states[::-1], x0]


def _fit_null(
    denoiser: DenoiserLike,
    process: GaussianProcess,
    z: Tensor,
    t: Tensor,
    s: Tensor,
    cond: dict[str, Tensor] | None,
    start: dict[str, Tensor],
    target: Tensor,
    iterations: int,
    lr: float,
    tolerance: float,
) -> dict[str, Tensor]:
    """One step of null-text inversion: the unconditional condition, from ``start``, whose guided DDIM step from
    (z, t) to s lands nearest ``target`` (Mokady et al. 2023, eq. 4)."""
    params = {key: v.detach().clone().requires_grad_(True) for key, v in start.items()}
    optimiser = torch.optim.Adam(list(params.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            pred: Prediction = with_uncond(denoiser, params)(z, t, cond)
            loss = (ddim_step(process, pred, t, s, 0.0, None) - target).pow(2).mean()
            if float(loss.detach()) < tolerance:
                break
            grads = torch.autograd.grad(loss, list(params.values()))
            for p, g in zip(params.values(), grads, strict=True):
                p.grad = g
            optimiser.step()
    return {key: v.detach() for key, v in params.items()}


class _StepNulls:
    """A guided denoiser whose unconditional branch at each time of a null inversion's grid is the optimised one
    (of the inputs ``idx``)."""

    def __init__(self, denoiser: DenoiserLike, nulls: NullInversion, idx: list[int], device: torch.device) -> None:
        self.process = denoiser.process
        self.times = nulls.times
        self.chains = [
            with_uncond(denoiser, {key: v[idx].to(device) for key, v in step.items()}) for step in nulls.nulls
        ]

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict[str, Tensor] | None = None) -> Prediction:
        at = float(torch.as_tensor(t).reshape(-1)[0])
        k = int(torch.argmin((self.times[:-1] - at).abs()))
        if abs(float(self.times[k]) - at) > 1e-9:
            raise ValueError(f"t={at:g} is not on the null inversion's grid; regenerate with its steps and spacing.")
        return self.chains[k](x, t, cond)


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
    classes: tuple[int, int] | None = None,
    path: Literal["linear", "spherical"] = "linear",
    request: SampleRequest | None = None,
    **settings: Any,
) -> Tensor:
    """``frames`` images along one path, both ends included: the great circle between two starting noises (sample 0
    of ``seeds[0]`` and of ``seeds[1]``, or two states ``noises`` at the top of the inversion grid, e.g. two inverted
    images) under one conditioning; or, with ``prompts`` or ``classes``, one starting noise (sample 0 of ``seed``)
    under the embeddings of the two prompts (per token) or class labels, moved along ``path`` (straight, or the
    great circle with the norm interpolated) from the first to the second (the mission's "pin down the seed and
    journey through the prompts")."""
    _gaussian(pipe, "interpolation")
    if sum(v is not None for v in (seeds, noises, prompts, classes)) != 1:
        raise ValueError("give seeds=(a, b), noises=(x_a, x_b), prompts=(p, q) or classes=(a, b), one of them.")
    if path not in EMBEDDING_PATHS:
        raise ValueError(f"path={path!r} is not known; expected one of {EMBEDDING_PATHS}.")
    if prompts is not None:
        return _along_prompts(pipe, frames, prompts, path, request, settings)
    if classes is not None:
        return _along_classes(pipe, frames, classes, path, request, settings)
    run = TaskRun.start(pipe, frames, task_request(pipe, request, _per_sample(settings, frames)))
    if seeds is not None:
        t_max = run.spec.grid(pipe.process)[0]
        a, b = (_seed_noise(pipe, int(s), [0], t_max)[0] for s in seeds)
        return _sample_from(pipe, run, slerp_path(a, b, frames))
    a, b = (n.to(pipe.device) for n in noises)  # type: ignore[union-attr]
    return regenerate(pipe, slerp_path(a, b, frames), request=run.request)


def _embedding_weights(a: Tensor, b: Tensor, frames: int, path: str) -> tuple[Tensor, Tensor]:
    """Per frame and row of a and b (R, D), the weights (frames, R, 1) of a and of b along ``path`` from a to b."""
    w = torch.linspace(0, 1, frames, dtype=torch.float64)
    if path == "linear":
        wa, wb = (1 - w).reshape(-1, 1, 1), w.reshape(-1, 1, 1)
        return wa.expand(frames, len(a), 1), wb.expand(frames, len(a), 1)
    rows = len(a)
    ca, cb = slerp_weights(a.repeat(frames, 1), b.repeat(frames, 1), w.repeat_interleave(rows))
    return ca.reshape(frames, rows, 1), cb.reshape(frames, rows, 1)


def _from_one_noise(pipe: Pipeline, run: TaskRun, frames: int) -> Tensor:
    """Every frame from sample 0 of the request's seed, down the model's whole grid."""
    t_max = run.spec.grid(pipe.process)[0]
    start = _seed_noise(pipe, run.request.seed, [0], t_max)[0]
    return _sample_from(pipe, run, start.expand(frames, *start.shape).clone())


def _along_prompts(
    pipe: Pipeline, frames: int, prompts: tuple[str, str], path: str, request: SampleRequest | None,
    settings: dict[str, Any],
) -> Tensor:  # fmt: skip
    """Frames from one noise under token embeddings moved along ``path`` from prompt p's to q's (masks joined)."""
    if len(prompts) != 2 or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts={prompts!r}: expected two non-empty prompts.")
    if settings.get("prompt") is not None:
        raise ValueError("give prompts=(p, q) or prompt=..., not both.")
    run = TaskRun.start(pipe, frames, task_request(pipe, request, {**settings, "prompt": prompts[0]}))
    emb = pipe.encode_prompts(list(prompts))
    a, b = emb.tokens[0].double(), emb.tokens[1].double()
    wa, wb = _embedding_weights(a, b, frames, path)
    text = (wa * a + wb * b).to(emb.tokens.dtype).cpu()
    mask = (emb.mask[0] | emb.mask[1]).expand(frames, -1).cpu()
    run = replace(run, cond={**(run.cond or {}), "text": text, "text_mask": mask})
    return _from_one_noise(pipe, run, frames)


def _along_classes(
    pipe: Pipeline, frames: int, classes: tuple[int, int], path: str, request: SampleRequest | None,
    settings: dict[str, Any],
) -> Tensor:  # fmt: skip
    """Frames from one noise under soft labels whose embedding moves along ``path`` from class a's to class b's."""
    k = pipe.config.network.num_classes
    if not k:
        raise ValueError("classes=(a, b) needs a class-conditional model; this one has no labels.")
    if len(classes) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < k for c in classes):
        raise ValueError(f"classes={classes!r}: expected two class labels in 0..{k - 1}.")
    if settings.get("labels") is not None:
        raise ValueError("give classes=(a, b) or labels=..., not both.")
    run = TaskRun.start(pipe, frames, task_request(pipe, request, {**settings, "labels": classes[0]}))
    network = pipe.denoiser_network(run.request.use_ema)
    table = next(m for m in network.modules() if isinstance(m, LabelEmbedding)).table.weight
    rows = table.detach().double()[list(classes)]
    wa, wb = _embedding_weights(rows[:1], rows[1:], frames, path)
    weights = torch.zeros(frames, k + 1, dtype=torch.float64)
    weights[:, classes[0]] += wa[:, 0, 0]
    weights[:, classes[1]] += wb[:, 0, 0]
    run = replace(run, cond={**(run.cond or {}), "labels": weights.float()})
    return _from_one_noise(pipe, run, frames)


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
