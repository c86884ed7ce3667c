"""The golden commands: a short run of the README's main job and the outputs built on it (issue 12).

``record.py`` ran these on the code before the typed-core refactor and wrote ``reference/``;
``tests/test_golden.py`` runs them again and compares (``compare.py``). Each command runs on one thread
(``OMP_NUM_THREADS=1``) so the float summation order does not depend on the machine's load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLI = [sys.executable, "-c", "from diffusionlab.cli import main; main()"]

# the training settings the reference was recorded with (the 0.1 defaults, before issue 14 changed them): the
# golden test guards the numerics, not the defaults, so its runs pin them
RECIPE_0_1 = [
    "--lr",
    "2e-3",
    "--ema-decay",
    "0.999",
    "--ema-start",
    "200",
    "--mixed-precision",
    "no",
    "--no-final-eval",
]

# (name, arguments after `diffusionlab`, files compared with the reference); each runs in the group's work folder
# with relative paths, since the model folder's path goes into the PNG metadata
DIGITS = [
    (
        "train",
        ["train", "--out", "digits", "--steps", "200", "--no-progress", "--model-size", "small", *RECIPE_0_1],
        ["digits/model.safetensors", "digits/ema.safetensors", "digits/samples.png"],
    ),
    (
        "sample_ddim",
        ["sample", "digits", "--labels", "3,7", "--seed", "1", "--out", "ddim.png", "--no-progress"],
        ["ddim.png"],
    ),
    (
        "sample_heun",
        [
            "sample",
            "digits",
            "--per-class",
            "1",
            "--sampler",
            "heun",
            "--steps",
            "8",
            "--out",
            "heun.png",
            "--no-progress",
        ],
        ["heun.png"],
    ),
    (
        "sample_sde",
        [
            "sample",
            "digits",
            "-n",
            "4",
            "--labels",
            "5",
            "--sampler",
            "dpmpp_2m_sde",
            "--steps",
            "6",
            "--guidance",
            "3",
            "--guidance-rescale",
            "0.5",
            "--thresholding",
            "dynamic",
            "--seed",
            "4",
            "--out",
            "sde.png",
            "--no-progress",
        ],
        ["sde.png"],
    ),
    (
        "sample_bf16",
        [
            "sample",
            "digits",
            "-n",
            "3",
            "--steps",
            "5",
            "--mixed-precision",
            "bf16",
            "--out",
            "bf16.png",
            "--no-progress",
        ],
        ["bf16.png"],
    ),
    (
        "inpaint",
        [
            "inpaint",
            "digits",
            "--image",
            "input.png",
            "--rect",
            "0,0,8,16",
            "--label",
            "2",
            "--steps",
            "10",
            "--jump-length",
            "3",
            "--jump-n-sample",
            "2",
            "--out",
            "inpaint.png",
            "--no-progress",
        ],
        ["inpaint.png"],
    ),
    (
        "inpaint_replace",
        [
            "inpaint",
            "digits",
            "--image",
            "input.png",
            "--rect",
            "4,4,12,12",
            "--method",
            "replace",
            "--steps",
            "10",
            "--out",
            "replace.png",
            "--no-progress",
        ],
        ["replace.png"],
    ),
    (
        "img2img",
        [
            "img2img",
            "digits",
            "--image",
            "input.png",
            "--strength",
            "0.5",
            "--label",
            "8",
            "--steps",
            "20",
            "--seed",
            "2",
            "--out",
            "img2img.png",
            "--no-progress",
        ],
        ["img2img.png"],
    ),
    (
        "denoise",
        ["denoise", "digits", "--image", "input.png", "--sigma", "0.2", "--out", "denoise.png"],
        ["denoise.png"],
    ),
    (
        "denoise_sample",
        [
            "denoise",
            "digits",
            "--image",
            "input.png",
            "--sigma",
            "0.3",
            "--mode",
            "sample",
            "--sampler",
            "ddpm",
            "--steps",
            "20",
            "--seed",
            "3",
            "--out",
            "denoise_s.png",
        ],
        ["denoise_s.png"],
    ),
]
TOY = [
    (
        "train_toy",
        ["train", "--dataset", "toy:two_moons", "--out", "moons", "--steps", "200", "--no-progress", *RECIPE_0_1],
        ["moons/model.safetensors", "moons/ema.safetensors", "moons/samples.png"],
    ),
]
GROUPS = {"digits": DIGITS, "toy": TOY}


def write_input(folder: Path) -> None:
    """A fixed 16x16 grayscale 'one' with a soft edge: the image the tasks complete, edit and denoise."""
    yy, xx = np.mgrid[0:16, 0:16]
    img = np.clip(255 * np.exp(-((xx - 8) ** 2) / 6.0) * ((yy > 2) & (yy < 14)), 0, 255).astype(np.uint8)
    Image.fromarray(img, mode="L").save(folder / "input.png")


def _run(name: str, args: list[str], files: list[str], folder: Path) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = CLI + list(args)
    proc = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return list(files)


def run_group(group: str, folder: Path, workers: int = 2) -> list[str]:
    """Run one group's commands in ``folder``: the first (training) alone, then the ones that read its model
    side by side on ``workers`` threads (each command is its own one-thread process); the compared files."""
    folder.mkdir(parents=True, exist_ok=True)
    write_input(folder)
    (first, *rest) = GROUPS[group]
    files = _run(*first, folder)
    with ThreadPoolExecutor(workers) as pool:
        for result in pool.map(lambda c: _run(*c, folder), rest):
            files += result
    return files
