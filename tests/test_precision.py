"""``mixed_precision="auto"``: what it resolves to with and without bf16 units (``hardware``), what a training run
prints and stores, that a resumed run keeps its own precision, and that "auto" sampling is exactly bf16 or fp32."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from diffusionlab import hardware
from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.hardware import AUTO_ENV, describe_precision, resolve_precision
from diffusionlab.pipeline import Pipeline
from diffusionlab.sampling.request import SampleRequest, sampling_precision
from diffusionlab.training import Trainer, latest_checkpoint, load_training_data, train_noise_aware_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cpu_units(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """ "auto" decided by this CPU's (patched) bf16 units: no override, and no GPU, even where the machine has one."""
    monkeypatch.delenv(AUTO_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield monkeypatch


@pytest.fixture
def fresh_accelerator() -> Iterator[None]:
    """accelerate keeps one precision per process (its AcceleratorState): each run here starts and ends without it."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def with_units(monkeypatch: pytest.MonkeyPatch, units: tuple[str, ...]) -> None:
    """Make ``hardware.cpu_bf16_units()`` answer ``units`` (fast_bf16 calls it by its module-global name)."""
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: units)


def tiny_config(steps: int = 2, **train: object) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        sample=SampleConfig(steps=2),  # the preview the finished run writes
        train=TrainConfig(
            steps=steps,
            batch_size=8,
            warmup_steps=1,
            ema_start=0,
            sample_every=0,
            checkpoint_every=0,
            final_eval=False,
            **train,
        ),
    )


def saved_precision(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["train"]["mixed_precision"]


# ---------------------------------------------------------------------------------------------------------- resolve
@pytest.mark.parametrize(
    "units, expected",
    [(("avx512_bf16",), "bf16"), (("amx_bf16", "avx512_bf16"), "bf16"), ((), "no")],
)
def test_auto_follows_the_cpus_bf16_units(cpu_units: pytest.MonkeyPatch, units: tuple[str, ...], expected: str) -> None:
    with_units(cpu_units, units)
    assert hardware.fast_bf16("cpu") is bool(units)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("forced", ["no", "bf16", " BF16 "])
@pytest.mark.parametrize("units", [("amx_bf16",), ()])
def test_the_environment_overrides_what_auto_picks(
    cpu_units: pytest.MonkeyPatch, units: tuple[str, ...], forced: str
) -> None:
    with_units(cpu_units, units)
    cpu_units.setenv(AUTO_ENV, forced)
    assert resolve_precision("auto", "cpu") == forced.strip().lower()
    shown = "fp32" if forced.strip().lower() == "no" else "bf16"
    assert describe_precision("auto", "cpu") == f"precision: {shown} (auto, set by {AUTO_ENV})"


def test_a_bad_environment_value_is_one_clear_error(cpu_units: pytest.MonkeyPatch) -> None:
    with_units(cpu_units, ("avx512_bf16",))
    cpu_units.setenv(AUTO_ENV, "fp16")
    with pytest.raises(ValueError) as err:
        resolve_precision("auto", "cpu")
    assert str(err.value) == f"{AUTO_ENV}='fp16' is not known; expected 'no' or 'bf16'."


@pytest.mark.parametrize("value", ["no", "bf16", "fp16"])
@pytest.mark.parametrize("units", [("amx_bf16",), ()])
def test_concrete_values_pass_through(cpu_units: pytest.MonkeyPatch, units: tuple[str, ...], value: str) -> None:
    with_units(cpu_units, units)
    cpu_units.setenv(AUTO_ENV, "bf16")  # an override of auto only
    assert resolve_precision(value, "cpu") == value
    shown = "fp32" if value == "no" else value
    assert describe_precision(value, "cpu") == f"precision: {shown} (mixed_precision={value!r})"


@pytest.mark.parametrize("value", ["fp32", "BF16", "", "fp8"])
def test_an_unknown_value_raises(value: str) -> None:
    with pytest.raises(ValueError, match=rf"^mixed_precision={value!r} is not known; expected one of "):
        resolve_precision(value, "cpu")


@pytest.mark.parametrize(
    "units, expected",
    [
        (("avx512_bf16",), "precision: bf16 (auto: this CPU has AVX512_BF16)"),
        (("amx_bf16", "avx512_bf16"), "precision: bf16 (auto: this CPU has AMX_BF16, AVX512_BF16)"),
        ((), "precision: fp32 (auto: this CPU has no bf16 units)"),
    ],
)
def test_describe_names_the_unit(cpu_units: pytest.MonkeyPatch, units: tuple[str, ...], expected: str) -> None:
    with_units(cpu_units, units)
    assert describe_precision("auto", "cpu") == expected


@pytest.mark.parametrize(
    "flags, units",
    [
        ("fpu sse avx512f avx512_bf16 amx_tile amx_bf16 amx_int8", ("amx_bf16", "avx512_bf16")),
        ("fpu sse avx512f avx512_bf16 avx512_vnni", ("avx512_bf16",)),
        ("fpu sse avx2 avx512f avx512_fp16 amx_tile", ()),
        (None, ()),  # no /proc/cpuinfo: not Linux
    ],
)
def test_cpu_units_are_read_from_the_cpuinfo_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str | None, units: tuple[str, ...]
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n")
    monkeypatch.setattr(hardware, "Path", lambda _path: cpuinfo)
    assert hardware.cpu_bf16_units.__wrapped__() == units


# ---------------------------------------------------------------------------------------------------------- training
@pytest.mark.usefixtures("fresh_accelerator")
@pytest.mark.parametrize(
    "units, chosen, line",
    [
        (("avx512_bf16",), "bf16", "precision: bf16 (auto: this CPU has AVX512_BF16)"),
        ((), "no", "precision: fp32 (auto: this CPU has no bf16 units)"),
    ],
)
def test_a_run_with_auto_stores_and_prints_the_concrete_precision(
    cpu_units: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    units: tuple[str, ...],
    chosen: str,
    line: str,
) -> None:
    with_units(cpu_units, units)
    config = tiny_config()
    assert config.train.mixed_precision == "auto"
    trainer = Trainer(config, tmp_path, progress=False, cpu=True, track=False)
    assert trainer.accelerator.mixed_precision == chosen and trainer.config.train.mixed_precision == chosen
    assert line in capsys.readouterr().err.splitlines()
    trainer.train()
    assert saved_precision(tmp_path) == chosen


@pytest.mark.usefixtures("fresh_accelerator")
@pytest.mark.parametrize("first, then", [((), ("amx_bf16",)), (("avx512_bf16",), ())])
def test_a_resumed_run_keeps_its_checkpoints_precision(
    cpu_units: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first: tuple[str, ...],
    then: tuple[str, ...],
) -> None:
    kept = "bf16" if first else "no"
    with_units(cpu_units, first)
    Trainer(tiny_config(), tmp_path, progress=False, cpu=True, track=False).train(stop_after=1)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step-000001" and saved_precision(checkpoint) == kept
    capsys.readouterr()
    with_units(cpu_units, then)  # the machine would now pick the other precision
    assert resolve_precision("auto", "cpu") != kept
    resumed = Trainer(tiny_config(), tmp_path, resume=True, progress=False, cpu=True, track=False)
    assert resumed.start_step == 1
    assert resumed.accelerator.mixed_precision == kept and resumed.config.train.mixed_precision == kept
    shown = "bf16" if kept == "bf16" else "fp32"
    assert f"precision: {shown} (the resumed run's own)" in capsys.readouterr().err.splitlines()
    resumed.train()
    assert saved_precision(tmp_path) == kept


# ---------------------------------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """A tiny 8x8 grayscale model with random weights (a fresh UNet outputs exact zeros, whatever the precision)."""
    torch.manual_seed(0)
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(image_size=8, channels=1),
        sample=SampleConfig(steps=3),
    )
    pipe = Pipeline(config)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return pipe


def draw(pipe: Pipeline, mixed_precision: str) -> torch.Tensor:
    return pipe.sample(4, seed=5, thresholding="none", mixed_precision=mixed_precision)


def test_auto_sampling_is_exactly_bf16_where_the_cpu_has_it(pipe: Pipeline, cpu_units: pytest.MonkeyPatch) -> None:
    fp32, bf16 = draw(pipe, "no"), draw(pipe, "bf16")
    assert (fp32 - bf16).abs().max() > 1e-4  # bf16 autocast really changes the samples
    with_units(cpu_units, ("amx_bf16",))
    assert sampling_precision("auto") == "bf16"
    assert torch.equal(draw(pipe, "auto"), bf16)
    with_units(cpu_units, ())
    assert sampling_precision("auto") == "no"
    assert torch.equal(draw(pipe, "auto"), fp32)


def test_auto_sampling_follows_the_environment(pipe: Pipeline, cpu_units: pytest.MonkeyPatch) -> None:
    with_units(cpu_units, ("amx_bf16",))
    cpu_units.setenv(AUTO_ENV, "no")
    assert torch.equal(draw(pipe, "auto"), draw(pipe, "no"))
    with_units(cpu_units, ())
    cpu_units.setenv(AUTO_ENV, "bf16")
    assert torch.equal(draw(pipe, "auto"), draw(pipe, "bf16"))


@pytest.mark.parametrize("units, recorded", [(("avx512_bf16",), "bf16"), ((), None)])
def test_png_metadata_records_the_resolved_precision(
    pipe: Pipeline, cpu_units: pytest.MonkeyPatch, units: tuple[str, ...], recorded: str | None
) -> None:
    with_units(cpu_units, units)
    request = SampleRequest.from_settings(seed=1).resolve(pipe.config.sample)
    assert request.guidance.mixed_precision == "auto"
    assert request.metadata().get("mixed_precision") == recorded


@pytest.mark.usefixtures("fresh_accelerator")
def test_a_noise_aware_classifier_trains_after_an_auto_bf16_run(cpu_units: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_units(cpu_units, ("amx_bf16",))
    trainer = Trainer(tiny_config(), tmp_path, progress=False, cpu=True, track=False)
    assert trainer.accelerator.mixed_precision == "bf16"
    pipe = trainer.train()
    classifier = train_noise_aware_classifier(
        pipe, load_training_data(trainer.config), steps=1, batch_size=8, progress=False
    )
    assert sum(p.numel() for p in classifier.parameters()) > 0
