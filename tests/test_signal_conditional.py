"""Conditional imputation models of signals (CSDI, Tashiro et al. 2021; issue 17): the training masks, the networks'
condition channels, the masked loss, and a trained model that imputes and forecasts a signal whose missing part is
fixed by its observed points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clear_error, run

from diffusionlab.config import SIGNAL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.data.signals import draw_observed
from diffusionlab.denoisers import Denoiser, make_parameterisation
from diffusionlab.losses import denoising_loss
from diffusionlab.networks.diffwave import DiffWave
from diffusionlab.networks.unet1d import UNet1D
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import VPProcess
from diffusionlab.spaces import build_network
from diffusionlab.tasks import forecast, impute_series
from diffusionlab.training import Trainer

QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}
L, PERIOD = 16, 8


def sines(n: int, seed: int) -> np.ndarray:
    """n windows (n, 1, L) of A sin(2 pi t / 8 + phi), A in [0.5, 1.5], phi uniform: any 3 observed points of a
    window fix the rest exactly."""
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.5, 1.5, n), rng.uniform(0, 2 * math.pi, n)
    t = np.arange(L)
    return (amp[:, None] * np.sin(2 * math.pi * t / PERIOD + phase[:, None]))[:, None].astype(np.float32)


def test_training_masks_mix_random_points_blocks_and_tails() -> None:
    """Each mask has a missing point; about a third are tails (missing to the end, observed before), a third single
    blocks inside, a third random points whose missing share spreads over [0, 1]; the same generator, the same masks."""
    keep = draw_observed(3000, 2, 32, torch.Generator().manual_seed(0))
    assert keep.shape == (3000, 2, 32) and keep.dtype == torch.bool
    assert torch.equal(keep, draw_observed(3000, 2, 32, torch.Generator().manual_seed(0)))
    missing = ~keep
    assert missing.flatten(1).any(1).all()
    same_channels = (missing[:, 0] == missing[:, 1]).all(1)
    runs = (missing[:, 0, 1:] != missing[:, 0, :-1]).sum(1)  # changes along time: 1 for a tail, <= 2 for a block
    tails = same_channels & missing[:, 0, -1] & (runs == 1)
    blocks = same_channels & ~missing[:, 0, -1] & (runs <= 2)
    assert abs(float(tails.float().mean()) - 1 / 3) < 0.05 and abs(float(blocks.float().mean()) - 1 / 3) < 0.05
    assert int(missing[tails | blocks, 0].sum(1).max()) == 24  # blocks and tails last 1 to 3L/4 steps
    shares = missing[~(tails | blocks)].flatten(1).float().mean(1)
    assert float(shares.min()) < 0.1 and float(shares.max()) > 0.9 and abs(float(shares.mean()) - 0.5) < 0.05


@pytest.mark.parametrize("network", [UNet1D(2, 16, (1, 2), cond_channels=4), DiffWave(2, 16, 4, 2, cond_channels=4)])
def test_signal_networks_see_their_condition_channels(network: torch.nn.Module) -> None:
    """The condition changes the output; no condition is the all-zero one; a condition of the wrong shape, or one
    given to a network without condition channels, is one clear error."""
    torch.manual_seed(0)
    for p in network.parameters():  # zero-initialised heads would hide the condition
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(3, 2, 8), torch.full((3,), 0.5)
    cond = torch.randn(3, 4, 8)
    with torch.no_grad():
        assert not torch.allclose(network(x, c, cond_signal=cond), network(x, c, cond_signal=0 * cond))
        assert torch.equal(network(x, c), network(x, c, cond_signal=torch.zeros(3, 4, 8)))
    with pytest.raises(ValueError, match=r"takes a condition of shape \(3, 4, 8\)"):
        network(x, c, cond_signal=torch.zeros(3, 2, 8))
    with pytest.raises(ValueError, match="without cond_channels"):
        UNet1D(2, 16, (1, 2))(x, c, cond_signal=cond)


def test_a_masked_loss_averages_over_the_masked_elements_only() -> None:
    """The denoising loss with a mask is the mean squared error over the masked elements of the batch."""
    process = VPProcess()
    net = UNet1D(1, 16, (1, 2))
    torch.nn.init.normal_(net.head[-1].weight, std=0.5)
    denoiser = Denoiser(net, process, make_parameterisation("eps"))
    x0, t, eps = torch.randn(4, 1, 8), torch.full((4,), 0.3, dtype=torch.float64), torch.randn(4, 1, 8)
    mask = torch.rand(4, 1, 8, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad():
        loss = denoising_loss(denoiser, x0, t=t, eps=eps, mask=mask)
        out, _ = denoiser.forward_raw(process.add_noise(x0, t, eps), t)
    torch.testing.assert_close(loss, ((out - eps) ** 2)[mask].mean())
    assert abs(float(loss) - float(((out - eps) ** 2).mean())) > 1e-3  # the mask matters here


@pytest.fixture(scope="module")
def conditional_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A tiny conditional imputation model trained for 150 steps on 512 random sines."""
    folder = tmp_path_factory.mktemp("conditional")
    np.save(folder / "sines.npy", sines(512, 0))
    config = ModelConfig(
        network=NetworkConfig(**SIGNAL_SIZES["tiny"]),
        data=DataConfig(dataset=str(folder / "sines.npy"), signal_condition="observed"),
        train=TrainConfig(steps=150, batch_size=32, warmup_steps=10, mixed_precision="no", **QUIET),
    )
    Trainer(config, folder / "model", progress=False).train()
    return folder / "model"


