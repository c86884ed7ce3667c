"""A folder of small model folders of every data kind, for the studio's tests (trained a few steps, so seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import Trainer

QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}
KINDS = {
    "pets": "image",
    "moons": "points",
    "markov": "tokens",
    "people": "table",
    "tones": "signal",
    "moving": "video",
}


def write_studio_root(root: Path, pets_model: Path) -> Path:
    """``root`` holding pets (an 8x8 image model), moons (2-D points), markov (text), people (a table),
    tones/clips (audio) and moving (4-frame clips of moving digits): each trained a few steps (or not at all),
    enough to be served."""
    from test_signal_model import write_tones
    from test_table_model import table_config, write_table
    from test_text_model import text_config

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pets_model, root / "pets")
    torch.manual_seed(0)
    points = ModelConfig(
        network=NetworkConfig(kind="mlp", **{"dim": 2, "width": 32, "depth": 2}),
        data=DataConfig(dataset="moons"),
        sample=SampleConfig(steps=5),
    )
    Pipeline(points).save(root / "moons")
    data = root.parent / "studio-data-sources"
    data.mkdir(exist_ok=True)
    short = {"steps": 4, "warmup_steps": 1}
    Trainer(text_config(steps=4), root / "markov", progress=False).train()
    Trainer(table_config(write_table(data / "people.csv"), steps=4), root / "people", progress=False).train()
    tones = ModelConfig(
        network=NetworkConfig(**{"kind": "diffwave", "width": 8, "depth": 2, "num_classes": 0, "dilation_cycle": 2}),
        data=DataConfig(dataset=f"audio:{write_tones(data / 'tones')}"),
        train=TrainConfig(batch_size=4, **short, **QUIET),
    )
    Trainer(tones, root / "tones" / "clips", progress=False).train()
    moving = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="moving_digits", frames=4),
        train=TrainConfig(batch_size=4, **short, **QUIET),
    )
    trainer = Trainer(moving, root / "moving", progress=False, track=False)
    for step in range(2):
        trainer.train_step(step)
    trainer.objective.save(root / "moving")  # the folder without a finished run's 80-clip preview
    return root


__all__ = ["write_studio_root", "KINDS", "MODEL_SIZES"]
