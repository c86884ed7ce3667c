"""Recipe options: SD3's logit-normal training times on any process, diffusers' EMA warm-up (``ema_power``), AdamW's
``adam_betas``, and the evaluation a whole run ends with (``final_eval``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel
from pydantic import ValidationError

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.losses import TIME_SAMPLINGS, LogitNormalTimes, make_time_sampling
from diffusionlab.processes import DiscreteVPProcess, FlowProcess, GaussianProcess, VPProcess
from diffusionlab.sampling.noise import sample_seed
from diffusionlab.training import Trainer
from diffusionlab.training.ema import ema_decay_at, update_ema

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerator")

N = 20_000


@pytest.fixture
def fresh_accelerator() -> Iterator[None]:
    """Runs here train in fp32 whatever ran before in this process (accelerate keeps one precision per process)."""
    AcceleratorState._reset_state(True)
    yield


def tiny_config(steps: int = 2, **train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        sample=SampleConfig(steps=2),
        train=TrainConfig(
            **{
                "steps": steps,
                "batch_size": 8,
                "warmup_steps": 1,
                "ema_start": 0,
                "sample_every": 0,
                "checkpoint_every": 0,
                "final_eval": False,
                **train,
            }
        ),
    )


def normal_draws(seed: int, n: int = N) -> torch.Tensor:
    """The standard normals LogitNormalTimes draws from a generator seeded by ``seed``."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- logit-normal times
@pytest.mark.parametrize("m, s", [(0.0, 1.0), (0.5, 0.8), (-1.0, 1.6)])
def test_logit_normal_times_on_the_flow_process_have_logit_t_normal(m: float, s: float) -> None:
    process = FlowProcess()
    t = LogitNormalTimes(m, s)(process, N, generator=torch.Generator().manual_seed(3))
    assert t.dtype == torch.float64 and t.shape == (N,)
    logit = torch.log(t / (1.0 - t))
    # 5 standard errors: of the mean s / sqrt(N), of the standard deviation s / sqrt(2N)
    assert abs(logit.mean().item() - m) < 5 * s / math.sqrt(N)
    assert abs(logit.std().item() - s) < 5 * s / math.sqrt(2 * N)
    # and draw for draw: t = sigmoid(m + s n) with the generator's own normals (none near the clamp at t_min)
    expected = torch.sigmoid(m + s * normal_draws(3))
    assert bool(((expected > process.t_min) & (expected < process.t_max)).all())
    torch.testing.assert_close(t, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "process",
    [DiscreteVPProcess("cosine", 1000), DiscreteVPProcess("linear", 1000), VPProcess()],
    ids=["ddpm-cosine", "ddpm-linear", "vp"],
)
def test_logit_normal_times_give_log_snr_minus_two_n_on_vp_processes(process: GaussianProcess) -> None:
    t = make_time_sampling("logit_normal")(process, N, generator=torch.Generator().manual_seed(11))
    n = normal_draws(11)
    inside = (t > process.t_min) & (t < process.t_max)
    assert inside.float().mean().item() > 0.999  # the clamp at t_min / t_max bites only the farthest tails
    torch.testing.assert_close(process.log_snr(t)[inside], -2.0 * n[inside], rtol=0, atol=1e-8)
    # where it clamps, it is exactly at the end whose log-SNR the draw was beyond
    assert bool((t[~inside & (n < 0)] == process.t_min).all() and (t[~inside & (n > 0)] == process.t_max).all())


def test_make_time_sampling_names_logit_normal() -> None:
    made = make_time_sampling("logit_normal")
    assert type(made) is LogitNormalTimes and (made.m, made.s) == (0.0, 1.0)
    assert TIME_SAMPLINGS["logit_normal"] is LogitNormalTimes
    with pytest.raises(ValueError, match=r"time_sampling='logitnormal' is not known; expected one of "):
        make_time_sampling("logitnormal")


