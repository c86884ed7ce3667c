"""Anomaly detection with a diffusion model: images the model explains badly score high (floor 5).

- ``recon``: AnoDDPM-style (Wyatt et al. 2022, sec. 3; Gaussian rather than simplex noise): noise an image
  part of the way, to time t, reconstruct it with a sampler, score = mean squared pixel error between image and
  reconstruction, averaged over ``repeats`` noise draws. Normal images come back close; anomalies are pulled
  towards the normal data, so they come back changed.
- ``denoising``: the model's denoising error, E ||eps_hat(x_t, t) - eps||^2 averaged over ``num_times`` log-SNR
  levels evenly spread between the process's ends and one fixed noise per level, times (lambda_max - lambda_min)
  / 2: the diffusion term of the continuous-time ELBO, 1/2 int ||eps - eps_hat||^2 d lambda (Kingma et al.
  2021, VDM, sec. 3 and 5), in nats per dimension. A cheap likelihood proxy: high = unlikely. Optionally only
  over a band of log-SNR (the same integral over part of the range), where anomalies stand out most.
- ``likelihood``: the negative log-likelihood in bits/dim of the 8-bit image under the probability-flow ODE
  (``evaluation.likelihood.bits_per_dim``: Song et al. 2021, sec. 4.3), for pixel-space models; the slowest.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..evaluation.likelihood import bits_per_dim
from ..io import atomic_path
from ..pipeline import Pipeline
from ..processes import broadcast_like
from ..sampling import NoiseSource, check_sampler, check_steps
from .common import batches, check_images, grid_below, guided, run_sampler, slice_cond
from .denoise import encoding_scale

__all__ = [
    "ANOMALY_METHODS",
    "reconstruct",
    "log_snr_levels",
    "denoising_error",
    "anomaly_scores",
    "write_scores_csv",
]

ANOMALY_METHODS = ("recon", "denoising", "likelihood")
_LOG_SNR_CLIP = 20.0  # the network's noise conditioning clips the log-SNR here too (denoisers.noise_conditioning)


def _check_t(denoiser: DenoiserLike, t: float) -> float:
    process = denoiser.process
    if not float(process.t_min) <= float(t) <= float(process.t_max):
        raise ValueError(f"t={t} must lie in [{process.t_min:g}, {process.t_max:g}], the process's time range.")
    return float(t)


def reconstruct(
    denoiser: DenoiserLike,
    x0: Tensor,
    t: float,
    *,
    steps: int,
    sampler: str = "ddim",
    spacing: str | None = None,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """x_t ~ q(x_t | x0), then ``sampler`` from t to 0 over the part of the ``steps``-step grid below t."""
    process = denoiser.process
    t = _check_t(denoiser, t)
    x_t = float(process.alpha(t)) * x0 + float(process.sigma(t)) * noise.like(x0)
    return run_sampler(denoiser, x_t, grid_below(process, t, steps, spacing), sampler, cond, noise, options)


def log_snr_levels(
    denoiser: DenoiserLike, num_times: int, log_snr_range: tuple[float, float] | None = None
) -> tuple[Tensor, float]:
    """``num_times`` times at evenly spread log-SNR (midpoints of equal bins) and the width lambda_max - lambda_min
    they cover: between the process's ends (clipped to +-20), or within ``log_snr_range`` = (low, high)."""
    if isinstance(num_times, bool) or not isinstance(num_times, int) or num_times < 1:
        raise ValueError(f"num_times={num_times!r} must be a positive integer.")
    process = denoiser.process
    lam_hi = min(float(process.log_snr(process.t_min)), _LOG_SNR_CLIP)
    lam_lo = max(float(process.log_snr(process.t_max)), -_LOG_SNR_CLIP)
    if log_snr_range is not None:
        low, high = (float(v) for v in log_snr_range)
        if not (low < high and high > lam_lo and low < lam_hi):
            raise ValueError(
                f"log_snr_range=({low:g}, {high:g}) must be low < high and overlap the process's log-SNR range "
                f"({lam_lo:.3g}, {lam_hi:.3g})."
            )
        lam_lo, lam_hi = max(lam_lo, low), min(lam_hi, high)
    mids = lam_lo + (torch.arange(num_times, dtype=torch.float64) + 0.5) / num_times * (lam_hi - lam_lo)
    t = process.t_from_log_snr(mids).to(torch.float64).clamp(float(process.t_min), float(process.t_max))
    return t, lam_hi - lam_lo


