"""Tune a model's time grid for one ODE sampler and step count, and keep it in the model folder (floor 5).

``tune_model_grid`` runs ``sampling.tuning.tune_grid`` on a calibration batch drawn as ``Pipeline.sample`` draws
(noise streams (seed, i), labels cycling over the classes at the model's guidance, its thresholding); the
reference is ``REFERENCE_SAMPLER`` at ``reference_steps`` steps on the log-SNR grid. ``save_tuned_grid`` stores
the grid in the folder's config.json (``sample.tuned_grids``, written atomically), where ``spacing="tuned"``
finds it: ``pipe.sample(steps=10, sampler="dpmpp_2m", spacing="tuned")`` or ``sample --spacing tuned``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import save_json
from ..pipeline import CONFIG_NAME, Pipeline, read_model_config
from ..sampling import SAMPLERS, NoiseSource, prior_std, time_grid
from ..sampling.request import SampleRequest
from ..sampling.tuning import START_SPACINGS, TUNABLE_SAMPLERS, TunedGrid, grid_key, solver, tune_grid

__all__ = ["tune_model_grid", "save_tuned_grid", "REFERENCE_SAMPLER", "REFERENCE_STEPS"]

REFERENCE_SAMPLER = "dpmpp_3m"
REFERENCE_STEPS = 200


def tune_model_grid(
    pipe: Pipeline,
    sampler: str,
    steps: int,
    num_samples: int = 32,
    *,
    seed: int = 0,
    evaluations: int | None = None,
    start_spacing: str | tuple[str, ...] = START_SPACINGS,
    reference_steps: int = REFERENCE_STEPS,
) -> TunedGrid:
    """The grid on which ``sampler`` at ``steps`` steps comes closest to the converged ODE solution on
    ``num_samples`` calibration samples of this model."""
    if pipe.family.name != "gaussian":
        raise ValueError(f"tuning a time grid needs a Gaussian model; this is a {pipe.family.name} model.")
    if sampler not in TUNABLE_SAMPLERS:
        raise ValueError(
            f"sampler={sampler!r} cannot be tuned: a grid is tuned for an ODE solver, one of {TUNABLE_SAMPLERS}."
        )
    for name, value in (("steps", steps), ("num_samples", num_samples), ("evaluations", evaluations or 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive whole number.")
    k = pipe.config.network.num_classes
    labels = [i % k for i in range(num_samples)] if k else None
    request = SampleRequest.from_settings(labels=labels, seed=seed, sampler=sampler, steps=steps)
    denoiser, cond = pipe.guided_denoiser(num_samples, request)
    cond = {key: v.to(pipe.device) for key, v in cond.items()} if cond else None
    process = denoiser.process
    t_max = time_grid(process, steps, "uniform")[0]  # every standard grid starts there
    noise = NoiseSource(seed, range(num_samples), pipe.device)
    x = prior_std(process, t_max) * noise(pipe.sample_shape)
    reference = solver(SAMPLERS[REFERENCE_SAMPLER], denoiser, x, cond)(time_grid(process, reference_steps, "log_snr"))
    run = solver(SAMPLERS[sampler], denoiser, x, cond)
    return tune_grid(denoiser, x, run, steps, reference, start_spacing=start_spacing, evaluations=evaluations)


def save_tuned_grid(folder: str | os.PathLike[str], sampler: str, steps: int, times: list[float]) -> None:
    """Store a tuned grid in a model folder's config.json (``sample.tuned_grids["sampler:steps"]``), atomically."""
    folder = Path(folder)
    config = read_model_config(folder)
    grids = {**config.sample.tuned_grids, grid_key(sampler, steps): [float(t) for t in times]}
    sample = config.sample.model_copy(update={"tuned_grids": grids})
    save_json(config.model_copy(update={"sample": sample}).model_dump(mode="json"), folder / CONFIG_NAME)
