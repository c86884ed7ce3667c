"""Bounds on the work and memory one call may ask for, checked before the work starts (floor 0).

Each bound has one name, one default and one environment variable that raises (or lowers) it: a user who truly
needs 50 000 sampler steps sets ``DIFFUSIONLAB_MAX_STEPS=50000``. The defaults are far above anything the README's
models need and far below what would exhaust a laptop (docs/limits.md lists them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

__all__ = ["Limits", "limits", "check_limit", "check_samples", "ENV_PREFIX"]

ENV_PREFIX = "DIFFUSIONLAB_"


@dataclass(frozen=True)
class Limits:
    """The bounds; ``limits()`` reads them with any environment overrides."""

    max_steps: int = 10_000  # sampler steps (and training-free solver iterations) per call
    max_samples: int = 100_000  # samples per call (sample -n, --per-class x classes, evaluate --num-samples)
    max_batch_size: int = 65_536  # samples or training examples in one forward pass
    max_output_bytes: int = 8 * 2**30  # float32 bytes of all samples one call returns (8 GiB)
    max_image_pixels: int = 64 * 2**20  # width x height of one input image file, read from its header (64 MP)
    max_image_size: int = 4096  # a model's image side (data.image_size)
    max_seq_len: int = 65_536  # tokens in one sequence of a text model (data.seq_len)
    max_parameters: int = 4 * 10**9  # parameters of the network a config describes (counted before allocating)
    max_train_steps: int = 100_000_000  # training steps of one run (train.steps, a resumed step)

    def env_name(self, name: str) -> str:
        """The environment variable that overrides the bound ``name``."""
        return ENV_PREFIX + name.upper()


def limits() -> Limits:
    """The bounds in force: the defaults, each overridden by its environment variable when set."""
    values = {}
    for f in fields(Limits):
        text = os.environ.get(ENV_PREFIX + f.name.upper())
        if text is None or text.strip() == "":
            continue
        try:
            value = int(float(text)) if text.strip().lower() not in ("inf", "nan") else -1
        except ValueError:
            value = -1
        if value < 1:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={text!r} must be a positive whole number.")
        values[f.name] = value
    return Limits(**values)


def check_limit(name: str, value: int | float, bound: str, unit: str = "") -> None:
    """One clear error when ``value`` (the setting ``name``) exceeds the bound ``bound`` of ``limits()``."""
    current = limits()
    most = getattr(current, bound)
    if value > most:
        shown = value if isinstance(value, int) else f"{value:g}"
        raise ValueError(
            f"{name}={shown}{unit} is more than the limit of {most:,}{unit}; set {current.env_name(bound)} to raise it."
        )


def check_samples(name: str, n: int, numel: int) -> None:
    """One clear error when ``n`` samples of ``numel`` values each (the setting ``name``) exceed the sample count
    or the float32 output-memory bound of ``limits()``."""
    check_limit(name, n, "max_samples")
    current = limits()
    need = n * numel * 4
    if need > current.max_output_bytes:
        raise ValueError(
            f"{name}={n} samples of {numel} values need {need / 2**30:.1f} GiB, more than the limit of "
            f"{current.max_output_bytes / 2**30:.1f} GiB; set {current.env_name('max_output_bytes')} to raise it."
        )
