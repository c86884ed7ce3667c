"""Denoising a noisy image with a diffusion model: the noisy image is a point on the forward process (floor 5).

An image y = x + sigma_pix n (pixel units, images in [0, 1]) is, in a model space reached by the affine map
encode(y) = a y + b (a = 2 for pixels in [-1, 1]), y_m = x_m + sigma n with sigma = a sigma_pix. At the time t
where sigma(t) / alpha(t) = sigma, x_t = alpha(t) y_m has exactly the law of q(x_t | x_m) (Kadkhodaie &
Simoncelli 2021; Karras et al. 2022, eq. 4's VE frame). From there:

- ``mean``: one denoiser call, x0_hat = E[x0 | x_t], the posterior mean (the MMSE estimate; Efron 2011,
  Tweedie's formula);
- ``sample``: a stochastic sampler run from t to 0 draws from the posterior p(x0 | y) (sharper, noisier).

The noise level may be given or estimated from the image (Donoho & Johnstone 1994: the median absolute finest
diagonal wavelet coefficient / 0.6745).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..pipeline import Pipeline
from ..processes import GaussianProcess, broadcast_like
from ..sampling import NoiseSource
from ..sampling.request import SampleRequest, SamplerSpec
from .common import TaskRun, check_images, grid_below, pixel_shape, run_solver, task_request

__all__ = [
    "DENOISE_MODES",
    "estimate_noise_sigma",
    "noise_levels",
    "noise_time",
    "encoding_scale",
    "posterior_mean",
    "posterior_sample",
    "denoise",
]

DENOISE_MODES = ("mean", "sample")
_MAD_TO_STD = 0.6744897501960817  # the N(0, 1) quantile at 3/4: median |z| of a standard normal


def estimate_noise_sigma(images: Tensor) -> Tensor:
    """Per-image Gaussian noise std of images (N, C, H, W), in the images' own units (Donoho & Johnstone 1994).

    The finest diagonal Haar detail d = (x00 - x01 - x10 + x11) / 2 of each 2x2 block is orthonormal, so pure
    noise of std sigma gives d ~ N(0, sigma^2) while smooth image content gives d ~ 0; sigma_hat =
    median |d| / 0.6745 (the MAD estimate, robust to the few large coefficients at edges).
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, C, H, W), got {got}.")
    if images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"images of {images.shape[-1]}x{images.shape[-2]} are too small; need at least 2x2.")
    x = images.detach().double().cpu().numpy()
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :h, :w]
    detail = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2.0
    sigma = np.median(np.abs(detail.reshape(len(x), -1)), axis=1) / _MAD_TO_STD
    return torch.from_numpy(sigma).float()


def noise_time(process: GaussianProcess, ve_sigma: Tensor | float) -> Tensor:
    """The time t at which sigma(t) / alpha(t) equals ``ve_sigma`` (the process's log-SNR is -2 log ve_sigma),
    clamped to [t_min, t_max]."""
    s = torch.as_tensor(ve_sigma, dtype=torch.float64)
    if bool((s <= 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"noise level {s.tolist()} must be positive and finite.")
    t = process.t_from_log_snr(-2.0 * torch.log(s)).to(torch.float64)
    return t.clamp(float(process.t_min), float(process.t_max))


@torch.no_grad()
def encoding_scale(pipe: Pipeline) -> float:
    """The slope a of the model's encoding if it is elementwise affine (a y + b), which maps pixel noise of std
    sigma to model-space noise of std a sigma; one clear error for a latent model, whose encoding is not."""
    shape = pixel_shape(pipe)
    # probes in [1/4, 3/4]: far from 0, so the slope (x - b) / probe is exact for pixels in [-1, 1] at any image size
    probe = (0.25 + 0.5 * torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))).to(pipe.device)
    x = pipe.encode(probe)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            "denoising by noise level needs a pixel-space model; this model encodes images to a latent space, "
            "where pixel noise is not Gaussian noise."
        )
    b = pipe.encode(torch.zeros_like(probe[:1]))
    a = (x - b) / probe
    scale = float(a.mean())
    if not torch.allclose(a, torch.full_like(a, scale), rtol=1e-4, atol=1e-5) or scale <= 0:
        raise ValueError("denoising by noise level needs a model whose encoding is an affine map of the pixels.")
    return scale