def test_a_conditional_model_imputes_the_exactly_determined_gap(conditional_model: Path) -> None:
    """Six missing steps of eight new sines: the observed points come back bit for bit and the median of 8 samples
    is within 0.2 (in the data's std) of the exact answer (measured 0.08), and the forecast of the last 4 steps
    within 0.3 (measured 0.12)."""
    saved = json.loads((conditional_model / "config.json").read_text())
    assert saved["data"]["signal_condition"] == "observed" and saved["network"]["cond_channels"] == 2
    pipe = Pipeline.load(conditional_model)
    info = pipe.config.data.signal
    truth = torch.from_numpy((sines(8, 1)[:, 0] - info.mean[0]) / info.std[0]).float()
    observed = torch.ones(1, L, dtype=torch.bool)
    observed[:, 5:11] = False
    gap_errors, ahead_errors = [], []
    for values in truth:
        drawn = impute_series(pipe, values[None], observed, 8, steps=20, seed=0)
        assert torch.equal(drawn.samples[:, observed], values[None][observed].expand(8, -1))  # bit for bit
        gap_errors.append(float((drawn.median[~observed] - values[None][~observed]).abs().mean()))
        ahead = forecast(pipe, values[None, :12], 4, 8, steps=20, seed=0)
        ahead_errors.append(float((ahead.median[0] - values[12:]).abs().mean()))
    assert np.mean(gap_errors) < 0.2, gap_errors
    assert np.mean(ahead_errors) < 0.3, ahead_errors


