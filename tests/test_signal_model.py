"""Signals through the one pipeline (issue 17): every sampler on 1-D signals with an exact denoiser, series models
that impute (observed points kept) and forecast, audio models that write WAV files, and the command line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clear_error, run

from diffusionlab.config import SIGNAL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.data.signals import read_audio, write_wav
from diffusionlab.denoisers import Prediction
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import VPProcess, broadcast_like
from diffusionlab.sampling import SAMPLERS, sample
from diffusionlab.tasks import calibrate_series, forecast, impute_series
from diffusionlab.training import Trainer

QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}
L = 16


class SignalMixture:
    """The exact denoiser of signals (1, L) drawn from a mixture of two waveforms m_k plus N(0, s^2 I) noise with
    weights w_k: x0_hat = sum_k p(k | x_t) (m_k + a s^2 / (a^2 s^2 + sigma^2) (x_t - a m_k))."""

    def __init__(self, process: VPProcess, means: torch.Tensor, std: float, weights: torch.Tensor) -> None:
        self.process, self.means, self.std, self.log_w = process, means, std, torch.log(weights)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: dict | None = None) -> Prediction:
        t = t if isinstance(t, torch.Tensor) else torch.tensor(float(t))
        flat = x.reshape(len(x), -1)
        a = broadcast_like(self.process.alpha(t), flat).reshape(-1, 1, 1)
        s = broadcast_like(self.process.sigma(t), flat).reshape(-1, 1, 1)
        v = a**2 * self.std**2 + s**2
        r = flat[:, None, :] - a * self.means[None]
        log_p = self.log_w - (r**2 / (2 * v)).sum(-1) - 0.5 * flat.shape[1] * torch.log(v[..., 0])
        w = torch.softmax(log_p, dim=1)[..., None]
        x0 = (w * (self.means[None] + a * self.std**2 / v * r)).sum(1).reshape(x.shape)
        eps = (w * (s / v * r)).sum(1).reshape(x.shape)
        return Prediction(x, x0, eps, a.reshape(-1, 1, 1), s.reshape(-1, 1, 1))


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"consistency"}))  # that one needs a consistency model
def test_every_sampler_draws_1d_signals_from_an_exact_mixture(sampler: str) -> None:
    """A sine and a sawtooth of 16 steps with weights 0.3 / 0.7: the share of samples nearest each template is
    right within 4 points and the spread around it is the mixture's (s^2 per step) within 20% (measured: shares
    0.277-0.321, spreads 0.945-1.109; log-SNR spacing, as the 2-D mixture tests of the samplers use)."""
    process = VPProcess()
    steps = torch.arange(L, dtype=torch.float32)
    means = torch.stack([torch.sin(2 * math.pi * steps / L), 2 * (steps / L) - 1])
    std = 0.3
    denoiser = SignalMixture(process, means, std, torch.tensor([0.3, 0.7]))
    steps = {"annealed_langevin": 100, "pc": 300}.get(sampler, 150)
    options = {"step_rule": "sigma"} if sampler == "pc" else {}
    x = sample(denoiser, (1, L), num_samples=1500, sampler=sampler, steps=steps, seed=0, spacing="log_snr", **options)
    assert x.shape == (1500, 1, L) and torch.isfinite(x).all()
    flat = x.reshape(len(x), -1)
    nearest = torch.cdist(flat, means).argmin(1)
    share = float((nearest == 0).float().mean())
    assert abs(share - 0.3) < 0.04, (sampler, share)
    spread = float(((flat - means[nearest]) ** 2).mean() / std**2)
    assert abs(spread - 1) < 0.2, (sampler, spread)


def write_series(path: Path, steps: int = 400, seed: int = 0) -> Path:
    """Two channels: a noisy sine of period 20 and its cosine, with a time column."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "a", "b"])
        for i in t:
            a = 10 + 3 * math.sin(2 * math.pi * i / 20) + rng.normal(0, 0.2)
            b = -5 + 2 * math.cos(2 * math.pi * i / 20) + rng.normal(0, 0.2)
            writer.writerow([f"2020-01-{i:04d}", f"{a:.3f}", f"{b:.3f}"])
    return path


