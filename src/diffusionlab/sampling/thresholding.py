"""x0 clipping and dynamic thresholding as a denoiser wrapping a denoiser (floor 3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..denoisers import DenoiserLike, Prediction

__all__ = ["THRESHOLDINGS", "Thresholded", "dynamic_threshold"]

THRESHOLDINGS = ("none", "clip", "dynamic")


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, bound: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(bound, p-quantile of |x0|) per
    sample, then x0 <- clip(x0, -s, s) * bound / s."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=bound).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) * (bound / s)


class Thresholded:
    """Keep the data estimate inside the data range: ``clip`` to [-bound, bound] (DDPM's clipped x0,
    Ho et al. 2020 sec. 3.3) or ``dynamic`` thresholding; eps is recomputed so the pair stays consistent."""

    def __init__(self, denoiser: DenoiserLike, method: str = "clip", bound: float = 1.0, percentile: float = 0.995):
        if method not in THRESHOLDINGS:
            raise ValueError(f"thresholding={method!r} is not known; expected one of {THRESHOLDINGS}.")
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile={percentile} must lie in (0, 1].")
        self.denoiser, self.process = denoiser, denoiser.process
        self.method, self.bound, self.percentile = method, float(bound), float(percentile)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        pred = self.denoiser(x, t, cond)
        if self.method == "clip":
            return pred.with_x0(pred.x0.clamp(-self.bound, self.bound))
        if self.method == "dynamic":
            return pred.with_x0(dynamic_threshold(pred.x0, self.percentile, self.bound))
        return pred
