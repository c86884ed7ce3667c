"""One sampling request: small frozen types shared by ``Pipeline.sample``, every task, the CLI and the HTTP API.

A setting has one name, one default and one check, here. ``None`` means "the model's default"
(``config.sample``), filled in by ``resolve``. The CLI's flags and the HTTP API's fields carry the same names.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor

from ..hardware import resolve_precision
from ..limits import check_limit
from ..processes import GaussianProcess
from .grids import REQUEST_SPACINGS, default_spacing, time_grid
from .guidance import check_guidance_interval

__all__ = [
    "FrozenSettings",
    "SamplerSpec",
    "GuidanceSpec",
    "Conditioning",
    "SampleRequest",
    "precision",
    "sampling_precision",
    "first_error",
    "labels_for",
    "text_metadata",
]


def first_error(err: ValidationError) -> str:
    """A pydantic error as one line naming the setting, its value and what was expected."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "value"
    msg = str(e["msg"]).removeprefix("Value error, ")
    if e["type"] == "value_error":  # our own checks already name the setting
        return msg
    return f"{where}={e['input']!r}: {msg[:1].lower()}{msg[1:]}" if "input" in e else f"{where}: {msg}"


class FrozenSettings(BaseModel):
    """Frozen, strict settings: each field one name, one default and one check; ``make`` raises one clear line."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    @classmethod
    def make(cls, **values: Any) -> Any:
        """Build and check; a bad value is one ValueError naming it, never a pydantic traceback."""
        try:
            return cls(**values)
        except ValidationError as err:
            raise ValueError(first_error(err)) from None


def tuned_times(defaults: Any, sampler: str, steps: int) -> tuple[float, ...]:
    """A model's tuned grid for ``sampler`` at ``steps`` steps (``config.sample.tuned_grids``), or one clear error
    naming the grids it has."""
    grids = getattr(defaults, "tuned_grids", None) or {}
    key = f"{sampler}:{steps}"
    if key not in grids:
        have = ", ".join(sorted(grids)) or "none"
        raise ValueError(
            f"spacing='tuned': this model has no tuned grid for sampler={sampler!r} at steps={steps} (it has: "
            f"{have}); make one with `diffusionlab tune-grid MODEL --sampler {sampler} --steps {steps}`."
        )
    return tuple(grids[key])


class SamplerSpec(FrozenSettings):
    """Which solver, how many steps, on which time grid, with which solver options (e.g. ``eta``)."""

    sampler: str | None = None  # None: the model's (config.sample.sampler)
    steps: int | None = Field(default=None, ge=1)
    spacing: str | None = None  # None: the model's, else the process's default
    options: dict[str, float | int | bool | str] = Field(default_factory=dict)
    times: tuple[float, ...] | None = None  # the grid itself (a tuned one, filled in by resolve); None: by spacing

    @field_validator("options")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = {k: x for k, x in v.items() if isinstance(x, float) and math.isnan(x)}
        if bad:
            raise ValueError(f"solver option(s) {bad} must be numbers, not NaN")
        return v

    @field_validator("steps")
    @classmethod
    def _bounded(cls, v: int | None) -> int | None:
        if v is not None:
            check_limit("steps", v, "max_steps")
        return v

    @field_validator("sampler")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        from . import SAMPLERS, TOKEN_SAMPLER_OPTIONS

        if v is not None and v not in SAMPLERS and v not in TOKEN_SAMPLER_OPTIONS:
            raise ValueError(
                f"sampler={v!r} is not known; expected one of {sorted([*SAMPLERS, *TOKEN_SAMPLER_OPTIONS])}"
            )
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: str | None) -> str | None:
        if v is not None and v not in REQUEST_SPACINGS:
            raise ValueError(f"spacing={v!r} is not known; expected one of {REQUEST_SPACINGS}")
        return v

    def resolve(self, defaults: Any) -> SamplerSpec:
        """Fill the unset fields from a model's ``config.sample`` and check the options against the solver."""
        spec = self.model_copy(
            update={
                "sampler": self.sampler or defaults.sampler,
                "steps": self.steps if self.steps is not None else defaults.steps,
                "spacing": self.spacing or defaults.spacing,
            }
        )
        if spec.spacing == "tuned" and spec.times is None:
            spec = spec.model_copy(update={"times": tuned_times(defaults, spec.sampler, spec.steps)})
        return SamplerSpec.make(**spec.model_dump()).check_options()

    def check_options(self) -> SamplerSpec:
        """One clear error for an option the solver does not take."""
        from . import check_options

        check_options(self.sampler or "ddim", self.options)
        return self

    @property
    def nfe(self) -> int | None:
        """Network evaluations of this (resolved) sampler (None for an adaptive one: known after a run)."""
        from . import nfe

        return nfe(self.sampler or "ddim", self.steps or 1, **self.options)

    def grid(self, process: GaussianProcess) -> Tensor:
        """The (resolved) decreasing time grid from t_max to 0."""
        if self.times is not None:
            return torch.tensor(self.times, dtype=torch.float64)
        return time_grid(process, self.steps or 1, self.spacing or default_spacing(process))


class GuidanceSpec(FrozenSettings):
    """How the denoiser is steered: classifier-free scale w (0 unconditional, 1 conditional, > 1 stronger), CFG
    rescale phi (Lin et al. 2024), guidance interval (Kynkäänniemi et al. 2024), classifier guidance s (Dhariwal &
    Nichol 2021), x0 thresholding, and the precision the network runs in."""

    guidance: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # None: the model's
    guidance_rescale: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    guidance_interval: tuple[float, float] | None = None
    classifier_scale: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    thresholding: Literal["none", "clip", "dynamic"] | None = None  # None: the model's
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # bf16 autocast; auto: where it runs natively

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(math.isfinite(float(b)) or b == math.inf for b in v):
            raise ValueError(f"guidance_interval={v} must be two noise levels, not NaN")
        return check_guidance_interval(v)

    def resolve(self, defaults: Any) -> GuidanceSpec:
        """Fill the unset fields from a model's ``config.sample``."""
        return self.model_copy(
            update={
                "guidance": defaults.guidance if self.guidance is None else self.guidance,
                "thresholding": self.thresholding or defaults.thresholding,
            }
        )


