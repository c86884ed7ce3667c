"""The ODE as a map: inversion reconstructs its input better as the steps grow, editing keeps what it should,
interpolated noises keep Gaussian norm statistics, and variations and interpolations are seed-stable and end on
the samples they start from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusionlab.config import MODEL_SIZES, DataConfig, DiffusionConfig, EDMProcessConfig, ModelConfig, NetworkConfig
from diffusionlab.pipeline import Pipeline
from diffusionlab.sampling.interpolation import slerp, slerp_path
from diffusionlab.tasks import interpolate, invert, regenerate, variations

pytestmark = pytest.mark.usefixtures("one_thread")


def noisy(config: ModelConfig) -> Pipeline:
    """An untrained model with every weight moved by N(0, 0.05^2), so its ODE is not the identity."""
    torch.manual_seed(0)
    pipe = Pipeline(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return pipe


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return noisy(
        ModelConfig(
            network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=3),
            diffusion=DiffusionConfig(process=EDMProcessConfig()),
            data=DataConfig(image_size=8, channels=1, num_classes=3),
        )
    )


def images(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g).round() * 0.8 + 0.1


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m"])
def test_inversion_reconstructs_better_with_more_steps(pipe: Pipeline, sampler: str) -> None:
    x = images()
    settings = {"labels": [0, 1, 2, 0], "sampler": sampler, "guidance": 1.0, "thresholding": "none"}
    errors = []
    for steps in (10, 40, 160):
        noise = invert(pipe, x, steps=steps, **settings)
        back = regenerate(pipe, noise, steps=steps, **settings)
        errors.append(float((back - x).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


def test_editing_from_a_middle_level_keeps_more_of_the_input_than_from_the_top(pipe: Pipeline) -> None:
    x = images()
    common = {"steps": 40, "guidance": 1.0, "thresholding": "none"}
    far = {}
    for name, t in (("middle", 0.5), ("top", None)):
        state = invert(pipe, x, to_t=t, labels=[0, 0, 0, 0], **common)
        edited = regenerate(pipe, state, from_t=t, labels=[1, 1, 1, 1], **common)
        far[name] = float((edited - x).abs().mean())
    assert far["middle"] < far["top"], far
    with pytest.raises(ValueError, match="to_t=100 must lie in"):
        invert(pipe, x, to_t=100.0, steps=5)
    with pytest.raises(ValueError, match="sampler='euler_ancestral' cannot invert"):
        invert(pipe, x, sampler="euler_ancestral", steps=5)


def test_slerp_keeps_the_norm_statistics_of_gaussian_noise() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 256, generator=g), torch.randn(2000, 256, generator=g)
    for w in (0.25, 0.5, 0.75):
        mid = slerp(a, b, w)
        norms = mid.norm(dim=1)
        assert abs(float(norms.mean()) - 16.0) < 0.1  # on the shell of radius sqrt(d), as N(0, I) noise
        assert abs(float(mid.std()) - 1.0) < 0.01 and abs(float(mid.mean())) < 0.01
    lerp = 0.5 * (a + b)
    assert float(lerp.norm(dim=1).mean()) < 12  # a straight line falls inside the shell: why slerp
    path = slerp_path(a[0], b[0], 5)
    assert torch.allclose(path[0], a[0], atol=1e-6) and torch.allclose(path[-1], b[0], atol=1e-6)


def test_variations_and_interpolations_are_seed_stable(pipe: Pipeline) -> None:
    settings = {"labels": [2], "steps": 8, "sampler": "dpmpp_2m"}
    alone = pipe.sample(3, labels=[2, 2, 2], steps=8, sampler="dpmpp_2m", seed=5)
    same = variations(pipe, 5, 9, 0.0, 2, index=1, **settings)
    assert torch.allclose(same, alone[1:2].expand(2, -1, -1, -1), atol=1e-6)  # strength 0: the sample itself
    other = pipe.sample(2, labels=[2, 2], steps=8, sampler="dpmpp_2m", seed=9)
    assert torch.allclose(variations(pipe, 5, 9, 1.0, 2, index=1, **settings), other, atol=1e-6)  # 1: the other seed's
    half = variations(pipe, 5, 9, 0.3, 2, index=1, **settings)
    assert torch.equal(half, variations(pipe, 5, 9, 0.3, 2, index=1, **settings))
    assert float((half - same).abs().mean()) < float((half - other).abs().mean())
    frames = interpolate(pipe, 5, seeds=(5, 9), **settings)
    ends = torch.stack([alone[0], other[0]])
    assert torch.allclose(frames[[0, -1]], ends, atol=1e-6) and frames.shape == (5, 1, 8, 8)


def test_the_cli_interpolates_varies_and_inverts(pipe: Pipeline, tmp_path: Path) -> None:
    from cli_helpers import assert_clear_error, run
    from PIL import Image

    folder = tmp_path / "m"
    pipe.save(folder)
    strip, gif = tmp_path / "strip.png", tmp_path / "path.gif"
    done = run(
        "interpolate", folder, "--seeds", "1", "2", "--frames", "4", "--steps", "5", "--out", strip, "--gif", gif
    )
    assert done.exit_code == 0, done.output
    assert Image.open(strip).size[0] > Image.open(strip).size[1] and Image.open(gif).n_frames == 4
    varied = tmp_path / "var.png"
    done = run(
        "variations",
        folder,
        "--seed",
        "3",
        "--variation-seed",
        "4",
        "--strength",
        "0.2",
        "-n",
        "3",
        "--steps",
        "5",
        "--out",
        varied,
    )
    assert done.exit_code == 0 and varied.is_file(), done.output
    source = tmp_path / "in.png"
    Image.fromarray((images(1)[0, 0].numpy() * 255).astype("uint8")).save(source)
    edited = tmp_path / "edit.png"
    done = run(
        "invert",
        folder,
        "--image",
        source,
        "--to-t",
        "0.5",
        "--label",
        "0",
        "--as-label",
        "1",
        "--steps",
        "10",
        "--out",
        edited,
    )
    assert done.exit_code == 0 and edited.is_file(), done.output
    assert "reconstruction" in done.output
    assert_clear_error(run("variations", folder, "--strength", "1.5", "--out", varied), "--strength=1.5")


def test_null_text_inversion_reconstructs_under_guidance_as_well_as_unguided_inversion(pipe: Pipeline) -> None:
    """DDIM inversion at guidance 3 misses its input; null-text inversion (the null label's soft weights optimised
    per step) brings the guided round trip down to the unguided one's error, its floor."""
    from diffusionlab.tasks import invert_null

    x, common = images(), {"labels": [0, 1, 2, 0], "steps": 10, "thresholding": "none"}
    rms = lambda y: float((y - x).pow(2).mean().sqrt())  # noqa: E731
    guided, unguided = {**common, "guidance": 3.0}, {**common, "guidance": 1.0}
    plain = rms(regenerate(pipe, invert(pipe, x, **guided), **guided))
    floor = rms(regenerate(pipe, invert(pipe, x, **unguided), **unguided))
    found = invert_null(pipe, x, iterations=8, lr=0.1, **guided)
    null = rms(regenerate(pipe, found.noise, nulls=found, **guided))
    assert null < 0.85 * plain and null < 1.05 * floor, (null, plain, floor)
    assert found.nulls[0]["labels"].shape == (4, 4) and len(found.nulls) == len(found.times) - 1
    with pytest.raises(ValueError, match="guidance > 1"):
        invert_null(pipe, x, **unguided)
    with pytest.raises(ValueError, match="needs the labels or the prompt"):
        invert_null(pipe, x, guidance=3.0, steps=10)


