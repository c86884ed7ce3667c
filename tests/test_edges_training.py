"""Training edges with exact answers: the EMA update and its warm-up, the LR schedules the trainer applies
(warm-up then cosine or constant, one-cycle), class-label dropout per sample, and the noise-aware classifier's
accuracy against the Bayes-optimal accuracy of a task whose answer is known in closed form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.denoisers import noise_conditioning
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import (
    Trainer,
    TrainingData,
    ema_decay_at,
    lr_lambda,
    noisy_accuracy,
    train_noise_aware_classifier,
    update_ema,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SQRT5 = math.sqrt(5.0)


def tiny_config(num_classes: int | None = 0, **train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=num_classes),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(**{"batch_size": 4, "sample_every": 0, "checkpoint_every": 0, **train}),
        sample=SampleConfig(steps=3),
    )


def make_trainer(out: Path, data: TrainingData | None = None, num_classes: int | None = 0, **train: object) -> Trainer:
    return Trainer(tiny_config(num_classes, **train), out, data=data, progress=False, cpu=True, log_tensorboard=False)


def flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).double()


# ---------------------------------------------------------------------------------------------- EMA
@pytest.mark.parametrize(
    "step, decay, start, expected",
    [
        (0, 0.999, 3, 0.0),  # before the start: copy the weights
        (2, 0.999, 3, 0.0),
        (3, 0.999, 3, 1 / 10),  # (1 + n) / (10 + n) with n = 0 steps since the start
        (4, 0.999, 3, 2 / 11),
        (13, 0.999, 3, 11 / 20),
        (5, 0.2, 3, 0.2),  # 3/12 = 0.25, capped at the decay
        (10**6, 0.999, 0, 0.999),
    ],
)
def test_ema_decay_warms_up_then_holds(step: int, decay: float, start: int, expected: float) -> None:
    assert ema_decay_at(step, decay, start) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_update_ema_is_the_weighted_average_and_copies_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema.load_state_dict(model.state_dict())
    expected = flat(model)
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves BatchNorm's running statistics (buffers)
        decay = ema_decay_at(step, 0.5, 2)
        update_ema(ema, model, decay)
        expected = decay * expected + (1 - decay) * flat(model)  # ema <- d ema + (1 - d) model
        np.testing.assert_allclose(flat(ema).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
        for mine, theirs in zip(ema.buffers(), model.buffers(), strict=True):
            assert torch.equal(mine, theirs)
    assert not torch.allclose(flat(ema), flat(model))  # after the warm-up the average lags the weights


def test_the_trainer_averages_its_weights_with_the_warmed_up_decay(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, steps=6, ema_decay=0.2, ema_start=2, warmup_steps=0, lr=1e-2)
    decays = [0.0, 0.0, 0.1, 2 / 11, 0.2, 0.2]  # copy, copy, 1/10, 2/11, then capped at 0.2
    expected = None
    for step, decay in enumerate(decays):
        trainer.train_step(step)
        weights = flat(trainer.accelerator.unwrap_model(trainer.model))
        expected = weights if expected is None else decay * expected + (1 - decay) * weights
        np.testing.assert_allclose(flat(trainer.pipeline.ema).numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    assert float((flat(trainer.pipeline.ema) - weights).abs().max()) > 1e-4  # the average is not the weights


# ---------------------------------------------------------------------------------------------- LR schedules
@pytest.mark.parametrize(
    "schedule, warmup, total, values",
    [
        # warm-up (step + 1) / warmup, then 0.5 (1 + cos(pi (step - warmup) / (total - warmup))), 0 after the end
        ("cosine", 4, 12, {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 6: 0.5 + math.sqrt(2) / 4, 8: 0.5, 12: 0.0, 30: 0.0}),
        ("cosine", 0, 10, {0: 1.0, 5: 0.5, 10: 0.0}),
        ("constant", 4, 12, {0: 0.25, 2: 0.75, 3: 1.0, 4: 1.0, 100: 1.0}),
    ],
)
def test_lr_multiplier_at_given_steps(schedule: str, warmup: int, total: int, values: dict[int, float]) -> None:
    f = lr_lambda(schedule, warmup, total)
    for step, expected in values.items():
        assert f(step) == pytest.approx(expected, abs=1e-12), step


def applied_lrs(trainer: Trainer, steps: int) -> list[float]:
    """The learning rate AdamW used at each training step."""
    used = []
    for step in range(steps):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(step)
    return used


def test_the_trainer_warms_up_then_follows_the_half_cosine(tmp_path: Path) -> None:
    lr = 0.01
    used = applied_lrs(make_trainer(tmp_path, steps=8, warmup_steps=3, lr=lr, lr_schedule="cosine"), 8)
    # cos(pi/5) = (1 + sqrt 5) / 4 and cos(2 pi/5) = (sqrt 5 - 1) / 4
    c1, c2 = (1 + SQRT5) / 4, (SQRT5 - 1) / 4
    multipliers = [1 / 3, 2 / 3, 1.0, 1.0, (1 + c1) / 2, (1 + c2) / 2, (1 - c2) / 2, (1 - c1) / 2]
    np.testing.assert_allclose(used, [lr * m for m in multipliers], rtol=1e-9)


def one_cycle(step: int, total: int, max_lr: float, pct_start: float = 0.3) -> float:
    """The 1cycle policy (Smith & Topin 2017) as torch's OneCycleLR documents it, defaults div_factor=25,
    final_div_factor=1e4, cosine annealing: max_lr/25 -> max_lr over the first pct_start of the steps, then
    -> max_lr/25/1e4 by the last step."""
    initial, peak = max_lr / 25, max_lr
    final = initial / 1e4
    turn = pct_start * total - 1  # the step at which the rate peaks

    def cos_anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))

    if step <= turn:
        return cos_anneal(initial, peak, step / turn)
    return cos_anneal(peak, final, (step - turn) / (total - 1 - turn))


def test_the_trainer_follows_the_one_cycle_schedule(tmp_path: Path) -> None:
    lr, total = 0.01, 10
    used = applied_lrs(make_trainer(tmp_path, steps=total, warmup_steps=0, lr=lr, lr_schedule="onecycle"), total)
    np.testing.assert_allclose(used, [one_cycle(s, total, lr) for s in range(total)], rtol=1e-9)
    assert used[0] == pytest.approx(lr / 25) and used[1] == pytest.approx((lr / 25 + lr) / 2)
    assert used[2] == pytest.approx(lr) and used[-1] == pytest.approx(lr / 25 / 1e4)


# ---------------------------------------------------------------------------------------------- label dropout
def indexed_data(n: int = 200, classes: int = 4) -> TrainingData:
    """Images whose every pixel is the example's index mapped to [-1, 1], so a batch says which examples it holds."""
    x = torch.linspace(-1.0, 1.0, n).reshape(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    return TrainingData(x, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def drawn_labels(trainer: Trainer, steps: int, data: TrainingData) -> list[tuple[Tensor, Tensor]]:
    """(labels given to the network, true labels of the drawn examples) for each step's batch."""
    out = []
    for step in range(steps):
        x0, _, _, cond = trainer.batch(step)
        idx = ((x0[:, 0, 0, 0] + 1) / 2 * (len(data.x) - 1)).round().long()
        out.append((cond["labels"], data.labels[idx]))
    return out


def test_labels_are_dropped_per_sample_at_the_configured_rate(tmp_path: Path) -> None:
    data, rate, steps, batch = indexed_data(), 0.3, 100, 16
    trainer = make_trainer(tmp_path, data, num_classes=4, label_dropout=rate, batch_size=batch, steps=steps)
    drawn = drawn_labels(trainer, steps, data)
    dropped = 0
    mixed = 0
    for given, true in drawn:
        drop = given == -1
        assert torch.equal(given[~drop], true[~drop])  # a kept label is the example's own
        dropped += int(drop.sum())
        mixed += bool(drop.any() and not drop.all())
    n = steps * batch
    share, sd = dropped / n, math.sqrt(rate * (1 - rate) / n)
    assert abs(share - rate) < 4 * sd, (share, rate, sd)  # binomial: 4 standard deviations
    # per sample: P(a batch of 16 is all kept or all dropped) = 0.7^16 + 0.3^16 < 0.4%
    assert mixed >= 95, mixed
    patterns = {tuple((given == -1).tolist()) for given, _ in drawn}
    assert len(patterns) > 90  # a fresh draw every step, not one mask reused


@pytest.mark.parametrize("rate, expected_share", [(0.0, 0.0), (1.0, 1.0)])
def test_no_dropout_keeps_every_label_and_full_dropout_drops_all(
    tmp_path: Path, rate: float, expected_share: float
) -> None:
    data = indexed_data()
    trainer = make_trainer(tmp_path, data, num_classes=4, label_dropout=rate, batch_size=16, steps=5)
    for given, true in drawn_labels(trainer, 5, data):
        assert float((given == -1).float().mean()) == expected_share
        if rate == 0.0:
            assert torch.equal(given, true)


# ---------------------------------------------------------------------------------------------- classifier
AMPLITUDE, JITTER, PIXELS = 0.7, 0.1, 64


def two_classes(n: int, seed: int) -> TrainingData:
    """8x8 images: class 0 is +0.7 in the top half and -0.7 in the bottom half, class 1 the opposite, plus
    N(0, 0.1^2) per pixel. The classes are +-mu with |mu| = 0.7 * 8."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=gen)
    rows = torch.where(torch.arange(8) < 4, 1.0, -1.0).reshape(1, 1, 8, 1).expand(1, 1, 8, 8)
    sign = (1 - 2 * labels).float().reshape(-1, 1, 1, 1)
    x = AMPLITUDE * sign * rows + JITTER * torch.randn(n, 1, 8, 8, generator=gen)
    return TrainingData(x, labels, ["top", "bottom"])


def bayes_accuracy(alpha: float, sigma: float) -> float:
    """The best possible accuracy on x_t = alpha x0 + sigma eps for the two classes above: the classes are
    N(+-alpha mu, (alpha^2 0.1^2 + sigma^2) I), so the best rule thresholds <mu, x_t> at 0 and is right with
    probability Phi(alpha |mu| / sqrt(alpha^2 0.1^2 + sigma^2))."""
    z = alpha * AMPLITUDE * math.sqrt(PIXELS) / math.sqrt(alpha**2 * JITTER**2 + sigma**2)
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.fixture(scope="module")
def classifier_setup() -> tuple[Pipeline, nn.Module, TrainingData]:
    pipe = Pipeline(tiny_config(num_classes=None).model_copy(update={"data": DataConfig(image_size=8, channels=1)}))
    classifier = train_noise_aware_classifier(
        pipe, two_classes(512, seed=0), steps=60, batch_size=32, lr=3e-3, base_channels=8, progress=False
    )
    return pipe, classifier, two_classes(1000, seed=1)


@torch.no_grad()
def accuracy_at(pipe: Pipeline, classifier: nn.Module, data: TrainingData, t: float) -> float:
    """Accuracy on held-out examples noised to time t, with the network's input scaling and noise-level input."""
    process = pipe.process
    times = torch.full((len(data.x),), t, dtype=torch.float64)
    eps = torch.randn(data.x.shape, generator=torch.Generator().manual_seed(2))
    x_t = process.add_noise(data.x, times, eps)
    scale = math.sqrt(float(process.alpha(t)) ** 2 + float(process.sigma(t)) ** 2)
    logits = classifier((x_t / scale).float(), noise_conditioning(process, times).float())
    return float((logits.argmax(1) == data.labels).float().mean())


def test_noise_aware_classifier_is_near_bayes_optimal_and_at_chance_in_pure_noise(classifier_setup) -> None:  # type: ignore[no-untyped-def]
    pipe, classifier, held_out = classifier_setup
    n, process = len(held_out.x), pipe.process
    assert accuracy_at(pipe, classifier, held_out, 0.05) >= 0.99  # low noise: Bayes accuracy 1.0000
    best = bayes_accuracy(float(process.alpha(0.9)), float(process.sigma(0.9)))  # 0.81
    got = accuracy_at(pipe, classifier, held_out, 0.9)
    assert best - 0.08 <= got <= best + 3 * math.sqrt(best * (1 - best) / n), (got, best)
    at_t_max = accuracy_at(pipe, classifier, held_out, process.t_max)  # alpha = 5e-5: Bayes accuracy 0.5001
    assert abs(at_t_max - 0.5) <= 3 * 0.5 / math.sqrt(n), at_t_max


def test_noisy_accuracy_matches_the_bayes_accuracy_over_training_times(classifier_setup) -> None:  # type: ignore[no-untyped-def]
    pipe, classifier, held_out = classifier_setup
    times = (torch.arange(1000) + 1).double() / 1000  # the discrete process's training times, uniformly drawn
    best = float(np.mean([bayes_accuracy(float(pipe.process.alpha(t)), float(pipe.process.sigma(t))) for t in times]))
    got = noisy_accuracy(pipe, classifier, held_out, n=1024)
    assert best - 0.05 <= got <= best + 3 * math.sqrt(best * (1 - best) / 1024), (got, best)
