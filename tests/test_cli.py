"""The CLI: bad input is one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TINY, assert_clear_error, run
from PIL import Image

from diffusionlab.cli import _flag, _flags, inpaint, sample, train
from diffusionlab.config import AutoencoderTrainConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.pipeline import Pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    result = run("train", *TINY, "--steps", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_train_and_sample_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "ema.safetensors", "samples.png"):
        assert (model_dir / name).is_file()
    out = tmp_path / "grid.png"
    result = run("sample", str(model_dir), "--labels", "1,2,3", "--steps", "3", "--seed", "5", "--out", str(out))
    assert result.exit_code == 0, result.output
    meta = Image.open(out).text
    assert meta["seed"] == "5" and meta["labels"] == "1,2,3" and meta["steps"] == "3"


def test_help_explains_every_option() -> None:
    for cmd in ("train", "sample"):
        result = run(cmd, "--help")
        assert result.exit_code == 0
        assert "--seed" in result.output and "--out" in result.output


def test_missing_data_folder(tmp_path: Path) -> None:
    assert_clear_error(run("train", *TINY, "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "nope")


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_clear_error(run("train", *TINY, "--dataset", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "empty")


def test_unreadable_image(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    assert_clear_error(run("train", *TINY, "--dataset", str(folder), "--out", str(tmp_path / "o")), "broken.png")


def test_image_size_the_unet_cannot_take(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(folder / f"{i}.png")
    result = run("train", "--dataset", str(folder), "--image-size", "10", "--steps", "1", "--out", str(tmp_path / "o"))
    assert_clear_error(result, "10x10", "multiples of 4")
    result = run("train", "--image-size", "12", "--steps", "1", "--out", str(tmp_path / "o"))  # digits: 8k only
    assert_clear_error(result, "12")


def test_steps_must_be_positive(tmp_path: Path, model_dir: Path) -> None:
    assert_clear_error(run("train", *TINY, "--steps", "0", "--out", str(tmp_path / "o")), "steps")
    assert_clear_error(run("sample", str(model_dir), "--steps", "0", "--out", str(tmp_path / "s.png")), "steps=0")


def test_model_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert_clear_error(run("sample", str(tmp_path / "m"), "--out", str(tmp_path / "s.png")), "config.json")


def test_corrupted_safetensors(tmp_path: Path, model_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "ema.safetensors").write_bytes(b"\x00" * 100)
    assert_clear_error(run("sample", str(bad), "--out", str(tmp_path / "s.png")), "ema.safetensors")


def test_label_outside_classes(tmp_path: Path, model_dir: Path) -> None:
    result = run("sample", str(model_dir), "--labels", "12", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert_clear_error(result, "--labels=12", "0..9")


def test_unknown_sampler_and_process(tmp_path: Path, model_dir: Path) -> None:
    result = run("sample", str(model_dir), "--sampler", "magic", "--out", str(tmp_path / "s.png"))
    assert_clear_error(result, "magic", "ddim")
    assert_clear_error(run("train", *TINY, "--process", "nope", "--out", str(tmp_path / "o")), "nope")


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--label-dropout", "2", "--label-dropout=2.0"),
        ("--ema-decay", "1.5", "--ema-decay=1.5"),
        ("--lr", "-1", "--lr=-1.0"),
        ("--minutes", "0", "--minutes=0.0"),
    ],
)
def test_training_options_out_of_range(tmp_path: Path, option: str, value: str, fragment: str) -> None:
    assert_clear_error(run("train", *TINY, "--steps", "1", option, value, "--out", str(tmp_path / "o")), fragment)


def test_negative_guidance(tmp_path: Path, model_dir: Path) -> None:
    result = run("sample", str(model_dir), "--guidance", "-1", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert_clear_error(result, "guidance=-1")


def test_a_fresh_run_never_overwrites_an_earlier_one(model_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in model_dir.glob("*.safetensors")}
    result = run("train", *TINY, "--steps", "2", "--out", str(model_dir))
    assert_clear_error(result, str(model_dir), "already holds a training run", "--resume")
    assert {p.name: p.read_bytes() for p in model_dir.glob("*.safetensors")} == before


def _help_rows(monkeypatch: pytest.MonkeyPatch, *command: str) -> list[str]:
    """The lines of ``diffusionlab COMMAND --help``, one option a line (rich's table, wide enough not to wrap)."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def _row(rows: list[str], flag: str) -> str:
    (line,) = [r for r in rows if f" {flag} " in r]
    return line


@pytest.mark.parametrize(
    "command, config",
    [(("train",), TrainConfig), (("train-autoencoder",), AutoencoderTrainConfig)],
)
def test_help_lists_the_config_fields_with_the_configs_defaults(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], config: type
) -> None:
    rows = _help_rows(monkeypatch, *command)
    exposed = [name for name in config.model_fields if _flag(name) in "\n".join(rows)]
    assert "steps" in exposed and "lr" in exposed and "seed" in exposed
    if command == ("train",):
        # every training field is an option of train, but distill: the distill command sets it
        assert exposed == [name for name in TrainConfig.model_fields if name != "distill"]
    for name in exposed:
        line, default = _row(rows, _flag(name)), config.model_fields[name].get_default(call_default_factory=True)
        if default is None:
            assert "[default:" not in line, line
        else:  # lists comma-separated (as the option takes them), tuples as click shows them
            shown = ",".join(default) if isinstance(default, list) else default
            shown = ", ".join(str(v) for v in default) if isinstance(default, tuple) else shown
            shown = (_flag(name) if default else "no-" + _flag(name))[2:] if isinstance(default, bool) else shown
            assert f"[default: {shown}]" in line, line
        assert config.model_fields[name].description.split(" (")[0] in line, line
    steps = 3000 if config is AutoencoderTrainConfig else 1000  # each command shows its own config's default
    assert f"[default: {steps}]" in _row(rows, "--steps")


