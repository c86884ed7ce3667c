"""Experiment trackers (TensorBoard, W&B offline, MLflow file store): what is logged is read back exactly from disk."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from diffusionlab.training.tracking import TRACKERS, Trackers, check_trackers, flatten_config

CONFIG = {"train": {"lr": 0.0001, "steps": 10, "betas": [0.9, 0.99]}, "name": "pets", "seed": None}
FLAT = {"train.lr": 0.0001, "train.steps": 10, "train.betas": [0.9, 0.99], "name": "pets", "seed": None}
LOSSES = {0: 1.5, 1: 0.75, 5: 0.25}  # exact in float32, so every tracker must give them back unchanged
IMAGE = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail any attempt of this process to open a network connection (local Unix sockets stay allowed)."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if self.family != socket.AF_UNIX:
            attempts.append(address)
            raise OSError(f"network blocked in tests: {address}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield attempts
    assert attempts == []


def _log_run(out_dir: Path, name: str) -> None:
    with Trackers(out_dir, [name], "pets", CONFIG) as trackers:
        for step, loss in LOSSES.items():
            trackers.log({"train/loss": loss, "train/lr": 0.5}, step=step)
        trackers.log_image("samples", IMAGE, step=5)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_flatten_config_dots_nested_keys_and_keeps_leaves() -> None:
    assert flatten_config(CONFIG) == FLAT
    assert flatten_config({}) == {}


def test_check_trackers_rejects_an_unknown_name_in_one_line() -> None:
    check_trackers(list(TRACKERS))
    with pytest.raises(ValueError) as err:
        check_trackers(["tensorboard", "comet"])
    assert str(err.value) == "log_with 'comet' is not a tracker; expected one of tensorboard, wandb, mlflow."
    with pytest.raises(ValueError, match=r"^log_with 'wandb' is given twice; name each tracker once\.$"):
        check_trackers(["wandb", "wandb"])


def test_check_trackers_names_the_missing_package_and_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    check_trackers(["tensorboard", "mlflow"])
    with pytest.raises(ValueError) as err:
        check_trackers(["tensorboard", "wandb"])
    assert str(err.value) == "log_with 'wandb' needs the wandb package: pip install 'diffusionlab[trackers]'"


def test_trackers_check_names_before_opening_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^log_with 'neptune' is not a tracker"):
        Trackers(tmp_path / "run", ["tensorboard", "neptune"], "pets", CONFIG)
    assert not (tmp_path / "run").exists()


def test_tensorboard_scalars_image_and_hparams_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_run(tmp_path, "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == list(LOSSES.items())
    assert [(e.step, e.value) for e in events.Scalars("train/lr")] == [(0, 0.5), (1, 0.5), (5, 0.5)]
    (image,) = events.Images("samples")
    assert image.step == 5 and (image.height, image.width) == (4, 5)
    np.testing.assert_array_equal(_png(image.encoded_image_string), IMAGE)
    (hparams,) = (tmp_path / "tensorboard").glob("*/hparams.yml")  # accelerate's copy of the run's config
    stored = yaml.safe_load(hparams.read_text())
    assert stored == {**FLAT, "train.betas": "[0.9, 0.99]", "seed": "None"}  # TensorBoard takes plain scalars only


def test_closed_trackers_refuse_to_log_and_close_twice_is_harmless(tmp_path: Path) -> None:
    trackers = Trackers(tmp_path, ["tensorboard"], "pets", {})
    with pytest.raises(
        ValueError, match=r"^log_image 'samples' needs an \(H, W, 3\) uint8 array, got float32 \(4, 5\)"
    ):
        trackers.log_image("samples", np.zeros((4, 5), np.float32), step=0)
    trackers.close()
    trackers.close()
    with pytest.raises(ValueError, match="^the trackers tensorboard are closed; open a new Trackers to log more.$"):
        trackers.log({"train/loss": 1.0}, step=1)
    assert list((tmp_path / "tensorboard").glob("*/hparams.yml")) == []  # an empty config stores nothing


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's .wandb file: a 7-byte header, then LevelDB-log chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_wandb_records(path: Path, wait_s: float = 60.0) -> list[Any]:
    """The records once the run's exit record is on disk: the wandb service process writes the file, and on a loaded
    machine it may still be flushing when ``finish()`` has returned."""
    deadline = time.monotonic() + wait_s
    while True:
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _items(items: Any) -> dict[str, Any]:
    """History or config items as {"key": value}; W&B splits nested keys ("samples", "path") into nested_key."""
    return {".".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items}


def test_wandb_offline_run_holds_the_history_config_and_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    _log_run(tmp_path, "wandb")
    assert "WANDB_ERROR_REPORTING" not in os.environ  # set only while the run started
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    records = _finished_wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "pets"
    config = _items(run.config.update)
    assert {k: v for k, v in config.items() if k != "_wandb"} == CONFIG
    rows = {int(row["_step"]): row for row in (_items(r.history.item) for r in records if r.HasField("history"))}
    assert sorted(rows) == [0, 1, 5]
    assert {step: row["train/loss"] for step, row in rows.items()} == LOSSES
    assert {step: row["train/lr"] for step, row in rows.items()} == {0: 0.5, 1: 0.5, 5: 0.5}
    assert rows[5]["samples._type"] == "image-file" and "samples.path" not in rows[0]
    np.testing.assert_array_equal(_png((run_dir / "files" / rows[5]["samples.path"]).read_bytes()), IMAGE)
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # the run was finished


def test_mlflow_file_store_holds_metrics_params_and_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "MLFLOW_ALLOW_FILE_STORE",
        "MLFLOW_DISABLE_TELEMETRY",
    ):
        monkeypatch.delenv(name, raising=False)
    uri_before = mlflow.get_tracking_uri()
    _log_run(tmp_path, "mlflow")
    assert mlflow.get_tracking_uri() == uri_before  # the store is set only around each MLflow call, then put back
    assert not {"MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY"} & set(os.environ)
    assert mlflow.active_run() is None

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("pets")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "pets"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == list(LOSSES.items())
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/lr")) == [
        (0, 0.5),
        (1, 0.5),
        (5, 0.5),
    ]
    assert run.data.params == {key: str(value) for key, value in FLAT.items()}
    (png,) = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert Path(png).name.startswith("samples+step+5+")
    local = client.download_artifacts(run.info.run_id, png, str(tmp_path / "download"))
    np.testing.assert_array_equal(np.asarray(Image.open(local).convert("RGB")), IMAGE)


def test_a_training_run_logs_to_every_tracker_of_log_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer's scalars, through --log-with tensorboard,mlflow: the same loss values in both stores.
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
    from diffusionlab.training import Trainer

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    train = TrainConfig(steps=4, batch_size=8, log_every=2, sample_every=0, checkpoint_every=0, final_eval=False)
    train = train.model_copy(update={"log_with": ["tensorboard", "mlflow"]})
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"]), data=DataConfig(dataset="digits", image_size=8), train=train
    )
    Trainer(config, tmp_path / "run", progress=False).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tensorboard = [(s.step, s.value) for s in events.Scalars("train/loss")]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [step for step, _ in logged] == [step for step, _ in tensorboard] == [2, 4]
    assert [v for _, v in logged] == pytest.approx([v for _, v in tensorboard], rel=1e-6)  # TB stores float32
    assert run.data.params["train.steps"] == "4" and run.data.params["train.mixed_precision"] == "no"
