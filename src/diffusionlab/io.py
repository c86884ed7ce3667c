"""Files that never end half-written: atomic writes, and safetensors/JSON with clear errors (floor 1)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "atomic_path",
    "save_tensors",
    "load_tensors",
    "save_json",
    "load_json",
    "torch_load_state",
    "make_dir_readable",
    "CheckpointError",
]


class CheckpointError(ValueError):
    """A model or checkpoint folder that cannot be read: missing, corrupted or of the wrong shape."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (atomic on POSIX).

    An interrupted write leaves the old file (or nothing) in place, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir_readable(path: str | os.PathLike[str]) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the usual permissions under the umask."""
    os.chmod(path, 0o777 & ~_umask())


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or corrupted file is one clear ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a .safetensors weights file there.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None


def save_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; missing or malformed is one clear ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}).") from None


def torch_load_state(path: str | os.PathLike[str]) -> Any:
    """Load a training-state file with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"{path} is not a readable training-state file ({err}).") from None