class Conditioning(FrozenSettings):
    """What the samples are conditioned on: class labels (one per sample, or one for all), a prompt (one, or one
    per sample) and a negative prompt, a condition image (C, H, W) or (N, C, H, W) in [0, 1]."""

    labels: list[int] | int | None = None
    prompt: str | list[str] | None = None
    negative_prompt: str | None = None
    cond_image: Tensor | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        if isinstance(v, Tensor) and v.ndim > 0:
            return v.flatten().tolist()
        if hasattr(v, "tolist"):  # numpy arrays and scalars, 0-d tensors
            return v.tolist()
        return list(v) if isinstance(v, tuple | range) else v

    def count(self) -> int | None:
        """The number of samples the conditioning implies (a list of labels or prompts), else None."""
        if isinstance(self.labels, list):
            return len(self.labels)
        if isinstance(self.prompt, list):
            return len(self.prompt)
        return None


_SAMPLER_FIELDS = ("sampler", "steps", "spacing")


class SampleRequest(FrozenSettings):
    """Everything one sampling run is asked: sampler, guidance, conditioning, the weights and the seed."""

    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    guidance: GuidanceSpec = Field(default_factory=GuidanceSpec)
    conditioning: Conditioning = Field(default_factory=Conditioning)
    seed: int = Field(default=0, ge=0)
    use_ema: bool = True

    @classmethod
    def from_settings(cls, **settings: Any) -> SampleRequest:
        """A request from flat keyword settings as the CLI, the HTTP API and ``Pipeline.sample`` name them; names
        that are not a field of any part are the solver's options (e.g. ``eta``), checked against the solver."""
        parts: dict[str, dict[str, Any]] = {"sampler": {}, "guidance": {}, "conditioning": {}, "top": {}}
        options = dict(settings.pop("options", None) or {})
        for key, value in settings.items():
            if key in _SAMPLER_FIELDS:
                parts["sampler"][key] = value
            elif key in GuidanceSpec.model_fields:
                parts["guidance"][key] = value
            elif key in Conditioning.model_fields:
                parts["conditioning"][key] = value
            elif key in ("seed", "use_ema"):
                parts["top"][key] = value
            elif value is not None:
                options[key] = value
        return cls.make(
            sampler=SamplerSpec.make(**parts["sampler"], options=options),
            guidance=GuidanceSpec.make(**parts["guidance"]),
            conditioning=Conditioning.make(**parts["conditioning"]),
            **parts["top"],
        )

    def resolve(self, defaults: Any) -> SampleRequest:
        """The request with every model default filled in (``defaults`` is a model's ``config.sample``)."""
        return self.model_copy(
            update={"sampler": self.sampler.resolve(defaults), "guidance": self.guidance.resolve(defaults)}
        )

    def metadata(self, **shown: Any) -> dict[str, str]:
        """A resolved request as PNG text metadata, in one order: sampler, steps, seed, guidance, the solver options
        (JSON), then those set of prompt, negative_prompt, cond_image, guidance_rescale, guidance_interval,
        classifier_scale and mixed_precision. ``shown`` gives the text a face shows for a setting (the file a
        condition image came from) or adds settings at the end (e.g. labels)."""
        g, c, s = self.guidance, self.conditioning, self.sampler
        settings = {
            "sampler": s.sampler,
            "steps": s.steps,
            "seed": self.seed,
            "guidance": g.guidance,
            "options": json.dumps(s.options),
            "prompt": c.prompt if isinstance(c.prompt, str) else None,
            "negative_prompt": c.negative_prompt,
            "cond_image": None,  # a tensor: a face shows the file it came from
            "guidance_rescale": g.guidance_rescale or None,
            "guidance_interval": ",".join(f"{v:g}" for v in g.guidance_interval) if g.guidance_interval else None,
            "classifier_scale": g.classifier_scale or None,
            "mixed_precision": None if (mp := sampling_precision(g.mixed_precision)) == "no" else mp,
        }
        return text_metadata(**{**settings, **shown})


def text_metadata(**settings: Any) -> dict[str, str]:
    """Settings as PNG text metadata: each one that is set (not None) as text, in the order given."""
    return {k: str(v) for k, v in settings.items() if v is not None}


def sampling_precision(mixed_precision: str) -> str:
    """The precision sampling runs in: "auto" made concrete for this machine (``hardware.resolve_precision``)."""
    return resolve_precision(mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def precision(mixed_precision: str) -> Iterator[None]:
    """bfloat16 autocast of the network's matmuls and convolutions on the CPU (and the GPU, if any), or nothing;
    "auto" is bf16 where the hardware runs it natively."""
    with contextlib.ExitStack() as stack:
        if sampling_precision(mixed_precision) == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        yield


def labels_for(labels: Sequence[int] | int | None, n: int | None) -> list[int] | None:
    """One label per sample: an int or a single label is broadcast to n samples (n None: the labels as given);
    otherwise one label each, or one clear error."""
    if labels is None:
        return None
    given = [labels] if isinstance(labels, int) else [int(v) for v in labels]
    if n is None or len(given) == n:
        return given
    if len(given) == 1:
        return given * n
    raise ValueError(f"got {len(given)} labels for {n} samples; give one, or one each.")
