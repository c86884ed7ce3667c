"""The typed configuration of a model: plain data that travels through every floor and is saved as config.json.

One name per concept: the fields here are the CLI's options and the API's keyword arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .discrete.processes import AbsorbingProcess, DiscreteProcess, MixedProcess, UniformProcess, make_schedule
from .limits import check_limit, limits
from .processes import (
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    LearnedVPProcess,
    SubVPProcess,
    VEProcess,
    VPProcess,
)

__all__ = [
    "NetworkConfig",
    "ProcessConfig",
    "DDPMProcessConfig",
    "VPProcessConfig",
    "SubVPProcessConfig",
    "VEProcessConfig",
    "EDMProcessConfig",
    "FlowProcessConfig",
    "VDMProcessConfig",
    "AbsorbingProcessConfig",
    "UniformProcessConfig",
    "MixedProcessConfig",
    "DiffusionConfig",
    "SPACES",
    "FORMAT_VERSION",
    "migrate_model_config",
    "DataConfig",
    "ColumnSchema",
    "TableSchema",
    "SignalInfo",
    "SpectrogramStats",
    "AudioSpace",
    "TrainConfig",
    "SampleConfig",
    "TextEncoderConfig",
    "ModelConfig",
    "PrivacyReport",
    "MODEL_SIZES",
    "TRANSFORMER_SIZES",
    "TABULAR_SIZES",
    "SIGNAL_SIZES",
    "LatentConfig",
    "AutoencoderNetworkConfig",
    "AutoencoderTrainConfig",
    "AutoencoderConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def _max_levels() -> int:
    """The most levels a UNet may have: each one halves the image, whose side is at most ``max_image_size``."""
    return limits().max_image_size.bit_length()


def _check_levels(name: str, mults: list[int]) -> list[int]:
    """``channel_mults``: 1 to ``_max_levels()`` entries, each at least 1."""
    if not 1 <= len(mults) <= _max_levels():
        raise ValueError(
            f"{name} has {len(mults)} entries; expected 1 to {_max_levels()} (one level per halving of an image "
            f"side of at most {limits().max_image_size:,})"
        )
    if any(m < 1 for m in mults):
        raise ValueError(f"{name}={mults}: every entry must be at least 1")
    return mults


def _check_indices(name: str, levels: list[int] | None) -> list[int] | None:
    if levels is not None and any(level < 0 for level in levels):
        raise ValueError(f"{name}={levels}: level indices must be at least 0")
    return levels


class NetworkConfig(_Strict):
    """Which network and its shape. ``kind='unet'`` for images, ``'mlp'`` for low-dimensional data,
    ``'transformer'`` for token sequences (``width``, ``depth``, ``num_heads``; vocabularies fitted to the data),
    ``'tabular'`` (an MLP) or ``'tabular_transformer'`` (``num_heads`` too) for table rows, ``'unet1d'`` (the
    UNet's settings) or ``'diffwave'`` (``width`` residual channels, ``depth`` layers, ``dilation_cycle``) for
    signals, ``'spacetime_unet'`` (the UNet's settings) for video clips."""

    kind: Literal[
        "unet", "mlp", "transformer", "tabular", "tabular_transformer", "unet1d", "diffwave", "spacetime_unet"
    ] = "unet"
    in_channels: int = Field(default=1, ge=1)
    base_channels: int = Field(default=16, ge=1)  # the "compact" preset: docs/training.md says why
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = Field(default=1, ge=1)
    attention_levels: list[int] = Field(default_factory=list)
    num_heads: int = Field(default=4, ge=1)
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout in the network's residual blocks (0: none; DiffWave has none)."
    )
    num_classes: int | None = Field(default=None, ge=0)  # None: unconditional; 0 when training: the dataset's
    text_dim: int | None = Field(default=None, ge=1)  # token-embedding width of the text encoder; None: no text
    cross_attention_levels: list[int] | None = None  # text only; None: every level below full resolution
    cond_channels: int = Field(default=0, ge=0)  # channels of a condition (image; signal's observations) beside x
    dim: int = Field(default=2, ge=1)
    width: int = Field(default=256, ge=1)
    depth: int = Field(default=4, ge=1)
    vocab_in: int | None = Field(default=None, ge=1)  # transformer: the noisy token states (K, or K + 1 with MASK)
    vocab_out: int | None = Field(default=None, ge=1)  # transformer: the clean classes K it predicts
    max_len: int | None = Field(default=None, ge=1)  # transformer: the longest sequence it takes
    dilation_cycle: int = Field(default=10, ge=1)  # diffwave: dilations 1, 2, ..., 2^(cycle-1), repeated
    num_numeric: int | None = Field(default=None, ge=0)  # tabular: numeric columns (fitted to the table)
    cardinalities: list[int] | None = None  # tabular: categories of each categorical column (fitted)
    learned_schedule: bool = False  # carries a learned log-SNR schedule (fitted: a vdm process's model)
    time_conditioning: bool = Field(
        default=True,
        description="transformer: whether the network sees the time; without it (MDLM's absorbing denoiser) the "
        "sampler's skip-when-unchanged cache is exact and on by default.",
    )

    @field_validator("channel_mults")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        return _check_levels("channel_mults", v)

    @field_validator("attention_levels", "cross_attention_levels")
    @classmethod
    def _indices(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        return _check_indices(str(info.field_name), v)


MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": []},
    "compact": {"base_channels": 16, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_levels": []},
    "small": {"base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_levels": []},
    "base": {"base_channels": 64, "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attention_levels": [2]},
    "large": {
        "base_channels": 128,
        "channel_mults": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attention_levels": [2, 3],
    },
}


# the transformer's width, depth and heads for each --model-size (token models; the others use MODEL_SIZES)
TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"width": 64, "depth": 2, "num_heads": 4},
    "compact": {"width": 128, "depth": 3, "num_heads": 4},
    "small": {"width": 192, "depth": 4, "num_heads": 6},
    "base": {"width": 256, "depth": 6, "num_heads": 8},
    "large": {"width": 512, "depth": 8, "num_heads": 8},
}


