"""The KL autoencoder of latent diffusion: shapes, size errors, its loss, its trainer (learning, resume), its
folder (ours and diffusers')."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import tiny_diffusers_vae

from diffusionlab.config import AutoencoderConfig, AutoencoderNetworkConfig, AutoencoderTrainConfig, DataConfig
from diffusionlab.io import CheckpointError
from diffusionlab.networks.autoencoder import Autoencoder, KLAutoencoder, gaussian_kl, latent_scaling_factor
from diffusionlab.training import latest_checkpoint
from diffusionlab.training.autoencoder import AutoencoderTrainer, autoencoder_loss, psnr

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_ae_config(steps: int = 12, **train: object) -> AutoencoderConfig:
    return AutoencoderConfig(
        network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1, 2]),
        data=DataConfig(dataset="digits", image_size=8),
        train=AutoencoderTrainConfig(
            steps=steps, batch_size=16, warmup_steps=2, ema_start=3, sample_every=0, checkpoint_every=0, **train
        ),
    )


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("mults", "size"), [([1], (5, 7)), ([1, 2], (8, 8)), ([1, 2], (12, 20)), ([1, 2, 2], (16, 16)), ([1, 2, 2], (4, 8))]
)
def test_shapes_for_several_sizes(mults: list[int], size: tuple[int, int]) -> None:
    net = KLAutoencoder(in_channels=3, latent_channels=4, base_channels=8, channel_mults=mults)
    f = 2 ** (len(mults) - 1)
    assert net.downsample_factor == f
    x = torch.rand(2, 3, *size) * 2 - 1
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, 4, size[0] // f, size[1] // f)
    recon, _, _ = net(x, torch.randn_like(mean))
    assert recon.shape == x.shape


@pytest.mark.parametrize(
    ("mults", "size", "multiple"), [([1, 2], (15, 16), 2), ([1, 2, 2], (6, 8), 4), ([1, 2, 2], (2, 2), 4)]
)
def test_sizes_it_cannot_take_are_one_clear_error(mults: list[int], size: tuple[int, int], multiple: int) -> None:
    net = KLAutoencoder(in_channels=1, latent_channels=2, base_channels=8, channel_mults=mults)
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*multiples of {multiple}\."):
        net.encode(torch.zeros(1, 1, *size))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\), got \(1, 3, 8, 8\)"):
        net.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"latents of shape \(N, 2, h, w\)"):
        net.decode(torch.zeros(1, 3, 4, 4))


def test_kl_and_loss_match_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl(mean, logvar), ref)
    x, recon = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    loss, rec, kl = autoencoder_loss(x, recon, mean, logvar, kl_weight=0.5, kind="l2")
    expected = ((recon - x).square().sum() + 0.5 * ref.sum()) / (3 * 64)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(rec, (recon - x).square().mean())
    with pytest.raises(ValueError, match="'l3'"):
        autoencoder_loss(x, recon, mean, logvar, 0.0, kind="l3")
    lat = torch.randn(1000, generator=g) * 3 + 1
    assert latent_scaling_factor(lat) == pytest.approx(1 / lat.double().std().item(), rel=1e-12)
    assert psnr(torch.full((1, 1, 2, 2), 0.1), torch.zeros(1, 1, 2, 2)).item() == pytest.approx(20.0, abs=1e-4)


def test_reconstruction_loss_goes_down(tmp_path: Path) -> None:
    trainer = AutoencoderTrainer(tiny_ae_config(steps=50, lr=3e-3), tmp_path, progress=False, track=False)
    losses = [trainer.train_step(s)[0] for s in range(50)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # measured: 0.70 -> 0.36


def test_trainer_writes_a_loadable_folder_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = AutoencoderTrainer(tiny_ae_config(), tmp_path / "full", progress=False, track=False).train()
    for name in ("config.json", "model.safetensors", "ema.safetensors", "reconstructions.png"):
        assert (tmp_path / "full" / name).is_file(), name
    AutoencoderTrainer(tiny_ae_config(), tmp_path / "part", progress=False, track=False).train(stop_after=5)
    assert latest_checkpoint(tmp_path / "part").name == "step-000005"
    resumed = AutoencoderTrainer(tiny_ae_config(), tmp_path / "part", resume=True, progress=False, track=False)
    assert resumed.start_step == 5
    resumed = resumed.train()
    assert states_equal(full.network, resumed.network)
    assert states_equal(full.ema, resumed.ema)
    loaded = Autoencoder.load(tmp_path / "full")
    assert loaded.config == full.config and loaded.config.data.channels == 1
    assert states_equal(loaded.ema, full.ema)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(loaded.encode(x), full.encode(x))
    assert loaded.latent_shape((1, 8, 8)) == (2, 4, 4)


def test_trainer_rejects_data_it_cannot_take(tmp_path: Path) -> None:
    bad = tiny_ae_config().model_copy(update={"data": DataConfig(dataset="toy:two_moons")})
    with pytest.raises(ValueError, match="needs images"):
        AutoencoderTrainer(bad, tmp_path, progress=False, track=False)
    deep = tiny_ae_config()
    deep.network.channel_mults = [1, 2, 2, 2, 2]  # f = 16 > 8x8 images
    with pytest.raises(ValueError, match="multiples of 16"):
        AutoencoderTrainer(deep, tmp_path, progress=False, track=False)


def test_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json"):
        Autoencoder.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format_version": 1, "network": {"kind": "unet"}}')
    with pytest.raises(CheckpointError, match="not an autoencoder config"):
        Autoencoder.load(tmp_path)


def test_diffusers_autoencoder_folder_loads_and_round_trips(tmp_path: Path) -> None:
    vae = tiny_diffusers_vae(tmp_path / "vae")
    ae = Autoencoder.load(tmp_path / "vae")
    assert ae.config is None and ae.downsample_factor == 2 and ae.latent_shape((1, 16, 12)) == (2, 8, 6)
    x = torch.rand(2, 1, 16, 12) * 2 - 1
    z = ae.encode(x)
    with torch.no_grad():
        torch.testing.assert_close(z, vae.encode(x).latent_dist.mean)
        assert ae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="1-channel images, got 3"):
        ae.latent_shape((3, 16, 16))
    ae.save(tmp_path / "copy")
    again = Autoencoder.load(tmp_path / "copy")
    assert torch.equal(again.encode(x), z)


def test_gradient_accumulation_trains_the_same_weights(tmp_path: Path) -> None:
    one = AutoencoderTrainer(tiny_ae_config(steps=3), tmp_path / "a", progress=False, track=False)
    two = AutoencoderTrainer(tiny_ae_config(steps=3, grad_accumulation=4), tmp_path / "b", progress=False, track=False)
    for step in range(3):
        la, lb = one.train_step(step)[0], two.train_step(step)[0]
        assert lb == pytest.approx(la, rel=1e-5)
    for (name, a), b in zip(one.model.named_parameters(), two.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
