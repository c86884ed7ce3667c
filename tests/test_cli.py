"""The CLI: bad input is one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_clear_error, run
from PIL import Image

TINY = ["--model-size", "tiny", "--image-size", "8", "--batch-size", "8", "--sample-every", "0", "--no-progress"]


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
    assert_clear_error(result, "label 12", "0..9")


def test_unknown_sampler_and_process(tmp_path: Path, model_dir: Path) -> None:
    result = run("sample", str(model_dir), "--sampler", "magic", "--out", str(tmp_path / "s.png"))
    assert_clear_error(result, "magic", "ddim")
    assert_clear_error(run("train", *TINY, "--process", "nope", "--out", str(tmp_path / "o")), "nope")


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--label-dropout", "2", "label_dropout"),
        ("--ema-decay", "1.5", "ema_decay"),
        ("--lr", "-1", "lr"),
        ("--minutes", "0", "minutes"),
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
