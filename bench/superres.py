"""4x super-resolution of held-out digits: a conditional diffusion model against bicubic interpolation.

    diffusionlab train --dataset digits --image-condition superres --superres-factor 4 --no-conditional \
        --out runs/superres-digits --steps 2000
    python bench/superres.py --model runs/superres-digits --samples 4

Each held-out 16x16 digit is average-pooled to 4x4 (the model's training condition), then brought back to
16x16 by bicubic interpolation, by one diffusion sample, and by the mean of ``samples`` diffusion samples (an
estimate of the posterior mean, which is what PSNR rewards). PSNR is in dB on [0, 1] images; also reported:
how often the digits classifier still recognises the digit. Writes bench/out/superres.png (rows: 4x4 input,
bicubic, sample, target).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusionlab.data import load_digits_dataset, low_resolution
from diffusionlab.evaluation import digits_classifier, predict
from diffusionlab.images import save_grid
from diffusionlab.pipeline import Pipeline

OUT = Path(__file__).parent / "out"


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/superres-digits")
    p.add_argument("--samples", type=int, default=4, help="diffusion samples per image for the posterior mean")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    size, factor = pipe.config.data.image_size, pipe.config.data.superres_factor
    test = load_digits_dataset(size, split="test")
    target = (test.images + 1) / 2
    low = low_resolution(target, factor)
    bicubic = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    n = len(target)
    draws = torch.stack(
        [pipe.sample(n, cond_image=low, seed=s, steps=args.steps, batch_size=n) for s in range(args.samples)]
    )
    clf = digits_classifier(size)
    rows = [
        ("bicubic", bicubic),
        ("diffusion, one sample", draws[0]),
        (f"diffusion, mean of {args.samples}", draws.mean(0)),
    ]
    print(
        f"\nmodel {args.model}: {factor}x super-resolution {size // factor}x{size // factor} -> {size}x{size}, "
        f"{n} held-out digits, {pipe.config.sample.sampler} {args.steps} steps"
    )
    print("\n| method | PSNR (dB) | classifier recognises the digit |")
    print("|---|---|---|")
    for name, images in rows:
        acc = float((predict(clf, images * 2 - 1) == test.labels).float().mean())
        print(f"| {name} | {psnr(images, target).mean():.2f} | {acc:.1%} |")
    acc = float((predict(clf, test.images) == test.labels).float().mean())
    print(f"| (the 16x16 targets themselves) | - | {acc:.1%} |")
    shown = F.interpolate(low, size=(size, size), mode="nearest")
    OUT.mkdir(exist_ok=True)
    save_grid(
        torch.cat([shown[:12], bicubic[:12], draws[0][:12], target[:12]]),
        OUT / "superres.png",
        nrow=12,
        row_labels=["4x4 input", "bicubic", "diffusion", "target"],
        scale=2,
    )
    print(f"\nwrote {OUT / 'superres.png'}")


if __name__ == "__main__":
    main()