def series_config(data: Path, steps: int = 200) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**SIGNAL_SIZES["tiny"]),
        data=DataConfig(dataset=f"series:{data}", window=L),
        train=TrainConfig(steps=steps, batch_size=32, warmup_steps=10, **QUIET),
    )


@pytest.fixture(scope="module")
def series_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("series")
    data = write_series(folder / "s.csv")
    Trainer(series_config(data), folder / "model", progress=False).train()
    return folder / "model", data


def test_a_series_model_samples_windows_in_the_datas_units(series_model: tuple[Path, Path], tmp_path: Path) -> None:
    pipe = Pipeline.load(series_model[0])
    info = pipe.config.data.signal
    assert pipe.config.space == "signal" and info.kind == "series" and info.columns == ["a", "b"]
    assert abs(info.mean[0] - 10) < 0.2 and abs(info.std[0] - 3 / math.sqrt(2)) < 0.2
    x = pipe.sample(6, steps=30, seed=0)
    assert x.shape == (6, 2, L)
    # the same noise at any batch size; batched convolutions may differ in the last bits only
    torch.testing.assert_close(x, pipe.sample(6, steps=30, seed=0, batch_size=4), atol=1e-5, rtol=0)
    written = pipe.space.write_files(x, tmp_path / "out")
    rows = list(csv.DictReader(written[0].open()))
    assert len(rows) == 6 * L and set(rows[0]) == {"sample", "t", "a", "b"}
    a = np.array([float(r["a"]) for r in rows])
    assert 5 < a.mean() < 15 and a.std() > 1  # the sine's level and swing, in the data's units


def test_series_imputation_keeps_observed_points_and_forecasts_have_bands(series_model: tuple[Path, Path]) -> None:
    pipe = Pipeline.load(series_model[0])
    info = pipe.config.data.signal
    t = torch.arange(40, dtype=torch.float32)
    truth = torch.stack([torch.sin(2 * math.pi * t / 20) * 3, torch.cos(2 * math.pi * t / 20) * 2])
    values = (truth + torch.tensor([10.0, -5.0])[:, None] - torch.tensor(info.mean)[:, None]) / torch.tensor(info.std)[
        :, None
    ]
    observed = torch.ones_like(values, dtype=torch.bool)
    observed[:, 18:24] = False
    drawn = impute_series(pipe, values, observed, 12, steps=30, seed=0)
    assert drawn.samples.shape == (12, 2, 40)
    assert torch.equal(drawn.samples[:, observed], values[observed].expand(12, -1))  # bit for bit
    error = (drawn.median[~observed] - values[~observed]).abs().mean()
    assert float(error) < 0.5, float(error)  # a learned sine fills the gap (the series' std is 1 here)
    ahead = forecast(pipe, values[:, :30], 4, 12, steps=30, seed=0)
    assert ahead.samples.shape == (12, 2, 4)
    low, high = ahead.quantile(0.05), ahead.quantile(0.95)
    assert (high > low).all() and float((ahead.median - values[:, 30:34]).abs().mean()) < 0.8
    with pytest.raises(ValueError, match="horizon=16 must be shorter than the model's window of 16"):
        forecast(pipe, values, 16, 2)
    with pytest.raises(ValueError, match="nothing to impute"):
        impute_series(pipe, values, torch.ones_like(observed), 2)


