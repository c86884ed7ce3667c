"""Evaluation: domain classifiers (also feature extractors for FID-like metrics), sample-quality metrics.

Floor 3: imports torch, numpy, ``diffusionlab.io`` and ``diffusionlab.data``; never training, pipeline or cli.
"""

from __future__ import annotations

from .classifier import (
    DomainClassifier,
    accuracy,
    classifier_cache_dir,
    digits_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)

__all__ = [
    "DomainClassifier",
    "accuracy",
    "classifier_cache_dir",
    "digits_classifier",
    "load_classifier",
    "predict",
    "save_classifier",
    "train_classifier",
]
