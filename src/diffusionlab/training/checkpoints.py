"""Training checkpoints: one folder per step, written to a temporary folder and renamed (floor 5).

``checkpoints/step-000500/`` holds a complete model folder (config.json, model.safetensors,
ema.safetensors) plus ``training_state.pt`` (optimizer, LR schedule, step, RNG states; loaded with
``weights_only=True``). A checkpoint is never overwritten in place; the oldest ones beyond ``keep`` are removed
only after a newer one is complete, each first renamed out of the way, so that a kill leaves no half-removed
``step-`` folder. What a kill leaves (``.step-*`` folders) is removed at the next start by ``remove_leftovers``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ..io import CheckpointError, make_dir_readable, torch_load_state, torch_save_state
from ..limits import check_limit
from ..pipeline import CONFIG_NAME, MODEL_NAME

__all__ = [
    "save_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "remove_leftovers",
    "STATE_NAME",
    "SavesFolder",
]

STATE_NAME = "training_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER_DIR = re.compile(r"^\.step-\d+\.")  # a checkpoint being written (mkdtemp) or being removed
_COMPLETE = (STATE_NAME, CONFIG_NAME, MODEL_NAME)


class SavesFolder(Protocol):
    """Anything that writes a complete model folder (config.json last): a ``Pipeline``, an objective."""

    def save(self, folder: str | os.PathLike[str]) -> None: ...


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _COMPLETE)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Every ``step-`` folder under ``root``, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    return [(step, p) for step, p in _step_dirs(root) if _is_complete(p)]


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints``, or None."""
    found = _checkpoints(Path(out_dir) / "checkpoints")
    return found[-1][1] if found else None


def save_checkpoint(
    model: SavesFolder, state: dict[str, Any], out_dir: str | os.PathLike[str], step: int, keep: int = 2
) -> Path:
    """Write ``out_dir/checkpoints/step-XXXXXX`` atomically and prune older ones beyond ``keep``.

    A failed write (a full disk) leaves every earlier checkpoint as it was; its ``OSError`` names the checkpoint.
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=root))
    except OSError as err:
        raise _naming(err, final) from err
    try:
        make_dir_readable(tmp)
        model.save(tmp)
        torch_save_state(state, tmp / STATE_NAME)
        if _is_complete(final):  # a checkpoint of this step exists already: keep it, discard ours
            shutil.rmtree(tmp)
        else:
            if final.exists():  # an incomplete folder of that name (no run of ours leaves one): out of the way
                _remove(final)
            os.replace(tmp, final)
    except OSError as err:
        raise _naming(err, final) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in _checkpoints(root)[:-keep] if keep > 0 else []:
        with contextlib.suppress(OSError):  # the new checkpoint is complete; an old one left is no harm
            _remove(old)
    return final


def _naming(err: OSError, checkpoint: Path) -> OSError:
    """The error of writing a checkpoint, naming the checkpoint rather than a file of its temporary folder."""
    return OSError(err.errno, err.strerror or str(err), str(checkpoint))


def _remove(folder: Path) -> None:
    """Remove a checkpoint folder: renamed first (atomic), so that a kill leaves a leftover, not a half folder."""
    doomed = folder.with_name(f".{folder.name}.removed")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed run left under ``out_dir/checkpoints``: folders of checkpoints being written or removed
    (``.step-*``) and incomplete ``step-`` folders older than the newest complete checkpoint (the one a resume
    picks, never touched). Returns the folders removed."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    newest = latest_checkpoint(out_dir)
    newest_step = int(newest.name.removeprefix("step-")) if newest is not None else -1
    doomed = [p for p in root.iterdir() if _LEFTOVER_DIR.match(p.name) and p.is_dir()]
    doomed += [p for step, p in _step_dirs(root) if step < newest_step and not _is_complete(p)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_training_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``training_state.pt`` of a checkpoint folder (weights_only: no pickled code runs); one clear
    ``CheckpointError`` naming the file unless it holds a step from 0 to ``limits().max_train_steps``."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {STATE_NAME}; it is not a training checkpoint.")
    state = torch_load_state(path)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} holds no training step; it is not a training state of diffusionlab.")
    step = state["step"]
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path}: step={step!r} must be a whole number of at least 0.")
    try:
        check_limit("step", step, "max_train_steps")
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return state
