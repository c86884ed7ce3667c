"""2-D toy distributions, each standardised to mean ~0 and std ~1 per coordinate.

Every sampler draws all its randomness as one ``torch.rand(n, k)`` block (normals by Box-Muller), so the
first m points of ``sample_x(n, g)`` equal ``sample_x(m, g)`` for an equally seeded generator: the same
seed gives the same points whatever the sample count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .base import DataError, PointDataset

__all__ = [
    "TOY_DATASETS",
    "GaussianMixtureParams",
    "eight_gaussians_params",
    "load_toy_dataset",
    "toy_name",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "sample_swiss_roll",
    "sample_two_moons",
]


def _uniform(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"number of points must be a non-negative integer, got {n!r}.")
    return torch.rand(n, k, generator=generator, dtype=torch.float64)


def _normal(u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
    """Box-Muller: two independent standard normals from two uniforms in [0, 1)."""
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # log(1 - u1), finite because u1 < 1
    angle = 2.0 * math.pi * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


# Swiss roll: t ~ U(1.5 pi, 4.5 pi), (t cos t, t sin t) + N(0, 0.5^2). Exact moments of that law:
_ROLL_NOISE = 0.5
_ROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_ROLL_STD = (6.641861294494988, 6.969167082093542)


def sample_swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) of a noisy 2-D swiss roll (spiral), standardised per coordinate."""
    u = _uniform(n, 3, generator)
    t = 1.5 * math.pi * (1.0 + 2.0 * u[:, 0])
    z0, z1 = _normal(u[:, 1], u[:, 2])
    x = (t * torch.cos(t) + _ROLL_NOISE * z0 - _ROLL_MEAN[0]) / _ROLL_STD[0]
    y = (t * torch.sin(t) + _ROLL_NOISE * z1 - _ROLL_MEAN[1]) / _ROLL_STD[1]
    return torch.stack([x, y], dim=1).float()


# Two moons (as sklearn's make_moons, noise 0.1): exact mean (0.5, 0.25),
# exact variances 0.75 + 0.1^2 and 0.5625 - 1/pi + 0.1^2.
_MOONS_NOISE = 0.1
_MOONS_MEAN = (0.5, 0.25)
_MOONS_STD = (math.sqrt(0.75 + _MOONS_NOISE**2), math.sqrt(0.5625 - 1.0 / math.pi + _MOONS_NOISE**2))


def sample_two_moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) of two interleaved half circles, Gaussian noise 0.1, standardised per coordinate."""
    u = _uniform(n, 4, generator)
    theta = math.pi * u[:, 0]
    inner = u[:, 1] < 0.5
    x = torch.where(inner, 1.0 - torch.cos(theta), torch.cos(theta))
    y = torch.where(inner, 0.5 - torch.sin(theta), torch.sin(theta))
    z0, z1 = _normal(u[:, 2], u[:, 3])
    x = (x + _MOONS_NOISE * z0 - _MOONS_MEAN[0]) / _MOONS_STD[0]
    y = (y + _MOONS_NOISE * z1 - _MOONS_MEAN[1]) / _MOONS_STD[1]
    return torch.stack([x, y], dim=1).float()


class GaussianMixtureParams(NamedTuple):
    """An isotropic Gaussian mixture: means (K, 2), one shared std, weights (K,) summing to 1."""

    means: Tensor
    std: float
    weights: Tensor


# Eight Gaussians with std / radius = 1/8 (as in FFJORD), radius chosen so each coordinate has variance 1:
# Var = radius^2 / 2 + std^2 = 1.
_EIGHT_STD_OVER_RADIUS = 0.125
_EIGHT_RADIUS = 1.0 / math.sqrt(0.5 + _EIGHT_STD_OVER_RADIUS**2)
_EIGHT_STD = _EIGHT_STD_OVER_RADIUS * _EIGHT_RADIUS


def eight_gaussians_params() -> GaussianMixtureParams:
    """Exact parameters of ``sample_eight_gaussians``: 8 equal-weight modes on a circle, shared std."""
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8.0)
    means = _EIGHT_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixtureParams(means=means.float(), std=_EIGHT_STD, weights=torch.full((8,), 1.0 / 8.0))


def sample_eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) from 8 equal Gaussians on a circle (see ``eight_gaussians_params``)."""
    u = _uniform(n, 3, generator)
    component = torch.clamp((u[:, 0] * 8).long(), max=7)
    angle = component.to(torch.float64) * (2.0 * math.pi / 8.0)
    z0, z1 = _normal(u[:, 1], u[:, 2])
    x = _EIGHT_RADIUS * torch.cos(angle) + _EIGHT_STD * z0
    y = _EIGHT_RADIUS * torch.sin(angle) + _EIGHT_STD * z1
    return torch.stack([x, y], dim=1).float()


# Checkerboard: uniform on the 8 "black" cells of a 4x4 board over [-2, 2]^2 (cell (i, j) with i + j even),
# scaled by sqrt(3)/2 so that each coordinate (uniform on [-2, 2], variance 4/3) has variance 1.
_CHECKER_SCALE = math.sqrt(3.0) / 2.0


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) uniform on the black cells of a 4x4 checkerboard, std 1 per coordinate."""
    u = _uniform(n, 4, generator)
    column = torch.clamp((u[:, 0] * 4).long(), max=3)
    row = 2 * (u[:, 1] < 0.5).long() + column % 2
    x = -2.0 + column + u[:, 2]
    y = -2.0 + row + u[:, 3]
    return (_CHECKER_SCALE * torch.stack([x, y], dim=1)).float()


TOY_DATASETS: dict[str, Callable[..., Tensor]] = {
    "swiss_roll": sample_swiss_roll,
    "two_moons": sample_two_moons,
    "eight_gaussians": sample_eight_gaussians,
    "checkerboard": sample_checkerboard,
}


def toy_name(dataset: str) -> str | None:
    """The toy's name in a dataset spec 'toy:<name>', or None for any other dataset (the one parser of the form)."""
    return dataset[4:] if dataset.startswith("toy:") else None


def load_toy_dataset(name: str, n: int = 10000, seed: int = 0) -> PointDataset:
    """n points of the named toy distribution (see ``TOY_DATASETS``) drawn with ``seed``."""
    if name not in TOY_DATASETS:
        raise DataError(f"unknown toy dataset {name!r}; expected one of {', '.join(TOY_DATASETS)}.")
    generator = torch.Generator().manual_seed(seed)
    return PointDataset(TOY_DATASETS[name](n, generator))
