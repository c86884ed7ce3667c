"""A small CNN classifier for a domain's images: "is this sample the class it was asked for?" (floor 3).

``DomainClassifier.forward`` gives logits and ``features`` the penultimate-layer features (N, D), so the
same network serves as a domain-specific feature extractor for FID-like metrics. It uses GroupNorm (no
BatchNorm, no dropout), so its outputs never depend on the batch size or on train/eval mode.

Weights are a safetensors file whose metadata holds the constructor arguments; ``digits_classifier``
trains one on the embedded digits once and caches it.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from diffusionlab.data import load_digits_dataset
from diffusionlab.io import CheckpointError, atomic_path

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

_FORMAT = "diffusionlab.DomainClassifier"
_ARG_NAMES = ("in_channels", "num_classes", "image_size", "width")
# Bump when the digits training recipe changes, so stale cached classifiers are retrained.
_DIGITS_RECIPE = "digits-v1:steps=1500,batch=128,lr=2e-3,seed=0"
_DIGITS_SEED = 0
# trained weights shipped in the package: digits_classifier(16) as trained by this recipe (bench/ship_classifier.py)
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _norm(cout), nn.SiLU())


class DomainClassifier(nn.Module):
    """Conv-GroupNorm-SiLU blocks, two 2x poolings, global average pooling and a linear head.

    Input: images (N, in_channels, image_size, image_size) in [-1, 1]; ``image_size`` a multiple of 4.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 2)
        _check_int("width", width, 1)
        if _check_int("image_size", image_size, 4) % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two 2x poolings), got {image_size}.")
        self.in_channels, self.num_classes, self.image_size, self.width = in_channels, num_classes, image_size, width
        w = width
        self.body = nn.Sequential(
            _conv(in_channels, w),
            nn.AvgPool2d(2),
            _conv(w, 2 * w),
            nn.AvgPool2d(2),
            _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w),
        )
        self.head = nn.Linear(4 * w, num_classes)

    @property
    def feature_dim(self) -> int:
        """Size D of the penultimate features returned by ``features``."""
        return 4 * self.width

    def config(self) -> dict[str, int]:
        """The constructor arguments, enough to rebuild this network."""
        return {name: getattr(self, name) for name in _ARG_NAMES}

    def _check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"images of shape {got} do not fit this classifier; expected (N, {', '.join(map(str, expected))})"
                " in [-1, 1]."
            )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (N, D) of images (N, C, S, S) in [-1, 1]."""
        self._check_input(x)
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes) of images (N, C, S, S) in [-1, 1]."""
        return self.head(self.features(x))


def _random_translate(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by an integer offset in [-shift, shift]^2, replicating the border pixels."""
    n, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def _check_training_data(images: Tensor, labels: Tensor, num_classes: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, S, S) in [-1, 1], got {got}.")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square, got {images.shape[-2]}x{images.shape[-1]}.")
    if not isinstance(labels, Tensor) or labels.shape != (images.shape[0],) or labels.is_floating_point():
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor ({images.shape[0]},), one per image, got {got}.")
    if len(labels) == 0:
        raise ValueError("no training images were given.")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} is outside the classes 0..{num_classes - 1}.")


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    augment: bool = True,
    width: int = 32,
    weight_decay: float = 1e-4,
) -> DomainClassifier:
    """Train a DomainClassifier with AdamW, warm-up + cosine decay (+ random translations); deterministic per seed."""
    _check_int("num_classes", num_classes, 2)
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_training_data(images, labels, num_classes)
    device = images.device
    labels = labels.to(device=device, dtype=torch.long)
    size = images.shape[-1]
    shift = max(1, size // 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(images.shape[1], num_classes, size, width=width).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    n = len(images)
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + min(batch_size, n) > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size].to(device)
        pos += len(idx)
        x, y = images[idx], labels[idx]
        if augment:
            x = _random_translate(x, shift, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: DomainClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted class (N,) int64 of images (N, C, S, S) in [-1, 1]."""
    _check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Share of images (N, C, S, S) in [-1, 1] whose predicted class equals its label."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; give one label per image.")
    if len(images) == 0:
        raise ValueError("accuracy needs at least one image.")
    pred = predict(model, images, batch_size=batch_size)
    return (pred == labels.cpu().long()).float().mean().item()


def save_classifier(model: DomainClassifier, path: str | os.PathLike[str], **metadata: str) -> None:
    """Write the weights as safetensors, the constructor arguments in its metadata, atomically."""
    meta = {"format": _FORMAT, **{k: str(v) for k, v in model.config().items()}}
    meta.update({k: str(v) for k, v in metadata.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _read_classifier(path: Path) -> tuple[DomainClassifier, dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a classifier .safetensors file there.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is a safetensors file, but not a saved DomainClassifier (no format tag).")
    try:
        model = DomainClassifier(**{k: int(meta[k]) for k in _ARG_NAMES})
        model.load_state_dict(tensors)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} holds a DomainClassifier that cannot be rebuilt ({err}).") from None
    return model.eval(), meta


def load_classifier(path: str | os.PathLike[str]) -> DomainClassifier:
    """Rebuild a classifier saved by ``save_classifier``; a missing or corrupted file is a CheckpointError."""
    return _read_classifier(Path(path))[0]


def classifier_cache_dir() -> Path:
    """Where cached classifiers live: ``$DIFFUSIONLAB_CACHE/classifiers`` or ~/.cache/diffusionlab/classifiers."""
    root = os.environ.get("DIFFUSIONLAB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "diffusionlab"
    return base / "classifiers"


def digits_classifier(image_size: int = 16, cache_dir: str | os.PathLike[str] | None = None) -> DomainClassifier:
    """The classifier for the embedded digits at ``image_size``: from the cache, else the weights shipped with the
    package (16x16, the default training size: the same numbers on every machine, and no minute of training on
    a fresh one), else trained once (fixed seed) and cached."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else classifier_cache_dir()
    path = path / f"digits-{image_size}.safetensors"
    shipped = SHIPPED_WEIGHTS / f"digits-{image_size}.safetensors"
    for source in (path, shipped):
        if not source.is_file():
            continue
        try:
            model, meta = _read_classifier(source)
            if meta.get("recipe") == _DIGITS_RECIPE and model.image_size == image_size:
                return model
        except CheckpointError as err:
            warnings.warn(f"skipping an unreadable digits classifier: {err}", stacklevel=2)
    train = load_digits_dataset(image_size, split="train")
    model = train_classifier(train.images, train.labels, num_classes=10, seed=_DIGITS_SEED)
    try:
        save_classifier(model, path, recipe=_DIGITS_RECIPE)
    except OSError as err:
        warnings.warn(f"could not cache the digits classifier at {path} ({err}).", stacklevel=2)
    return model
