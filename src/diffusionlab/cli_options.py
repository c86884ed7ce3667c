"""The command line's options, each declared once (floor 6, beside ``cli.py``).

Options several commands share are ``Annotated`` aliases here. The options that set a config field are made
from the config classes themselves: the flag is the field's name, and its type, default and help are the
field's, so a default lives only in ``config.py``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel

from .config import (
    MODEL_SIZES,
    AbsorbingProcessConfig,
    AutoencoderNetworkConfig,
    DDPMProcessConfig,
    DiffusionConfig,
    MixedProcessConfig,
    NetworkConfig,
    ProcessConfig,
    TextEncoderConfig,
)
from .sampling import REQUEST_SPACINGS, SAMPLERS, TOKEN_SAMPLER_OPTIONS

__all__ = ["config_option", "config_options", "config_values", "request_default", "ModelSize", "PROCESS_CLASSES"]

F = TypeVar("F", bound=Callable[..., Any])
# the help panels of the options that set config fields, one per config.json section
DATA_PANEL, DIFFUSION_PANEL = "Data (config.json: data)", "Diffusion (config.json: diffusion)"
NETWORK_PANEL, TRAIN_PANEL = "Network (config.json: network)", "Training (config.json: train)"


def request_default(spec: type[BaseModel], name: str) -> Any:
    """The default of a field of the request types (``sampling/request.py``), for an option that sets it."""
    return spec.model_fields[name].get_default(call_default_factory=True)


def _choices(annotation: Any) -> tuple[str, ...]:
    """The values a Literal field (or a list of them, or an optional one) takes; () for other fields."""
    if get_origin(annotation) is Literal:
        return tuple(str(v) for v in get_args(annotation))
    return tuple(c for arg in get_args(annotation) if arg is not type(None) for c in _choices(arg))


def _is_list(annotation: Any) -> bool:
    """Whether a field holds a list (or an optional list): the command line takes it comma-separated."""
    if get_origin(annotation) is list:
        return True
    return get_origin(annotation) in (Union, types.UnionType) and any(_is_list(a) for a in get_args(annotation))


def _option_type(annotation: Any) -> Any:
    """The type the command line parses a field as: choices and lists as text (the config checks them), an
    optional field as optional."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _option_type(inner) | None
    if get_origin(annotation) in (Literal, list):
        return str
    return annotation


def _help(model: type[BaseModel], name: str) -> str:
    """A field's description, and the values it takes where they are a fixed few."""
    info = model.model_fields[name]
    text = info.description or ""
    choices = _choices(info.annotation)
    if choices:
        text += f" {'Comma-separated, of' if _is_list(info.annotation) else 'One of'}: {', '.join(choices)}."
    return text


def config_option(model: type[BaseModel], name: str, panel: str) -> inspect.Parameter:
    """One config field as a typer option: ``--name-with-dashes``, the field's type, default and description."""
    info = model.model_fields[name]
    value = info.get_default(call_default_factory=True)
    if _is_list(info.annotation) and isinstance(value, list):
        value = ",".join(str(v) for v in value)  # the command line takes a list comma-separated
    option = typer.Option(help=_help(model, name), rich_help_panel=panel)
    annotation = Annotated[_option_type(info.annotation), option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=annotation)


