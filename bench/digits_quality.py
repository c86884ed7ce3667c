"""Does a class-conditional digits model draw the digit it is asked for? One row per guidance scale.

    python bench/digits_quality.py --model runs/digits --per-class 50 --sampler ddim --steps 50 \
        --guidance 0 1 2 --seed 0 --json quality.json

Samples ``per_class`` images of every class, classifies them with the digits DomainClassifier (trained once
on the embedded digits' train split, then cached) and prints, per guidance scale w, the share of samples of
each class that the classifier assigns to the conditioning label, and the overall share. For reference, the
classifier's own accuracy on the real held-out test split is printed too: a model cannot score much above it.
Guidance w = 0 samples the unconditional model, so its row shows the chance level of "matching" a label.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import accuracy, digits_classifier, predict
from diffusionlab.io import CheckpointError, save_json
from diffusionlab.pipeline import Pipeline

DIGIT_CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/digits", help="model folder (config.json + model.safetensors)")
    p.add_argument("--per-class", type=int, default=50, help="samples per class (default 50)")
    p.add_argument("--sampler", default="ddim", help="sampler name, as the CLI takes it (default ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0],
        help="one or more classifier-free guidance scales w (0 unconditional, 1 conditional, >1 stronger)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="sampling batch size; results do not depend on it")
    p.add_argument("--cache-dir", default=None, help="where the digits classifier is cached (default: user cache)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON to PATH")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error(f"--per-class must be at least 1, got {args.per_class}.")
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}.")
    if any(g < 0 for g in args.guidance):
        p.error(f"--guidance values must be >= 0, got {args.guidance}.")
    return args


def load_digits_model(folder: str) -> tuple[Pipeline, int]:
    """Load the model and check it is a class-conditional 1-channel image model with 10 classes."""
    pipe = Pipeline.load(folder)
    shape = pipe.sample_shape
    if pipe.config.network.kind != "unet" or len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise ValueError(f"{folder} is not a 1-channel square image model (sample shape {shape}).")
    if pipe.config.network.num_classes != DIGIT_CLASSES:
        raise ValueError(
            f"{folder} has num_classes={pipe.config.network.num_classes}; this benchmark needs a class-conditional "
            f"model of the {DIGIT_CLASSES} digits."
        )
    return pipe, shape[-1]


def evaluate(args: argparse.Namespace) -> dict:
    """Sample, classify and collect the table as a plain dict."""
    pipe, size = load_digits_model(args.model)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"digits classifier at {size}x{size} (trained once, then cached) ...")
    clf = digits_classifier(size, cache_dir=args.cache_dir)
    test = load_digits_dataset(size, split="test")
    clf_acc = accuracy(clf, test.images, test.labels)
    labels = torch.arange(DIGIT_CLASSES).repeat_interleave(args.per_class)
    rows = []
    for w in args.guidance:
        log(f"sampling {len(labels)} images: sampler={args.sampler} steps={args.steps} guidance={w} seed={args.seed}")
        start = time.perf_counter()
        images = pipe.sample(
            labels=labels.tolist(),
            sampler=args.sampler,
            steps=args.steps,
            guidance=w,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - start
        hit = predict(clf, images * 2 - 1) == labels  # samples come back in [0, 1]; the classifier takes [-1, 1]
        per_class = hit.view(DIGIT_CLASSES, args.per_class).float().mean(dim=1)
        rows.append(
            {
                "guidance": w,
                "per_class": {str(c): round(per_class[c].item(), 4) for c in range(DIGIT_CLASSES)},
                "overall": round(hit.float().mean().item(), 4),
                "sampling_seconds": round(seconds, 2),
            }
        )
    return {
        "model": str(Path(args.model)),
        "image_size": size,
        "sampler": args.sampler,
        "steps": args.steps,
        "per_class": args.per_class,
        "seed": args.seed,
        "classifier_test_accuracy": round(clf_acc, 4),
        "classifier_test_images": len(test),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """The result as a fixed-width text table, one row per guidance scale."""
    head = ["guidance"] + [str(c) for c in range(DIGIT_CLASSES)] + ["overall", "time"]
    lines = [
        f"model {result['model']} ({result['image_size']}x{result['image_size']}), sampler={result['sampler']} "
        f"steps={result['steps']} seed={result['seed']}, {result['per_class']} samples per class",
        "share of samples the classifier assigns to the conditioning label:",
        " ".join(f"{h:>8}" for h in head),
    ]
    for row in result["rows"]:
        cells = [f"{row['guidance']:>8g}"] + [f"{v:>8.2f}" for v in row["per_class"].values()]
        cells += [f"{row['overall']:>8.3f}", f"{row['sampling_seconds']:>7.1f}s"]
        lines.append(" ".join(cells))
    lines.append(
        f"reference: the classifier's accuracy on the real held-out test split = "
        f"{result['classifier_test_accuracy']:.3f} ({result['classifier_test_images']} images)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table, and write JSON if asked."""
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        save_json(result, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
