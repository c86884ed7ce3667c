"""Training the noise-aware classifier of classifier guidance (Dhariwal & Nichol 2021, sec. 4.1): cross-entropy
on x_t drawn from the model's own forward process at uniformly drawn times (floor 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..denoisers import noise_conditioning
from ..losses import sample_times
from ..networks import NoiseAwareClassifier
from ..pipeline import Pipeline
from ..processes import broadcast_like
from ..sampling import sample_seed
from .trainer import TrainingData

__all__ = ["train_noise_aware_classifier", "noisy_accuracy"]


def _noisy_batch(
    pipe: Pipeline, data: TrainingData, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.randint(len(data.x), (batch_size,), generator=generator)
    x0 = data.x[idx]
    t = sample_times(pipe.process, batch_size, "uniform", generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = pipe.process.add_noise(x0, t, eps)
    alpha, sigma = broadcast_like(pipe.process.alpha(t), x0), broadcast_like(pipe.process.sigma(t), x0)
    # the same input scaling and noise-level input as the denoising network (denoisers.Denoiser)
    x_in = (x_t / torch.sqrt(alpha**2 + sigma**2)).float()
    return x_in, noise_conditioning(pipe.process, t).float(), data.labels[idx]


def train_noise_aware_classifier(
    pipe: Pipeline,
    data: TrainingData,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    base_channels: int = 32,
    progress: bool = True,
) -> NoiseAwareClassifier:
    """A classifier of p(y | x_t) for the pipeline's process, trained on labelled data in the model's space."""
    if data.labels is None or not data.num_classes:
        raise ValueError("classifier guidance needs a labelled dataset; this one has no labels.")
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and lr={lr} must all be positive.")
    torch.manual_seed(seed)
    net = NoiseAwareClassifier(
        data.x.shape[1], data.num_classes, base_channels, tuple(pipe.config.network.channel_mults)
    ).to(pipe.device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bar = tqdm(range(steps), desc="classifier", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        gen = torch.Generator().manual_seed(sample_seed(seed, step))
        x_in, c_noise, labels = _noisy_batch(pipe, data, batch_size, gen)
        loss = F.cross_entropy(net(x_in.to(pipe.device), c_noise.to(pipe.device)), labels.to(pipe.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval().requires_grad_(False)


@torch.no_grad()
def noisy_accuracy(
    pipe: Pipeline, classifier: NoiseAwareClassifier, data: TrainingData, n: int = 1024, seed: int = 1
) -> float:
    """Share of noisy examples (uniform times) the classifier labels correctly: a check of what it learned."""
    gen = torch.Generator().manual_seed(seed)
    x_in, c_noise, labels = _noisy_batch(pipe, data, n, gen)
    pred = classifier(x_in.to(pipe.device), c_noise.to(pipe.device)).argmax(1).cpu()
    return float((pred == labels).float().mean())
