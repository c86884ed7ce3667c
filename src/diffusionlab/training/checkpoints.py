"""Training checkpoints: one folder per step, written to a temporary folder and renamed (floor 5).

``checkpoints/step-000500/`` holds a complete model folder (config.json, model.safetensors,
ema.safetensors) plus ``training_state.pt`` (optimizer, LR schedule, step, RNG states; loaded with
``weights_only=True``). A checkpoint is never overwritten in place; the oldest ones beyond ``keep`` are removed
only after a newer one is complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from ..io import CheckpointError, make_dir_readable, torch_load_state
from ..pipeline import CONFIG_NAME

__all__ = ["save_checkpoint", "latest_checkpoint", "load_training_state", "STATE_NAME", "SavesFolder"]

STATE_NAME = "training_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class SavesFolder(Protocol):
    """Anything that writes a complete model folder (config.json last): a ``Pipeline``, an objective."""

    def save(self, folder: str | os.PathLike[str]) -> None: ...


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_NAME).is_file() and (p / CONFIG_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints``, or None."""
    found = _checkpoints(Path(out_dir) / "checkpoints")
    return found[-1][1] if found else None


def save_checkpoint(
    model: SavesFolder, state: dict[str, Any], out_dir: str | os.PathLike[str], step: int, keep: int = 2
) -> Path:
    """Write ``out_dir/checkpoints/step-XXXXXX`` atomically and prune older ones beyond ``keep``."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=root))
    make_dir_readable(tmp)
    try:
        model.save(tmp)
        torch.save(state, tmp / STATE_NAME)
        if final.exists():  # a checkpoint of this step exists already: keep it, discard ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in _checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``training_state.pt`` of a checkpoint folder (weights_only: no pickled code runs)."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {STATE_NAME}; it is not a training checkpoint.")
    return torch_load_state(path)