# the 1-D UNet's (base_channels, channel_mults, num_res_blocks, attention_levels) and DiffWave's (width: residual
# channels, depth: layers) settings for each --model-size (signal models)
SIGNAL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "width": 32, "depth": 10},
    "compact": {"base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "width": 64, "depth": 20},
    "small": {"base_channels": 48, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 2, "width": 64, "depth": 30},
    "base": {
        "base_channels": 64,
        "channel_mults": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attention_levels": [3],
        "width": 128,
        "depth": 30,
    },
    "large": {
        "base_channels": 128,
        "channel_mults": [1, 2, 2, 2, 2],
        "num_res_blocks": 2,
        "attention_levels": [3, 4],
        "width": 256,
        "depth": 36,
    },
}

# the tabular MLP's width and depth for each --model-size (table models)
TABULAR_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"width": 64, "depth": 2},
    "compact": {"width": 256, "depth": 3},
    "small": {"width": 512, "depth": 4},
    "base": {"width": 1024, "depth": 4},
    "large": {"width": 1024, "depth": 6},
}


class _ProcessConfig(_Strict):
    """One forward process's options; ``build_for(data)`` makes the process (the only place its name is read).

    ``family`` names the kind of process: "gaussian" (x_t = alpha x0 + sigma eps over real numbers) or "discrete"
    (corruption of tokens); the pipeline picks how to train and sample from it."""

    family: ClassVar[str] = "gaussian"
    learned: ClassVar[bool] = False  # whether its schedule is trained with the network (VDM)

    def build(self) -> GaussianProcess:
        """The process these options describe."""
        return self._process_class(**self.model_dump(exclude={"name"}, exclude_none=True))  # type: ignore[attr-defined]

    def build_for(self, data: DataConfig) -> GaussianProcess | DiscreteProcess:
        """The process of a model trained on ``data`` (a Gaussian process does not depend on it)."""
        return self.build()


class DDPMProcessConfig(_ProcessConfig):
    """DDPM's discrete beta schedule as a continuous VP process (Ho et al. 2020; Nichol & Dhariwal 2021)."""

    _process_class = DiscreteVPProcess
    name: Literal["ddpm"] = "ddpm"
    schedule: Literal["linear", "cosine", "geometric", "scaled_linear"] = Field(
        default="linear", description="Beta schedule of the ddpm process."
    )
    num_steps: int = Field(default=1000, ge=1)
    beta_start: float | None = None  # linear, scaled_linear; None: the schedule's default
    beta_end: float | None = None  # linear, scaled_linear
    s: float | None = None  # cosine offset
    max_beta: float | None = None  # cosine
    beta: float | None = None  # geometric


