"""Classifier guidance through the CLI, decisively: on data whose classes a closed-form rule tells apart, the share
of samples in the requested class rises from chance (no guidance) to all of them with ``--classifier-scale``, and
the guided denoiser is eps - s sigma grad log p(y | x_t) (Dhariwal & Nichol 2021, eq. 14) computed by autograd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run
from PIL import Image

from diffusionlab.config import (
    MODEL_SIZES,
    DataConfig,
    DiffusionConfig,
    EDMProcessConfig,
    ModelConfig,
    NetworkConfig,
    SampleConfig,
    TrainConfig,
)
from diffusionlab.networks import NoiseAwareClassifier
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

N = 32  # samples per run, labels 0, 1, 0, 1, ...
CLASSES = ("bottom", "top")  # folder names: label 0 is bright at the bottom, label 1 bright at the top


def write_halves(folder: Path, per_class: int = 64) -> None:
    """8x8 grayscale PNGs in class folders: +-0.7 (in [-1, 1]) in the top half and the opposite in the bottom half,
    plus N(0, 0.1^2) per pixel, so the sign of (top mean - bottom mean) is the Bayes-optimal label."""
    gen = np.random.default_rng(0)
    rows = np.where(np.arange(8) < 4, 1.0, -1.0)[:, None] * np.ones((1, 8))
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            x = 0.7 * (2 * label - 1) * rows + 0.1 * gen.standard_normal((8, 8))
            pixels = np.clip((x + 1) * 127.5, 0, 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def top_minus_bottom(path: Path) -> float:
    """Mean brightness of the top half minus the bottom half of an 8x8 PNG: > 0 is label 1, < 0 label 0."""
    pixels = np.asarray(Image.open(path), dtype=np.float64) / 255
    return float(pixels[:4].mean() - pixels[4:].mean())


@pytest.fixture(scope="module")
def guided_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unconditional tiny model trained 60 steps on the halves (about 7 s), and its noise-aware classifier
    trained by ``diffusionlab train-classifier`` (about 4 s)."""
    root = tmp_path_factory.mktemp("guided")
    write_halves(root / "halves")
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=None),
        data=DataConfig(dataset=str(root / "halves"), image_size=8, channels=1),
        train=TrainConfig(
            steps=60, batch_size=16, lr=2e-3, warmup_steps=5, sample_every=0, final_eval=False, checkpoint_every=0
        ),
        sample=SampleConfig(steps=10),
    )
    Trainer(config, root / "model", progress=False, cpu=True, track=False).train()
    args = ["--dataset", root / "halves", "--steps", 60, "--batch-size", 32, "--lr", 3e-3, "--no-progress"]
    result = run("train-classifier", root / "model", *args)
    assert result.exit_code == 0, result.output
    return root / "model"


def share_in_requested_class(model: Path, out: Path, scale: float) -> float:
    """Share of N samples from ``diffusionlab sample`` whose closed-form label is the requested one (labels 0, 1,
    0, 1, ...; without guidance the model is sampled unconditionally and compared with the same labels)."""
    labels = [i % 2 for i in range(N)]
    guide = ["--labels", ",".join(map(str, labels)), "--classifier-scale", scale] if scale else ["-n", N]
    common = ["--steps", 10, "--seed", 0, "--out", out.with_suffix(".png"), "--out-dir", out, "--no-progress"]
    result = run("sample", model, *guide, *common)
    assert result.exit_code == 0, result.output
    if not scale:
        sides = [top_minus_bottom(f) for f in sorted(out.iterdir())]
        return float(np.mean([(side > 0) == bool(label) for side, label in zip(sides, labels, strict=True)]))
    hits = [(top_minus_bottom(f) > 0) == bool(label) for label in (0, 1) for f in (out / str(label)).iterdir()]
    assert len(hits) == N
    return float(np.mean(hits))


def test_classifier_scale_moves_samples_into_the_requested_class(guided_model: Path, tmp_path: Path) -> None:
    # measured: 15/32 without guidance (chance: the two classes are equally likely), 27/32 at s = 1, 31/32 at
    # s = 3, 32/32 at s = 10, 30 and 100; a binomial(32, 1/2) exceeds 24 with probability 0.001
    unguided = share_in_requested_class(guided_model, tmp_path / "s0", 0.0)
    guided = share_in_requested_class(guided_model, tmp_path / "s10", 10.0)
    assert unguided <= 0.75, unguided
    assert guided >= 0.95, guided


def assert_guided_eps(pipe: Pipeline, t: torch.Tensor, scale: float = 3.0) -> None:
    """The pipeline's classifier-guided eps at (x, t) for labels 0, 1, 1, 0 against eps - s sigma grad log p(y | x_t)
    computed here by autograd (Dhariwal & Nichol 2021, eq. 14), and x0 = (x - sigma eps) / alpha."""
    labels = torch.tensor([0, 1, 1, 0])
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    guided, cond = pipe.guided_denoiser(4, labels=labels.tolist(), classifier_scale=scale, thresholding="none")
    pred = guided(x, t, cond)
    # the classifier sees x / sqrt(alpha^2 + sigma^2) and c_noise = -log(alpha^2 / sigma^2) / 8, as the network does
    plain = pipe.denoiser()(x, t)
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in (pipe.process.alpha(t), pipe.process.sigma(t)))
    c_noise = (-torch.log(alpha**2 / sigma**2) / 8).flatten().float()
    x_in = x.clone().requires_grad_(True)
    logits = pipe.classifier(x_in / torch.sqrt(alpha**2 + sigma**2).float(), c_noise)
    (grad,) = torch.autograd.grad(torch.log_softmax(logits, dim=1)[torch.arange(4), labels].sum(), x_in)
    expected = plain.eps - scale * sigma.float() * grad
    assert float((scale * sigma * grad).abs().max()) > 0.05  # guidance moves eps far more than the tolerance
    torch.testing.assert_close(pred.eps.float(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred.x0.float(), ((x - sigma * expected) / alpha).float(), atol=1e-4, rtol=1e-4)


def test_guided_eps_of_the_cli_trained_model(guided_model: Path) -> None:
    assert_guided_eps(Pipeline.load(guided_model), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))


def test_guided_eps_on_an_edm_process() -> None:
    # alpha^2 + sigma^2 = 1 on the DDPM process above, so only a process such as EDM's (alpha = 1, sigma = t) shows
    # that the classifier's input is scaled; untrained weights moved by seeded noise (zero last layers otherwise)
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=None),
        data=DataConfig(image_size=8, channels=1),
        diffusion=DiffusionConfig(process=EDMProcessConfig(), parameterisation="edm"),
    )
    torch.manual_seed(0)
    pipe = Pipeline(config)
    pipe.classifier = NoiseAwareClassifier(1, 2, base_channels=8, channel_mults=(1, 2)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*pipe.network.parameters(), *pipe.classifier.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    assert_guided_eps(pipe, torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64))
