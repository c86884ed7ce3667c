"""Training edges with exact answers: the EMA update and its warm-up, the LR schedules the trainer applies
(warm-up then cosine or constant, one-cycle), class-label dropout per sample, and the noise-aware classifier's
accuracy against the Bayes-optimal accuracy of a task whose answer is known in closed form. Then the run's
reliability: config bounds, the network's size counted before it is built, resume from a broken or finished
training state, the leftovers of a killed run, and kill -9 at random moments."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import TINY, assert_clear_error, run
from pydantic import ValidationError
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from diffusionlab.config import (
    MODEL_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    DataConfig,
    ModelConfig,
    NetworkConfig,
    SampleConfig,
    TrainConfig,
    VPProcessConfig,
)
from diffusionlab.denoisers import noise_conditioning
from diffusionlab.io import CheckpointError
from diffusionlab.networks import size as network_size
from diffusionlab.networks.autoencoder import KLAutoencoder
from diffusionlab.pipeline import Pipeline
from diffusionlab.spaces import NETWORKS, build_network, network_parameters
from diffusionlab.training import (
    Trainer,
    TrainingData,
    ema_decay_at,
    lr_lambda,
    noisy_accuracy,
    train_noise_aware_classifier,
    update_ema,
)
from diffusionlab.training.autoencoder import new_autoencoder
from diffusionlab.training.checkpoints import STATE_NAME, latest_checkpoint, remove_leftovers, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SQRT5 = math.sqrt(5.0)


def tiny_config(num_classes: int | None = 0, **train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=num_classes),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(**{"batch_size": 4, "sample_every": 0, "final_eval": False, "checkpoint_every": 0, **train}),
        sample=SampleConfig(steps=3),
    )


def make_trainer(out: Path, data: TrainingData | None = None, num_classes: int | None = 0, **train: object) -> Trainer:
    return Trainer(tiny_config(num_classes, **train), out, data=data, progress=False, cpu=True, track=False)


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
        x0, _, _, cond = trainer.batch(step)[:4]
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


# ---------------------------------------------------------------------------------------------- config bounds


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--image-size", "100000"], "--image-size=100000 is more than the limit of 4,096"),
        (["--image-size", "0"], "--image-size=0"),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--batch-size", "70000"], "--batch-size=70000 is more than the limit of 65,536"),
        (["--steps", "100000001"], "--steps=100000001 is more than the limit of 100,000,000"),
        (["--checkpoint-every", "-1"], "--checkpoint-every=-1"),
        (["--sample-every", "-1"], "--sample-every=-1"),
        (["--log-every", "-1"], "--log-every=-1"),
        (["--lr", "nan"], "--lr=nan"),
        (["--lr", "inf"], "--lr=inf"),
        (["--ema-decay", "nan"], "--ema-decay=nan"),
        (["--seed", "-1"], "--seed=-1"),
        (["--seed", str(2**32)], f"--seed={2**32}"),
    ],
)
def test_training_options_out_of_bounds_are_one_line_before_any_work(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    out = tmp_path / "o"
    steps = [] if "--steps" in args else ["--steps", "1"]
    assert_clear_error(run("train", *TINY, *steps, *args, "--out", out), fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: NetworkConfig(base_channels=0), "base_channels"),
        (lambda: NetworkConfig(channel_mults=[1, 0]), "channel_mults"),
        (lambda: NetworkConfig(channel_mults=[]), "channel_mults"),
        (lambda: NetworkConfig(channel_mults=[1] * 14), "channel_mults"),  # 13 levels halve 4096 to 1
        (lambda: NetworkConfig(num_res_blocks=0), "num_res_blocks"),
        (lambda: NetworkConfig(num_heads=0), "num_heads"),
        (lambda: NetworkConfig(attention_levels=[-1]), "attention_levels"),
        (lambda: NetworkConfig(dropout=1.0), "dropout"),
        (lambda: NetworkConfig(in_channels=0), "in_channels"),
        (lambda: NetworkConfig(kind="mlp", width=0), "width"),
        (lambda: NetworkConfig(kind="mlp", depth=0), "depth"),
        (lambda: AutoencoderNetworkConfig(channel_mults=[2, -1]), "channel_mults"),
        (lambda: TrainConfig(keep_checkpoints=-1), "keep_checkpoints"),
        (lambda: TrainConfig(warmup_steps=10**9), "warmup_steps"),
        (lambda: TrainConfig(eval_samples=10**6), "eval_samples"),
        (lambda: TrainConfig(ema_decay=-0.5), "ema_decay"),
        (lambda: VPProcessConfig(beta_max=math.inf), "beta_max"),
        (lambda: SampleConfig(guidance=math.nan), "guidance"),
    ],
)
def test_config_fields_out_of_bounds_are_refused_naming_the_field(make: Callable[[], Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make()
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


def test_config_bounds_are_read_from_the_environment_when_the_config_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DataConfig(image_size=4096).image_size == 4096
    with pytest.raises(ValidationError, match="image_size=4097 is more than the limit of 4,096"):
        DataConfig(image_size=4097)
    monkeypatch.setenv("DIFFUSIONLAB_MAX_IMAGE_SIZE", "8192")
    assert DataConfig(image_size=4097).image_size == 4097
    assert len(NetworkConfig(channel_mults=[1] * 14).channel_mults) == 14  # one level more for 8192
    monkeypatch.setenv("DIFFUSIONLAB_MAX_TRAIN_STEPS", "10")
    with pytest.raises(ValidationError, match="steps=11 is more than the limit of 10; set DIFFUSIONLAB_MAX_TRAIN"):
        TrainConfig(steps=11)


# ---------------------------------------------------------------------------------------------- network size
def real_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "settings",
    [
        {**MODEL_SIZES["tiny"], "num_classes": 10},
        {**MODEL_SIZES["small"], "num_res_blocks": 3, "attention_levels": [1], "text_dim": 24},
        {**MODEL_SIZES["tiny"], "num_res_blocks": 5, "cond_channels": 3, "num_classes": 4},
        {"kind": "mlp", "width": 32, "depth": 6, "num_classes": 3},
    ],
)
def test_parameters_are_counted_exactly_without_building_the_network(settings: dict[str, Any]) -> None:
    cfg = NetworkConfig(**settings)
    assert network_parameters(cfg) == real_parameters(NETWORKS[cfg.kind](cfg))


def test_a_network_over_the_limit_is_refused_naming_its_count_and_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = NetworkConfig(**MODEL_SIZES["tiny"], num_classes=10)
    count = real_parameters(NETWORKS["unet"](cfg))  # 178,209
    monkeypatch.setenv("DIFFUSIONLAB_MAX_PARAMETERS", str(count - 1))
    expected = f"has {count:,} parameters, more than the limit of {count - 1:,}; set DIFFUSIONLAB_MAX_PARAMETERS"
    with pytest.raises(ValueError, match=expected):
        build_network(cfg)
    monkeypatch.setenv("DIFFUSIONLAB_MAX_PARAMETERS", str(count))
    assert real_parameters(build_network(cfg)) == count


def test_an_autoencoder_over_the_limit_is_refused_naming_its_count(monkeypatch: pytest.MonkeyPatch) -> None:
    net = AutoencoderNetworkConfig(base_channels=8, channel_mults=[1, 2], num_res_blocks=4)
    count = real_parameters(KLAutoencoder(1, 4, 8, (1, 2), 4))
    monkeypatch.setenv("DIFFUSIONLAB_MAX_PARAMETERS", str(count - 1))
    with pytest.raises(ValueError, match=f"num_res_blocks=4 has {count:,} parameters, more than the limit of"):
        new_autoencoder(AutoencoderConfig(network=net))


class AllocationRecorder(TorchFunctionMode):
    """Adds up the bytes of every distinct tensor storage made outside the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor) and out.device.type != "meta":
            self.storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
        return out

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def pets_blocks(n: int) -> int:
    """The parameters of the pets model's network with n residual blocks per level, built for real."""
    return real_parameters(
        NETWORKS["unet"](NetworkConfig(**{**MODEL_SIZES["tiny"], "num_res_blocks": n}, num_classes=3))
    )


