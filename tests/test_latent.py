"""Latent diffusion: a diffusion model trained in an autoencoder's latent space, in a self-contained folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clear_error, run
from factories import tiny_diffusers_vae

from diffusionlab.config import (
    MODEL_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    AutoencoderTrainConfig,
    DataConfig,
    LatentConfig,
    ModelConfig,
    NetworkConfig,
    SampleConfig,
    TrainConfig,
)
from diffusionlab.data import load_digits_dataset
from diffusionlab.networks.autoencoder import Autoencoder
from diffusionlab.pipeline import Pipeline
from diffusionlab.sampling import Thresholded
from diffusionlab.training import Trainer
from diffusionlab.training.autoencoder import AutoencoderTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def latent_config(autoencoder: Path, steps: int = 6) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(
            steps=steps,
            batch_size=16,
            warmup_steps=2,
            ema_start=2,
            sample_every=0,
            final_eval=False,
            checkpoint_every=0,
        ),
        latent=LatentConfig(autoencoder=str(autoencoder)),
        sample=SampleConfig(steps=4),  # samples.png at the end: few steps, for speed
    )


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("autoencoder")
    config = AutoencoderConfig(
        network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1, 2]),
        data=DataConfig(dataset="digits", image_size=8),
        train=AutoencoderTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=2, sample_every=0),
    )
    AutoencoderTrainer(config, out, progress=False, track=False).train()
    return out


@pytest.fixture(scope="module")
def latent_dir(ae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("latent")
    Trainer(latent_config(ae_dir), out, progress=False, track=False).train()
    return out


def test_training_writes_a_self_contained_loadable_folder(latent_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "ema.safetensors", "samples.png", "autoencoder/config.json"):
        assert (latent_dir / name).is_file(), name
    shutil.copytree(latent_dir, tmp_path / "moved")
    pipe = Pipeline.load(tmp_path / "moved")
    assert pipe.sample_shape == (2, 4, 4) and pipe.config.network.in_channels == 2
    assert pipe.config.sample.thresholding == "none"
    images = pipe.sample(labels=[0, 3, 9], steps=3, seed=1)
    assert images.shape == (3, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    # the scaling factor gives the training data's latents unit standard deviation
    train = load_digits_dataset(8, split="train").images
    assert pipe.encode((train + 1) / 2).std().item() == pytest.approx(1.0, abs=1e-4)


def test_save_load_round_trips_bit_for_bit(latent_dir: Path, tmp_path: Path) -> None:
    pipe = Pipeline.load(latent_dir)
    a = pipe.sample(labels=[1, 2, 3, 4], steps=4, seed=7)
    pipe.save(tmp_path)
    again = Pipeline.load(tmp_path)
    assert again.config == pipe.config
    assert states_equal(pipe.ema, again.ema) and states_equal(pipe.autoencoder.module, again.autoencoder.module)
    assert torch.equal(a, again.sample(labels=[1, 2, 3, 4], steps=4, seed=7))
    # another batch size: the same noise; batched convolutions differ in the last float bits only
    assert (a - again.sample(labels=[1, 2, 3, 4], steps=4, seed=7, batch_size=3)).abs().max() < 1e-5
    assert (a - again.sample(labels=[1, 2, 3, 4], steps=4, seed=8)).abs().max() > 0.1


def test_encode_is_the_scaled_posterior_mean_and_decode_gives_images(latent_dir: Path) -> None:
    pipe = Pipeline.load(latent_dir)
    images = (load_digits_dataset(8, split="test").images[:5] + 1) / 2
    z = pipe.encode(images)
    assert z.shape == (5, 2, 4, 4)
    expected = pipe.autoencoder.encode(images * 2 - 1) * pipe.config.latent.scaling_factor
    assert torch.equal(z, expected)
    out = pipe.decode(z)
    assert out.shape == (5, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    denoiser, _ = pipe.guided_denoiser(5, labels=[0] * 5, thresholding="clip")
    assert not isinstance(denoiser, Thresholded)  # [-1, 1] clipping is for pixels, not latents
    with pytest.raises(ValueError, match="1-channel images, got 3"):
        pipe.autoencoder.latent_shape((3, 8, 8))


def test_resume_uses_the_checkpoint_copy_of_the_autoencoder(ae_dir: Path, latent_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "ae"
    shutil.copytree(ae_dir, source)
    Trainer(latent_config(source), tmp_path / "run", progress=False, track=False).train(stop_after=3)
    shutil.rmtree(source)  # the run's checkpoint holds its own copy
    resumed = Trainer(latent_config(source), tmp_path / "run", resume=True, progress=False, track=False)
    assert resumed.start_step == 3
    pipe = resumed.train()
    full = Pipeline.load(latent_dir)
    assert states_equal(pipe.network, full.network) and states_equal(pipe.ema, full.ema)


def test_a_diffusers_autoencoder_serves_a_latent_model(tmp_path: Path) -> None:
    tiny_diffusers_vae(tmp_path / "vae")
    pipe = Trainer(latent_config(tmp_path / "vae", steps=2), tmp_path / "m", progress=False, track=False)
    pipe.train()
    loaded = Pipeline.load(tmp_path / "m")
    assert Autoencoder.load(tmp_path / "m" / "autoencoder").config is None  # a diffusers folder again
    assert loaded.sample_shape == (2, 4, 4)
    assert torch.equal(
        loaded.sample(labels=[5, 6], steps=2, seed=3), pipe.pipeline.sample(labels=[5, 6], steps=2, seed=3)
    )


def test_cli_trains_an_autoencoder_then_a_latent_model(tmp_path: Path) -> None:
    small = [
        "--image-size",
        "8",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        "--no-progress",
        "--steps",
        "2",
    ]
    bad_out = ["--out", str(tmp_path / "never-written")]  # the bad-input runs below must not touch ./runs
    ae = tmp_path / "ae"
    result = run("train-autoencoder", *small, "--latent-channels", "2", "--base-channels", "8", "--out", str(ae))
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and (ae / "reconstructions.png").is_file()
    model = tmp_path / "model"
    result = run(
        "train", *small, "--no-final-eval", "--model-size", "tiny", "--autoencoder", str(ae), "--out", str(model)
    )
    assert result.exit_code == 0, result.output
    result = run("sample", str(model), "--labels", "1,2", "--steps", "2", "--out", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").is_file()
    # bad input: one clear line each
    assert_clear_error(run("train-autoencoder", *small, *bad_out, "--downsample-factor", "3"), "--downsample-factor=3")
    assert_clear_error(run("sample", str(ae), "--out", str(tmp_path / "x.png")), "is an autoencoder")
    assert_clear_error(run("train", *small, *bad_out, "--autoencoder", str(tmp_path / "nope")), "nope")
    assert_clear_error(
        run("train", *small, *bad_out, "--autoencoder", str(ae), "--channels", "3"), "1-channel images, got 3"
    )
    deep = AutoencoderConfig(
        network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1, 2, 2])
    )
    Autoencoder(deep).save(tmp_path / "deep")  # f = 4: 8x8 images give 2x2 latents, too small for the small UNet
    assert_clear_error(
        run("train", *small, *bad_out, "--model-size", "small", "--autoencoder", str(tmp_path / "deep")),
        "latents are 2x2",
    )
    assert not (tmp_path / "never-written").exists()