def posterior_mean(
    denoiser: DenoiserLike, y: Tensor, ve_sigma: Tensor | float, cond: Mapping[str, Tensor] | None = None
) -> Tensor:
    """E[x0 | y] for y = x0 + ve_sigma n in the model space: x_t = alpha(t) y at the matching time, one call."""
    process = denoiser.process
    t = noise_time(process, ve_sigma)
    t = t.expand(len(y)) if t.ndim == 0 else t
    x_t = broadcast_like(process.alpha(t), y) * y
    return denoiser(x_t, t, cond).x0


def posterior_sample(
    denoiser: DenoiserLike,
    y: Tensor,
    ve_sigma: float,
    spec: SamplerSpec,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    progress: bool = False,
) -> Tensor:
    """A draw from p(x0 | y) for y = x0 + ve_sigma n: x_t = alpha(t) y, then the stochastic sampler of ``spec``
    from t to 0 on the part of its grid below t."""
    process = denoiser.process
    t = float(noise_time(process, float(ve_sigma)))
    x_t = float(process.alpha(t)) * y
    return run_solver(denoiser, x_t, grid_below(process, t, spec), spec, cond=cond, noise=noise, progress=progress)


def noise_levels(images: Tensor, sigma: float | Sequence[float] | Tensor | str) -> Tensor:
    """One noise std per image (float64, pixel units): ``sigma`` for all, one each, or "auto" (estimated)."""
    n = len(images)
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma={sigma!r} must be a number (pixel units, images in [0, 1]) or 'auto'.")
        sigmas = estimate_noise_sigma(images).double()
    else:
        sigmas = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        sigmas = sigmas.expand(n) if len(sigmas) == 1 else sigmas
        if len(sigmas) != n:
            raise ValueError(f"{len(sigmas)} noise levels were given for {n} images; give one, or one each.")
    if bool((sigmas <= 0).any()) or not bool(torch.isfinite(sigmas).all()):
        bad = sigmas[(sigmas <= 0) | ~torch.isfinite(sigmas)][0]
        raise ValueError(f"noise level sigma={float(bad):g} must be positive (pixel units, images in [0, 1]).")
    return sigmas


def denoise(
    pipe: Pipeline,
    noisy: Tensor,
    sigma: float | Sequence[float] | Tensor | str = "auto",
    *,
    mode: str = "mean",
    request: SampleRequest | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **settings: Any,
) -> Tensor:
    """Remove Gaussian noise of std ``sigma`` (pixel units, images in [0, 1]; "auto" estimates it per image)
    from images (N, C, H, W); returns images in [0, 1].

    ``mode``: "mean" (posterior mean, one network call) or "sample" (a posterior draw with the ``sampler``, default
    ddpm, over the part of its ``steps``-step grid below the noise level). ``settings`` are the request's fields by
    name, as for ``Pipeline.sample`` (``labels``, ``guidance``, ``sampler``, ``steps``, ``seed``, ...), or pass one
    ``request``. Values of ``noisy`` may lie outside [0, 1] (unclipped noise).
    """
    if mode not in DENOISE_MODES:
        raise ValueError(f"mode={mode!r} is not known; expected one of {DENOISE_MODES}.")
    noisy = check_images(pipe, noisy, unit_range=False)
    ve = noise_levels(noisy, sigma) * encoding_scale(pipe)
    run = TaskRun.start(pipe, len(noisy), task_request(pipe, request, settings, sampler="ddpm"))

    def restore(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        y = pipe.encode(noisy[idx].to(pipe.device))
        if mode == "mean":
            return pipe.decode(posterior_mean(run.denoiser, y, ve[idx], cond)).cpu()
        level = float(ve[idx[0]])  # a sampler runs one grid: every batch holds images of one noise level
        x = posterior_sample(run.denoiser, y, level, run.spec, cond=cond, noise=run.noise(idx), progress=progress)
        return pipe.decode(x).cpu()

    groups = [list(range(len(noisy)))]
    if mode == "sample":
        groups = [[i for i in range(len(noisy)) if float(ve[i]) == level] for level in torch.unique(ve).tolist()]
    out = torch.empty(len(noisy), *noisy.shape[1:])
    for group in groups:
        out[group] = run.map(restore, group, batch_size)
    return out