def config_options(fields: Mapping[type[BaseModel], tuple[Iterable[str], str]]) -> Callable[[F], F]:
    """Add an option per config field to a command taking ``**fields``: {config class: (field names, help panel)}."""

    def add(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        made = [config_option(model, name, panel) for model, (names, panel) in fields.items() for name in names]
        command.__signature__ = signature.replace(parameters=[*own, *made])  # type: ignore[attr-defined]
        return command

    return add


def config_values(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options that set fields of ``model``, as the config takes them (comma-separated text as a list)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in values:
            value = values[name]
            if _is_list(info.annotation) and isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            out[name] = value
    return out


ModelSize = Enum("ModelSize", {name: name for name in MODEL_SIZES}, type=str)  # type: ignore[misc]
# the preset that NetworkConfig's own defaults are
DEFAULT_MODEL_SIZE = next(
    ModelSize(name)
    for name, preset in MODEL_SIZES.items()
    if all(getattr(NetworkConfig(), key) == value for key, value in preset.items())
)
# the process config classes by name, and the process (and DDPM schedule) a DiffusionConfig has by default
PROCESS_CLASSES = {get_args(c.model_fields["name"].annotation)[0]: c for c in get_args(get_args(ProcessConfig)[0])}
DEFAULT_PROCESS = DiffusionConfig().process.name
DEFAULT_SCHEDULE = getattr(DiffusionConfig().process, "schedule", DDPMProcessConfig().schedule)
DEFAULT_TEXT_ENCODER = TextEncoderConfig().name
DEFAULT_TEXT_PROCESS = AbsorbingProcessConfig().name  # text trains masked diffusion (MDLM) unless told otherwise
DEFAULT_TABLE_PROCESS = MixedProcessConfig().name  # tables: Gaussian numbers and masked categories (TabDDPM)
# the discrete processes a table's categorical columns may take, and the one they take by default
CATEGORICAL_PROCESSES = tuple(
    get_args(c.model_fields["name"].annotation)[0]
    for c in get_args(MixedProcessConfig.model_fields["categorical"].annotation)
)
DEFAULT_CATEGORICAL_PROCESS = MixedProcessConfig().categorical.name
# the down-sampling of AutoencoderNetworkConfig's default levels: 2^(levels - 1)
DEFAULT_DOWNSAMPLE_FACTOR = 2 ** (len(AutoencoderNetworkConfig().channel_mults) - 1)

# ---------------------------------------------------------------- options several commands share
ModelFolder = Annotated[Path, typer.Argument(help="A model folder (config.json + *.safetensors), e.g. runs/digits.")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
CalibrationFile = Annotated[
    Path | None,
    typer.Option(help="Series: a calibration (.json from `calibrate`) that scales the draws' spread to its level."),
]
Seed = Annotated[
    int, typer.Option(help="Seed of the noise: sample i uses the noise of (seed, i); same seed, same result.")
]
NumSamples = Annotated[int | None, typer.Option("--num-samples", "-n", help="How many samples.")]
Sampler = Annotated[
    str | None,
    typer.Option(
        help=f"Solver: {', '.join(SAMPLERS)}; text models: {', '.join(TOKEN_SAMPLER_OPTIONS)} (default: the model's; "
        "inpaint --method replace and denoise --mode sample: ddpm)."
    ),
]
Steps = Annotated[int | None, typer.Option(help="Solver steps of a full run (default: the model's).")]
Temperature = Annotated[
    float | None,
    typer.Option(help="Text: softmax temperature of x0_hat (0: always the most likely token; default 1)."),
]
TopP = Annotated[
    float | None, typer.Option(help="Text: nucleus sampling, keep the likeliest tokens of this mass (default 1: all).")
]
Cache = Annotated[
    bool | None,
    typer.Option(help="Text (absorbing): skip the network for samples whose tokens did not change (MDLM's cache)."),
]
Guidance = Annotated[
    float | None,
    typer.Option(
        help="Classifier-free guidance w: 0 unconditional, 1 conditional, >1 stronger (default: the model's)."
    ),
]
Prompt = Annotated[str | None, typer.Option(help="Text prompt (text-conditional models).")]
Label = Annotated[int | None, typer.Option(help="Class label to steer towards (default: unconditional).")]
BatchSize = Annotated[int, typer.Option(help="Samples per network batch (does not change the results).")]
OutFile = Annotated[Path, typer.Option("--out", help="Where to write the result: a PNG (anomaly: a CSV).")]
SamplesFile = Annotated[
    Path | None,
    typer.Option("--out", help="Where to write the samples: a PNG (text models: a .txt); default samples.png/.txt."),
]
TaskImage = Annotated[Path, typer.Option(help="The input image: a PNG of the model's size and channels.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")]
Cpu = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")]
TrainOut = Annotated[Path, typer.Option(help="Output folder: the model, checkpoints/, previews, tensorboard/.")]

# ---------------------------------------------------------------- train
ModelSizeOption = Annotated[ModelSize, typer.Option(help="UNet size preset (config.py MODEL_SIZES).")]
Conditional = Annotated[
    bool, typer.Option(help="Condition on class labels (with classifier-free guidance) if the data has them.")
]
TextEncoderOption = Annotated[str, typer.Option(help=TextEncoderConfig.model_fields["name"].description)]
Process = Annotated[
    str | None,
    typer.Option(
        help=f"Forward process: one of {', '.join(PROCESS_CLASSES)} (default: {DEFAULT_PROCESS} for images and points, "
        f"{DEFAULT_TEXT_PROCESS} for text, {DEFAULT_TABLE_PROCESS} for tables).",
        rich_help_panel=DIFFUSION_PANEL,
    ),
]
CategoricalProcess = Annotated[
    str | None,
    typer.Option(
        help=f"Tables: the discrete process of the categorical columns, one of {', '.join(CATEGORICAL_PROCESSES)} "
        f"(default {DEFAULT_CATEGORICAL_PROCESS}: masking; uniform: TabDDPM's multinomial diffusion, each column over "
        "its own categories).",
        rich_help_panel=DIFFUSION_PANEL,
    ),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        help=f"Schedule of the process: ddpm's beta schedule (linear, cosine, geometric; default {DEFAULT_SCHEDULE}) "
        "or a discrete process's alpha(t) (loglinear, cosine; default loglinear).",
        rich_help_panel=DIFFUSION_PANEL,
    ),
]
NetworkKind = Annotated[
    str | None,
    typer.Option(
        "--network",
        help="Network: the data kind's own (unet for images, transformer for text, tabular for tables, unet1d for "
        "signals) by default; tabular_transformer for tables (a transformer over the columns), diffwave for signals "
        "(Kong et al. 2021).",
        rich_help_panel=DIFFUSION_PANEL,
    ),
]
Autoencoder = Annotated[
    Path | None,
    typer.Option(
        help="Latent diffusion: train in this autoencoder's latent space (a train-autoencoder output folder, "
        "or a diffusers AutoencoderKL folder)."
    ),
]
DownsampleFactor = Annotated[
    int, typer.Option(help="Latents are this many times smaller in height and width: 1, 2, 4 or 8.")
]

# ---------------------------------------------------------------- sample
Labels = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated class labels (indices or the model's class names), one per sample or one for all."
    ),
]
PerClass = Annotated[int | None, typer.Option(help="Sample this many of every class, one labelled row per class.")]
Spacing = Annotated[
    str | None,
    typer.Option(
        help=f"Time grid: {', '.join(REQUEST_SPACINGS)} (tuned: the model's own, see tune-grid; default: the model's)."
    ),
]
NegativePrompt = Annotated[
    str | None, typer.Option(help="Prompt to guide away from (replaces the empty prompt in guidance).")
]
CondImage = Annotated[
    Path | None,
    typer.Option(help="Condition image for super-resolution (the low-resolution image) or colourisation models."),
]
GuidanceRescale = Annotated[
    float, typer.Option(help="CFG rescale phi in [0, 1] (Lin et al. 2024) against over-saturation.")
]
GuidanceInterval = Annotated[
    str | None,
    typer.Option(help="Guide only at noise levels sigma/alpha in (low, high], e.g. 0.3,5 (Kynkaanniemi 2024)."),
]
ClassifierScale = Annotated[
    float, typer.Option(help="Classifier guidance scale s (needs `diffusionlab train-classifier` first).")
]
Eta = Annotated[float | None, typer.Option(help="DDIM noise, in [0, 1] (ddim only).")]
Thresholding = Annotated[
    str | None, typer.Option(help="Keep x0 in [-1, 1]: clip, dynamic (Imagen) or none (default: the model's).")
]
Nrow = Annotated[int, typer.Option(help="Images per row of the grid.")]
MixedPrecision = Annotated[
    str,
    typer.Option(
        help="auto (bf16 where the CPU has AVX512-BF16 or AMX, or the GPU has bf16; else no), no (fp32), or bf16: "
        "the network under bfloat16 autocast."
    ),
]
OutDir = Annotated[
    Path | None,
    typer.Option(
        help="Also save every sample as its own PNG in this new folder: with labels (--per-class, --labels) as "
        "OUT_DIR/<class name>/<index>.png, an ImageFolder that `train --dataset OUT_DIR` reads with its labels."
    ),
]

# ---------------------------------------------------------------- train-classifier
ClassifierData = Annotated[
    str | None, typer.Option(help="Labelled data (default: the model's own dataset, train split).")
]
OptimisationSteps = Annotated[int, typer.Option(help="Optimisation steps.")]
TrainBatch = Annotated[int, typer.Option(help="Examples per optimisation step.")]
LearningRate = Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")]

# ---------------------------------------------------------------- evaluate
Metrics = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated: fid, kid, pr (precision/recall), dc (density/coverage), bpd (bits/dim, ODE), "
        "vlb (DDPM bound); points: swd, mmd, true_nll, nll. Default: fid,kid,pr,dc (points: swd,mmd,nll)."
    ),
]
Features = Annotated[
    str | None,
    typer.Option(
        help="Feature network: classifier (trained on the model's labelled dataset, cached), inception "
        "(the FID network; needs --inception-weights) or pixels. Default: classifier if labelled, else pixels."
    ),
]
InceptionWeights = Annotated[
    Path | None,
    typer.Option(help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors); nothing downloads."),
]
NumReal = Annotated[int | None, typer.Option(help="Use at most this many real images (default: the whole test split).")]
BpdImages = Annotated[int, typer.Option(help="Real images scored by bpd and vlb.")]
Probe = Annotated[str, typer.Option(help="bpd trace estimator: rademacher, gaussian or exact.")]
Rtol = Annotated[float, typer.Option(help="Relative tolerance of the likelihood ODE (RK45).")]
Atol = Annotated[float, typer.Option(help="Absolute tolerance of the likelihood ODE (RK45).")]
ResultsJson = Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")]

