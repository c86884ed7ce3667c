"""The objectives the one training loop runs (diffusion, autoencoder, noise-aware classifier): each loss equals its
formula written out by hand on a fixed batch, one loop step lowers it, and fitting the config is a pure step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusionlab.config import (
    MODEL_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    AutoencoderTrainConfig,
    DataConfig,
    DDPMProcessConfig,
    DiffusionConfig,
    ModelConfig,
    NetworkConfig,
    TrainConfig,
)
from diffusionlab.io import CheckpointError
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import GaussianProcess
from diffusionlab.training import (
    AutoencoderObjective,
    ClassifierObjective,
    DiffusionObjective,
    Trainer,
    TrainingData,
    fit_diffusion_config,
)
from diffusionlab.training.classifier import classifier_train_config
from diffusionlab.training.objective import take
from diffusionlab.training.trainer import make_accelerator

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def images(n: int = 48, classes: int | None = 3, seed: int = 0) -> TrainingData:
    """n random 8x8 one-channel images in [-1, 1] (labelled 0..classes-1 in turn, unless classes is None)."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    if classes is None:
        return TrainingData(x, None)
    return TrainingData(x, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def model_config(parameterisation: str = "eps", num_classes: int | None = None, **train: object) -> ModelConfig:
    settings = {"steps": 10, "batch_size": 12, "warmup_steps": 0, "ema_start": 0, "sample_every": 0, **train}
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=num_classes),
        diffusion=DiffusionConfig(process=DDPMProcessConfig(schedule="linear"), parameterisation=parameterisation),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(checkpoint_every=0, final_eval=False, **settings),
    )


def autoencoder_config(**train: object) -> AutoencoderConfig:
    settings = {"steps": 10, "batch_size": 12, "warmup_steps": 0, "sample_every": 0, "checkpoint_every": 0, **train}
    return AutoencoderConfig(
        network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1, 2]),
        data=DataConfig(dataset="digits", image_size=8),
        train=AutoencoderTrainConfig(**settings),
    )


def classifier_objective(lr: float = 1e-2, steps: int = 10) -> ClassifierObjective:
    pipe = Pipeline(model_config().model_copy(update={"data": DataConfig(image_size=8, channels=1)}))
    return ClassifierObjective(pipe, images(), classifier_train_config(steps, 12, lr, seed=0), base_channels=8)


