"""The task commands (inpaint, img2img, denoise, anomaly, sample --out-dir): outputs, and clear one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_clear_error, run
from PIL import Image

from diffusionlab.data import load_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(pets_model: Path) -> Path:
    return pets_model


def png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_inpaint_keeps_the_unmasked_pixels_of_the_png(model_dir: Path, tmp_path: Path) -> None:
    image = png(tmp_path / "in.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 1:4] = 255  # white = fill
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for method in ("repaint", "replace"):
        out = tmp_path / f"{method}.png"
        result = run(
            "inpaint", model_dir, "--image", image, "--mask", tmp_path / "mask.png", "--out", out,
            "--method", method, "--steps", "3", "--jump-length", "1", "--jump-n-sample", "2", "--label", "1",
            "--no-progress",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        got, want = pixels(out), pixels(image)
        assert np.array_equal(got[mask == 0], want[mask == 0]) and not np.array_equal(got, want)
    args = ["--rect", "0,0,8,4", "--method", "replace", "--reconstruction-guidance", "4", "--steps", "2"]
    result = run("inpaint", model_dir, "--image", image, *args, "--out", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(tmp_path / "r.png")[4:], pixels(image)[4:])


def test_outpaint_extends_a_smaller_image(model_dir: Path, tmp_path: Path) -> None:
    image = png(tmp_path / "small.png", size=(6, 4))
    out = tmp_path / "out.png"
    result = run("inpaint", model_dir, "--image", image, "--outpaint", "1,2,1,2", "--out", out, "--steps", "2")
    assert result.exit_code == 0, result.output
    assert pixels(out).shape == (8, 8) and np.array_equal(pixels(out)[2:6, 1:7], pixels(image))


def test_img2img_denoise_and_the_sample_folder(model_dir: Path, tmp_path: Path) -> None:
    image = png(tmp_path / "in.png")
    result = run(
        "img2img", model_dir, "--image", image, "--strength", "0.5", "--label", "2", "--out", tmp_path / "a.png"
    )
    assert result.exit_code == 0, result.output
    assert pixels(tmp_path / "a.png").shape == (8, 8)
    result = run("denoise", model_dir, "--image", image, "--sigma", "auto", "--out", tmp_path / "d.png")
    assert result.exit_code == 0 and "estimated noise sigma" in result.output, result.output
    result = run(
        "denoise", model_dir, "--image", image, "--sigma", "0.1", "--mode", "sample", "--out", tmp_path / "s.png"
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "synth"
    result = run("sample", model_dir, "--per-class", "2", "--out-dir", folder, "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    back = load_image_folder(folder, image_size=8, channels=1)
    assert back.class_names == ["cat", "dog", "owl"] and back.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (folder / "dog" / "0001.png").is_file() and (tmp_path / "grid.png").is_file()
    assert_clear_error(run("sample", model_dir, "--per-class", "1", "--out-dir", folder), "not empty")


def test_anomaly_writes_a_ranked_csv(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        png(folder / f"{i}.png", seed=i)
    for method, extra in (("recon", ["--steps", "3"]), ("denoising", ["--log-snr-range", "-3,3"])):
        out = tmp_path / f"{method}.csv"
        result = run("anomaly", model_dir, "--images", folder, "--method", method, "--out", out, *extra)
        assert result.exit_code == 0, result.output
        rows = list(csv.reader(out.open()))
        scores = [float(r[1]) for r in rows[1:]]
        assert rows[0] == ["rank", "score", "image"] and sorted(r[2] for r in rows[1:]) == ["0.png", "1.png", "2.png"]
        assert scores == sorted(scores, reverse=True)


def test_bad_input_is_one_clear_line(model_dir: Path, tmp_path: Path) -> None:
    image = png(tmp_path / "in.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "mask6.png")
    assert_clear_error(
        run("inpaint", model_dir, "--image", image, "--mask", tmp_path / "mask6.png"), "mask is 8x6", "image is 8x8"
    )
    assert_clear_error(run("inpaint", model_dir, "--image", image), "exactly one of --mask, --rect or --outpaint")
    assert_clear_error(run("inpaint", model_dir, "--image", image, "--rect", "0,0,9,4"), "does not fit a 8x8 image")
    for strength in ("0", "1.5", "-1"):
        assert_clear_error(run("img2img", model_dir, "--image", image, "--strength", strength), "must lie in (0, 1]")
    rgb = png(tmp_path / "rgb.png", mode="RGB")
    assert_clear_error(run("img2img", model_dir, "--image", rgb), "3 channels (RGB)", "1 channel (grayscale)")
    big = png(tmp_path / "big.png", size=(16, 16))
    assert_clear_error(run("denoise", model_dir, "--image", big), "16x16", "8x8")
    assert_clear_error(run("denoise", model_dir, "--image", image, "--sigma", "lots"), "--sigma")
    assert_clear_error(run("img2img", model_dir, "--image", tmp_path / "nope.png"), "nope.png does not exist")
    (tmp_path / "empty").mkdir()
    assert_clear_error(run("anomaly", model_dir, "--images", tmp_path / "empty"), "contains no images")
    assert_clear_error(run("inpaint", model_dir, "--image", image, "--rect", "0,0,8,4", "--method", "magic"), "magic")
    assert_clear_error(run("img2img", model_dir, "--image", image, "--label", "7"), "--label=7")