def denoising_error(
    denoiser: DenoiserLike,
    x0: Tensor,
    num_times: int = 16,
    seed: int = 0,
    cond: Mapping[str, Tensor] | None = None,
    log_snr_range: tuple[float, float] | None = None,
) -> Tensor:
    """Per-sample 1/2 (lambda_max - lambda_min) mean_k mean_d (eps_hat - eps)^2 over ``num_times`` log-SNR levels
    (optionally only those in ``log_snr_range``), with the same noises (from ``seed``) for every sample, so scores
    of different images compare like for like."""
    times, width = log_snr_levels(denoiser, num_times, log_snr_range)
    eps_all = NoiseSource(seed, [0], x0.device)
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    process = denoiser.process
    for t in times:
        eps = eps_all.like(x0[:1]).expand_as(x0)
        tt = t.expand(len(x0))
        x_t = broadcast_like(process.alpha(tt), x0) * x0 + broadcast_like(process.sigma(tt), x0) * eps
        pred = denoiser(x_t, tt, cond)
        total += ((pred.eps - eps) ** 2).flatten(1).mean(1).double()
    return (0.5 * width * total / len(times)).float()


def anomaly_scores(
    pipe: Pipeline,
    images: Tensor,
    method: str = "recon",
    *,
    t: float = 0.35,
    repeats: int = 1,
    steps: int | None = None,
    sampler: str = "ddim",
    num_times: int = 16,
    log_snr_range: tuple[float, float] | None = None,
    ode_tolerance: float = 1e-3,
    labels: Sequence[int] | Tensor | int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    use_ema: bool = True,
    **conditioning: Any,
) -> Tensor:
    """Anomaly score (N,) of images (N, C, H, W) in [0, 1]; higher = more anomalous.

    "recon": noise to time ``t``, reconstruct with ``sampler`` (``steps`` counts a full run from t_max, default
    the model's), mean squared pixel error averaged over ``repeats``. "denoising": the ELBO-style denoising error
    over ``num_times`` log-SNR levels, all of them or those in ``log_snr_range`` (a band of mid noise levels, e.g.
    (-3, 3), separates better: the extremes add noise, not information). "likelihood": bits/dim of the image
    quantised to 8 bits, through the probability-flow ODE at tolerance ``ode_tolerance`` (pixel-space models).
    A class-conditional model is scored unconditionally unless ``labels``.
    """
    if method not in ANOMALY_METHODS:
        raise ValueError(f"method={method!r} is not known; expected one of {ANOMALY_METHODS}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer.")
    images = check_images(pipe, images)
    steps = check_steps(steps if steps is not None else pipe.config.sample.steps)
    sampler = check_sampler(sampler)
    if not float(ode_tolerance) > 0:
        raise ValueError(f"ode_tolerance={ode_tolerance} must be a positive number.")
    if method == "likelihood" and encoding_scale(pipe) != 2.0:
        raise ValueError("the likelihood score needs a pixel-space model with pixels in [-1, 1].")
    # scores compare the model's own estimates with the truth: no clipping of x0 (it would change eps_hat)
    thresholding = "clip" if method == "recon" else "none"
    denoiser, cond_all = guided(pipe, len(images), labels, guidance, thresholding, use_ema, conditioning)
    if method == "recon":
        _check_t(denoiser, t)
    device = pipe.device
    if method == "likelihood":  # bits_per_dim batches itself; sample i dequantises with the noise of (seed, i)
        x = pipe.encode((images.to(device) * 255).round() / 255)
        cond = slice_cond(cond_all, range(len(images)), device)
        tol = float(ode_tolerance)
        return bits_per_dim(denoiser, x, cond, seed=seed, batch_size=batch_size, rtol=tol, atol=tol).bpd.float().cpu()
    scores = []
    with torch.no_grad():
        for idx in batches(len(images), batch_size):
            batch = images[idx].to(device)
            x0 = pipe.encode(batch)
            cond = slice_cond(cond_all, idx, device)
            if method == "denoising":
                scores.append(denoising_error(denoiser, x0, num_times, seed, cond, log_snr_range).cpu())
                continue
            noise = NoiseSource(seed, idx, device)
            err = torch.zeros(len(idx), device=device)
            for _ in range(repeats):
                rec = pipe.decode(reconstruct(denoiser, x0, t, steps=steps, sampler=sampler, cond=cond, noise=noise))
                err += ((rec - batch) ** 2).flatten(1).mean(1)
            scores.append((err / repeats).cpu())
    return torch.cat(scores)


def write_scores_csv(names: Sequence[str | os.PathLike[str]], scores: Tensor, path: str | os.PathLike[str]) -> None:
    """Write ``rank,score,image`` rows, most anomalous first, to a CSV file atomically."""
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} image names but {len(scores)} scores; expected one score per image.")
    order = sorted(range(len(names)), key=lambda i: (-float(scores[i]), str(names[i])))
    with atomic_path(path) as tmp, Path(tmp).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "score", "image"])
        for rank, i in enumerate(order, start=1):
            writer.writerow([rank, f"{float(scores[i]):.6g}", str(names[i])])