def test_a_training_step_draws_logit_normal_times(tmp_path: Path) -> None:
    config = tiny_config(time_sampling="logit_normal")
    assert config.train.time_sampling == "logit_normal"
    trainer = Trainer(config, tmp_path, progress=False, cpu=True, track=False)
    assert type(trainer.objective.time_sampling) is LogitNormalTimes
    # the step's draws in their order: example indices, then the times (diffusion.DiffusionObjective.global_batch)
    batch = trainer.objective.global_batch(0)
    gen = torch.Generator().manual_seed(sample_seed(config.train.seed, 0))
    torch.randint(len(trainer.objective.data.x), (8,), generator=gen)
    n = torch.randn(8, generator=gen, dtype=torch.float64)
    process = trainer.pipeline.process
    assert torch.equal(batch.t, process.t_from_log_snr(-2.0 * n).clamp(process.t_min, process.t_max))
    loss, grad_norm = trainer.train_step(0)
    assert math.isfinite(loss) and loss > 0 and grad_norm > 0


def test_the_config_refuses_an_unknown_time_sampling() -> None:
    with pytest.raises(ValidationError, match="time_sampling"):
        TrainConfig(time_sampling="logit-normal")


# ------------------------------------------------------------------------------------------------- EMA warm-up
@pytest.mark.parametrize("start", [0, 7])
@pytest.mark.parametrize("decay, power", [(0.999, 0.75), (0.9999, 2 / 3), (0.99, 0.75)])
def test_ema_power_is_diffusers_ema_warmup_step_for_step(start: int, decay: float, power: float) -> None:
    """Our step k (0 for the first optimiser step) uses the decay of diffusers' (k+1)-th ``EMAModel.step``, whose
    counter ``optimization_step`` is 1 there: ``get_decay(k + 1)``; the two sequences are equal from the first."""
    ema = EMAModel(
        torch.nn.Linear(1, 1).parameters(),
        decay=decay,
        update_after_step=start,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=power,
    )
    ours, theirs = [], []
    for k in range(2001):
        ema.step(torch.nn.Linear(1, 1).parameters())
        theirs.append(ema.cur_decay_value)
        ours.append(ema_decay_at(k, decay, start, power))
        assert ema.get_decay(k + 1) == ours[-1]
    assert ours == theirs  # exactly, float for float
    assert ours[: start + 1] == [0.0] * (start + 1)  # a copy up to and including the start
    assert ours[start + 1] == 1.0 - 2.0**-power and ours[2000] == min(decay, 1.0 - (2001.0 - start) ** -power)


def test_ema_power_averages_weights_as_diffusers_does() -> None:
    """The same parameter sequence averaged by ``update_ema`` with ``ema_decay_at`` and by diffusers' EMAModel."""
    gen = torch.Generator().manual_seed(0)
    model, ours = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs = EMAModel(model.parameters(), decay=0.99, update_after_step=2, use_ema_warmup=True, power=0.75)
    with torch.no_grad():
        for k in range(60):
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            update_ema(ours, model, ema_decay_at(k, 0.99, 2, 0.75))
            theirs.step(model.parameters())
    for a, b in zip(ours.parameters(), theirs.shadow_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_without_power_the_warmup_is_one_over_ten_at_the_start() -> None:
    assert [ema_decay_at(k, 0.999, 3) for k in (0, 2, 3, 4, 5)] == [0.0, 0.0, 0.1, 2 / 11, 3 / 12]


def test_trainer_averages_with_ema_power(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(ema_power=0.75), tmp_path, progress=False, cpu=True, track=False)
    ema, network = trainer.objective.ema, trainer.objective.network
    trainer.train_step(0)  # n = 0: a copy
    assert all(torch.equal(e, p) for e, p in zip(ema.parameters(), network.parameters(), strict=True))
    before = [e.detach().clone() for e in ema.parameters()]
    trainer.train_step(1)  # n = 1: decay 1 - 2^-0.75 = 0.405 (without the power, 2/11 = 0.18)
    weight = 2.0**-0.75
    for e, b, p in zip(ema.parameters(), before, network.parameters(), strict=True):
        assert torch.equal(e, torch.lerp(b, p.detach(), weight))


# ------------------------------------------------------------------------------------------------- AdamW's betas
def test_adam_betas_reach_the_optimiser(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(adam_betas=(0.5, 0.95)), tmp_path, progress=False, cpu=True, track=False)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.5, 0.95)
    default = Trainer(tiny_config(), tmp_path / "default", progress=False, cpu=True, track=False)
    assert default.optimizer.param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("betas", [(0.9, 1.0), (1.0, 0.999), (-0.1, 0.999)])
