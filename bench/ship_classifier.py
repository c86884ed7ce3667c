"""Train the digits classifier the package ships (``evaluation/weights/digits-16.safetensors``) and check it.

    python bench/ship_classifier.py --out src/diffusionlab/evaluation/weights/digits-16.safetensors

Trains ``DomainClassifier`` on the embedded digits' train split with the recipe ``digits_classifier`` names
(``_DIGITS_RECIPE``, seed 0), writes it with that recipe tag, and prints its accuracy on the held-out test split.
The shipped file makes FIDs in classifier features the same on every machine and saves a fresh machine the
minute of training; on another CPU a retrained one differs in the last bits (oneDNN), not in accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import accuracy, save_classifier, train_classifier
from diffusionlab.evaluation import classifier as classifier_module


def main(argv: list[str] | None = None) -> int:
    """Train, write, report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    train = load_digits_dataset(args.image_size, split="train")
    model = train_classifier(train.images, train.labels, num_classes=10, seed=classifier_module._DIGITS_SEED)
    save_classifier(model, args.out, recipe=classifier_module._DIGITS_RECIPE)
    test = load_digits_dataset(args.image_size, split="test")
    print(f"{args.out}: test accuracy {accuracy(model, test.images, test.labels):.4f} on {len(test)} digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