def test_interpolating_between_two_classes_ends_on_each_class_and_slerps_the_embeddings(pipe: Pipeline) -> None:
    from diffusionlab.networks import LabelEmbedding
    from diffusionlab.sampling.interpolation import slerp_weights

    s = {"guidance": 2.0, "steps": 6, "seed": 5, "thresholding": "none"}
    for path in ("linear", "spherical"):
        frames = interpolate(pipe, 4, classes=(0, 2), path=path, **s)
        torch.testing.assert_close(frames[0], pipe.sample(1, labels=[0], **s)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(frames[-1], pipe.sample(1, labels=[2], **s)[0], atol=1e-5, rtol=0)
        assert float((frames[1] - frames[0]).abs().mean()) > 1e-3
    table = next(m for m in pipe.network.modules() if isinstance(m, LabelEmbedding)).table.weight.detach()
    a, b = table[0:1].double(), table[2:3].double()
    ca, cb = slerp_weights(a, b, 0.5)
    torch.testing.assert_close((ca * a + cb * b).norm(), (a.norm() + b.norm()) / 2)
    torch.testing.assert_close(ca * a + cb * b, slerp(a, b, 0.5))
    with pytest.raises(ValueError, match="two class labels in 0..2"):
        interpolate(pipe, 3, classes=(0, 3), **s)