def coefficients(process: GaussianProcess, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha(t), sigma(t) shaped (N, 1, 1, 1)."""
    return process.alpha(t).reshape(-1, 1, 1, 1), process.sigma(t).reshape(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------ losses by hand
@pytest.mark.parametrize("parameterisation", ["eps", "v"])
def test_diffusion_loss_is_the_mean_squared_error_to_its_target(parameterisation: str) -> None:
    """Uniform weighting: mean over the batch and every element of (F(x_t / sqrt(a^2 + s^2), c_noise) - target)^2,
    target eps (Ho et al. 2020, eq. 14) or v = (a eps - s x0) / sqrt(a^2 + s^2) (Salimans & Ho 2022, eq. 9)."""
    objective = DiffusionObjective.prepare(model_config(parameterisation), images(classes=None), None, CPU)
    x0, t, eps, cond, loss_mask = objective.global_batch(3)
    assert cond is None and loss_mask is None and x0.shape == eps.shape == (12, 1, 8, 8) and t.shape == (12,)
    loss, _ = objective.loss(objective.network, objective.global_batch(3))
    process = objective.model.process
    alpha, sigma = coefficients(process, t)
    norm = torch.sqrt(alpha**2 + sigma**2)
    c_noise = -torch.log(alpha.flatten() ** 2 / sigma.flatten() ** 2).clamp(-20, 20) / 8
    with torch.no_grad():
        out = objective.network(((alpha * x0 + sigma * eps) / norm).float(), c_noise.float())
    target = eps if parameterisation == "eps" else (alpha * eps - sigma * x0) / norm
    torch.testing.assert_close(loss.detach().double(), ((out - target) ** 2).mean().double(), rtol=1e-5, atol=1e-7)


def test_autoencoder_loss_is_reconstruction_plus_weighted_kl_per_pixel() -> None:
    """(sum |x - D(mean + exp(logvar / 2) noise)| + w sum (mean^2 + e^logvar - 1 - logvar) / 2) / pixels, averaged
    over the batch (Rombach et al. 2022, sec. 3.1; Kingma & Welling 2014, appendix B and eq. 10)."""
    data = images(classes=None)
    objective = AutoencoderObjective.prepare(autoencoder_config(kl_weight=0.3), data, None, CPU)
    batch = objective.global_batch(5)
    loss, terms = objective.loss(objective.network, batch)
    net = objective.network
    with torch.no_grad():
        mean, logvar = net.encode(batch.images)
        recon = net.decode(mean + torch.exp(logvar / 2) * batch.noise)
    err = (batch.images - recon).abs()
    kl = (mean**2 + logvar.exp() - 1 - logvar) / 2
    expected = (err.sum((1, 2, 3)) + 0.3 * kl.sum((1, 2, 3))).mean() / 64
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["reconstruction"], err.mean())
    torch.testing.assert_close(terms["kl"], kl.mean())


def test_classifier_loss_is_the_cross_entropy_of_its_logits() -> None:
    """-mean_i log softmax(f(x_t / sqrt(a^2 + s^2), c_noise))_{y_i} (Dhariwal & Nichol 2021, sec. 4.1)."""
    objective = classifier_objective()
    batch = objective.global_batch(2)
    assert batch.labels.shape == (12,) and set(batch.labels.tolist()) <= {0, 1, 2}
    loss, _ = objective.loss(objective.network, batch)
    alpha, sigma = coefficients(objective.pipeline.process, batch.t)
    x_in = ((alpha * batch.x0 + sigma * batch.eps) / torch.sqrt(alpha**2 + sigma**2)).float()
    c_noise = (-torch.log(alpha.flatten() ** 2 / sigma.flatten() ** 2).clamp(-20, 20) / 8).float()
    with torch.no_grad():
        logits = objective.network(x_in, c_noise)
    by_hand = (torch.logsumexp(logits, 1) - logits[torch.arange(12), batch.labels]).mean()
    torch.testing.assert_close(loss.detach(), by_hand, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ the loop
def trainer_of(kind: str, out: Path) -> Trainer:
    if kind == "diffusion":
        return Trainer(model_config("v", num_classes=0), out, data=images(), progress=False, track=False)
    if kind == "autoencoder":
        return Trainer(autoencoder_config(), out, data=images(), progress=False, track=False)
    return Trainer.in_memory(classifier_objective(), make_accelerator("no", cpu=True), progress=False)


@pytest.mark.parametrize("kind", ["diffusion", "autoencoder", "classifier"])
def test_one_loop_step_lowers_the_loss_of_its_batch(kind: str, tmp_path: Path) -> None:
    trainer = trainer_of(kind, tmp_path)
    objective, batch = trainer.objective, trainer.batch(0)
    with torch.no_grad():
        before = float(objective.loss(trainer.model, batch)[0])
    loss, _ = trainer.train_step(0)
    with torch.no_grad():
        after = float(objective.loss(trainer.model, batch)[0])
    assert loss == pytest.approx(before, rel=1e-5)  # the step's loss is the loss of this batch
    assert after < before, (before, after)


def test_the_classifier_trains_the_same_with_micro_batches() -> None:
    runs = []
    for k in (1, 4):
        objective = classifier_objective()
        objective.train_config = objective.train_config.model_copy(update={"grad_accumulation": k})
        trainer = Trainer.in_memory(objective, make_accelerator("no", cpu=True), progress=False)
        runs.append((trainer.train_step(0)[0], [p.detach().clone() for p in trainer.model.parameters()]))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-5)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_take_cuts_every_tensor_of_a_nested_batch() -> None:
    batch = DiffusionObjective.prepare(model_config(num_classes=0), images(), None, CPU).global_batch(0)
    part = take(batch, slice(2, 5))
    assert type(part) is type(batch) and part.x0.shape[0] == part.t.shape[0] == part.cond["labels"].shape[0] == 3
    torch.testing.assert_close(part.noise, batch.noise[2:5])


# ------------------------------------------------------------------------------------------ fitting
def test_fitting_is_pure_and_the_saved_config_is_what_was_trained(tmp_path: Path) -> None:
    config, data = model_config(num_classes=0, steps=2), images()
    before = config.model_copy(deep=True)
    fitted = fit_diffusion_config(config, data)
    assert config == before  # the caller's config is not touched
    assert fitted.network.num_classes == 3 and fitted.data.class_names == ["c0", "c1", "c2"]
    assert fitted.data.channels == 1 and fitted.space == "image"
    trainer = Trainer(config, tmp_path, data=data, progress=False, track=False)
    config.train.steps = 99  # the caller's config changes after set-up: the run's does not
    # the run stores the precision it trains in: "auto" made concrete (fp32 under the suite's pin)
    assert config.train.mixed_precision == "auto" and trainer.config.train.mixed_precision == "no"
    fitted = fitted.model_copy(update={"train": fitted.train.model_copy(update={"mixed_precision": "no"})})
    assert trainer.config == fitted and trainer.config.train.steps == 2
    trainer.train()
    assert Pipeline.load(tmp_path).config == fitted


def test_resume_refuses_data_that_no_longer_fits_the_checkpoint(tmp_path: Path) -> None:
    config = model_config(num_classes=0, steps=4)
    Trainer(config, tmp_path, data=images(), progress=False, track=False).train(stop_after=2)
    with pytest.raises(CheckpointError, match="no longer fits"):
        Trainer(config, tmp_path, data=images(classes=5), resume=True, progress=False, track=False)


def test_errors_name_the_api_arguments(tmp_path: Path) -> None:
    config = model_config(steps=1)
    trainer = Trainer(config, tmp_path, data=images(classes=None), progress=False, track=False)
    trainer.train()
    with pytest.raises(CheckpointError, match=r"pass resume=True to continue it, or choose another out_dir"):
        Trainer(config, tmp_path, data=images(classes=None), progress=False)
    with pytest.raises(CheckpointError, match=r"resume=True was given but .* holds no checkpoint"):
        Trainer(config, tmp_path / "empty", data=images(classes=None), resume=True, progress=False)
    with pytest.raises(FloatingPointError, match=r"lower lr \(now 0.002\) or use mixed_precision='no'"):
        trainer.apply_gradients(1, torch.tensor(float("nan")))
