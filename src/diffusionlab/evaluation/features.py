"""Feature extractors for FID-like metrics, and a cache of the real data's features (floor 3).

A ``FeatureExtractor`` maps images (N, C, H, W) in [0, 1] to features (N, D); its ``name`` identifies it and
its weights, so cached features of one network are never reused for another. Three kinds:

- ``InceptionFeatures``: the standard FID Inception-v3 (2048-d), from a local weights file: published FIDs.
- ``ClassifierFeatures``: a small ``DomainClassifier`` trained on the dataset itself (digits, or any labelled
  dataset through ``domain_classifier``): meaningful on tiny images Inception was never trained for.
- ``PixelFeatures``: raw pixels, optionally projected on principal components (toys, sanity checks).

Every extractor works image by image (eval-mode networks without batch statistics), so features, and the
scores computed from them, do not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.decomposition import PCA
from torch import Tensor, nn

from diffusionlab.data import DataError, load_dataset
from diffusionlab.io import CheckpointError, atomic_path

from .classifier import (
    DomainClassifier,
    classifier_cache_dir,
    digits_classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .inception import load_inception

__all__ = [
    "FeatureExtractor",
    "ClassifierFeatures",
    "InceptionFeatures",
    "PixelFeatures",
    "extract_features",
    "domain_classifier",
    "reference_features",
    "tensor_fingerprint",
    "features_cache_dir",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps images (N, C, H, W) in [0, 1] to features (N, D), with a ``name`` for cache keys."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def tensor_fingerprint(tensors: dict[str, Tensor] | list[Tensor], length: int = 12) -> str:
    """A short SHA-256 of tensors' names, shapes and bytes: the same weights (or data) give the same string."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    for key, value in items:
        v = value.detach().contiguous().cpu()
        h.update(f"{key}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:length]


def _network_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class ClassifierFeatures:
    """Penultimate-layer features of a ``DomainClassifier`` (its input is [-1, 1]; ours [0, 1])."""

    def __init__(self, classifier: DomainClassifier) -> None:
        self.classifier = classifier.eval()
        self.name = f"classifier-{tensor_fingerprint(classifier.state_dict())}"

    @property
    def feature_dim(self) -> int:
        return self.classifier.feature_dim

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.to(_network_device(self.classifier)) * 2.0 - 1.0)


class InceptionFeatures:
    """The FID Inception's 2048-d pool features; grayscale images are repeated to RGB (as pytorch-fid's loader)."""

    def __init__(self, weights: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        self.network = load_inception(weights, device=device)
        self.name = f"inception-{tensor_fingerprint(self.network.state_dict())}"
        self.feature_dim = self.network.feature_dim

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() == 4 and images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return self.network.features(images.to(_network_device(self.network)))


class PixelFeatures:
    """Flattened pixels, or their coordinates on principal components fitted with ``fit_pca``."""

    def __init__(self, mean: Tensor | None = None, components: Tensor | None = None) -> None:
        if (mean is None) != (components is None):
            raise ValueError("give both the PCA mean and components, or neither.")
        self.mean, self.components = mean, components
        self.name = (
            "pixels" if components is None else f"pixels-pca{len(components)}-{tensor_fingerprint([mean, components])}"
        )

    @classmethod
    def fit_pca(cls, images: Tensor, dim: int, seed: int = 0) -> PixelFeatures:
        """Principal components (sklearn's PCA) of reference images (N, ...), keeping ``dim`` of them."""
        flat = images.reshape(len(images), -1).double().numpy()
        if not 1 <= dim <= min(flat.shape):
            raise ValueError(
                f"PCA dim={dim} must lie in 1..{min(flat.shape)} for {flat.shape[0]} images of {flat.shape[1]} values."
            )
        pca = PCA(n_components=dim, random_state=seed).fit(flat)
        return cls(torch.from_numpy(pca.mean_).float(), torch.from_numpy(pca.components_).float())

    def __call__(self, images: Tensor) -> Tensor:
        flat = images.reshape(len(images), -1).float().cpu()
        if self.components is None:
            return flat
        if flat.shape[1] != self.components.shape[1]:
            raise ValueError(f"images of {flat.shape[1]} values do not fit a PCA fitted on {self.components.shape[1]}.")
        return (flat - self.mean) @ self.components.T


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor | Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256
) -> Tensor:
    """Features (N, D) float32 on the CPU of images (N, C, H, W) in [0, 1], computed ``batch_size`` at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if len(images) == 0:
        raise ValueError("no images to extract features from.")
    parts = [extractor(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def features_cache_dir() -> Path:
    """Where cached reference features live: beside the cached classifiers."""
    return classifier_cache_dir() / "features"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[-40:] or "data"


def reference_features(
    extractor: FeatureExtractor,
    images: Tensor,
    dataset: str,
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tensor:
    """Features of a dataset's real images, cached on disk: keyed by the dataset name, the extractor (and its
    weights), the image size and a fingerprint of the images themselves, so a repeated evaluation only embeds
    the samples, and changed data or weights are never served stale features."""
    size = "x".join(str(s) for s in images.shape[1:])
    key = f"{_slug(dataset)}-{size}-n{len(images)}-{tensor_fingerprint([images])}-{extractor.name}"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else features_cache_dir()
    path = folder / f"{key}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") == key:
                    return fh.get_tensor("features")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            warnings.warn(
                f"re-embedding {dataset}: the cached features at {path} are unreadable ({err}).", stacklevel=2
            )
    features = extract_features(extractor, images, batch_size)
    try:
        with atomic_path(path) as tmp:
            save_file({"features": features.contiguous()}, str(tmp), metadata={"key": key, "dataset": dataset})
    except OSError as err:
        warnings.warn(f"could not cache reference features at {path} ({err}).", stacklevel=2)
    return features


_RECIPE = "dataset-v1:steps=1500,batch=128,lr=2e-3,seed=0"


def domain_classifier(
    dataset: str,
    image_size: int,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> DomainClassifier:
    """The domain classifier of a labelled dataset: ``digits_classifier`` for the digits; for any other dataset
    (an image folder with class sub-folders, MNIST, CIFAR-10) one trained on its train split, then cached."""
    if dataset.strip().lower() == "digits":
        if log is not None:
            log(f"digits classifier at {image_size}x{image_size} (trained once, a minute or two; then cached) ...")
        return digits_classifier(image_size, cache_dir=cache_dir)
    train = load_dataset(dataset, image_size, channels=channels, split="train")
    if train.labels is None or not train.num_classes or train.num_classes < 2:
        raise DataError(
            f"dataset {dataset!r} has no class labels to train a domain classifier on; use features 'pixels' or "
            "'inception' instead."
        )
    folder = Path(cache_dir).expanduser() if cache_dir is not None else classifier_cache_dir()
    fingerprint = tensor_fingerprint([train.images, train.labels])
    path = folder / f"{_slug(dataset)}-{image_size}-{train.channels}ch-{fingerprint}.safetensors"
    if path.is_file():
        try:
            return load_classifier(path)
        except CheckpointError as err:
            warnings.warn(f"retraining the domain classifier: {err}", stacklevel=2)
    if log is not None:
        log(f"training a domain classifier on {len(train)} images of {dataset!r} (once; cached at {path}) ...")
    model = train_classifier(train.images, train.labels, num_classes=int(train.num_classes), seed=0)
    try:
        save_classifier(model, path, recipe=_RECIPE, dataset=dataset)
    except OSError as err:
        warnings.warn(f"could not cache the domain classifier at {path} ({err}).", stacklevel=2)
    return model