class VPProcessConfig(_ProcessConfig):
    """The VP SDE with linear beta(t) (Song et al. 2021, eq. 11)."""

    _process_class = VPProcess
    name: Literal["vp"] = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3


class SubVPProcessConfig(VPProcessConfig):
    """The sub-VP SDE (Song et al. 2021, eq. 12)."""

    _process_class = SubVPProcess
    name: Literal["subvp"] = "subvp"  # type: ignore[assignment]


class VEProcessConfig(_ProcessConfig):
    """The VE SDE with geometric sigma(t) (Song et al. 2021, eq. 9)."""

    _process_class = VEProcess
    name: Literal["ve"] = "ve"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5


class EDMProcessConfig(_ProcessConfig):
    """EDM's sigma = t (Karras et al. 2022, table 1)."""

    _process_class = EDMProcess
    name: Literal["edm"] = "edm"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5


class FlowProcessConfig(_ProcessConfig):
    """Flow matching's alpha = 1 - t, sigma = t (Lipman et al. 2023)."""

    _process_class = FlowProcess
    name: Literal["flow"] = "flow"
    t_min: float = 1e-4


class VDMProcessConfig(_ProcessConfig):
    """Variational diffusion's learned variance-preserving process (Kingma et al. 2021): gamma(t) = -log SNR(t) a
    monotone network trained with the model on the continuous-time VLB, starting linear from ``gamma_min`` to
    ``gamma_max`` (its endpoints learned too)."""

    _process_class = LearnedVPProcess
    learned: ClassVar[bool] = True
    name: Literal["vdm"] = "vdm"
    gamma_min: float = Field(default=-13.3, allow_inf_nan=False)
    gamma_max: float = Field(default=5.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ends(self) -> VDMProcessConfig:
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"gamma_min={self.gamma_min} must be below gamma_max={self.gamma_max}")
        return self


class _DiscreteProcessConfig(_ProcessConfig):
    """A corruption process over the tokens of a vocabulary of ``K`` classes, kept with probability alpha(t)."""

    family: ClassVar[str] = "discrete"
    schedule: Literal["loglinear", "cosine"] = Field(
        default="loglinear", description="alpha(t) of a discrete process: loglinear (MDLM's) or cosine."
    )
    eps: float = Field(default=1e-3, gt=0, lt=1, description="alpha(1): the share of tokens left clean at t = 1.")

    def build(self) -> GaussianProcess:
        raise ValueError(f"process {self.name!r} needs the vocabulary it corrupts; use build_for(data).")  # type: ignore[attr-defined]

    def build_for(self, data: DataConfig) -> DiscreteProcess:
        if data.vocab_size is None:
            raise ValueError(
                f"process {self.name!r} needs data.vocab_size, the number of token classes; it is fitted to the "  # type: ignore[attr-defined]
                "training data."
            )
        return self._process_class(data.vocab_size, make_schedule(self.schedule, self.eps))  # type: ignore[attr-defined]


class AbsorbingProcessConfig(_DiscreteProcessConfig):
    """Masking: a token turns into MASK with probability 1 - alpha(t) (MDLM, Sahoo et al. 2024; D3PM absorbing)."""

    _process_class = AbsorbingProcess
    name: Literal["absorbing"] = "absorbing"


class UniformProcessConfig(_DiscreteProcessConfig):
    """Uniform transitions: a token is redrawn uniformly with probability 1 - alpha(t) (D3PM uniform; multinomial
    diffusion, Hoogeboom et al. 2021)."""

    _process_class = UniformProcess
    name: Literal["uniform"] = "uniform"


GaussianProcessConfig = Annotated[
    DDPMProcessConfig
    | VPProcessConfig
    | SubVPProcessConfig
    | VEProcessConfig
    | EDMProcessConfig
    | FlowProcessConfig
    | VDMProcessConfig,
    Field(discriminator="name"),
]


CategoricalProcessConfig = Annotated[AbsorbingProcessConfig | UniformProcessConfig, Field(discriminator="name")]


