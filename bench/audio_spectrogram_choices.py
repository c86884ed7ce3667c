"""The spectrogram space's measured choices, on the audio bench's train set only (no held-out clips):

    OMP_NUM_THREADS=1 python bench/audio_spectrogram_choices.py

1. STFT size: the bench's digit classifier (trained on the train set, as ``bench/audio.py`` trains it) on 200 train
   clips after a round trip through |STFT| and 64 fast Griffin-Lim iterations, with the spectral convergence
   ||S - |STFT(x_hat)||| / ||S||, for four (n_fft, hop) pairs;
2. compression: the same clips' compressed magnitudes, normalised per bin, plus Gaussian noise of std sigma (what a
   model's error looks like), decoded by Griffin-Lim and classified: |X|^0.3 against log(|X| + eps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import audio  # noqa: E402

from diffusionlab.data.spectrogram import griffin_lim, magnitude, spectral_convergence  # noqa: E402

COMPRESSIONS = {
    "|X|^0.3": (lambda m: m**0.3, lambda y: y.clamp_min(0) ** (1 / 0.3)),
    "log(|X| + 1e-3)": (lambda m: torch.log(m + 1e-3), lambda y: (torch.exp(y) - 1e-3).clamp_min(0)),
    "log(|X| + 1e-5)": (lambda m: torch.log(m + 1e-5), lambda y: (torch.exp(y) - 1e-5).clamp_min(0)),
}


def main() -> int:
    """Print both tables as markdown."""
    torch.set_num_threads(1)
    args = argparse.Namespace(sample_rate=4000, clip_seconds=0.75, mels=40, clf_epochs=30, seed=0)
    folder = Path(audio.tempfile.gettempdir()) / "diffusionlab-bench-audio" / "train-100-seed0"
    audio.make_spoken_digits(folder, per_word=100, sample_rate=audio.SOURCE_RATE, seed=0, workers=1)
    x, d = audio.load_set(folder, args)
    clf = audio.train_classifier(x, d, args.sample_rate, args)
    sub = torch.arange(0, len(x), 5)
    xs, ds = x[sub], d[sub]

    def recognised(y: torch.Tensor) -> float:
        return float((audio.classify(clf, y.clamp(-1, 1))[1].argmax(1) == ds).float().mean())

    print(f"clean train clips: recognised {recognised(xs):.1%}\n")
    print("| n_fft | hop | bins x frames | recognised after Griffin-Lim | spectral convergence |")
    print("|---:|---:|---|---:|---:|")
    for n_fft, hop in [(128, 32), (128, 64), (256, 64), (256, 128)]:
        mag = magnitude(xs, n_fft, hop)
        y = griffin_lim(mag, n_fft, hop, xs.shape[-1], 64)
        sc = float(spectral_convergence(mag, y, n_fft, hop).mean())
        print(f"| {n_fft} | {hop} | {mag.shape[-2]} x {mag.shape[-1]} | {recognised(y):.1%} | {sc:.3f} |")
    n_fft, hop = 128, 64
    print("\n| compression (n_fft 128, hop 64) | sigma 0.1 | sigma 0.2 | sigma 0.4 |\n|---|---:|---:|---:|")
    for name, (squash, unsquash) in COMPRESSIONS.items():
        every = squash(magnitude(x, n_fft, hop))
        mean, std = every.mean((0, 3), keepdim=True), every.std((0, 3), keepdim=True) + 1e-5
        z = (squash(magnitude(xs, n_fft, hop)) - mean) / std
        shares = []
        for sigma in (0.1, 0.2, 0.4):
            noisy = z + sigma * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
            shares.append(recognised(griffin_lim(unsquash(noisy * std + mean), n_fft, hop, xs.shape[-1], 64)))
        print(f"| {name.replace('|', '&#124;')} | " + " | ".join(f"{s:.1%}" for s in shares) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
