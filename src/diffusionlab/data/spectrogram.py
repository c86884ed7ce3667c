"""Magnitude spectrograms of audio and their inversion by Griffin-Lim (floor 1).

A clip (..., L) becomes the magnitude of its short-time Fourier transform (Hann window, ``n_fft`` samples, hop
``hop_length``, frames centred), compressed by a power law and normalised per frequency bin; a magnitude is turned
back into a waveform by the fast Griffin-Lim algorithm, which recovers a phase consistent with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "COMPRESSION_POWER",
    "stft_shape",
    "stft",
    "istft",
    "magnitude",
    "compress",
    "decompress",
    "griffin_lim",
    "spectral_convergence",
]

# |X|^0.3: the power-law compression of a magnitude (Stevens' loudness law, as in Wilson et al. 2018,
# "Exploring tradeoffs in models for low-latency speech enhancement"): bounded at 0, unlike log(|X| + eps), so a
# silent bin is not a large negative value the model must learn
COMPRESSION_POWER = 0.3


def stft_shape(length: int, n_fft: int, hop_length: int) -> tuple[int, int]:
    """(frequency bins, frames) of the centred STFT of a clip of ``length`` samples."""
    return n_fft // 2 + 1, 1 + length // hop_length


def _window(n_fft: int, like: Tensor) -> Tensor:
    return torch.hann_window(n_fft, dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device)


def stft(x: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """The complex STFT (..., F, T) of clips (..., L): Hann window of ``n_fft`` samples, hop ``hop_length``, frames
    centred (the clip reflected at its ends)."""
    lead = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]), n_fft, hop_length, window=_window(n_fft, x), center=True, return_complex=True
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: Tensor, n_fft: int, hop_length: int, length: int) -> Tensor:
    """Clips (..., length) from an STFT (..., F, T) by the least-squares overlap-add of Griffin & Lim 1984, eq. 6:
    x(n) = sum_m w(n - mH) y_m(n) / sum_m w(n - mH)^2 (torch.istft with the same Hann window)."""
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    window = torch.hann_window(n_fft, dtype=flat.real.dtype, device=flat.device)
    x = torch.istft(flat, n_fft, hop_length, window=window, center=True, length=length)
    return x.reshape(*lead, length)


def magnitude(x: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """|STFT(x)| (..., F, T) of clips (..., L)."""
    return stft(x, n_fft, hop_length).abs()


def compress(mag: Tensor) -> Tensor:
    """A magnitude compressed by the power law |X|^p, p = ``COMPRESSION_POWER``."""
    return mag.clamp_min(0) ** COMPRESSION_POWER


def decompress(y: Tensor) -> Tensor:
    """The inverse of ``compress``: y^(1/p) of y clipped at 0 (a magnitude is never negative)."""
    return y.clamp_min(0) ** (1 / COMPRESSION_POWER)


def griffin_lim(
    mag: Tensor, n_fft: int, hop_length: int, length: int, iterations: int = 64, momentum: float = 0.99
) -> Tensor:
    """Clips (..., length) whose STFT magnitude approaches ``mag`` (..., F, T).

    Griffin & Lim 1984, eq. 6: from the estimate x_i, take Y = mag * STFT(x_i) / |STFT(x_i)| and let x_{i+1} be its
    least-squares inverse (``istft``). With ``momentum`` a > 0 this is the fast Griffin-Lim of Perraudin et al. 2013
    (Algorithm 2): t_n = P_C1(P_C2(c_{n-1})), c_n = t_n + a (t_n - t_{n-1}), P_C2 setting the magnitude and P_C1
    the consistent projection STFT(ISTFT(.)); a = 0 is the original algorithm. The phase starts at 0, so a clip's
    result does not depend on the others in the batch.
    """
    mag = mag.float()
    c = mag.to(torch.complex64)
    previous = None
    for _ in range(iterations):
        projected = mag * torch.exp(1j * torch.angle(c))
        t = stft(istft(projected, n_fft, hop_length, length), n_fft, hop_length)
        c = t if previous is None else t + momentum * (t - previous)
        previous = t
    return istft(mag * torch.exp(1j * torch.angle(c)), n_fft, hop_length, length)


def spectral_convergence(mag: Tensor, x: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """||S - |STFT(x)|||_F / ||S||_F per clip, the spectral convergence of spectrogram inversion (Arik et al. 2019,
    "Fast spectrogram inversion using multi-head convolutional neural networks"): 0 when x's magnitude is S."""
    diff = (mag - magnitude(x, n_fft, hop_length)).flatten(-2).norm(dim=-1)
    return diff / mag.flatten(-2).norm(dim=-1).clamp_min(1e-12)
