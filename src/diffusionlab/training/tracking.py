"""Experiment trackers for the trainer: TensorBoard, Weights & Biases and MLflow through accelerate's tracker classes,
all writing local files under the run's folder and never touching the network unless asked to (floor 5)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TRACKERS = ("tensorboard", "wandb", "mlflow")
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_HINTS = {
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install 'diffusionlab[trackers]'",
    "mlflow": "pip install 'diffusionlab[trackers]'",
}


def check_trackers(names: Sequence[str]) -> None:
    """Raise one ValueError line for an unknown or repeated tracker name, or one whose package is not installed;
    cheap (no package is imported), so call it before any heavy work."""
    seen: set[str] = set()
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"log_with {name!r} is not a tracker; expected one of {', '.join(TRACKERS)}.")
        if name in seen:
            raise ValueError(f"log_with {name!r} is given twice; name each tracker once.")
        seen.add(name)
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise ValueError(f"log_with {name!r} needs the {_MODULES[name]} package: {_HINTS[name]}")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with dotted keys: {"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


@contextmanager
def _scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then put back what was there."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Trackers:
    """One accelerate tracker per name, opened on the calling process (the trainer builds it on the main one only).

    - ``tensorboard``: event files in ``out_dir/tensorboard/``; the config goes to the HParams tab (flattened, and
      accelerate's ``hparams.yml`` in a time-named folder beside them).
    - ``wandb``: offline unless ``WANDB_MODE`` says otherwise; the run folder lies under ``out_dir/wandb/``, the project
      is ``run_name`` and the config is stored nested.
    - ``mlflow``: a local file store ``out_dir/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set; the experiment and run
      are named ``run_name`` and the config is stored as flattened params ("train.lr"). MLflow's usage telemetry is
      off, and the tracking URI is set only around each of its calls (read the store back with
      ``MLFLOW_ALLOW_FILE_STORE=true``, which MLflow 3 asks for local file stores).

    Use it as a context manager or call ``close()``.
    """

    def __init__(self, out_dir: Path, names: Sequence[str], run_name: str, config: Mapping[str, Any]) -> None:
        check_trackers(names)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names = tuple(names)
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self._mlflow_uri = None if tracking_uri else (self.out_dir / "mlruns").resolve().as_uri()
        self._trackers: dict[str, Any] = {}
        self._closed = False
        try:
            for name in self.names:
                self._trackers[name] = getattr(self, f"_open_{name}")(run_name, config)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Log scalars (names like "train/loss") at ``step`` to every tracker."""
        scalars = {key: float(value) for key, value in values.items()}
        for name, tracker in self._open():
            if name == "mlflow":
                with self._mlflow():
                    tracker.log(scalars, step=step)
            else:
                tracker.log(scalars, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """Log an (H, W, 3) uint8 image at ``step``: TensorBoard's add_image (HWC), a ``wandb.Image``, and MLflow's
        ``log_image(key=name, step=step)`` (a PNG under the run's ``images/`` artifacts)."""
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"log_image {name!r} needs an (H, W, 3) uint8 array, got {got}.")
        for tracker_name, tracker in self._open():
            if tracker_name == "tensorboard":
                tracker.writer.add_image(name, image, step, dataformats="HWC")
                tracker.writer.flush()
            elif tracker_name == "wandb":
                import wandb

                tracker.log({name: wandb.Image(image)}, step=step)
            else:
                import mlflow

                with self._mlflow():
                    mlflow.log_image(image, key=name, step=step)

    def close(self) -> None:
        """Finish every tracker (flush and close its files); calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        for name, tracker in self._trackers.items():
            try:
                if name == "mlflow":
                    with self._mlflow():
                        tracker.finish()
                else:
                    tracker.finish()
            except Exception as exc:  # finish the others first, then report the first failure
                error = error or exc
        if error is not None:
            raise error

    def _open(self) -> Iterator[tuple[str, Any]]:
        if self._closed:
            raise ValueError(f"the trackers {', '.join(self.names)} are closed; open a new Trackers to log more.")
        yield from self._trackers.items()

    def _open_tensorboard(self, run_name: str, config: Mapping[str, Any]) -> Any:
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(run_name="tensorboard", logging_dir=self.out_dir)
        tracker.start()
        hparams = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten_config(config).items()
        }
        if hparams:
            tracker.store_init_configuration(hparams)
        return tracker

    def _open_wandb(self, run_name: str, config: Mapping[str, Any]) -> Any:
        import wandb
        from accelerate import PartialState
        from accelerate.tracking import WandBTracker

        PartialState()  # accelerate >= 1.16 logs through its process state while the tracker starts (a no-op if set)

        mode = os.environ.get("WANDB_MODE", "offline")
        offline = mode not in ("online", "shared")
        settings = wandb.Settings(
            silent=True, console="off", disable_git=True, save_code=False, x_disable_stats=offline
        )
        tracker = WandBTracker(
            run_name, dir=str(self.out_dir), mode=mode, config=dict(config), reinit="create_new", settings=settings
        )
        # the wandb service process starts here and keeps this environment: no error reports when offline
        with _scoped_env(WANDB_ERROR_REPORTING="false") if offline else _scoped_env():
            tracker.start()
        return tracker

    def _open_mlflow(self, run_name: str, config: Mapping[str, Any]) -> Any:
        from accelerate.tracking import MLflowTracker

        tracker = MLflowTracker(experiment_name=run_name, run_name=run_name)
        with self._mlflow():
            tracker.start()
            flat = flatten_config(config)
            if flat:
                tracker.store_init_configuration(flat)
        return tracker

    @contextmanager
    def _mlflow(self) -> Iterator[None]:
        """MLflow's tracking URI set to this run's store (unless MLFLOW_TRACKING_URI chose one) and its telemetry off,
        for one block: accelerate's MLflowTracker uses mlflow's process-wide fluent API."""
        with _scoped_env(MLFLOW_DISABLE_TELEMETRY="true"):
            import mlflow  # noqa: F401  (imported with telemetry off, so no usage client starts)

            if self._mlflow_uri is None:
                yield
                return
            from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # restores an unset URI as unset

            # MLflow 3 keeps its file store in maintenance mode and refuses it unless this opt-out is set
            with _scoped_env(MLFLOW_ALLOW_FILE_STORE="true"), _use_tracking_uri(self._mlflow_uri):
                yield
