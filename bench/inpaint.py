"""Inpainting held-out digits: are the known pixels kept exactly, and does the filled image show the right digit?

    OMP_NUM_THREADS=1 python bench/inpaint.py --model runs/digits --num-images 200 --masks centre left bottom

For each mask (centre: the middle 8x8 of 16x16; left / bottom: that half) and each method, the held-out test
digits (8-bit quantised) are inpainted WITHOUT a label (the unconditional model: the digit must come from the
known pixels), each result is saved as an 8-bit PNG and read back, and the table gives:

- recognised: share of results the digits classifier assigns to the original digit;
- max |diff| known (float / 8-bit): the largest change of a known pixel in the float output and in the PNG;
- evals: network evaluations per image (reconstruction guidance adds one gradient through the network to each).

Reference rows: the masked input with the hole black, and the nearest training digit on the known pixels pasted
into the hole (a strong non-diffusion completion). Pictures go to bench/out/inpaint-<mask>.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import digits_classifier, predict
from diffusionlab.images import save_grid
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks import inpaint, read_image, rect_mask, repaint_schedule, save_image

MASKS = {"centre": (4, 4, 12, 12), "left": (0, 0, 8, 16), "right": (8, 0, 16, 16), "top": (0, 0, 16, 8)}
MASKS["bottom"] = (0, 8, 16, 16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/digits", help="16x16 digits model folder (default runs/digits)")
    p.add_argument("--num-images", type=int, default=200, help="held-out test digits to inpaint (default 200)")
    p.add_argument("--masks", nargs="+", default=["centre", "left", "bottom"], choices=sorted(MASKS))
    p.add_argument("--steps", type=int, default=50, help="ddpm steps of the replacement method (default 50)")
    p.add_argument("--repaint-steps", type=int, default=20, help="RePaint's steps (default 20)")
    p.add_argument("--jump-length", type=int, default=5, help="RePaint's jump length j (default 5)")
    p.add_argument("--jump-n-sample", type=int, default=10, help="RePaint's resamplings r (default 10)")
    p.add_argument("--reconstruction-guidance", type=float, nargs="*", default=[16.0], help="w_r values to run")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    return p.parse_args(argv)


def known_pixel_diffs(out: Tensor, x: Tensor, keep: Tensor, folder: Path) -> tuple[float, float]:
    """Largest change of a known pixel in the float output, and in the output saved as PNG and read back."""
    float_diff = (out - x)[:, :, keep].abs().max().item()
    png_diff = 0.0
    for i in range(len(out)):
        save_image(out[i], folder / f"{i}.png")
        back = read_image(folder / f"{i}.png")
        png_diff = max(png_diff, (back - x[i])[:, keep].abs().max().item())
    return float_diff, png_diff


def nearest_neighbour_fill(x: Tensor, fill: Tensor, train: Tensor) -> Tensor:
    """Paste into the hole the training image nearest on the known pixels (images in [0, 1])."""
    keep = ~fill
    nn = torch.cdist(x[:, 0][:, keep], train[:, 0][:, keep]).argmin(1)
    return torch.where(fill, train[nn], x)


def main(argv: list[str] | None = None) -> int:
    """Inpaint with every method and mask; print the markdown table."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    pipe = Pipeline.load(args.model)
    clf = digits_classifier(16)
    test = load_digits_dataset(16, split="test")
    x = ((test.images[: args.num_images] + 1) / 2 * 255).round() / 255  # 8-bit images, as a PNG would hold
    y = test.labels[: args.num_images]
    train = (load_digits_dataset(16, split="train").images + 1) / 2
    levels = repaint_schedule(args.repaint_steps, args.jump_length, args.jump_n_sample)
    repaint_evals = sum(b < a for a, b in zip(levels[:-1], levels[1:], strict=True))
    methods = [
        (f"replace (ddpm, {args.steps} steps)", {"method": "replace", "steps": args.steps}, args.steps),
        (
            f"RePaint ({args.repaint_steps} steps, j={args.jump_length}, r={args.jump_n_sample})",
            {
                "method": "repaint",
                "steps": args.repaint_steps,
                "jump_length": args.jump_length,
                "jump_n_sample": args.jump_n_sample,
            },
            repaint_evals,
        ),
    ]
    for w in args.reconstruction_guidance:
        kw = {"method": "replace", "steps": args.steps, "reconstruction_guidance": w}
        methods.append((f"replace + reconstruction guidance w_r={w:g} (ddpm, {args.steps} steps)", kw, args.steps))
    rows = []
    for name in args.masks:
        fill = rect_mask(16, 16, MASKS[name])
        keep = ~fill
        masked = torch.where(fill, torch.zeros_like(x), x)
        recognised = (predict(clf, masked * 2 - 1) == y).float().mean().item()
        rows.append((name, "reference: masked input (hole black)", recognised, None, None, 0, 0.0))
        nn = nearest_neighbour_fill(x, fill, train)
        recognised = (predict(clf, nn * 2 - 1) == y).float().mean().item()
        rows.append((name, "reference: nearest training digit on the known pixels", recognised, None, None, 0, 0.0))
        pictures = [x[:16], masked[:16]]
        for label, kw, evals in methods:
            start = time.perf_counter()
            out = inpaint(pipe, x, fill, seed=args.seed, batch_size=256, **kw)
            seconds = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                float_diff, png_diff = known_pixel_diffs(out, x, keep, Path(tmp))
            recognised = (predict(clf, out * 2 - 1) == y).float().mean().item()
            rows.append((name, label, recognised, float_diff, png_diff, evals, seconds))
            pictures.append(out[:16])
            print(f"{name}: {label}: {recognised:.3f} ({seconds:.0f}s)", file=sys.stderr, flush=True)
        save_grid(torch.cat(pictures), Path("bench/out") / f"inpaint-{name}.png", nrow=16, scale=3)
    print(
        f"model {args.model}, {args.num_images} held-out test digits, no label (unconditional), seed {args.seed}; "
        f"classifier = digits_classifier(16)\n"
    )
    print("| mask | method | recognised | max abs diff known (float) | max abs diff known (8-bit PNG) | evals | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, label, recognised, float_diff, png_diff, evals, seconds in rows:
        fd = "" if float_diff is None else f"{float_diff:g}"
        pd = "" if png_diff is None else f"{png_diff:g}"
        print(f"| {name} | {label} | {recognised:.1%} | {fd} | {pd} | {evals} | {seconds:.0f}s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
