"""Files that never end half-written: atomic writes, and safetensors/JSON with clear errors (floor 1).

Every file is written 0666 less the umask (0644 under umask 022), and an ``OSError`` while writing (a full disk,
no permission) names the file it was writing, whichever library raised it.
"""

from __future__ import annotations

import json
import os
import re
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
    "atomic_write_text",
    "save_tensors",
    "load_tensors",
    "save_json",
    "load_json",
    "torch_load_state",
    "torch_save_state",
    "make_dir_readable",
    "CheckpointError",
]


class CheckpointError(ValueError):
    """A model or checkpoint folder that cannot be read: missing, corrupted or of the wrong shape."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (atomic on POSIX).

    An interrupted or failed write leaves the old file (or nothing) in place, never a half-written one, and no
    temporary file; an ``OSError`` names ``path``. The file gets mode 0666 less the umask, whatever the writer did.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if _names_another_file(err, path.parent) and Path(err.filename).parent != path.parent:
            raise  # about a folder above, e.g. a file where a folder should be: name that one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # after the writer: safetensors, for one, makes its file anew with mode 0600
        os.replace(tmp, path)
    except OSError as err:
        if _names_another_file(err, tmp):
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _names_another_file(err: OSError, stand_in: Path) -> bool:
    """Whether ``err`` is about a file other than the one being written (named by itself or ``stand_in``)."""
    return err.filename is not None and Path(err.filename) != stand_in


def file_mode() -> int:
    """The mode of a new file under the process's umask: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask; read from /proc where it can be, as setting it to read it is not thread-safe."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    found = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    if found:
        return int(found.group(1), 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir_readable(path: str | os.PathLike[str]) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the usual permissions under the umask."""
    os.chmod(path, 0o777 & ~_umask())


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        except SafetensorError as err:
            found = re.search(r"os error (\d+)", str(err))  # an OSError inside safetensors: "... (os error 28)"
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(tmp)) from err


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or corrupted file is one clear ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a .safetensors weights file there.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a config.") from None


def torch_save_state(state: Any, path: str | os.PathLike[str]) -> None:
    """Write a training-state file with ``torch.save``, atomically (through a Python file, so that a failed write
    is an ``OSError``, not torch's own error)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer fails in turn when the file's write failed
            if not isinstance(err.__context__, OSError):
                raise
            raise err.__context__ from err


def torch_load_state(path: str | os.PathLike[str]) -> Any:
    """Load a training-state file with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"{path} is not a readable training-state file ({err}).") from None
