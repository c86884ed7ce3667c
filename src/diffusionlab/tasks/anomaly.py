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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..evaluation.likelihood import bits_per_dim
from ..io import atomic_path
from ..pipeline import Pipeline
from ..processes import GaussianProcess
from ..sampling import NoiseSource
from ..sampling.request import SampleRequest, SamplerSpec, precision
from .common import TaskRun, check_count, check_images, grid_below, run_solver, task_request
from .denoise import encoding_scale

__all__ = [
    "ANOMALY_METHODS",
    "AnomalyOptions",
    "reconstruct",
    "log_snr_levels",
    "denoising_error",
    "anomaly_scores",
    "write_scores_csv",
]

ANOMALY_METHODS = ("recon", "denoising", "likelihood")
_LOG_SNR_CLIP = 20.0  # the network's noise conditioning clips the log-SNR here too (denoisers.noise_conditioning)


def _check_t(process: GaussianProcess, t: float) -> float:
    """Raise one clear error unless t lies in the process's time range."""
    if not float(process.t_min) <= float(t) <= float(process.t_max):
        raise ValueError(f"t={t} must lie in [{process.t_min:g}, {process.t_max:g}], the process's time range.")
    return float(t)


@dataclass(frozen=True)
class AnomalyOptions:
    """The anomaly score's own options, checked once: the ``method``; recon's noising time ``t`` and noise draws
    ``repeats``; denoising's ``num_times`` log-SNR levels, optionally within ``log_snr_range`` = (low, high);
    likelihood's ODE tolerance ``ode_tolerance``."""

    method: str = "recon"
    t: float = 0.35
    repeats: int = 1
    num_times: int = 16
    log_snr_range: tuple[float, float] | None = None
    ode_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in ANOMALY_METHODS:
            raise ValueError(f"method={self.method!r} is not known; expected one of {ANOMALY_METHODS}.")
        check_count("repeats", self.repeats)
        check_count("num_times", self.num_times)
        if self.log_snr_range is not None and len(self.log_snr_range) != 2:
            raise ValueError(f"log_snr_range={self.log_snr_range!r} must be two numbers (low, high).")
        if not float(self.ode_tolerance) > 0:
            raise ValueError(f"ode_tolerance={self.ode_tolerance} must be a positive number.")


def reconstruct(
    denoiser: DenoiserLike,
    x0: Tensor,
    t: float,
    spec: SamplerSpec,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    progress: bool = False,
) -> Tensor:
    """x_t ~ q(x_t | x0), then the sampler of ``spec`` from t to 0 over the part of its grid below t."""
    process = denoiser.process
    t = _check_t(process, t)
    x_t = float(process.alpha(t)) * x0 + float(process.sigma(t)) * noise.like(x0)
    return run_solver(denoiser, x_t, grid_below(process, t, spec), spec, cond=cond, noise=noise, progress=progress)


def log_snr_levels(
    denoiser: DenoiserLike, num_times: int, log_snr_range: tuple[float, float] | None = None
) -> tuple[Tensor, float]:
    """``num_times`` times at evenly spread log-SNR (midpoints of equal bins) and the width lambda_max - lambda_min
    they cover: between the process's ends (clipped to +-20), or within ``log_snr_range`` = (low, high)."""
    check_count("num_times", num_times)
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
        pred = denoiser(process.add_noise(x0, tt, eps), tt, cond)
        total += ((pred.eps - eps) ** 2).flatten(1).mean(1).double()
    return (0.5 * width * total / len(times)).float()


def anomaly_scores(
    pipe: Pipeline,
    images: Tensor,
    method: str = "recon",
    *,
    t: float = 0.35,
    repeats: int = 1,
    num_times: int = 16,
    log_snr_range: tuple[float, float] | None = None,
    ode_tolerance: float = 1e-3,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **settings: Any,
) -> Tensor:
    """Anomaly score (N,) of images (N, C, H, W) in [0, 1]; higher = more anomalous.

    "recon": noise to time ``t``, reconstruct with the ``sampler`` (default ddim; ``steps`` counts a full run from
    t_max, default the model's), mean squared pixel error averaged over ``repeats``. "denoising": the ELBO-style
    denoising error over ``num_times`` log-SNR levels, all of them or those in ``log_snr_range`` (a band of mid
    noise levels, e.g. (-3, 3), separates better: the extremes add noise, not information). "likelihood": bits/dim
    of the image quantised to 8 bits, through the probability-flow ODE at tolerance ``ode_tolerance`` (pixel-space
    models). ``settings`` are the request's fields by name (``labels``, ``sampler``, ``steps``, ``seed``, ...), or
    pass one ``request``; a class-conditional model is scored unconditionally unless ``labels``. The method sets
    the thresholding: x0 is clipped for "recon" only, as the scores compare the model's own estimates with the truth.
    """
    opts = AnomalyOptions(method, t, repeats, num_times, log_snr_range, ode_tolerance)
    images = check_images(pipe, images)
    if opts.method == "recon":
        _check_t(pipe.process, opts.t)
    if opts.method == "likelihood" and encoding_scale(pipe) != 2.0:
        raise ValueError("the likelihood score needs a pixel-space model with pixels in [-1, 1].")
    # scores compare the model's own estimates with the truth: no clipping of x0 (it would change eps_hat)
    thresholding = "clip" if opts.method == "recon" else "none"
    run = TaskRun.start(pipe, len(images), task_request(pipe, request, settings, "ddim", thresholding))
    if opts.method == "likelihood":
        return _likelihood(run, images, opts.ode_tolerance, batch_size, progress)

    def score(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        batch = images[idx].to(pipe.device)
        x0 = pipe.encode(batch)
        if opts.method == "denoising":
            return denoising_error(run.denoiser, x0, opts.num_times, run.request.seed, cond, opts.log_snr_range).cpu()
        noise, err = run.noise(idx), torch.zeros(len(idx), device=pipe.device)
        for _ in range(opts.repeats):
            rec = reconstruct(run.denoiser, x0, opts.t, run.spec, cond=cond, noise=noise, progress=progress)
            err += ((pipe.decode(rec) - batch) ** 2).flatten(1).mean(1)
        return (err / opts.repeats).cpu()

    return run.map(score, range(len(images)), batch_size)


def _likelihood(run: TaskRun, images: Tensor, tolerance: float, batch_size: int, progress: bool) -> Tensor:
    """Bits/dim of the images quantised to 8 bits (``bits_per_dim`` batches itself; image i dequantises with the
    noise of (seed, i))."""
    pipe, device = run.pipe, run.pipe.device
    x = pipe.encode((images.to(device) * 255).round() / 255)
    cond = {k: v.to(device) for k, v in run.cond.items()} if run.cond is not None else None
    tol, seed = float(tolerance), run.request.seed
    with precision(run.request.guidance.mixed_precision):
        result = bits_per_dim(
            run.denoiser, x, cond, seed=seed, batch_size=batch_size, progress=progress, rtol=tol, atol=tol
        )
    return result.bpd.float().cpu()


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
