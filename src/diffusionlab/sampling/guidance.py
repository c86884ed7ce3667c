"""Guidance as a denoiser wrapping a denoiser (floor 3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..denoisers import DenoiserLike, Prediction

__all__ = ["ClassifierFreeGuidance", "null_conditioning"]


def null_conditioning(cond: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The "no condition" version of a conditioning: class labels become the null label -1."""
    out = {}
    for key, value in cond.items():
        if key == "labels":
            out[key] = torch.full_like(value, -1)
        else:
            raise ValueError(f"classifier-free guidance does not know the null value of condition {key!r}.")
    return out


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps = eps_u + w (eps_c - eps_u).

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 extrapolates. Both branches run in one
    batched network call. Combining eps or x0 is the same thing at fixed (x, t), so x0 is combined too.
    """

    def __init__(self, denoiser: DenoiserLike, scale: float) -> None:
        self.denoiser = denoiser
        self.process = denoiser.process
        self.scale = float(scale)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        if not cond or self.scale == 1.0:
            return self.denoiser(x, t, cond)
        if self.scale == 0.0:
            return self.denoiser(x, t, null_conditioning(cond))
        both = {k: torch.cat([v, u]) for (k, v), u in zip(cond.items(), null_conditioning(cond).values(), strict=True)}
        t2 = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim == 1 else t
        pred = self.denoiser(torch.cat([x, x]), t2, both)
        n = x.shape[0]
        w = self.scale
        x0 = pred.x0[n:] + w * (pred.x0[:n] - pred.x0[n:])
        eps = pred.eps[n:] + w * (pred.eps[:n] - pred.eps[n:])
        return Prediction(
            x,
            x0,
            eps,
            pred.alpha[:n] if pred.alpha.ndim else pred.alpha,
            pred.sigma[:n] if pred.sigma.ndim else pred.sigma,
        )
