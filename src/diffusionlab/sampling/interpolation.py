"""Moving through the noise space (floor 3): spherical interpolation of noises and seed variations.

Gaussian noise in many dimensions lies near the sphere of radius sqrt(d); a straight line between two noises
passes well inside it (at the midpoint its norm is about sqrt(d / 2)), where the model never saw its inputs, so
noises are interpolated along the great circle instead (Shoemake 1985; the practice since DDIM, Song et al. 2021a,
sec. 5.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["slerp", "slerp_path", "slerp_weights"]


def slerp_weights(a: Tensor, b: Tensor, w: float | Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the coefficients (c_a, c_b), shape (N, 1) in float64, with slerp(a, b, w) = c_a a + c_b b: the
    great-circle direction (sin((1 - w) theta) a^ + sin(w theta) b^) / sin(theta) (Shoemake 1985), theta the angle
    between a and b (a straight line where they are (anti)parallel to within 1e-6), scaled to the linearly
    interpolated norm."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of one shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    flat_a, flat_b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    na, nb = flat_a.norm(dim=1, keepdim=True), flat_b.norm(dim=1, keepdim=True)
    w = torch.as_tensor(w, dtype=torch.float64).reshape(-1, 1)
    cos = ((flat_a / na) * (flat_b / nb)).sum(1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    straight = sin.abs() < 1e-6
    wa = torch.where(straight, 1 - w, torch.sin((1 - w) * theta) / torch.where(straight, 1.0, sin))
    wb = torch.where(straight, w, torch.sin(w * theta) / torch.where(straight, 1.0, sin))
    direction = wa * (flat_a / na) + wb * (flat_b / nb)
    scale = ((1 - w) * na + w * nb) / direction.norm(dim=1, keepdim=True)
    return scale * wa / na, scale * wb / nb


def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Per sample, the point a fraction ``w`` along the great-circle arc from a to b (norms interpolated linearly):
    (sin((1 - w) theta) a + sin(w theta) b) / sin(theta), theta the angle between a and b (Shoemake 1985);
    a straight line where a and b are (anti)parallel to within 1e-6."""
    ca, cb = slerp_weights(a, b, w)
    out = ca * a.reshape(len(a), -1).double() + cb * b.reshape(len(b), -1).double()
    return out.reshape(a.shape).to(a.dtype)


def slerp_path(a: Tensor, b: Tensor, frames: int) -> Tensor:
    """``frames`` points from a (one sample, any shape) to b along the great circle, both ends included."""
    if frames < 2:
        raise ValueError(f"frames={frames} must be at least 2 (the two ends).")
    w = torch.linspace(0, 1, frames, dtype=torch.float64)
    return slerp(a[None].expand(frames, *a.shape), b[None].expand(frames, *b.shape), w)
