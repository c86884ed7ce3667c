"""Data augmentation: does a synthetic labelled set from a class-conditional model help a classifier trained on
only a few real images per class?

    OMP_NUM_THREADS=1 python bench/augment.py --model runs/digits --real-per-class 10 --synthetic-per-class 100 \
        --seeds 0 1 2

Per seed: ``--real-per-class`` real digits per class are drawn from the train split; ``--synthetic-per-class``
images per class are sampled from the model into an ImageFolder (``tasks.sample_image_folder``, the layout of
``diffusionlab sample --per-class N --out-dir DIR``; cached under bench/out/augment/) and read back with
``data.load_image_folder``. A digits classifier (``evaluation.train_classifier``, same recipe and seed) is trained
on the real images alone and on real + synthetic; the table gives both test accuracies on all held-out real
digits, per seed and averaged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffusionlab.data import ImageDataset, load_digits_dataset, load_image_folder
from diffusionlab.evaluation import accuracy, train_classifier
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks import sample_image_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/digits", help="16x16 class-conditional digits model (default runs/digits)")
    p.add_argument("--real-per-class", type=int, default=10, help="real train digits per class (default 10)")
    p.add_argument("--synthetic-per-class", type=int, default=100, help="synthetic digits per class (default 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--classifier-steps", type=int, default=1000, help="classifier training steps (default 1000)")
    p.add_argument("--sampler", default="ddim", help="sampler of the synthetic set (default ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="guidance w (default: the model's)")
    p.add_argument("--out", default="bench/out/augment", help="where the synthetic folders are cached")
    return p.parse_args(argv)


def real_subset(train: ImageDataset, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random train digits of every class (images in [-1, 1], labels)."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(10):
        members = (train.labels == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    idx = torch.cat(idx)
    return train.images[idx], train.labels[idx]


def synthetic_set(pipe: Pipeline, folder: Path, per_class: int, seed: int, **kwargs: object) -> ImageDataset:
    """The synthetic ImageFolder of this seed: sampled once, then read back from disk."""
    if not folder.is_dir():
        start = time.perf_counter()
        sample_image_folder(pipe, folder, per_class, seed=seed, **kwargs)
        print(f"sampled {10 * per_class} images into {folder} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    data = load_image_folder(folder, image_size=16, channels=1)
    if len(data) != 10 * per_class or data.class_names != [str(c) for c in range(10)]:
        raise ValueError(f"{folder} does not hold {per_class} images of each digit; delete it to resample.")
    return data


def main(argv: list[str] | None = None) -> int:
    """Train both classifiers for every seed; print the markdown table."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    pipe = Pipeline.load(args.model)
    train = load_digits_dataset(16, split="train")
    test = load_digits_dataset(16, split="test")
    rows = []
    for seed in args.seeds:
        x_real, y_real = real_subset(train, args.real_per_class, seed)
        folder = Path(args.out) / f"{Path(args.model).name}-{args.synthetic_per_class}-seed{seed}"
        synth = synthetic_set(
            pipe, folder, args.synthetic_per_class, seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance
        )
        x_both, y_both = torch.cat([x_real, synth.images]), torch.cat([y_real, synth.labels])
        kw = {"num_classes": 10, "steps": args.classifier_steps, "seed": seed}
        acc_real = accuracy(train_classifier(x_real, y_real, **kw), test.images, test.labels)
        acc_both = accuracy(train_classifier(x_both, y_both, **kw), test.images, test.labels)
        rows.append((seed, acc_real, acc_both))
        print(f"seed {seed}: real {acc_real:.3f}, real + synthetic {acc_both:.3f}", file=sys.stderr, flush=True)
    print(
        f"model {args.model}; {args.real_per_class} real train digits per class, + {args.synthetic_per_class} "
        f"synthetic per class ({args.sampler}, {args.steps} steps, guidance "
        f"{pipe.config.sample.guidance if args.guidance is None else args.guidance:g}); classifier: "
        f"train_classifier, {args.classifier_steps} steps; test accuracy on all {len(test)} held-out real digits\n"
    )
    print("| seed | real only | real + synthetic | change |")
    print("| --- | --- | --- | --- |")
    for seed, a, b in rows:
        print(f"| {seed} | {a:.1%} | {b:.1%} | {100 * (b - a):+.1f} pts |")
    mean_a = sum(r[1] for r in rows) / len(rows)
    mean_b = sum(r[2] for r in rows) / len(rows)
    print(f"| mean | {mean_a:.1%} | {mean_b:.1%} | {100 * (mean_b - mean_a):+.1f} pts |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
