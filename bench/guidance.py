"""Guidance trade-off on the digits model: does a sample show its digit, and how varied are the samples?

    python bench/guidance.py --model runs/digits --per-class 30 --guidance 0 1 2 4 8 [--classifier-steps 1500]

For every setting (classifier-free guidance w; w with CFG-rescale phi = 0.7; w with a guidance interval; and
classifier guidance with a noise-aware classifier, trained first if the model folder has none and
``--classifier-steps`` > 0), samples ``per-class`` images of every digit and reports:
- accuracy: share of samples the digits DomainClassifier assigns to the asked digit;
- diversity: mean pairwise distance between the classifier features of samples the classifier puts in the same
  class, divided by the same for real training digits (1.0 = as varied as the data, lower = mode collapse);
- saturated: share of pixels at the ends of the range (< 0.02 or > 0.98), where over-guided images pile up.
Writes a grid (one row per setting, two samples per digit) to bench/out/guidance.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import digits_classifier, predict
from diffusionlab.images import save_grid
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import load_training_data, noisy_accuracy, train_noise_aware_classifier

OUT = Path(__file__).parent / "out"


def class_diversity(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes (with 2 or more members) of the mean pairwise Euclidean distance between their features."""
    out = []
    for c in labels.unique():
        f = features[labels == c]
        n = len(f)
        if n > 1:
            out.append(float(torch.cdist(f, f).sum() / (n * (n - 1))))
    return sum(out) / len(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/digits")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier-steps", type=int, default=1500, help="train a noise-aware classifier if missing")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    size = pipe.config.data.image_size
    clf = digits_classifier(size)
    real = load_digits_dataset(size, split="train")
    with torch.no_grad():
        real_div = class_diversity(clf.features(real.images), real.labels)
    if pipe.classifier is None and args.classifier_steps > 0:
        print(f"training a noise-aware classifier ({args.classifier_steps} steps) ...", file=sys.stderr)
        data = load_training_data(pipe.config)
        pipe.classifier = train_noise_aware_classifier(pipe, data, steps=args.classifier_steps, progress=False)
        pipe.save_classifier(args.model)
        print(f"noisy-input accuracy {noisy_accuracy(pipe, pipe.classifier, data):.1%}", file=sys.stderr)

    settings: list[tuple[str, dict]] = [(f"w={w:g}", {"guidance": w}) for w in args.guidance]
    big = [w for w in args.guidance if w >= 4]
    settings += [(f"w={w:g} rescale 0.7", {"guidance": w, "guidance_rescale": 0.7}) for w in big]
    settings += [(f"w={w:g} interval (0.28, 5.42]", {"guidance": w, "guidance_interval": (0.28, 5.42)}) for w in big]
    if pipe.classifier is not None:
        settings += [(f"classifier s={s:g} (w=0)", {"guidance": 0.0, "classifier_scale": s}) for s in (1, 4, 10)]
        settings += [("w=1 + classifier s=4", {"guidance": 1.0, "classifier_scale": 4.0})]

    labels = torch.arange(10).repeat_interleave(args.per_class)
    rows, grid, names = [], [], []
    for name, kw in settings:
        images = pipe.sample(labels=labels.tolist(), sampler=args.sampler, steps=args.steps, seed=args.seed, **kw)
        x = images * 2 - 1
        with torch.no_grad():
            predicted = predict(clf, x)
            acc = float((predicted == labels).float().mean())
            div = class_diversity(clf.features(x), predicted) / real_div
        sat = float(((images < 0.02) | (images > 0.98)).float().mean())
        rows.append((name, acc, div, sat))
        print(f"{name}: accuracy {acc:.3f} diversity {div:.3f} saturated {sat:.3f}", file=sys.stderr, flush=True)
        pick = torch.cat([torch.nonzero(labels == c)[:2, 0] for c in range(10)])
        grid.append(images[pick])
        names.append(name)
    real_sat = float((((real.images + 1) / 2 < 0.02) | ((real.images + 1) / 2 > 0.98)).float().mean())
    print(f"\nmodel {args.model}, {args.sampler} {args.steps} steps, {args.per_class} per digit, seed {args.seed}")
    print("\n| setting | accuracy | diversity (real = 1) | saturated pixels |")
    print("|---|---|---|---|")
    for name, acc, div, sat in rows:
        print(f"| {name} | {acc:.1%} | {div:.3f} | {sat:.1%} |")
    print(f"| real training digits | - | 1.000 | {real_sat:.1%} |")
    OUT.mkdir(exist_ok=True)
    save_grid(torch.cat(grid), OUT / "guidance.png", nrow=20, row_labels=names, scale=2)
    print(f"\nwrote {OUT / 'guidance.png'}")


if __name__ == "__main__":
    main()