def test_library_errors_name_the_flags(tmp_path: Path, model_dir: Path) -> None:
    out = ["--out", str(tmp_path / "s.png")]
    assert_clear_error(run("sample", str(model_dir), "-n", "0", "--steps", "1", *out), "--num-samples=0")
    result = run("sample", str(model_dir), "--mixed-precision", "fp16", *out)
    assert_clear_error(result, "--mixed-precision='fp16'", "'bf16'")
    result = run("sample", str(model_dir), "-n", "3", "--labels", "1,2", *out)
    assert_clear_error(result, "got 2 labels for 3 samples")
    assert_clear_error(run("train", *TINY, "--schedule", "magic", "--out", str(tmp_path / "o")), "--schedule='magic'")
    message = "already holds a run; pass resume=True to continue it, or choose another out_dir."
    assert _flags(message, train) == "already holds a run; pass --resume to continue it, or choose another --out."
    message = "loss became nan; lower lr (now 0.1) or use mixed_precision='no' (resume with the data)."
    assert (
        _flags(message, train)
        == "loss became nan; lower --lr (now 0.1) or use --mixed-precision='no' (resume with the data)."
    )
    assert _flags("labels=[7] and steps=0; 2 labels for runs/out_dir", inpaint) == (
        "--label=[7] and --steps=0; 2 labels for runs/out_dir"
    )
    assert _flags("steps=0 and labels=[7] and label=2; give num_samples", sample) == (
        "--steps=0 and --labels=[7] and label=2; give --num-samples"
    )


def test_sample_writes_what_the_model_space_writes(tmp_path: Path) -> None:
    points = ModelConfig(space="points", network=NetworkConfig(kind="mlp", dim=2, width=16, depth=2))
    Pipeline(points).save(tmp_path / "toy")
    result = run("sample", tmp_path / "toy", "-n", "50", "--steps", "2", "--out", tmp_path / "toy.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "toy.png").size == (384, 384)  # the point space's scatter plot


def test_train_autoencoder_and_classifier_commands(tmp_path: Path, model_dir: Path) -> None:
    args = ["--image-size", "8", "--base-channels", "8", "--latent-channels", "2", "--steps", "2", "--batch-size", "8"]
    result = run("train-autoencoder", *args, "--sample-every", "0", "--no-progress", "--out", tmp_path / "ae")
    assert result.exit_code == 0, result.output
    assert "PSNR on training images" in result.output and (tmp_path / "ae" / "config.json").is_file()
    assert_clear_error(run("train-autoencoder", *args, "--downsample-factor", "3", "--out", tmp_path / "x"), "1, 2, 4")
    result = run("train-classifier", model_dir, "--steps", "2", "--batch-size", "8", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (model_dir / "classifier.safetensors").is_file()
