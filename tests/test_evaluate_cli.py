"""`diffusionlab evaluate` and the trainer's evaluation hook, end to end on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clear_error, run

from diffusionlab.config import MODEL_SIZES, DataConfig, DiffusionConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.evaluation import evaluate_model, parse_metrics
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(dataset: str = "digits", **train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset=dataset, image_size=8),
        train=TrainConfig(steps=2, batch_size=8, sample_every=0, final_eval=False, checkpoint_every=0, **train),
    )


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    Trainer(tiny_config(), out, progress=False, cpu=True, track=False).train()
    return out


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    cfg = tiny_config("toy:eight_gaussians").model_copy(
        update={"network": NetworkConfig(kind="mlp", width=32, depth=2, num_classes=0)}
    )
    Trainer(cfg, out, progress=False, cpu=True, track=False).train()
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path / "cache"))


def test_evaluate_every_image_metric(digits_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ["--metrics", "fid,kid,pr,dc,bpd,vlb", "-n", "20", "--steps", "2", "--features", "pixels"]
    args += ["--bpd-images", "4", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out), "--no-progress"]
    result = run("evaluate", str(digits_model), *args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "| FID |" in result.stdout and "| bits/dim (ODE) |" in result.stdout
    data = json.loads(out.read_text())
    m = data["metrics"]
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "bpd", "vlb"):
        assert math.isfinite(m[key]), key
    assert m["fid"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["coverage"] <= 1
    assert 0 < m["bpd"] < 64 and m["vlb"] > 0 and m["bpd_images"] == 4
    assert data["num_real"] == 359 and data["features"] == "pixels" and data["guidance"] == 2.0
    # the same seed gives the same samples and scores, and the real features now come from the cache
    again = evaluate_model(Pipeline.load(digits_model), "fid", num_samples=20, steps=2, features="pixels")
    assert again["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-9)


def test_evaluate_a_toy_model(toy_model: Path) -> None:
    result = evaluate_model(Pipeline.load(toy_model), num_samples=200, steps=5, num_real=200, rtol=1e-4, atol=1e-4)
    m = result["metrics"]
    assert set(m) >= {"swd", "mmd", "true_nll", "true_nll_real", "nll", "nll_nfe"}
    # an (almost) untrained model: its samples are far less likely under the true density than real points are
    assert m["true_nll"] > m["true_nll_real"] and m["swd"] > 0.05 and m["nll"] > m["true_nll_real"]
    assert m["nll_points"] == 200


def test_bad_options_are_clear_errors(digits_model: Path, tmp_path: Path) -> None:
    base = ["evaluate", str(digits_model), "-n", "20", "--steps", "2", "--no-progress"]
    assert_clear_error(run(*base, "--metrics", "fid,nope"), "'nope'", progress_on_stderr=True)
    assert_clear_error(run(*base, "--metrics", "swd"), "'swd'", "image model", progress_on_stderr=True)
    assert_clear_error(run(*base, "--features", "inception"), "--inception-weights", progress_on_stderr=True)
    weights = str(tmp_path / "w.pth")
    result = run(*base, "--features", "inception", "--inception-weights", weights)
    assert_clear_error(result, "w.pth does not exist", progress_on_stderr=True)
    assert_clear_error(run(*base, "--features", "vgg"), "features='vgg'", progress_on_stderr=True)
    assert_clear_error(run(*base, "-n", "3"), "--num-samples=3", progress_on_stderr=True)


def test_vlb_takes_any_gaussian_process_and_true_nll_a_known_density() -> None:
    flow = tiny_config().model_copy(update={"diffusion": DiffusionConfig(process={"name": "flow"})})
    assert parse_metrics("bpd,vlb", flow) == ("bpd", "vlb")  # the continuous-time VLB for a flow model
    moons = tiny_config("toy:two_moons").model_copy(update={"network": NetworkConfig(kind="mlp"), "space": "points"})
    with pytest.raises(ValueError, match="known density"):
        parse_metrics("true_nll", moons)
    assert parse_metrics(None, moons) == ("swd", "mmd", "nll")


def test_trainer_logs_evaluations_without_changing_training(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    evals = {"eval_every": 1, "eval_metrics": ["fid", "kid"], "eval_samples": 10, "eval_features": "pixels"}
    with_eval = Trainer(tiny_config(**evals), tmp_path / "a", progress=False, cpu=True).train()
    plain = Trainer(tiny_config(), tmp_path / "b", progress=False, cpu=True, track=False).train()
    for (name, p), q in zip(with_eval.network.state_dict().items(), plain.network.state_dict().values(), strict=True):
        assert torch.equal(p, q), name  # evaluation draws no random numbers of the training run
    for step in (1, 2):
        data = json.loads((tmp_path / "a" / "eval" / f"step-{step:06d}.json").read_text())
        assert data["metrics"]["fid"] > 0
    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    fid = events.Scalars("eval/fid")
    assert [e.step for e in fid] == [1, 2] and "eval/kid" in events.Tags()["scalars"]
    with pytest.raises(ValueError, match="'swd'"):
        Trainer(tiny_config(eval_every=1, eval_metrics=["swd"]), tmp_path / "c", progress=False, cpu=True).train()


def test_train_command_evaluates_every_n_steps(tmp_path: Path) -> None:
    out = tmp_path / "moons"
    base = [
        "train",
        "--dataset",
        "toy:eight_gaussians",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--no-final-eval",
    ]
    evals = ["--sample-every", "0", "--eval-every", "1", "--eval-samples", "50", "--eval-metrics", "swd,mmd"]
    result = run(*base, *evals, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "eval at step 2: swd" in result.output
    data = json.loads((out / "eval" / "step-000002.json").read_text())
    assert set(data["metrics"]) == {"swd", "mmd"} and data["metrics"]["swd"] > 0
    assert_clear_error(run(*base, *evals[:-1], "fid", "--out", str(tmp_path / "x")), "'fid'", progress_on_stderr=True)
