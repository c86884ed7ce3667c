"""Reading a saved network only when it can be trusted: a known format version, and weights that fit the network
exactly (names, shapes, dtypes) and are finite, checked before ``load_state_dict`` (floor 1)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import CheckpointError, load_tensors

__all__ = ["FallbackWarning", "check_format_version", "check_weights", "load_weights"]


class FallbackWarning(UserWarning):
    """Loading went on with less than the folder should hold, as the message states (e.g. no EMA weights)."""


def check_format_version(raw: Any, path: str | os.PathLike[str], known: Sequence[int]) -> None:
    """One ``CheckpointError`` unless the config ``raw`` (a dict; no ``format_version`` means 1) has one of the
    ``known`` format versions, an integer exactly (``"2"``, ``true`` and ``2.0`` are not)."""
    if not isinstance(raw, dict):
        return
    version = raw.get("format_version", 1)
    if type(version) is int and version in known:
        return
    reads = ", ".join(str(v) for v in known)
    if type(version) is int and version > max(known):
        raise CheckpointError(
            f"{Path(path)}: format_version {version} is newer than this diffusionlab reads ({reads}); "
            "upgrade diffusionlab to load it."
        )
    raise CheckpointError(
        f"{Path(path)}: format_version {json.dumps(version)} is not one of the format versions "
        f"this diffusionlab reads ({reads})."
    )


def _first(names: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_weights(module: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike[str], what: str) -> None:
    """One ``CheckpointError`` naming the tensor unless ``state`` fits ``module`` (described as ``what``) exactly:
    the same tensor names, each of the module's shape and dtype, and every value finite."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensor(s) of {what}: {_first(missing)}.")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{path} holds {len(extra)} tensor(s) that {what} does not have: {_first(extra)}.")
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(got.shape)}, but {what} expects {tuple(want.shape)}."
            )
        if got.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor '{name}' is {_dtype(got)}, but {what} expects {_dtype(want)}.")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            raise CheckpointError(f"{path}: tensor '{name}' holds {bad:,} non-finite value(s) (NaN or inf).")


def load_weights(module: nn.Module, path: str | os.PathLike[str], what: str) -> None:
    """Load a safetensors file into ``module`` after ``check_weights``; any misfit is one ``CheckpointError``."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a file; expected a .safetensors weights file there.")
    state = load_tensors(path)
    check_weights(module, state, path, what)
    module.load_state_dict(state, strict=True)
