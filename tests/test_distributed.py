"""Several processes: 2 CPU processes (gloo) under torchrun and accelerate launch train, resume and sample the same
as one process; gradient accumulation equals one big batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffusionlab.cli import app
from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks.distributed_sampling import read_shards, shard_indices
from diffusionlab.training import Trainer
from diffusionlab.training.trainer import micro_batches

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process runs are tested on linux"),
]

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
ACCELERATE += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def tiny_config(**train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(
            steps=6,
            batch_size=16,
            warmup_steps=2,
            ema_start=1,
            sample_every=0,
            final_eval=False,
            checkpoint_every=3,
            keep_checkpoints=5,
            **train,
        ),
        sample=SampleConfig(steps=3),
    )


def launch(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def weights(folder: Path, ema: bool = False) -> torch.Tensor:
    pipe = Pipeline.load(folder)
    net = pipe.ema if ema else pipe.network
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def initial_weights(tmp: Path) -> torch.Tensor:
    trainer = Trainer(tiny_config(), tmp, progress=False, cpu=True, track=False)
    return torch.cat([p.detach().flatten() for p in trainer.pipeline.network.parameters()])


def assert_same_training(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> None:
    """Two runs agree to 0.1% of the distance training moved the weights (float summation order differs)."""
    moved = float((a - start).norm())
    assert moved > 0.1
    assert float((a - b).norm()) < 1e-3 * moved, (float((a - b).norm()), moved)


def copy_checkpoint(src: Path, step: int, dst: Path) -> None:
    name = f"step-{step:06d}"
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """one: 1 process; two: 2 processes (torchrun); one_to_two: one's step 3 resumed on 2 processes with 2
    micro-batches each; two_to_one: two's step 3 resumed on 1 process. All train 6 steps of batch 16."""
    root = tmp_path_factory.mktemp("runs")
    Trainer(tiny_config(), root / "one", progress=False, cpu=True, track=False).train()
    copy_checkpoint(root / "one", 3, root / "one_to_two")
    spec = {
        "runs": [
            {"name": "two", "out": str(root / "two"), "resume": False, "config": tiny_config().model_dump()},
            {
                "name": "one_to_two",
                "out": str(root / "one_to_two"),
                "resume": True,
                "config": tiny_config(grad_accumulation=2).model_dump(),
            },
        ],
        "report": str(root / "report.json"),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    launch([*TORCHRUN, str(Path(__file__).parent / "distributed_worker.py"), str(root / "spec.json")])
    copy_checkpoint(root / "two", 3, root / "two_to_one")
    resumed = Trainer(tiny_config(), root / "two_to_one", resume=True, progress=False, cpu=True, track=False)
    assert resumed.start_step == 3
    resumed.train()
    return root, json.loads((root / "report.json").read_text())


def test_both_ranks_hold_identical_weights_after_every_step(runs: tuple[Path, dict]) -> None:
    _, report = runs
    assert report["two"]["world"] == 2 and report["two"]["start_step"] == 0
    assert report["two"]["gaps"] == [0.0] * 6
    assert report["one_to_two"]["start_step"] == 3
    assert report["one_to_two"]["gaps"] == [0.0] * 3  # with micro-batches: gradients synchronised once per step


def test_two_processes_train_the_weights_of_one(runs: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = runs
    start = initial_weights(tmp_path)
    assert_same_training(weights(root / "one"), weights(root / "two"), start)
    assert_same_training(weights(root / "one", ema=True), weights(root / "two", ema=True), start)


def test_resume_across_a_change_of_process_count(runs: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = runs
    start = initial_weights(tmp_path)
    assert_same_training(weights(root / "one"), weights(root / "one_to_two"), start)  # 1 process, then 2
    assert_same_training(weights(root / "two"), weights(root / "two_to_one"), start)  # 2 processes, then 1
    assert_same_training(weights(root / "one", ema=True), weights(root / "two_to_one", ema=True), start)
    assert Pipeline.load(root / "one_to_two").config.train.grad_accumulation == 2


def test_main_process_writes_checkpoints_and_grids_once(runs: tuple[Path, dict]) -> None:
    root, _ = runs
    for name in ("two", "one_to_two"):
        assert sorted(p.name for p in (root / name / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
        assert (root / name / "samples.png").is_file() and (root / name / "ema.safetensors").is_file()
    leftovers = [p for p in (root / "two").rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


def test_gradient_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    grads: dict[int, list[torch.Tensor]] = {}
    losses = {}
    for k in (1, 4, 5):  # 16 examples: 4 micro-batches of 4, or 5 of 3-4 (uneven, weighted by size)
        trainer = Trainer(tiny_config(grad_accumulation=k), tmp_path / str(k), progress=False, cpu=True)
        record = grads.setdefault(k, [])
        trainer.optimizer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, record=record: record.extend(
                p.grad.clone() for g in opt.param_groups for p in g["params"]
            )
        )
        losses[k] = trainer.train_step(0)
    for k in (4, 5):
        assert losses[k][0] == pytest.approx(losses[1][0], rel=1e-5)
        assert losses[k][1] == pytest.approx(losses[1][1], rel=1e-4)  # gradient norm before clipping
        for a, b in zip(grads[1], grads[k], strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="grad_accumulation=17"):
        Trainer(tiny_config(grad_accumulation=17), tmp_path / "x", progress=False, cpu=True)


def test_micro_batches_and_shards_cover_every_example_once() -> None:
    for n, k in ((16, 1), (16, 5), (7, 7)):
        parts = micro_batches(n, k)
        assert len(parts) == k and [i for s in parts for i in range(s.start, s.stop)] == list(range(n))
        assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1
    assert [list(shard_indices(5, r, 2)) for r in range(2)] == [[0, 1], [2, 3, 4]]
    assert list(shard_indices(1, 0, 2)) == []
    with pytest.raises(ValueError, match="micro|grad_accumulation"):
        micro_batches(3, 4)


def test_cli_train_under_accelerate_launch_matches_one_process(tmp_path: Path) -> None:
    args = [
        "train",
        "--image-size",
        "8",
        "--model-size",
        "tiny",
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--no-final-eval",
    ]
    args += ["--sample-every", "0", "--checkpoint-every", "0", "--cpu", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    launch([*ACCELERATE, "-m", "diffusionlab.cli", *args, "--grad-accumulation", "2", "--out", str(tmp_path / "two")])
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert float((a - b).abs().max()) < 1e-4
    logs = tmp_path / "two" / "tensorboard"
    assert len(list(logs.glob("events.out.tfevents.*"))) == 1  # one event file: the main process's
    assert len(list(logs.glob("*/hparams.yml"))) == 1  # and one copy of the config (TensorBoard's HParams tab)


def test_distributed_sampling_gives_the_images_of_one_process(runs: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = runs
    model = root / "one"
    args = ["sample", str(model), "--labels", "3,1,4,1,5,9,2", "--steps", "3", "--seed", "7", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one.png")])
    assert result.exit_code == 0, result.output
    launch([*TORCHRUN, "-m", "diffusionlab.cli", *args, "--out", str(tmp_path / "two.png")])
    images, indices = read_shards(tmp_path / "two-shards", world=2)
    assert indices.tolist() == list(range(7))
    expected = Pipeline.load(model).sample(labels=[3, 1, 4, 1, 5, 9, 2], steps=3, seed=7)
    assert (images - expected).abs().max() < 1e-5
    one = np.asarray(Image.open(tmp_path / "one.png"), dtype=np.int16)
    two = np.asarray(Image.open(tmp_path / "two.png"), dtype=np.int16)
    assert one.shape == two.shape and np.abs(one - two).max() <= 1
    assert not (tmp_path / "one-shards").exists()  # one process: just the grid


def test_bf16_sampling_stays_close_to_fp32(runs: tuple[Path, dict], tmp_path: Path) -> None:
    args = ["sample", str(runs[0] / "one"), "--labels", "0,1,2,3", "--steps", "3", "--no-progress"]
    for precision in ("no", "bf16"):
        out = str(tmp_path / f"{precision}.png")
        result = CliRunner().invoke(app, [*args, "--mixed-precision", precision, "--out", out])
        assert result.exit_code == 0, result.output
    fp32 = np.asarray(Image.open(tmp_path / "no.png"), dtype=np.int16)
    bf16 = Image.open(tmp_path / "bf16.png")
    assert bf16.text["mixed_precision"] == "bf16"
    assert np.abs(fp32 - np.asarray(bf16, dtype=np.int16)).max() <= 8  # of 255; runs/digits: 0.003 at most
    result = CliRunner().invoke(app, [*args, "--mixed-precision", "fp8", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "fp8" in result.stderr