# ---------------------------------------------------------------- inpaint, img2img, denoise, anomaly
Mask = Annotated[
    Path | None,
    typer.Option(help="Mask PNG of the image's size: WHITE = fill (generate), BLACK = keep (kept exactly)."),
]
Rect = Annotated[
    str | None, typer.Option(help="Fill this rectangle instead of a mask: x0,y0,x1,y1 in pixels (x1, y1 excluded).")
]
Outpaint = Annotated[
    str | None,
    typer.Option(help="Outpaint: extend the image by left,top,right,bottom pixels and fill the new border."),
]
InpaintMethod = Annotated[
    str, typer.Option("--method", help="repaint (RePaint, with resampling jumps) or replace (the replacement method).")
]
JumpLength = Annotated[int, typer.Option(help="RePaint: levels of each jump back up (j).")]
JumpNSample = Annotated[int, typer.Option(help="RePaint: passes through each jump's levels (r).")]
ReconstructionGuidance = Annotated[
    float, typer.Option(help="replace: weight w_r of reconstruction guidance (Ho et al. 2022), e.g. 16; 0 = off.")
]
Strength = Annotated[float, typer.Option(help="In (0, 1]: how far to noise the input (near 0 keeps it, 1 ignores it).")]
Sigma = Annotated[
    str, typer.Option(help="Noise std in pixel units (images in [0, 1]), e.g. 0.1, or 'auto' to estimate it.")
]
DenoiseMode = Annotated[
    str,
    typer.Option("--mode", help="mean (posterior mean: one network call, smoothest) or sample (a posterior draw)."),
]
ImageFolder = Annotated[
    Path, typer.Option("--images", help="Folder of PNG/JPEG images (flat or in class subfolders) to score.")
]
AnomalyMethod = Annotated[
    str,
    typer.Option(
        "--method",
        help="recon (noise to --t and reconstruct), denoising (ELBO-style denoising error) or likelihood "
        "(bits/dim through the probability-flow ODE; slow, pixel-space models).",
    ),
]
NoiseTime = Annotated[float, typer.Option("--t", help="recon: the noising time, in the process's time range.")]
Repeats = Annotated[int, typer.Option(help="recon: noise draws averaged per image.")]
NumTimes = Annotated[int, typer.Option(help="denoising: log-SNR levels averaged over.")]
LogSnrRange = Annotated[
    str | None, typer.Option(help="denoising: only log-SNR levels in low,high, e.g. -3,3 (default: all).")
]

# ---------------------------------------------------------------- serve
Host = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")]
Port = Annotated[int, typer.Option(help="TCP port.")]