class MixedProcessConfig(_ProcessConfig):
    """Tables: a Gaussian process over the numeric columns and a discrete process over the categorical ones, at one
    shared time, denoised by one network (TabDDPM, Kotelnikov et al. 2023). ``categorical``: absorbing (masking,
    MDLM's; the default) or uniform (TabDDPM's multinomial diffusion, Hoogeboom et al. 2021: each column redrawn
    uniformly over its own categories)."""

    family: ClassVar[str] = "mixed"
    name: Literal["mixed"] = "mixed"
    numeric: GaussianProcessConfig = Field(default_factory=lambda: DDPMProcessConfig(schedule="cosine", num_steps=1000))
    categorical: CategoricalProcessConfig = Field(default_factory=AbsorbingProcessConfig)

    def build(self) -> GaussianProcess:
        raise ValueError("process 'mixed' needs the table it models; use build_for(data).")

    def build_for(self, data: DataConfig) -> MixedProcess:
        if data.table is None or data.vocab_size is None:
            raise ValueError("process 'mixed' needs data.table and data.vocab_size; they are fitted to the table.")
        from .data.table import table_layout  # the same floor; imported here, as data.table imports this module

        layout = table_layout(data.table)
        categorical = self.categorical.build_for(data)
        if isinstance(categorical, UniformProcess) and layout.cardinalities:  # each column over its own categories
            categorical = UniformProcess(data.vocab_size, categorical.schedule, layout.cardinalities)
        return MixedProcess(self.numeric.build(), categorical, len(layout.numeric), len(layout.categorical))


ProcessConfig = Annotated[
    DDPMProcessConfig
    | VPProcessConfig
    | SubVPProcessConfig
    | VEProcessConfig
    | EDMProcessConfig
    | FlowProcessConfig
    | VDMProcessConfig
    | AbsorbingProcessConfig
    | UniformProcessConfig
    | MixedProcessConfig,
    Field(discriminator="name"),
]


class DiffusionConfig(_Strict):
    """The forward process (one typed config per process, told apart by ``name``) and the parameterisation."""

    process: ProcessConfig = Field(default_factory=lambda: DDPMProcessConfig(schedule="cosine", num_steps=1000))
    parameterisation: Literal["eps", "x0", "v", "edm", "velocity"] = Field(
        default="v", description="What the network predicts."
    )
    sigma_data: float = 0.5


class ColumnSchema(_Strict):
    """One column of a table as read from its CSV: how it is modelled and how it is written back."""

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["float", "int", "bool", "str"]  # how the column's values are written back
    categories: list[str] | None = None  # categorical: the spellings as read, in the order of their ids
    minimum: float | None = None  # numeric: the observed range, which written values are clipped to
    maximum: float | None = None
    decimals: int | None = None  # numeric float: the most decimals of a value as read (written values round to it)
    missing_rate: float = Field(default=0.0, ge=0, le=1)  # share of empty cells
    quantiles: list[float] | None = None  # numeric: knots of the quantile transform at evenly spaced probabilities
    frequencies: list[float] | None = None  # a categorical target: its classes' shares in the training rows


class TableSchema(_Strict):
    """A table's columns in CSV order (the target column included) and which column, if any, conditions."""

    columns: list[ColumnSchema]
    target: str | None = None


SeriesTransform = Literal["none", "sqrt", "log"]  # variance-stabilising transforms of a series' values


class SignalInfo(_Strict):
    """What one signal is, as read: audio clips or windows of time series, (channels, length) at a sample rate."""

    kind: Literal["audio", "series"]
    channels: int = Field(ge=1)
    length: int = Field(ge=1)  # samples per clip / time steps per window
    sample_rate: int | None = Field(default=None, ge=1)  # audio: Hz
    columns: list[str] | None = None  # series: the value columns, one channel each
    mean: list[float] | None = None  # series: each channel's mean, subtracted before the model sees it
    std: list[float] | None = None  # series: each channel's standard deviation, divided by
    transform: SeriesTransform = "none"  # series: applied to the values before the mean and std


AudioSpace = Literal["waveform", "spectrogram"]  # the space an audio model diffuses in (DataConfig.audio_space)


class SpectrogramStats(_Strict):
    """The training clips' compressed STFT magnitudes: each channel's mean and standard deviation per frequency bin
    (channels x bins), the normalisation of a spectrogram model."""

    mean: list[list[float]]
    std: list[list[float]]


