"""A sampling request's conditioning turned into the tensors a network takes (floor 4, beside the pipeline).

Labels, prompts and condition images are checked against what the model was trained with: a label, prompt or
condition image given to a model trained without it is one clear error, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import torch
from torch import Tensor

from .config import ModelConfig
from .limits import check_limit
from .networks.text import TextEncoder
from .sampling.request import Conditioning

__all__ = [
    "NetworkConditioning",
    "check_labels",
    "text_conditioning",
    "image_conditioning",
    "network_conditioning",
    "iter_batches",
]


@dataclass
class NetworkConditioning:
    """The network's keyword inputs for every sample (on the CPU; slice per batch), the unconditional branch's
    text inputs, and whether the request asked for anything to guide towards."""

    cond: dict[str, Tensor] = field(default_factory=dict)
    uncond: dict[str, Tensor] = field(default_factory=dict)
    guided: bool = False


def check_labels(labels: Sequence[int] | Tensor | int | None, n: int | None, num_classes: int | None) -> Tensor | None:
    """Labels as a long tensor of length n, or one clear error (unconditional model, out of range, wrong count)."""
    if labels is None:
        return None
    if not num_classes:
        raise ValueError("labels were given, but this model was trained without classes (unconditional).")
    given = labels.flatten().tolist() if isinstance(labels, Tensor) else [labels] if isinstance(labels, int) else labels
    bad = [v for v in given if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"labels={bad[0]!r}: expected class indices 0..{num_classes - 1} of this model.")
    repeat = (n or 1) if isinstance(labels, int) else 1  # one int label: the same class for all n samples
    t = torch.as_tensor([int(v) for v in given] * repeat, dtype=torch.long)
    if n is not None and len(t) != n:
        raise ValueError(f"{len(t)} labels were given for {n} samples; give one label per sample or one int.")
    return t


def text_conditioning(
    encoder: TextEncoder, n: int, prompt: str | Sequence[str] | None, negative_prompt: str | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Token embeddings of n samples' prompts and of the unconditional branch (the negative prompt, or "")."""
    prompts = [prompt or ""] * n if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts were given for {n} samples; give one prompt or one per sample.")
    unique = sorted(set(prompts))
    emb = encoder([*unique, negative_prompt or ""])
    where = torch.tensor([unique.index(p) for p in prompts])
    cond = {"text": emb.tokens[where].cpu(), "text_mask": emb.mask[where].cpu()}
    uncond = {"text": emb.tokens[-1:], "text_mask": emb.mask[-1:]}
    return cond, uncond


def image_conditioning(config: ModelConfig, n: int, cond_image: Tensor | None) -> Tensor | None:
    """n condition images in the model's range [-1, 1], checked against the model's condition shape."""
    kind = config.data.image_condition
    want = config.network.cond_channels if kind is not None else 0  # else: a signal's observations (not an image)
    if cond_image is None:
        if want:
            raise ValueError(f"this model is conditioned on an image ({kind}): give cond_image.")
        return None
    if not want:
        raise ValueError("a condition image was given, but this model was trained without image conditioning.")
    image = cond_image[None] if cond_image.ndim == 3 else cond_image
    size = config.data.image_size
    expect = size // config.data.superres_factor if kind == "superres" else size
    if image.ndim != 4 or image.shape[1] != want or tuple(image.shape[-2:]) != (expect, expect):
        raise ValueError(
            f"cond_image has shape {tuple(cond_image.shape)}; this {kind} model expects "
            f"({want}, {expect}, {expect}) images in [0, 1]."
        )
    if image.shape[0] == 1:
        image = image.expand(n, -1, -1, -1)
    elif image.shape[0] != n:
        raise ValueError(f"{image.shape[0]} condition images were given for {n} samples; give one or one each.")
    return image.float() * 2 - 1


def network_conditioning(
    config: ModelConfig, n: int, request: Conditioning, encoder: TextEncoder | None, classes: int | None
) -> NetworkConditioning:
    """Every conditioning input of n samples. No labels (no prompt) on a conditional model is the unconditional
    model: labels -1 (the empty prompt), and ``guided`` is False so no guidance applies."""
    net = config.network
    out = NetworkConditioning()
    labels = check_labels(request.labels, n, classes)
    if net.num_classes:
        out.guided = labels is not None
        out.cond["labels"] = labels if labels is not None else torch.full((n,), -1, dtype=torch.long)
    elif labels is not None:
        out.cond["labels"] = labels  # for classifier guidance of an unconditional model
    if net.text_dim:
        assert encoder is not None
        out.guided = bool(request.prompt or request.negative_prompt)
        text, out.uncond = text_conditioning(encoder, n, request.prompt, request.negative_prompt)
        out.cond.update(text)
    image = image_conditioning(config, n, request.cond_image)
    if image is not None:
        out.cond["cond_image"] = image
    return out


def check_batch_size(batch_size: int) -> int:
    """``batch_size``, or one clear error unless it is a positive integer within ``limits().max_batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    check_limit("batch_size", batch_size, "max_batch_size")
    return batch_size


def iter_batches(
    indices: Sequence[int], batch_size: int, cond: dict[str, Tensor] | None, device: torch.device
) -> Iterator[tuple[list[int], dict[str, Tensor] | None]]:
    """The one batched loop of sampling and every task: consecutive batches of at most ``batch_size`` of the
    sample ``indices``, each with its slice of the conditioning on ``device``."""
    check_batch_size(batch_size)
    todo = [int(i) for i in indices]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        yield idx, ({k: v[idx].to(device) for k, v in cond.items()} if cond is not None else None)