def test_a_calibrated_series_model_keeps_observed_points_and_scales_its_bands(series_model: tuple[Path, Path]) -> None:
    """calibrate_series scores every hidden point of its cases (3 draws of 25% of the 20 held-out steps of 2
    channels: 30 points); impute and forecast with the calibration give the uncalibrated draws with their spread
    scaled by it, the observed points bit for bit."""
    pipe = Pipeline.load(series_model[0])
    t = torch.arange(40, dtype=torch.float32)
    values = torch.stack([torch.sin(2 * math.pi * t / 20), torch.cos(2 * math.pi * t / 20)]) * 1.4
    fitted = calibrate_series(pipe, values, "missing", 0.25, start=20, draws=3, num_samples=8, steps=5)
    assert fitted.points == 30 and fitted.task == "missing" and fitted.scale > 0
    observed = torch.ones_like(values, dtype=torch.bool)
    observed[:, 18:24] = False
    raw = impute_series(pipe, values, observed, 8, steps=5, seed=0)
    calibrated = impute_series(pipe, values, observed, 8, steps=5, seed=0, calibration=fitted)
    assert torch.equal(calibrated.samples[:, observed], values[observed].expand(8, -1))  # bit for bit
    spread = calibrated.quantile(0.95) - calibrated.median
    torch.testing.assert_close(spread, fitted.scale * (raw.quantile(0.95) - raw.median), atol=1e-5, rtol=1e-5)
    ahead = forecast(pipe, values[:, :30], 4, 8, steps=5, seed=0, calibration=fitted)
    plain = forecast(pipe, values[:, :30], 4, 8, steps=5, seed=0)
    torch.testing.assert_close(ahead.median, plain.median)
    with pytest.raises(ValueError, match="missing=1.5 is the share of points to hide"):
        calibrate_series(pipe, values, "missing", 1.5)
    with pytest.raises(ValueError, match="draws=0 must be a positive integer"):
        calibrate_series(pipe, values, "horizon", 4, draws=0)


def test_cli_trains_and_imputes_and_forecasts_a_series(tmp_path: Path, one_thread: None) -> None:
    data = write_series(tmp_path / "s.csv", steps=200)
    out = tmp_path / "run"
    result = run(
        "train", "--dataset", f"series:{data}", "--window", L, "--model-size", "tiny", "--steps", 30,
        "--batch-size", 16, "--sample-every", 0, "--no-final-eval", "--no-progress", "--log-with", "", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "samples.png").is_file()
    rows = list(csv.reader(data.open()))
    for row in rows[50:55]:
        row[1] = ""
    holes = tmp_path / "holes.csv"
    csv.writer(holes.open("w", newline="")).writerows(rows[:80])
    result = run("impute", out, "--input", holes, "--out", tmp_path / "f.csv", "-n", 5, "--steps", 5)
    assert result.exit_code == 0, result.output
    filled = list(csv.DictReader((tmp_path / "f.csv").open()))
    assert [r["time"] for r in filled] == [r[0] for r in rows[1:80]]
    for r, original in zip(filled, rows[1:80], strict=True):
        if original[1]:
            assert r["a"] == r["a_low"] == r["a_high"] == original[1]  # observed: the input's own text
        else:
            assert float(r["a_low"]) <= float(r["a"]) <= float(r["a_high"])
    plot = tmp_path / "fc.png"
    result = run("forecast", out, "--input", holes, "--horizon", 4, "--out", tmp_path / "fc.csv", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader((tmp_path / "fc.csv").open()))) == 4 and plot.stat().st_size > 1000
    whole = tmp_path / "whole.csv"
    csv.writer(whole.open("w", newline="")).writerows(list(csv.reader(data.open()))[:61])  # steps 0-59, no gaps
    fitted = tmp_path / "calibration.json"
    result = run(
        "calibrate", out, "--input", whole, "--task", "horizon", "--size", 4, "--start", 40, "-n", 5, "--steps", 3,
        "--out", fitted,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(fitted.read_text())["points"] == 5 * 4 * 2  # origins 40, 44, ..., 56; channels a and b
    calibrated = tmp_path / "fc-cal.csv"
    result = run("forecast", out, "--input", holes, "--horizon", 4, "--out", calibrated, "--calibration", fitted)
    assert result.exit_code == 0, result.output
    assert_clear_error(
        run("impute", out, "--input", holes, "--calibration", fitted, "--level", 0.8, "--no-progress"),
        "was fitted for --level=0.9",
    )
    assert_clear_error(run("calibrate", out, "--input", holes, "--task", "horizon", "--size", 4), "empty cells")
    assert_clear_error(run("forecast", out, "--input", holes, "--horizon", 16, "--no-progress"), "horizon=16")
    text = tmp_path / "text.csv"
    text.write_text("time,a,b\n1,2,x\n2,3,4\n")
    assert_clear_error(run("impute", out, "--input", text, "--no-progress"), "'b'")


def write_tones(folder: Path, rate: int = 800, per_class: int = 12) -> Path:
    """Two classes of 0.1 s tones: low (50-70 Hz) and high (200-240 Hz), with random phases."""
    rng = np.random.default_rng(0)
    for name, (lo, hi) in {"high": (200, 240), "low": (50, 70)}.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            t = np.arange(int(rate * 0.1)) / rate
            tone = 0.5 * np.sin(2 * math.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 6.3))
            write_wav(tone[None], folder / name / f"{i}.wav", rate)
    return folder