class DataConfig(_Strict):
    """What the model was trained on: enough to know the shape and the classes of its samples."""

    dataset: str = Field(
        default="digits",
        description="'digits' (embedded), 'captioned-digits' (with prompts), 'mnist:<folder>', 'cifar10:<folder>', "
        "'toy:<name>', an image folder, or video clips: 'moving_digits' (embedded), 'clips:<folder>'.",
    )
    image_size: int = Field(default=16, ge=1, description="Train at this square size (digits: 8x8 upsampled).")
    channels: int | None = Field(default=None, ge=1, description="1 grayscale or 3 RGB; default: the dataset's own.")
    num_classes: int | None = Field(default=None, ge=0)
    class_names: list[str] | None = None
    image_condition: Literal["superres", "colourise"] | None = Field(
        default=None, description="Train a paired image-to-image model, the pairs made on the fly from the images."
    )
    superres_factor: int = Field(default=4, ge=2, description="Down-sampling factor of image_condition superres.")
    seq_len: int = Field(default=128, ge=1, description="Text: tokens per training sequence (a window of the corpus).")
    tokenizer: str | None = Field(
        default=None,
        description="Text: 'text8' (27 symbols), 'bytes', 'chars:<JSON alphabet>' or 'hf:<tokenizer folder>'; "
        "default: the corpus's own characters (pydocs: text8). A trained model stores the one it used.",
    )
    vocab_size: int | None = Field(default=None, ge=2)  # text: the tokenizer's classes K (fitted to the data)
    target_column: str | None = Field(
        default=None, description="Tables: the column to condition on (a categorical one: --labels picks its values)."
    )
    schema_file: str | None = Field(
        default=None,
        description='Tables: a JSON file overriding the inferred column kinds, e.g. {"zip": "categorical"}.',
    )
    match_marginals: bool = Field(
        default=False,
        description="Tables: sampled rows' numeric columns rank-matched to the training values' distribution (Iman & "
        "Conover 1982), the model's order of rows kept per column; a post-hoc step of sampling, never of imputing.",
    )
    table: TableSchema | None = None  # tables: the schema fitted to the training CSV
    sample_rate: int | None = Field(
        default=None, ge=1, description="Audio: resample every clip to this rate in Hz (default: the files' own)."
    )
    clip_seconds: float | None = Field(
        default=None, gt=0, description="Audio: seconds per clip (longer ones are cropped; default: the shortest)."
    )
    window: int = Field(default=64, ge=2, description="Series: time steps per training window.")
    id_column: str | None = Field(
        default=None, description="Series: a column naming the series of each row (long format); default: wide."
    )
    series_transform: SeriesTransform = Field(
        default="none",
        description="Series: a variance-stabilising transform applied before standardising and inverted on output: "
        "'sqrt' (values >= 0, e.g. counts such as sunspots) or 'log' (values > 0); stored with the model's scaling.",
    )
    window_scaling: Literal["series", "window"] = Field(
        default="series",
        description="Series: 'series' scales every window by the training span's mean and std; 'window' also "
        "normalises each window by the mean and std of its own observed points (RevIN), in training and in "
        "impute / forecast, the samples scaled back by the same statistics.",
    )
    signal_condition: Literal["observed"] | None = Field(
        default=None,
        description="Series and audio: 'observed' trains a conditional imputation model (CSDI): the network also sees "
        "the observed points and their mask, masks drawn as random points, blocks and forecast tails; impute and "
        "forecast then use it instead of RePaint.",
    )
    signal: SignalInfo | None = None  # audio and series: what one signal is (fitted to the data)
    audio_space: AudioSpace = Field(
        default="waveform",
        description="Audio: 'waveform' diffuses the samples themselves (a 1-D network); 'spectrogram' diffuses the "
        "clip's compressed STFT magnitude, normalised per frequency bin, with the 2-D UNet, and decodes samples "
        "back to waveforms by fast Griffin-Lim.",
    )
    n_fft: int = Field(
        default=128, ge=8, description="Audio, spectrogram space: samples per STFT window (Hann); n_fft/2+1 bins."
    )
    hop_length: int = Field(default=64, ge=1, description="Audio, spectrogram space: samples between STFT frames.")
    griffin_lim_iterations: int = Field(
        default=64, ge=1, description="Audio, spectrogram space: fast Griffin-Lim iterations that decode a sample."
    )
    spectrogram: SpectrogramStats | None = None  # audio, spectrogram space: per-bin statistics (fitted to the data)
    frames: int | None = Field(
        default=None, ge=2, description="Video: frames per clip (moving_digits: 8; a clip folder: its shortest clip's)."
    )

    @field_validator("image_size")
    @classmethod
    def _bounded(cls, v: int) -> int:
        check_limit("image_size", v, "max_image_size")
        return v

    @field_validator("seq_len")
    @classmethod
    def _length_bounded(cls, v: int) -> int:
        check_limit("seq_len", v, "max_seq_len")
        return v


