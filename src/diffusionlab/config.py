"""The typed configuration of a model: plain data that travels through every floor and is saved as config.json.

One name per concept: the fields here are the CLI's options and the API's keyword arguments.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "NetworkConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
    "SampleConfig",
    "ModelConfig",
    "MODEL_SIZES",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class NetworkConfig(_Strict):
    """Which network and its shape. ``kind='unet'`` for images, ``'mlp'`` for low-dimensional data."""

    kind: Literal["unet", "mlp"] = "unet"
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention_levels: list[int] = Field(default_factory=list)
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int | None = None  # None: unconditional; 0 when training: take the dataset's classes
    dim: int = 2
    width: int = 256
    depth: int = 4


MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": []},
    "small": {"base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_levels": []},
    "base": {"base_channels": 64, "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attention_levels": [2]},
    "large": {
        "base_channels": 128,
        "channel_mults": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attention_levels": [2, 3],
    },
}


class DiffusionConfig(_Strict):
    """The forward process (name + options, as ``processes.make_process`` takes) and the parameterisation."""

    process: dict[str, Any] = Field(default_factory=lambda: {"name": "ddpm", "schedule": "cosine", "num_steps": 1000})
    parameterisation: Literal["eps", "x0", "v", "edm", "velocity"] = "v"
    sigma_data: float = 0.5


class DataConfig(_Strict):
    """What the model was trained on: enough to know the shape and the classes of its samples."""

    dataset: str = "digits"
    image_size: int = 16
    channels: int | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None


class TrainConfig(_Strict):
    """How the model is trained (Adam W, warm-up + schedule, EMA, label dropout, checkpoints, logging)."""

    steps: int = 3000
    minutes: float | None = Field(default=None, gt=0)
    batch_size: int = 64
    lr: float = Field(default=2e-3, gt=0)
    lr_schedule: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    ema_start: int = Field(default=200, ge=0)
    label_dropout: float = Field(default=0.1, ge=0, le=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    time_sampling: Literal["uniform", "lognormal"] = "uniform"
    weighting: Literal["uniform", "min_snr", "edm"] = "uniform"
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2

    @field_validator("steps", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be a positive integer, got {v}")
        return v


class SampleConfig(_Strict):
    """Sampling defaults stored with the model; every call may override them."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str | None = None  # None: the process's default (karras for edm/ve, else uniform)
    guidance: float = 2.0  # bench/digits_quality.py: 98.8% of samples of the asked digit at 1, 100% at 2
    thresholding: Literal["none", "clip", "dynamic"] = "clip"  # keep x0 in the data range [-1, 1] (images)


class ModelConfig(_Strict):
    """Everything needed to rebuild a trained model from its folder."""

    format_version: int = 1
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
