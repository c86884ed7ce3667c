"""Data augmentation: a labelled synthetic image set from a class-conditional model, as an ImageFolder (floor 5).

The layout is FOLDER/<class name>/<index>.png, which ``data.load_image_folder`` reads back with the labels
(class folders sorted by name) and which torchvision's ``ImageFolder`` reads too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..pipeline import Pipeline
from .common import save_image

__all__ = ["check_empty_folder", "write_image_folder", "sample_image_folder"]


def _check_class_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"class name {name!r} cannot be a folder name; expected a plain, non-hidden name.")
    return name


def check_empty_folder(folder: str | os.PathLike[str]) -> None:
    """Raise one clear error unless ``folder`` is new or an empty folder (nothing old is overwritten or mixed in)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"output folder '{folder}' exists and is not empty; give a new or empty folder.")


def write_image_folder(
    images: Tensor,
    folder: str | os.PathLike[str],
    labels: Sequence[int] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Save images (N, C, H, W) in [0, 1] as FOLDER/<class name>/<index>.png (or FOLDER/<index>.png unlabelled),
    numbering each class from 0; the folder must be new or empty, so no old file is overwritten or mixed in."""
    folder = Path(folder)
    check_empty_folder(folder)
    n = len(images)
    if labels is not None:
        labels = torch.as_tensor(labels).long().flatten().tolist()
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images; give one label per image.")
        names = list(class_names) if class_names is not None else [str(c) for c in range(max(labels) + 1)]
        names = [_check_class_name(str(c)) for c in names]
        bad = [c for c in labels if not 0 <= c < len(names)]
        if bad:
            raise ValueError(f"label {bad[0]} has no class name; expected labels 0..{len(names) - 1}.")
    width = max(4, len(str(n - 1)))
    counts: dict[int, int] = {}
    paths = []
    for i in range(n):
        if labels is None:
            path = folder / f"{i:0{width}d}.png"
        else:
            c = labels[i]
            path = folder / names[c] / f"{counts.get(c, 0):0{width}d}.png"
            counts[c] = counts.get(c, 0) + 1
        save_image(images[i], path)
        paths.append(path)
    return paths


def sample_image_folder(
    pipe: Pipeline, folder: str | os.PathLike[str], per_class: int, seed: int = 0, **sample_kwargs: Any
) -> list[Path]:
    """Sample ``per_class`` images of every class of a class-conditional model into an ImageFolder at ``folder``.

    Keyword arguments go to ``pipe.sample`` (sampler, steps, guidance, ...); image i of the run uses the noise of
    (seed, i), class c holding images c * per_class .. (c + 1) * per_class - 1.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class={per_class!r} must be a positive integer.")
    k = pipe.config.network.num_classes
    if not k:
        raise ValueError("a labelled image folder needs a class-conditional model; this one has no classes.")
    check_empty_folder(Path(folder))
    names = pipe.config.data.class_names or [str(c) for c in range(k)]
    labels = [c for c in range(k) for _ in range(per_class)]
    images = pipe.sample(labels=labels, seed=seed, **sample_kwargs)
    return write_image_folder(images, folder, labels, names)