class TextEncoderConfig(_Strict):
    """The frozen text encoder of a text-conditional model: "minilm" (bundled) or a local HF folder."""

    name: str = Field(
        default="minilm",
        description="Text encoder for datasets with captions: 'minilm' (bundled all-MiniLM-L6-v2), a local Hugging "
        "Face folder (CLIP, T5, BERT), or 'none' to ignore captions.",
    )
    max_length: int | None = Field(default=None, gt=2)


class DistillConfig(_Strict):
    """Distillation of the ``teacher`` folder's model, its classifier-free ``guidance`` distilled in (the student
    samples at guidance 1). ``progressive`` (Salimans & Ho 2022): the student takes in one DDIM step what the
    teacher takes in two, on the nested grid of ``student_steps`` steps. ``consistency`` (Song et al. 2023): the
    student maps any point of the teacher's ODE trajectories, on a grid of ``scales`` noise levels, to its end;
    it samples in ``student_steps`` steps of multistep consistency sampling. ``consistency_training`` (iCT, Song &
    Dhariwal 2024): the same student without a teacher's steps, pairs of noise levels from one noise draw, the
    levels doubling up to ``scales``; it starts from the folder's weights (ECT's tuning, Geng et al. 2024) or,
    ``from_scratch``, from fresh ones. ``reflow`` (Liu et al. 2023): ``pairs`` (noise, sample) couplings from the
    flow-matching teacher's ODE in ``pair_steps`` steps, then flow matching on them; the student samples in
    ``student_steps`` Euler steps."""

    method: Literal["progressive", "consistency", "consistency_training", "reflow"] = "progressive"
    teacher: str
    student_steps: int = Field(ge=1)
    guidance: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    scales: int = Field(default=40, ge=2, description="consistency: noise levels of the discretised trajectories")
    from_scratch: bool = Field(default=False, description="consistency_training: fresh weights, not the folder's")
    pairs: int = Field(default=2048, ge=1, description="reflow: (noise, sample) pairs drawn from the teacher")
    pair_steps: int = Field(default=32, ge=1, description="reflow: the teacher's dpmpp_2m steps for each pair")


