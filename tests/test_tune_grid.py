"""Tuned time grids: on the exact mixture the tuned grid cuts the solver's error against the converged answer and
keeps it on new noise; a model's grid is stored in its folder, used by `spacing="tuned"` and by the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clear_error, run
from test_ode_samplers import MixtureDenoiser

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import EDMProcess
from diffusionlab.sampling import SAMPLERS, time_grid
from diffusionlab.sampling.tuning import solver, tune_grid
from diffusionlab.tasks import save_tuned_grid, tune_model_grid

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
EDM = EDMProcess(sigma_min=0.002, sigma_max=80.0)


def mixture(dim: int = 4, k: int = 6) -> MixtureDenoiser:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(k, dim, generator=g, dtype=F64) * 2
    return MixtureDenoiser(EDM, means, torch.full((k,), 0.3, dtype=F64), torch.full((k,), 1 / k, dtype=F64))


def noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return 80.0 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "deis"])
def test_a_tuned_grid_cuts_the_error_and_holds_on_new_noise(sampler: str) -> None:
    den = mixture()
    x = noise(64, 4, 0)
    fine = time_grid(EDM, 400, "log_snr")
    reference = solver(SAMPLERS["dpmpp_3m"], den, x, None)(fine)
    result = tune_grid(den, x, solver(SAMPLERS[sampler], den, x, None), 6, reference)
    times = torch.tensor(result.times, dtype=F64)
    start = time_grid(EDM, 6, result.start_spacing)  # the best standard grid on the calibration batch
    assert times[0] == start[0] and times[-2] == start[-2] and times[-1] == 0 and bool((times.diff() < 0).all())
    assert result.error_after < 0.7 * result.error_before, result
    start = time_grid(EDM, 6, "karras")
    held_out = noise(64, 4, 1)  # new noise: the grid is a property of the model, not of the calibration batch
    truth = solver(SAMPLERS["dpmpp_3m"], den, held_out, None)(fine)
    on = {
        name: solver(SAMPLERS[sampler], den, held_out, None)(grid)
        for name, grid in (("karras", start), ("tuned", times))
    }
    err = {name: float((v - truth).pow(2).mean().sqrt()) for name, v in on.items()}
    assert err["tuned"] < 0.8 * err["karras"], err


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8x8 model with every weight moved by N(0, 0.05^2) (so the network is not ~0)."""
    torch.manual_seed(0)
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=3),
        data=DataConfig(image_size=8, channels=1, num_classes=3),
        sample=SampleConfig(steps=3),
    )
    pipe = Pipeline(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("tune") / "m"
    pipe.save(out)
    return out


def test_a_models_tuned_grid_is_stored_and_sampled_on(model: Path, tmp_path: Path) -> None:
    pipe = Pipeline.load(model)
    result = tune_model_grid(pipe, "dpmpp_2m", 5, 8, evaluations=40)
    assert result.error_after <= result.error_before
    folder = tmp_path / "m"
    pipe.save(folder)
    save_tuned_grid(folder, "dpmpp_2m", 5, result.times)
    again = Pipeline.load(folder)
    assert again.config.sample.tuned_grids == {"dpmpp_2m:5": result.times}
    tuned = again.sample(3, labels=[0, 1, 2], sampler="dpmpp_2m", steps=5, spacing="tuned", seed=4)
    # the same as running the solver on that grid by hand
    denoiser, cond = again.guided_denoiser(3, labels=[0, 1, 2], seed=4, sampler="dpmpp_2m", steps=5)
    from diffusionlab.sampling import sample

    by_hand = again.decode(
        sample(denoiser, again.sample_shape, num_samples=3, sampler="dpmpp_2m", seed=4, cond=cond, times=result.times)
    )
    assert torch.equal(tuned, by_hand)
    with pytest.raises(ValueError, match="no tuned grid for sampler='dpmpp_2m' at steps=6 .it has: dpmpp_2m:5."):
        again.sample(2, sampler="dpmpp_2m", steps=6, spacing="tuned")


def test_the_cli_tunes_stores_and_samples(model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    result = run("tune-grid", folder, "--sampler", "heun", "--nfe", "7", "-n", "4", "--evaluations", "30")
    assert result.exit_code == 0, result.output
    assert "heun at 4 steps (7 evaluations)" in result.output
    assert list(Pipeline.load(folder).config.sample.tuned_grids) == ["heun:4"]
    out = tmp_path / "s.png"
    sampled = run("sample", folder, "-n", "2", "--sampler", "heun", "--steps", "4", "--spacing", "tuned", "--out", out)
    assert sampled.exit_code == 0 and out.is_file(), sampled.output
    assert_clear_error(run("tune-grid", folder, "--sampler", "euler_ancestral", "--nfe", "5"), "cannot be tuned")
    assert_clear_error(run("tune-grid", folder, "--sampler", "heun", "--nfe", "5", "--steps", "3"), "exactly one")
    assert_clear_error(run("sample", folder, "--sampler", "heun", "--steps", "5", "--spacing", "tuned"), "heun:4")