def test_signal_condition_on_other_data_is_one_clear_line(tmp_path: Path) -> None:
    result = run(
        "train", "--dataset", "digits", "--signal-condition", "observed", "--steps", 1, "--no-progress",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert_clear_error(result, "signal-condition='observed' is for audio and series data")


def test_dropout_on_diffwave_is_one_clear_error() -> None:
    """DiffWave has no dropout: asking for it is refused rather than ignored."""
    with pytest.raises(ValueError, match=r"network.dropout=0.5 does not apply to DiffWave"):
        build_network(NetworkConfig(kind="diffwave", width=8, depth=2, dropout=0.5))


@pytest.mark.parametrize("condition", [None, "observed"])
def test_the_gaps_of_a_series_are_neither_scored_nor_shown(tmp_path: Path, condition: str | None) -> None:
    """Windows with missing points (NaN in the .npy) are filled by interpolation for the network's input, but the
    loss counts only the points the data holds; a conditional model also draws its observations and targets among
    them, disjoint, so a filled gap is never shown as known nor scored as a target."""
    from diffusionlab.training.diffusion import DiffusionObjective

    data = sines(64, seed=3)
    rng = np.random.default_rng(0)
    data[rng.random(data.shape) < 0.3] = np.nan
    data[:8, :, 4:12] = np.nan  # a block gap in the first windows
    np.save(tmp_path / "gappy.npy", data)
    config = ModelConfig(
        network=NetworkConfig(**SIGNAL_SIZES["tiny"]),
        data=DataConfig(dataset=str(tmp_path / "gappy.npy"), signal_condition=condition),
        train=TrainConfig(steps=1, batch_size=48, mixed_precision="no", **QUIET),
    )
    objective = DiffusionObjective.prepare(config, None, None, torch.device("cpu"))
    observed = torch.from_numpy(~np.isnan(data))
    assert torch.equal(objective.data.observed, observed)
    for step in range(3):
        batch = objective.global_batch(step)
        # each drawn window, found by its filled values: its loss mask lies within its observed points
        rows = [int((objective.data.x - x).flatten(1).abs().sum(1).argmin()) for x in batch.x0]
        held = observed[rows]
        if condition is None:
            assert torch.equal(batch.loss_mask, held)
            continue
        shown = batch.cond["cond_signal"][:, 1:].bool()
        assert not (shown & ~held).any() and not (batch.loss_mask & ~held).any()
        assert not (shown & batch.loss_mask).any() and batch.loss_mask.any()
        assert torch.equal(batch.cond["cond_signal"][:, :1], torch.where(shown, batch.x0, 0.0))


def test_scale_augment_multiplies_each_window_by_a_bounded_gain_and_only_signals_take_it() -> None:
    """train.scale_augment a: each window times exp(u), u ~ U(-a, a) (one gain per window, spread over the range);
    0 leaves the batch as it is; data other than signals refuse it in one line."""
    from diffusionlab.config import SignalInfo
    from diffusionlab.data import DataError
    from diffusionlab.spaces import SignalSpace
    from diffusionlab.training.data import TrainingData
    from diffusionlab.training.diffusion import fit_signal

    info = SignalInfo(kind="series", channels=2, length=8, columns=["a", "b"], mean=[0.0, 0.0], std=[1.0, 1.0])
    space = SignalSpace(ModelConfig(data=DataConfig(dataset="series:x.csv", signal=info)))
    x = torch.rand(512, 2, 8) + 0.5
    generator = torch.Generator().manual_seed(0)
    assert space.augment(x, 0.0, generator) is x
    gain = space.augment(x, 0.3, generator) / x
    per_window = gain.flatten(1)
    assert torch.allclose(per_window, per_window[:, :1].expand_as(per_window), rtol=1e-6)
    log_gain = per_window[:, 0].log()
    assert log_gain.abs().max() <= 0.3 + 1e-6 and log_gain.min() < -0.28 and log_gain.max() > 0.28
    assert abs(log_gain.mean().item()) < 0.03  # uniform on [-0.3, 0.3]: mean 0, s.e. 0.008
    with pytest.raises(DataError, match=r"scale_augment=0.3 is for audio and series data; dataset 'digits'"):
        fit_signal(ModelConfig(train=TrainConfig(scale_augment=0.3)), TrainingData(torch.zeros(2, 1, 8, 8), None))


def test_window_scaling_round_trips_on_observed_statistics_and_keeps_observed_points(tmp_path: Path) -> None:
    """RevIN's per-window scaling: the mean and std come from the observed points only (the missing ones may hold
    anything), de-normalise(normalise(x)) == x to float tolerance, a flat window's std is floored; a model trained
    with ``window_scaling="window"`` stores it, keeps the observed points bit for bit and draws a gap of a window
    at level 40 (far outside its training data) near that level, not near 0."""
    from diffusionlab.data.signals import WINDOW_STD_FLOOR, WindowScale

    x = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(0)) * 3 + 5
    observed = torch.rand(4, 2, 16, generator=torch.Generator().manual_seed(1)) < 0.6
    scale = WindowScale.fit(torch.where(observed, x, torch.tensor(1e6)), observed)  # the missing points unseen
    held = [x[i, c][observed[i, c]] for i in range(4) for c in range(2)]
    torch.testing.assert_close(scale.mean.flatten(), torch.stack([h.mean() for h in held]))
    torch.testing.assert_close(scale.std.flatten(), torch.stack([h.std(unbiased=False) for h in held]))
    torch.testing.assert_close(scale.denormalise(scale.normalise(x)), x, rtol=1e-6, atol=1e-5)
    assert float(WindowScale.fit(torch.full((1, 1, 8), 7.0)).std) == pytest.approx(WINDOW_STD_FLOOR)

    np.save(tmp_path / "sines.npy", sines(64, 0))
    config = ModelConfig(
        network=NetworkConfig(**SIGNAL_SIZES["tiny"]),
        data=DataConfig(dataset=str(tmp_path / "sines.npy"), window_scaling="window"),
        train=TrainConfig(steps=10, batch_size=16, warmup_steps=2, mixed_precision="no", **QUIET),
    )
    Trainer(config, tmp_path / "model", progress=False).train()
    assert json.loads((tmp_path / "model" / "config.json").read_text())["data"]["window_scaling"] == "window"
    pipe = Pipeline.load(tmp_path / "model")
    values = torch.from_numpy(sines(1, 1)[0]).float() + 40.0
    keep = torch.ones(1, L, dtype=torch.bool)
    keep[:, 6:10] = False
    drawn = impute_series(pipe, values, keep, 4, steps=8, seed=0)
    assert torch.equal(drawn.samples[:, keep], values[keep].expand(4, -1))  # bit for bit
    assert float((drawn.median[~keep] - 40.0).abs().max()) < 5.0