@pytest.mark.parametrize(
    "network, fragment",
    [
        ({"base_channels": 1e9}, lambda: "base_channels=1000000000, channel_mults=[1, 2], num_res_blocks=1 has too"),
        (
            {"num_res_blocks": 10**7},
            lambda: f"has {pets_blocks(1) + (10**7 - 1) * (pets_blocks(2) - pets_blocks(1)):,}",
        ),
        ({"channel_mults": [1, 10**6]}, lambda: "channel_mults=[1, 1000000], num_res_blocks=1 has "),
    ],
)
def test_a_huge_config_json_is_refused_before_its_weights_are_allocated(
    pets_model: Path, tmp_path: Path, network: dict[str, Any], fragment: Callable[[], str]
) -> None:
    folder = tmp_path / "huge"
    shutil.copytree(pets_model, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["network"].update(network)
    (folder / "config.json").write_text(json.dumps(raw))
    recorder, started = AllocationRecorder(), time.monotonic()
    with recorder, pytest.raises(ValueError, match=r"the network of .* more than the limit of 4,000,000,000") as e:
        Pipeline.load(folder)
    assert fragment() in str(e.value)
    assert recorder.bytes <= 4 * network_size._FAST_BUILD_ELEMENTS  # what the fast path builds before it counts
    assert time.monotonic() - started < 20  # measured: 1 s (10 million blocks: 25 s before the tensor budget)
    assert_clear_error(run("sample", folder, "--steps", "2", "--out", tmp_path / "s.png"), fragment())
    assert not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------------------------------------- resume
def run_config(steps: int, **train: object) -> ModelConfig:
    return tiny_config(steps=steps, checkpoint_every=1, keep_checkpoints=2, warmup_steps=0, **train)


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of 2 steps with the checkpoints of steps 1 and 2."""
    out = tmp_path_factory.mktemp("run") / "run"
    Trainer(run_config(2), out, progress=False, cpu=True, track=False).train()
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def resume(out: Path, steps: int) -> Trainer:
    return Trainer(run_config(steps), out, resume=True, progress=False, cpu=True, track=False)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s.pop("step"), "holds no training step"),
        (lambda s: s.update(step=-1), "step=-1 must be a whole number of at least 0"),
        (lambda s: s.update(step="2"), "step='2' must be a whole number"),
        (lambda s: s.update(step=2.0), "step=2.0 must be a whole number"),
        (lambda s: s.update(step=True), "step=True must be a whole number"),
        (lambda s: s.update(step=10**12), "step=1000000000000 is more than the limit of 100,000,000"),
        (lambda s: s.pop("optimizer"), "has no 'optimizer'"),
        (lambda s: s.update(rng_python=torch.zeros(3)), "does not fit this run"),
    ],
)
def test_a_broken_training_state_is_one_error_naming_the_file(
    two_step_run: Path, tmp_path: Path, change: Callable[[dict[str, Any]], Any], fragment: str
) -> None:
    out = copy_run(two_step_run, tmp_path)
    path = out / "checkpoints" / "step-000002" / STATE_NAME
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        resume(out, steps=3)
    assert str(path) in str(caught.value) and fragment in str(caught.value), str(caught.value)
    result = run("train", *TINY, "--steps", "3", "--resume", "--out", out)
    assert_clear_error(result, str(path), fragment)


def test_resuming_past_the_steps_asked_for_is_one_line(two_step_run: Path, tmp_path: Path) -> None:
    out = copy_run(two_step_run, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="step-000002 is at step 2, past steps=1; ask for steps=2 or more"):
        resume(out, steps=1)
    result = run("train", *TINY, "--steps", "1", "--resume", "--out", out)
    assert_clear_error(result, "is at step 2, past --steps=1; ask for --steps=2 or more")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert resume(out, steps=2).start_step == 2  # a finished run resumed at its own length only finishes again


# ---------------------------------------------------------------------------------------------- leftovers
def test_the_leftovers_of_a_killed_run_are_removed_at_the_next_start(two_step_run: Path, tmp_path: Path) -> None:
    out = copy_run(two_step_run, tmp_path)
    root = out / "checkpoints"
    newest = {p.name: p.read_bytes() for p in (root / "step-000002").iterdir()}
    (root / ".step-000003.k2j3h4g5").mkdir()  # a checkpoint being written when the run was killed
    (root / ".step-000003.k2j3h4g5" / "model.safetensors").write_bytes(b"half")
    (root / ".step-000001.removed").mkdir()  # a checkpoint being pruned
    (root / ".step-000001.removed" / "config.json").write_text("{}")
    shutil.copytree(root / "step-000001", root / "step-000000")  # half-pruned by an older version
    (root / "step-000000" / "model.safetensors").unlink()
    trainer = resume(out, steps=2)
    assert trainer.start_step == 2
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]
    assert {p.name: p.read_bytes() for p in (root / "step-000002").iterdir()} == newest


def test_a_fresh_run_removes_the_leftovers_of_a_run_killed_before_its_first_checkpoint(tmp_path: Path) -> None:
    leftover = tmp_path / "run" / "checkpoints" / ".step-000001.abcdefgh"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    Trainer(run_config(1), tmp_path / "run", progress=False, cpu=True, track=False)
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


class TwoFiles:
    """A model folder of two files, config.json last, as ``Pipeline.save`` writes one."""

    def save(self, folder: str | os.PathLike[str]) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"weights")
        (Path(folder) / "config.json").write_text("{}")


def test_a_kill_while_pruning_leaves_no_half_removed_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2):
        save_checkpoint(TwoFiles(), {"step": step}, tmp_path, step, keep=2)
    real_rmtree = shutil.rmtree

    def killed_midway(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).exists():
            next(p for p in sorted(Path(path).iterdir())).unlink()  # one file gone, then the kill
            raise KeyboardInterrupt

    monkeypatch.setattr("diffusionlab.training.checkpoints.shutil.rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(TwoFiles(), {"step": 3}, tmp_path, 3, keep=2)  # prunes step 1
    monkeypatch.setattr("diffusionlab.training.checkpoints.shutil.rmtree", real_rmtree)
    root = tmp_path / "checkpoints"
    steps = sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))
    assert steps == ["step-000002", "step-000003"]
    assert all(
        sorted(f.name for f in (root / s).iterdir()) == ["config.json", "model.safetensors", STATE_NAME] for s in steps
    )
    assert [p.name for p in remove_leftovers(tmp_path)] == [".step-000001.removed"]
    assert sorted(p.name for p in root.iterdir()) == steps


def test_a_run_killed_at_random_moments_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """kill -9 while a checkpoint is being written, then at a random moment, then resume to the end: the weights
    equal those of a run never interrupted, bit for bit, and no leftover survives the last start."""
    args = [*TINY, "--steps", "6", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--sample-every", "0"]
    whole = run("train", *args, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    out, rng = tmp_path / "killed", random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from diffusionlab.cli import app; app()", "train", *args, "--out", str(out)]
    for kill_at in ("mid-checkpoint", rng.uniform(0.0, 0.3), "mid-checkpoint"):
        process = subprocess.Popen([*command, *(["--resume"] if latest_checkpoint(out) else [])], env=env)
        before = set(out.glob("checkpoints/.step-*"))  # a leftover of the last kill, removed at the start
        while process.poll() is None and not set(out.glob("checkpoints/.step-*")) - before:
            time.sleep(0.001)
        if isinstance(kill_at, float):
            time.sleep(kill_at)
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = subprocess.run(
        [*command, *(["--resume"] if latest_checkpoint(out) else [])], env=env, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    for name in ("model.safetensors", "ema.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000005", "step-000006"]