def test_an_audio_model_writes_wavs_of_its_rate_and_length(tmp_path: Path, one_thread: None) -> None:
    data = write_tones(tmp_path / "tones")
    config = ModelConfig(
        network=NetworkConfig(**SIGNAL_SIZES["tiny"], num_classes=0, kind="diffwave", dilation_cycle=4),
        data=DataConfig(dataset=f"audio:{data}"),
        train=TrainConfig(steps=20, batch_size=8, warmup_steps=2, **QUIET),
    )
    Trainer(config, tmp_path / "model", progress=False).train()
    pipe = Pipeline.load(tmp_path / "model")
    info = pipe.config.data.signal
    assert (info.kind, info.sample_rate, info.channels, info.length) == ("audio", 800, 1, 80)
    assert pipe.config.network.kind == "diffwave" and pipe.config.data.class_names == ["high", "low"]
    clips = pipe.sample(labels=[0, 1, 1], steps=10, seed=0)
    assert clips.shape == (3, 1, 80) and clips.abs().max() <= 1  # audio is clipped to its range
    torch.testing.assert_close(clips, pipe.sample(labels=[0, 1, 1], steps=10, seed=0, batch_size=1), atol=1e-5, rtol=0)
    written = pipe.space.write_files(clips, tmp_path / "wav", labels=[0, 1, 1])
    assert [p.relative_to(tmp_path / "wav").as_posix() for p in written] == ["0/0000.wav", "1/0001.wav", "1/0002.wav"]
    signal, rate = read_audio(written[1])
    assert rate == 800 and signal.shape == (1, 80)
    np.testing.assert_allclose(signal, clips[1].numpy(), atol=1 / 2**15 + 1e-6)  # 16-bit PCM
    pipe.space.save(clips, tmp_path / "spectrograms.png", nrow=3)
    assert (tmp_path / "spectrograms.png").stat().st_size > 1000


def test_cli_bad_signal_input_is_one_clear_line(tmp_path: Path) -> None:
    out = tmp_path / "never"
    (tmp_path / "notaudio").mkdir()
    (tmp_path / "notaudio" / "x.wav").write_bytes(b"RIFF....not a wav at all")
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    write_wav(np.zeros((1, 800)), mixed / "a" / "1.wav", 8000)
    write_wav(np.zeros((1, 1600)), mixed / "a" / "2.wav", 16000)
    short = tmp_path / "short"
    short.mkdir()
    write_wav(np.zeros((1, 800)), short / "1.wav", 8000)
    write_wav(np.zeros((1, 400)), short / "2.wav", 8000)
    series = tmp_path / "s.csv"
    series.write_text("a,b\n1,x\n2,3\n3,4\n")
    empty = tmp_path / "e.csv"
    empty.write_text("a,b\n1,\n2,\n3,\n")
    cases = [
        (("--dataset", f"audio:{tmp_path / 'notaudio'}"), ("x.wav",)),
        (("--dataset", f"audio:{mixed}"), ("--sample-rate",)),
        (("--dataset", f"audio:{short}", "--clip-seconds", "0.1"), ("2.wav",)),
        (("--dataset", f"series:{series}"), ("'b'", "x")),
        (("--dataset", f"series:{empty}", "--window", "2"), ("'b'",)),
    ]
    for args, fragments in cases:
        assert_clear_error(run("train", *args, "--out", out, "--no-progress"), *fragments)
    assert not out.exists()