class TrainConfig(_Strict):
    """How the model is trained (Adam W, warm-up + schedule, EMA, label dropout, checkpoints, logging)."""

    steps: int = Field(default=1000, ge=1, description="Optimisation steps (the LR schedule's length).")
    minutes: float | None = Field(default=None, gt=0, description="Stop early after this many minutes (and save).")
    batch_size: int = Field(
        default=64, ge=1, description="Global batch size: examples per step, over all processes and micro-batches."
    )
    grad_accumulation: int = Field(
        default=1, ge=1, description="Micro-batches per process and step: less memory, the same updates."
    )
    lr: float = Field(default=2e-3, gt=0, description="Peak learning rate of AdamW.")
    lr_schedule: Literal["cosine", "constant", "onecycle"] = Field(
        default="cosine", description="Learning-rate schedule after the linear warm-up."
    )
    warmup_steps: int = Field(default=100, ge=0, description="Steps of linear learning-rate warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW's decoupled weight decay.")
    adam_betas: tuple[float, float] = Field(
        default=(0.9, 0.999), description="AdamW's moment decays (beta1, beta2), each in [0, 1)."
    )
    grad_clip: float = Field(default=1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    ema_decay: float = Field(
        default=0.995, ge=0, lt=1, description="EMA decay of the averaged weights the saved model uses."
    )
    ema_start: int = Field(default=100, ge=0, description="Step from which the EMA averages (a copy before).")
    ema_power: float | None = Field(
        default=None,
        gt=0,
        description="EMA warm-up decay 1 - (1 + n)^-power, n steps since ema_start (diffusers' use_ema_warmup, "
        "power 3/4); none: (1 + n) / (10 + n).",
    )
    label_dropout: float = Field(
        default=0.1, ge=0, le=1, description="Share of labels and prompts dropped, for classifier-free guidance."
    )
    scale_augment: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Signals: each training window times a random gain exp(u), u ~ U(-a, a), in the model's space "
        "(series: about the channel's mean); 0: none. Widens what a model of a short series has seen.",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto",
        description="Training precision (through accelerate); auto: bf16 where the hardware runs it natively (CPUs "
        "with AVX512-BF16 or AMX, CUDA GPUs with bf16), else no (fp32). A run stores the precision it used.",
    )
    time_sampling: Literal["uniform", "lognormal", "logit_normal"] = Field(
        default="uniform", description="How training times are drawn (lognormal: EDM's; logit_normal: SD3's)."
    )
    weighting: Literal["uniform", "min_snr", "edm"] = Field(default="uniform", description="Loss weighting over time.")
    seed: int = Field(default=0, ge=0, lt=2**32, description="Seed of every random draw of the run.")
    log_every: int = Field(default=50, ge=0, description="Log the loss every N steps (0: only at the end).")
    log_with: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers, all offline by default: tensorboard (OUT/tensorboard), wandb (OUT/wandb, "
        "WANDB_MODE=online to upload), mlflow (OUT/mlruns unless MLFLOW_TRACKING_URI is set).",
    )
    sample_every: int = Field(
        default=1000, ge=0, description="Write a preview (samples, or reconstructions) every N steps (0: never)."
    )
    checkpoint_every: int = Field(
        default=1000, ge=0, description="Write a checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(default=2, ge=0, description="Keep this many latest checkpoints (0: all).")
    eval_every: int = Field(
        default=0,
        ge=0,
        description="Evaluate the EMA model every N steps (0: never); logged as eval/* and eval/*.json.",
    )
    eval_metrics: (
        list[Literal["fid", "kid", "pr", "dc", "accuracy", "fid_real", "bpd", "vlb", "swd", "mmd", "true_nll", "nll"]]
        | None
    ) = Field(
        default=None,
        description="Metrics of eval_every, as `evaluate --metrics` (default: the model kind's: images fid, kid, pr, "
        "dc; points swd, mmd, nll).",
    )
    eval_samples: int = Field(default=1000, ge=10, description="Samples per evaluation of eval_every.")
    eval_guidance: float = Field(
        default=1.0, ge=0, description="Guidance scale of the evaluations' samples (1: the conditional model)."
    )
    final_eval: bool = Field(
        default=True,
        description="Evaluate the EMA model once training ends (eval_metrics, eval_samples), print the numbers and "
        "write eval/step-NNNNNN.json.",
    )
    dp_epsilon: float | None = Field(
        default=None,
        gt=0,
        description="Differentially private training (DP-SGD through Opacus, Poisson-sampled batches) spending this "
        "epsilon over the whole run; none: not private. The budget spent is stored in config.json's privacy.",
    )
    dp_delta: float | None = Field(
        default=None, gt=0, lt=1, description="DP-SGD's delta (none: min(1e-5, 1 / (10 N)) for N training rows)."
    )
    dp_max_grad_norm: float = Field(default=1.0, gt=0, description="DP-SGD's bound C on each example's gradient norm.")
    distill: DistillConfig | None = None  # a distillation run (diffusionlab distill), else plain training
    eval_features: Literal["auto", "classifier", "pixels"] = Field(
        default="auto", description="Feature network of eval_every (auto: a domain classifier if labelled)."
    )

    @field_validator("steps", "warmup_steps", "ema_start")
    @classmethod
    def _steps_bounded(cls, v: int, info: ValidationInfo) -> int:
        check_limit(str(info.field_name), v, "max_train_steps")
        return v

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"adam_betas={v}: each must be in [0, 1)")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_bounded(cls, v: int) -> int:
        check_limit("batch_size", v, "max_batch_size")
        return v

    @field_validator("eval_samples")
    @classmethod
    def _samples_bounded(cls, v: int) -> int:
        check_limit("eval_samples", v, "max_samples")
        return v