def test_bad_adam_betas_are_one_error_naming_them(betas: tuple[float, float]) -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(adam_betas=betas)
    assert isinstance(err.value, ValidationError) and err.value.error_count() == 1
    [error] = err.value.errors()
    assert error["loc"] == ("adam_betas",) and f"adam_betas={betas}: each must be in [0, 1)" in error["msg"]


# ------------------------------------------------------------------------------------------------- final evaluation
def eval_config(steps: int = 2, **train: object) -> ModelConfig:
    """A digits run that ends with FID on pixel features of 20 samples (no domain classifier to train)."""
    settings = {"eval_samples": 20, "eval_metrics": ["fid"], "eval_features": "pixels", "eval_guidance": 1.5}
    return tiny_config(steps, **{**settings, "final_eval": True, **train})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The reference features' cache, here rather than in the user's."""
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def eval_lines(captured: pytest.CaptureFixture[str]) -> list[str]:
    out = captured.readouterr()
    return [ln for ln in (out.out + out.err).splitlines() if ln.startswith("eval at step")]


@pytest.mark.usefixtures("cache")
def test_a_whole_run_ends_with_an_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(eval_config(), out, progress=False, cpu=True, track=False).train()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-000002.json"]
    result = json.loads((out / "eval" / "step-000002.json").read_text())
    assert result["num_samples"] == 20 and result["features"] == "pixels" and result["guidance"] == 1.5
    assert list(result["metrics"]) == ["fid"] and result["metrics"]["fid"] > 0
    assert eval_lines(capsys) == [f"eval at step 2: fid {result['metrics']['fid']:.4g}"]


@pytest.mark.usefixtures("cache")
def test_final_eval_false_evaluates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(eval_config(final_eval=False), out, progress=False, cpu=True, track=False).train()
    assert (out / "config.json").is_file() and not (out / "eval").exists()
    assert eval_lines(capsys) == []


@pytest.mark.usefixtures("cache")
def test_stop_after_does_not_evaluate_but_the_resumed_whole_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    Trainer(eval_config(), out, progress=False, cpu=True, track=False).train(stop_after=1)
    assert (out / "checkpoints" / "step-000001").is_dir() and not (out / "eval").exists()
    assert eval_lines(capsys) == []
    Trainer(eval_config(), out, resume=True, progress=False, cpu=True, track=False).train()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-000002.json"]
    assert [ln.split(":")[0] for ln in eval_lines(capsys)] == ["eval at step 2"]


@pytest.mark.usefixtures("cache")
def test_eval_every_at_the_last_step_is_not_repeated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(eval_config(eval_every=2), out, progress=False, cpu=True, track=False).train()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-000002.json"]
    assert [ln.split(":")[0] for ln in eval_lines(capsys)] == ["eval at step 2"]


@pytest.mark.usefixtures("cache")
def test_eval_every_off_the_last_step_adds_the_final_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(eval_config(steps=3, eval_every=2), out, progress=False, cpu=True, track=False).train()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-000002.json", "step-000003.json"]
    assert [ln.split(":")[0] for ln in eval_lines(capsys)] == ["eval at step 2", "eval at step 3"]


@pytest.mark.usefixtures("cache")
def test_an_in_memory_run_writes_no_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = eval_config()
    files = Trainer(config, tmp_path / "files", progress=False, cpu=True, track=False)
    trainer = Trainer.in_memory(files.objective, files.accelerator, progress=False)
    trainer.train()
    assert trainer.step == 2 and not (tmp_path / "files" / "eval").exists()
    assert eval_lines(capsys) == []
