"""Old model folders keep loading: folders written by the format-1 code (tests/fixtures/format1-*, made with the
commit before the typed core) load, migrate to the current format and sample what they did then.

fixtures/format1-samples.json holds the samples' values as the format-1 code (6e8c9be) drew them, one thread,
``Pipeline.load(folder).sample(...)`` with the arguments below, written as ``{"image": x.tolist(), ...}``
(re-record by running those calls with the old code on PYTHONPATH). They are compared within ``ATOL``: the image
sampler's convolutions round differently on each CPU (oneDNN picks AVX2, AVX-512 or AMX kernels), which moved
these pixels by at most 1.5e-6 (oneDNN and ATen limited to AVX2 or SSE4.1, mkldnn off, two threads; the points
not at all). Small changes of behaviour move them 25 times ATOL or more: guidance 1.5 -> 1.515 by 2.6e-4, Heun's
(d + d') / 2 -> 0.51 d + 0.49 d' by 1e-2, Euler's step 1.001 times longer the points by 4e-3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffusionlab.config import FORMAT_VERSION, DDPMProcessConfig, ModelConfig, migrate_model_config
from diffusionlab.io import CheckpointError, load_json
from diffusionlab.pipeline import Pipeline
from diffusionlab.spaces import LatentImageSpace, PixelImageSpace, PointSpace

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = {k: torch.tensor(v) for k, v in json.loads((FIXTURES / "format1-samples.json").read_text()).items()}
ATOL = 1e-5


def _assert_recorded(x: torch.Tensor, name: str) -> None:
    want = RECORDED[name]
    assert x.dtype == want.dtype and x.shape == want.shape
    worst = (x - want).abs().max().item()
    assert worst <= ATOL, f"{name}: samples differ from the format-1 code's by up to {worst:.3g}"


def test_format1_image_model_loads_migrated_and_samples_the_same(one_thread: None) -> None:
    assert load_json(FIXTURES / "format1-image" / "config.json")["format_version"] == 1
    pipe = Pipeline.load(FIXTURES / "format1-image")
    assert pipe.config.format_version == FORMAT_VERSION == 2
    assert pipe.config.space == "image" and isinstance(pipe.space, PixelImageSpace)
    x = pipe.sample(labels=[0, 1, 2], sampler="heun", steps=4, guidance=1.5, seed=3)
    _assert_recorded(x, "image")


def test_format1_point_model_loads_migrated_and_samples_the_same(one_thread: None) -> None:
    pipe = Pipeline.load(FIXTURES / "format1-points")
    assert pipe.config.space == "points" and isinstance(pipe.space, PointSpace)
    assert pipe.sample_shape == (2,)
    _assert_recorded(pipe.sample(5, sampler="euler", steps=6, seed=1), "points")


def test_a_migrated_model_saves_as_the_current_format_and_reloads_identically(tmp_path: Path, one_thread: None) -> None:
    pipe = Pipeline.load(FIXTURES / "format1-image")
    pipe.save(tmp_path / "m")
    raw = load_json(tmp_path / "m" / "config.json")
    assert raw["format_version"] == 2 and raw["space"] == "image" and raw["diffusion"]["process"]["name"] == "vp"
    again = Pipeline.load(tmp_path / "m")
    assert again.config == pipe.config
    a = pipe.sample(labels=[2], steps=3, seed=0)
    assert torch.equal(a, again.sample(labels=[2], steps=3, seed=0))


def test_migration_rules_of_format_1() -> None:
    base = {"format_version": 1, "network": {"kind": "unet"}}
    assert migrate_model_config(base)["space"] == "image"
    assert migrate_model_config({**base, "latent": {"autoencoder": "ae"}})["space"] == "latent_image"
    assert migrate_model_config({"network": {"kind": "mlp"}})["space"] == "points"  # no version: format 1
    from diffusionlab.config import SPACES as SPACE_NAMES
    from diffusionlab.spaces import SPACES

    # format 1 knew three spaces; format 2 added text ("tokens"), tables, signals, spectrograms and video, which
    # format-1 folders never name
    names = {"image", "latent_image", "points", "tokens", "table", "signal", "spectrogram", "video"}
    assert set(SPACES) == set(SPACE_NAMES) == names
    assert SPACES["latent_image"] is LatentImageSpace


def test_old_process_dict_is_read_as_the_typed_process() -> None:
    raw = {"diffusion": {"process": {"name": "ddpm", "num_steps": 100}}}
    cfg = ModelConfig.model_validate(migrate_model_config(raw))
    assert isinstance(cfg.diffusion.process, DDPMProcessConfig)
    assert cfg.diffusion.process.schedule == "linear"  # format 1's ddpm without a schedule meant linear betas
    assert cfg.diffusion.process.build().num_steps == 100


def test_a_folder_from_a_newer_format_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "format1-points", tmp_path / "m")
    raw = load_json(tmp_path / "m" / "config.json")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99 is newer than this diffusionlab reads"):
        Pipeline.load(tmp_path / "m")
