"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# one thread for the suite and the processes it starts: its models are small, and on a shared 2-core machine two
# threads per process ran a training test 6x slower than one (78 s against 12.5 s under a load of 2)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

# mixed_precision="auto" picks bf16 on CPUs with bf16 units: the suite pins it to fp32 (its subprocesses too) so
# that its numbers do not depend on the machine; tests of "auto" itself clear or set this variable.
os.environ["DIFFUSIONLAB_AUTO_PRECISION"] = "no"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small matrices on a shared 2-core machine: one thread is several times faster than two oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pets_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained class-conditional 8x8 grayscale model folder "pets" with 3 named classes (fast; noise-like)."""
    from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig
    from diffusionlab.pipeline import Pipeline

    torch.manual_seed(0)
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=3),
        data=DataConfig(image_size=8, channels=1, num_classes=3, class_names=["cat", "dog", "owl"]),
        sample=SampleConfig(steps=3),
    )
    out = tmp_path_factory.mktemp("model") / "pets"
    Pipeline(config).save(out)
    return out