class SampleConfig(_Strict):
    """Sampling defaults stored with the model; every call may override them."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str | None = None  # None: the process's default (karras for edm/ve, else uniform)
    guidance: float = 2.0  # bench/digits_quality.py: 98.8% of samples of the asked digit at 1, 100% at 2
    thresholding: Literal["none", "clip", "dynamic"] = "clip"  # keep x0 in the data range [-1, 1] (images)
    # time grids tuned to this model (`diffusionlab tune-grid`), by "sampler:steps"; `spacing="tuned"` uses them
    tuned_grids: dict[str, list[float]] = Field(default_factory=dict)


class LatentConfig(_Strict):
    """Latent diffusion (Rombach et al. 2022): the model learns an autoencoder's latents, scaled to unit std.

    The model folder holds its own copy of the autoencoder in ``autoencoder/``; ``autoencoder`` here only
    records the folder training started from.
    """

    autoencoder: str | None = None
    scaling_factor: float | None = Field(default=None, gt=0)  # None until training measures it on the data


# the model spaces (diffusionlab.spaces), one per kind of sample
SPACES = ("image", "latent_image", "points", "tokens", "table", "signal", "spectrogram", "video")
FORMAT_VERSION = 2


class PrivacyReport(_Strict):
    """The differential privacy a DP-SGD run spent (Abadi et al. 2016), by Opacus's RDP accountant (Mironov 2017):
    (epsilon, delta) after ``steps`` Poisson-sampled steps of ``sample_rate`` with ``noise_multiplier``."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    accountant: Literal["rdp"] = "rdp"


class ModelConfig(_Strict):
    """Everything needed to rebuild a trained model from its folder."""

    format_version: Literal[2] = FORMAT_VERSION
    # what one sample is (see diffusionlab.spaces); None: inferred as format 1 did, from the network and `latent`
    space: Literal["image", "latent_image", "points", "tokens", "table", "signal", "spectrogram", "video"] | None = None
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    text_encoder: TextEncoderConfig | None = None
    latent: LatentConfig | None = None  # None: the model runs in pixel space
    privacy: PrivacyReport | None = None  # a DP-SGD run's spent budget (train.dp_epsilon); None: not private

    @model_validator(mode="after")
    def _space(self) -> ModelConfig:
        if self.space is None:
            self.space = _implied_space(self.network.kind, self.latent is not None)
        return self


class AutoencoderNetworkConfig(_Strict):
    """The shape of a KL autoencoder; it down-samples by 2^(len(channel_mults) - 1)."""

    in_channels: int = Field(default=1, ge=1)
    latent_channels: int = Field(default=4, ge=1, description="Channels of the latent (Stable Diffusion: 4).")
    base_channels: int = Field(default=32, ge=1, description="Width of the first level (doubled at every further one).")
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2])
    num_res_blocks: int = Field(default=1, ge=1, description="Residual blocks per level.")

    @field_validator("channel_mults")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        return _check_levels("channel_mults", v)


class AutoencoderTrainConfig(TrainConfig):
    """How the autoencoder is trained: the diffusion trainer's options plus its loss (label options unused)."""

    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate of AdamW.")
    steps: int = Field(default=3000, ge=1, description="Optimisation steps (the LR schedule's length).")
    ema_decay: float = Field(
        default=0.999, ge=0, lt=1, description="EMA decay of the averaged weights the saved model uses."
    )
    ema_start: int = Field(default=200, ge=0, description="Step from which the EMA averages (a copy before).")
    reconstruction_loss: Literal["l1", "l2"] = Field(default="l1", description="Reconstruction loss per pixel.")
    kl_weight: float = Field(
        default=1e-6, ge=0, description="Weight beta of the KL term per pixel (Stable Diffusion: 1e-6)."
    )


class AutoencoderConfig(_Strict):
    """Everything needed to rebuild a trained autoencoder from its folder (``kind`` tells it from a model's)."""

    format_version: int = 1
    kind: Literal["autoencoder_kl"] = "autoencoder_kl"
    network: AutoencoderNetworkConfig = Field(default_factory=AutoencoderNetworkConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: AutoencoderTrainConfig = Field(default_factory=AutoencoderTrainConfig)


def migrate_model_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.json of any earlier format as the current one (plain data in, plain data out).

    Format 1 had no ``space``: a model was points if its network was the MLP, latent images if it had a
    ``latent`` section, else pixel images.
    """
    raw = dict(raw)
    if raw.get("format_version", 1) == 1:
        kind = (raw.get("network") or {}).get("kind", NetworkConfig.model_fields["kind"].default)
        raw["space"] = _implied_space(kind, bool(raw.get("latent")))
        raw["format_version"] = 2
    return raw


def _implied_space(network_kind: str, latent: bool) -> str:
    """The space a config without one means (format 1's rule): an MLP makes points, a latent section latent
    images, else pixel images."""
    return {"mlp": "points"}.get(network_kind, "latent_image" if latent else "image")