def test_a_conditional_models_training_windows_are_scaled_by_their_drawn_observed_points() -> None:
    """window_scaling="window" with signal_condition="observed": augment leaves the windows to training_condition,
    which normalises each by the mean and std of the points it draws as observed (as impute_series does with the
    observed points): over those points mean 0 and std 1, the network's observations the normalised values."""
    from diffusionlab.config import SignalInfo
    from diffusionlab.spaces import SignalSpace

    info = SignalInfo(kind="series", channels=1, length=32, columns=["a"], mean=[0.0], std=[1.0])
    data = DataConfig(dataset="series:x.csv", signal=info, signal_condition="observed", window_scaling="window")
    space = SignalSpace(ModelConfig(data=data))
    x = torch.randn(64, 1, 32, generator=torch.Generator().manual_seed(0)) * 4 + 20
    assert torch.equal(space.augment(x, 0.0, torch.Generator()), x)
    x0, extra, loss_mask = space.training_condition(x, torch.Generator().manual_seed(1))
    seen = extra["cond_signal"][:, 1:].bool()
    assert torch.equal(seen, ~loss_mask)
    enough = seen.sum(-1).squeeze(1) > 1
    mean = (x0 * seen).sum(-1) / seen.sum(-1)
    std = (((x0 - mean[..., None]) ** 2 * seen).sum(-1) / seen.sum(-1)).sqrt()
    assert float(mean[enough].abs().max()) < 1e-4 and float((std[enough] - 1).abs().max()) < 1e-4
    assert torch.equal(extra["cond_signal"][:, :1], torch.where(seen, x0, 0))
