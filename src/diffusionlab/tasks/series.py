"""Time series: probabilistic imputation and forecasting as inpainting of windows (floor 5).

CSDI (Tashiro et al. 2021) imputes by conditional generation with the observed values kept. An unconditional model
of windows inpaints them with RePaint (Lugmayr et al. 2022, the same routine as image inpainting): the observed
points are held, the gaps are drawn. A conditional imputation model (trained with ``signal_condition="observed"``,
CSDI's way) sees the observed points and their mask beside x_t; its windows are drawn by the request's sampler with
the observed part of x_t replaced by q(x_t | x0) at every step, as in its training (``inpaint.KnownRegion``).
Either way ``num_samples`` draws with independent noise give the median and any interval. Forecasting is
inpainting of a window whose last ``horizon`` steps are unknown, its first ones the end of the history. A series
longer than the model's window is cut into windows (the last one aligned with the end), each inpainted apart;
a model trained with ``window_scaling="window"`` (RevIN, Kim et al. 2022) sees each window normalised by the mean
and std of its observed points, and its draws are scaled back by them. Observed points come back exactly as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..data.signals import WindowScale
from ..pipeline import Pipeline
from ..sampling.request import SampleRequest
from ..spaces import SignalSpace
from .common import TaskRun, check_count, task_request
from .inpaint import InpaintOptions, fill_known

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = ["SeriesSamples", "impute_series", "forecast", "window_starts"]


@dataclass(frozen=True)
class SeriesSamples:
    """Samples (S, C, T) of a series in the model's standardised space, with the observed mask (C, T)."""

    samples: Tensor
    observed: Tensor

    def quantile(self, q: float) -> Tensor:
        """The q-quantile over the samples, (C, T)."""
        return torch.quantile(self.samples.float(), q, dim=0)

    @property
    def median(self) -> Tensor:
        return self.quantile(0.5)


def window_starts(length: int, window: int) -> list[int]:
    """Starts of consecutive windows covering ``length`` steps, the last one aligned with the end."""
    if length < window:
        raise ValueError(f"the series has {length} steps, fewer than the model's window of {window}.")
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def _check_series(pipe: Pipeline, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    if pipe.space.name != "signal" or pipe.config.data.signal is None or pipe.config.data.signal.kind != "series":
        raise ValueError(f"imputation and forecasting take a series model; this is a {pipe.space.name} model.")
    channels = pipe.config.data.signal.channels
    if values.ndim != 2 or values.shape[0] != channels or observed.shape != values.shape:
        raise ValueError(
            f"a series is (channels, steps) with {channels} channels and a mask of the same shape; got values "
            f"{tuple(values.shape)} and mask {tuple(observed.shape)}."
        )
    if not bool(observed.any()):
        raise ValueError("the series has no observed value: nothing to condition on.")
    return values.float(), observed.bool()


def impute_series(
    pipe: Pipeline,
    values: Tensor,
    observed: Tensor,
    num_samples: int = 100,
    *,
    jump_length: int = 10,
    jump_n_sample: int = 1,
    request: SampleRequest | None = None,
    batch_size: int = 64,
    progress: bool = False,
    calibration: Calibration | None = None,
    **settings: Any,
) -> SeriesSamples:
    """``num_samples`` draws of a series (C, T) in the model's standardised space with its unobserved points
    (``observed`` False) filled; sample i uses the noise of (seed, i) in every window. An unconditional model fills
    by RePaint (``jump_length``, ``jump_n_sample``), a conditional imputation model by its ``sampler`` (default
    ddpm) seeing the observations. A ``calibration`` (``calibrate_series``) scales the draws' spread."""
    values, observed = _check_series(pipe, values, observed)
    check_count("num_samples", num_samples)
    window = pipe.config.data.signal.length
    if bool(observed.all()):
        raise ValueError("every point of the series is observed: nothing to impute.")
    space = pipe.space
    assert isinstance(space, SignalSpace)  # _check_series: a series model
    request = task_request(pipe, request, settings, sampler="ddpm")
    run = TaskRun.start(pipe, num_samples, request)
    out = values.expand(num_samples, -1, -1).clone()
    for start in window_starts(values.shape[1], window):
        part = slice(start, start + window)
        given, keep = values[None, :, part].to(pipe.device), observed[None, :, part].to(pipe.device)
        if bool(keep.all()):
            continue
        scale = space.window_scale(given, keep)  # RevIN's statistics of the observed points, or the identity
        known = scale.normalise(given)
        seen = pipe.inpaint_condition(known, ~keep)  # a conditional imputation model's observations, else none
        options = InpaintOptions("replace") if seen else InpaintOptions("repaint", jump_length, jump_n_sample)

        def fill(
            idx: list[int],
            cond: dict[str, Tensor] | None,
            known: Tensor = known,
            keep: Tensor = keep,
            seen: dict[str, Tensor] = seen,
            options: InpaintOptions = options,
            scale: WindowScale = scale,
        ) -> Tensor:
            k, m = known.expand(len(idx), -1, -1), keep.expand(len(idx), -1, -1)
            sees = {**(cond or {}), **{name: v.expand(len(idx), -1, -1) for name, v in seen.items()}} or None
            return scale.denormalise(fill_known(run, options, k, m, idx, sees, progress)).cpu()

        drawn = run.map(fill, range(num_samples), batch_size)
        out[:, :, part] = torch.where(observed[:, part], out[:, :, part], drawn)
    result = SeriesSamples(out, observed)
    return result if calibration is None else calibration.apply(result)


def forecast(
    pipe: Pipeline,
    history: Tensor,
    horizon: int,
    num_samples: int = 100,
    *,
    observed: Tensor | None = None,
    **kwargs: Any,
) -> SeriesSamples:
    """``num_samples`` draws of the next ``horizon`` steps after ``history`` (C, T) in the model's standardised
    space: the model's window holds the last ``window - horizon`` steps of the history and ``horizon`` unknown ones.
    Returns samples (S, C, horizon); ``kwargs`` (``calibration`` too) as for ``impute_series``."""
    check_count("horizon", horizon)
    window = pipe.config.data.signal.length if pipe.config.data.signal is not None else 0
    if horizon >= window:
        raise ValueError(f"horizon={horizon} must be shorter than the model's window of {window} steps.")
    mask = torch.ones_like(history, dtype=torch.bool) if observed is None else observed.bool()
    values, mask = _check_series(pipe, history, mask)
    context = window - horizon
    if values.shape[1] < context:
        raise ValueError(f"the history has {values.shape[1]} steps; the model needs at least {context} before it.")
    padded = torch.cat([values[:, -context:], torch.zeros(values.shape[0], horizon)], dim=1)
    keep = torch.cat([mask[:, -context:], torch.zeros(values.shape[0], horizon, dtype=torch.bool)], dim=1)
    filled = impute_series(pipe, padded, keep, num_samples, **kwargs)
    return SeriesSamples(filled.samples[:, :, context:], keep[:, context:])
