"""The ``diffusionlab`` command line (floor 6): parse -> request -> library -> write.

Every option has the name of the config field or API keyword it sets; the options that set config fields are
made from the config classes (``cli_options.py``). Library errors name the API's arguments; ``_run`` shows them
with the flags the user typed.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from . import cli_options as opt
from .config import (
    MODEL_SIZES,
    SIGNAL_SIZES,
    TABULAR_SIZES,
    TRANSFORMER_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    AutoencoderTrainConfig,
    DataConfig,
    DiffusionConfig,
    LatentConfig,
    ModelConfig,
    NetworkConfig,
    TextEncoderConfig,
    TrainConfig,
)
from .data.signals import is_audio_dataset, is_series_dataset
from .data.table import is_table_dataset
from .data.text import is_text_dataset
from .sampling.request import GuidanceSpec, labels_for, text_metadata

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, sample and evaluate diffusion models. Run `diffusionlab COMMAND --help` for each command.",
    pretty_exceptions_enable=False,
)

# ---------------------------------------------------------------- the error edge

# Library errors name the API's arguments; the user typed flags. In a message, `name=value` and a bare name with an
# underscore become the flag of the command's option of that name (`name=True` of a switch: the switch alone). The
# table holds the rest: API names whose option has another name, and bare names that are flags without an underscore.
RENAMED = {"out_dir": "out", "labels": "label"}  # API argument -> the option that sets it (where they differ)
BARE_NAMES = {"lr"}


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from .data import DataError
    from .io import CheckpointError

    return (ValueError, DataError, CheckpointError, FileNotFoundError, ValidationError)


def _one_line(err: BaseException) -> str:
    """A user error as one line in the library's words: ``name=value: what was expected``."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        e = err.errors()[0]
        name, msg = (e["loc"][-1] if e["loc"] else "value"), str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "value_error":  # our own checks already name the setting and its value
            return msg
        value = e.get("input")
        return f"{name}: {msg}" if isinstance(value, dict) or "input" not in e else f"{name}={value!r}: {msg}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _flag(name: str) -> str:
    """The flag of a command's parameter: its name with dashes (every option here is declared so)."""
    return "--" + name.replace("_", "-")


def _flags(message: str, command: Callable[..., Any]) -> str:
    """A library message with the Python API's argument names shown as the command's flags."""
    params = inspect.signature(command).parameters

    def show(match: re.Match[str]) -> str:
        name, eq, value = match[1], match[2], match[3]
        option = name if name in params else RENAMED.get(name)
        if option not in params or not (eq or "_" in name or name in BARE_NAMES):
            return match[0]
        switch = isinstance(params[option].default, bool) and value == "True"
        return _flag(option) if switch else f"{_flag(option)}{eq}{value}"

    return re.sub(r"(?<![\w./-])(\w+)(=?)(\w*)", show, message)


def _run(fn: Callable[[], Any], command: Callable[..., Any]) -> Any:
    """Call fn, the work of ``command``; a user error becomes one line on stderr naming the flags the user typed,
    and exit status 2."""
    try:
        return fn()
    except _user_errors() as err:
        _fail(_flags(_one_line(err), command))
    except KeyboardInterrupt:
        typer.secho("interrupted.", err=True)
        raise typer.Exit(130) from None
    except OSError as err:  # out of disk, a read-only folder, a path that is a folder: name the path
        _fail(_os_error(err))
    except MemoryError:
        _fail("out of memory; lower --batch-size or the number of samples.")


def _os_error(err: OSError) -> str:
    """An operating-system error as one line naming the path it concerns."""
    what = err.strerror or type(err).__name__
    return f"{err.filename}: {what}" if err.filename else f"{what} ({err})"


# ---------------------------------------------------------------- parsing helpers


def _parse_numbers(option: str, text: str | None, count: int, kind: type = float) -> tuple[Any, ...] | None:
    """``count`` comma-separated numbers, or one clear error naming the option."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        _fail(f"{option}={text!r} must be {count} comma-separated {'integers' if kind is int else 'numbers'}.")
    return values


def _parse_labels(labels: str | None, class_names: list[str] | None = None) -> list[int] | None:
    """--labels as class indices: comma-separated indices or the model's class names (``data.class_names``)."""
    if labels is None:
        return None
    items = [v.strip() for v in labels.split(",") if v.strip() != ""]
    if not items:
        _fail(f"--labels={labels!r} must be comma-separated class indices or names, e.g. 3,3,7.")
    parsed = []
    for item in items:
        if item.lstrip("-").isdigit():
            parsed.append(int(item))
        elif class_names and item in class_names:
            parsed.append(class_names.index(item))
        else:
            known = (
                f"one of {', '.join(class_names[:20])}" if class_names else "a class index (this model has no names)"
            )
            _fail(f"--labels: {item!r} is not a class of this model; expected {known}.")
    return parsed


def _existing(path: Path | None, option: str) -> Path:
    if path is None or not path.is_file():
        _fail(f"{option} {path} does not exist; expected an image file.")
    return path  # type: ignore[return-value]


def _given(**settings: Any) -> dict[str, Any]:
    """The settings that were given (not None): the library's defaults hold for the others."""
    return {k: v for k, v in settings.items() if v is not None}


def _read_task_image(pipe: Any, path: Path, what: str = "--image") -> Any:
    """An image file as a (1, C, H, W) tensor in [0, 1], checked against the model's image shape."""
    from .tasks import check_images, read_image

    try:
        return check_images(pipe, read_image(_existing(path, what))[None])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ---------------------------------------------------------------- train

TRAIN_FIELDS = {
    DataConfig: (
        ("dataset", "image_size", "channels", "image_condition", "superres_factor", "seq_len", "tokenizer")
        + (
            "target_column",
            "schema_file",
            "match_marginals",
            "sample_rate",
            "clip_seconds",
            "window",
            "id_column",
            "signal_condition",
        )
        + ("series_transform", "window_scaling", "frames", "audio_space", "n_fft", "hop_length"),
        opt.DATA_PANEL,
    ),
    DiffusionConfig: (("parameterisation",), opt.DIFFUSION_PANEL),
    NetworkConfig: (("time_conditioning", "dropout"), opt.NETWORK_PANEL),
    # every training setting but distill, which the distill command sets (it names a teacher and a method)
    TrainConfig: (tuple(n for n in TrainConfig.model_fields if n != "distill"), opt.TRAIN_PANEL),
}
AUTOENCODER_FIELDS = {
    DataConfig: (("dataset", "image_size", "channels"), opt.DATA_PANEL),
    AutoencoderNetworkConfig: (("latent_channels", "base_channels", "num_res_blocks"), opt.NETWORK_PANEL),
    AutoencoderTrainConfig: (
        ("steps", "minutes", "batch_size", "lr", "ema_decay", "reconstruction_loss", "kl_weight", "sample_every")
        + ("checkpoint_every", "seed"),
        opt.TRAIN_PANEL,
    ),
}


def _data_kind(dataset: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """The default process and the network presets of --model-size for a dataset spec: text trains masked
    diffusion with a transformer, a table the mixed process with the tabular MLP, signals ddpm with the 1-D UNet
    (or DiffWave), the rest ddpm with a UNet (or, for points, the MLP the space picks)."""
    if is_text_dataset(dataset):
        return opt.DEFAULT_TEXT_PROCESS, TRANSFORMER_SIZES
    if is_table_dataset(dataset):
        return opt.DEFAULT_TABLE_PROCESS, TABULAR_SIZES
    if is_audio_dataset(dataset) or is_series_dataset(dataset):
        return opt.DEFAULT_PROCESS, SIGNAL_SIZES
    return opt.DEFAULT_PROCESS, MODEL_SIZES


def _model_config(
    fields: dict[str, Any],
    model_size: opt.ModelSize,
    conditional: bool,
    text_encoder: str,
    process: str | None,
    schedule: str | None,
    autoencoder: Path | None,
    network: str | None = None,
    categorical_process: str | None = None,
) -> ModelConfig:
    """The config a ``train`` command asks for: the config fields as given, the network preset, the process (and a
    table's categorical process), the text encoder and the autoencoder. Text data (``is_text_dataset``) gets masked
    diffusion and a transformer."""
    default_process, sizes = _data_kind(fields.get("dataset") or DataConfig().dataset)
    process = process or default_process
    if schedule is None and process == opt.DEFAULT_PROCESS:
        schedule = opt.DEFAULT_SCHEDULE
    proc: dict[str, Any] = {"name": process}
    if schedule is not None and "schedule" in getattr(opt.PROCESS_CLASSES.get(process), "model_fields", {}):
        proc["schedule"] = schedule  # --schedule sets the processes that have one (ddpm, absorbing, uniform)
    if categorical_process is not None:
        if "categorical" not in getattr(opt.PROCESS_CLASSES.get(process), "model_fields", {}):
            raise ValueError(
                f"--categorical-process={categorical_process} applies to tables (process {opt.DEFAULT_TABLE_PROCESS}); "
                f"process {process!r} has no categorical columns."
            )
        if categorical_process not in opt.CATEGORICAL_PROCESSES:
            raise ValueError(
                f"--categorical-process={categorical_process!r} is not one of {', '.join(opt.CATEGORICAL_PROCESSES)}."
            )
        proc["categorical"] = {"name": categorical_process}
    preset = sizes[model_size.value] | ({"kind": network} if network is not None else {})
    preset |= opt.config_values(NetworkConfig, fields)
    return ModelConfig(
        network=NetworkConfig(**preset, num_classes=0 if conditional else None),
        diffusion=DiffusionConfig(process=proc, **opt.config_values(DiffusionConfig, fields)),
        data=DataConfig(**opt.config_values(DataConfig, fields)),
        text_encoder=None if text_encoder.lower() == "none" else TextEncoderConfig(name=text_encoder),
        latent=None if autoencoder is None else LatentConfig(autoencoder=str(autoencoder)),
        train=TrainConfig(**opt.config_values(TrainConfig, fields)),
    )


def _model_written(out: Path, trainer: Any, pipe: Any) -> str:
    return f"model written to {out}/ (samples: {out / trainer.objective.preview_name})"


def _autoencoder_written(out: Path, trainer: Any, autoencoder: Any) -> str:
    from .training.autoencoder import reconstruction_psnr

    value = reconstruction_psnr(autoencoder, trainer.data.x[:1024].to(autoencoder.device))
    return (
        f"autoencoder written to {out}/ (reconstructions: {out / 'reconstructions.png'}; "
        f"PSNR on training images {value:.1f} dB)"
    )


def _train(config: ModelConfig | AutoencoderConfig, out: Path, say: Callable[..., str], **flags: bool) -> None:
    """Run a trainer on every process; the main one says what it wrote, ``say(out, trainer, result)``."""
    from .training import Trainer

    trainer = Trainer(config, out, **flags)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        typer.echo(say(out, trainer, result))
    # every process waits for the main one's last files, then leaves the process group before exiting:
    # a process that exits inside it can abort, and the launcher then kills the others
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


@app.command()
@opt.config_options(TRAIN_FIELDS)
def train(
    out: opt.TrainOut = Path("runs/digits"),
    model_size: opt.ModelSizeOption = opt.DEFAULT_MODEL_SIZE,
    conditional: opt.Conditional = True,
    text_encoder: opt.TextEncoderOption = opt.DEFAULT_TEXT_ENCODER,
    process: opt.Process = None,
    categorical_process: opt.CategoricalProcess = None,
    schedule: opt.Schedule = None,
    network: opt.NetworkKind = None,
    autoencoder: opt.Autoencoder = None,
    resume: opt.Resume = False,
    cpu: opt.Cpu = False,
    progress: opt.Progress = True,
    **fields: Any,
) -> None:
    """Train a diffusion model; writes OUT/config.json, model.safetensors, ema.safetensors and samples.png.

    The options of the Data, Diffusion and Training panels set the config fields of their names (config.py).
    """

    def build() -> None:
        config = _model_config(
            fields, model_size, conditional, text_encoder, process, schedule, autoencoder, network, categorical_process
        )
        _train(config, out, _model_written, resume=resume, progress=progress, cpu=cpu)

    _run(build, train)


@app.command("train-autoencoder")
@opt.config_options(AUTOENCODER_FIELDS)
def train_autoencoder(
    out: opt.TrainOut = Path("runs/autoencoder"),
    downsample_factor: opt.DownsampleFactor = opt.DEFAULT_DOWNSAMPLE_FACTOR,
    resume: opt.Resume = False,
    cpu: opt.Cpu = False,
    progress: opt.Progress = True,
    **fields: Any,
) -> None:
    """Train the autoencoder of a latent diffusion model (then: train --autoencoder OUT); writes OUT/config.json,
    model.safetensors, ema.safetensors and reconstructions.png."""

    def build() -> None:
        if downsample_factor not in (1, 2, 4, 8):
            _fail(f"--downsample-factor={downsample_factor} must be 1, 2, 4 or 8.")
        levels = downsample_factor.bit_length()  # 1 -> 1 level, 2 -> 2, 4 -> 3, 8 -> 4
        network = opt.config_values(AutoencoderNetworkConfig, fields)
        config = AutoencoderConfig(
            network=AutoencoderNetworkConfig(**network, channel_mults=[1] + [2] * (levels - 1)),
            data=DataConfig(**opt.config_values(DataConfig, fields)),
            train=AutoencoderTrainConfig(**opt.config_values(AutoencoderTrainConfig, fields)),
        )
        _train(config, out, _autoencoder_written, resume=resume, progress=progress, cpu=cpu)

    _run(build, train_autoencoder)


@app.command("train-classifier")
def train_classifier_command(
    model: opt.ModelFolder,
    dataset: opt.ClassifierData = None,
    steps: opt.OptimisationSteps = 2000,
    batch_size: opt.TrainBatch = 128,
    lr: opt.LearningRate = 1e-3,
    seed: opt.Seed = 0,
    progress: opt.Progress = True,
) -> None:
    """Train a noise-aware classifier on x_t for classifier guidance; writes MODEL/classifier.safetensors."""
    from .pipeline import Pipeline
    from .training import load_training_data, noisy_accuracy, train_noise_aware_classifier

    def run() -> None:
        pipe = Pipeline.load(model)
        config = pipe.config
        if dataset is not None:
            config = config.model_copy(update={"data": config.data.model_copy(update={"dataset": dataset})})
        data = load_training_data(config)
        pipe.classifier = train_noise_aware_classifier(
            pipe, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress
        )
        pipe.save_classifier(model)
        acc = noisy_accuracy(pipe, pipe.classifier, data)
        typer.echo(f"classifier written to {model}/ (accuracy on noisy training examples: {acc:.1%})")

    _run(run, train_classifier_command)


# ---------------------------------------------------------------- sample


@dataclass
class _Grid:
    """What a ``sample`` command draws and how its grid shows it."""

    labels: list[int] | None
    n: int
    nrow: int
    row_labels: list[str] | None = None
    shown: dict[str, str] = field(default_factory=dict)  # the labels as the PNG's metadata shows them


def _grid(pipe: Any, labels: str | None, num_samples: int | None, per_class: int | None, nrow: int) -> _Grid:
    """--per-class: every class in its own labelled row (unconditional: per_class rows); else the labels given,
    one for all or one each, or num_samples (16) unlabelled samples."""
    if nrow < 1:
        _fail(f"--nrow={nrow} must be a positive integer.")
    from .limits import check_limit, limits

    if per_class is None:
        if num_samples is not None:
            check_limit("num_samples", num_samples, "max_samples")
        given = labels_for(_parse_labels(labels, pipe.config.data.class_names), num_samples)
        n = len(given) if given is not None else (num_samples if num_samples is not None else 16)
        return _Grid(given, n, min(nrow, n), shown={"labels": ",".join(map(str, given)) if given else ""})
    if per_class <= 0:
        _fail(f"--per-class={per_class} must be a positive integer.")
    if labels is not None or num_samples is not None:
        _fail(f"--per-class={per_class} draws every class; give it, or --labels / --num-samples, not both.")
    k = pipe.config.network.num_classes
    most = limits().max_samples
    if per_class * (k or per_class) > most:
        _fail(
            f"--per-class={per_class} asks for {per_class * (k or per_class)} samples, more than the limit of "
            f"{most:,}; set {limits().env_name('max_samples')} to raise it."
        )
    if not k:
        return _Grid(None, per_class * per_class, per_class)
    names = pipe.config.data.class_names or [str(c) for c in range(k)]
    return _Grid([c for c in range(k) for _ in range(per_class)], k * per_class, per_class, names)


def _read_cond_image(path: Path | None, pipe: Any) -> Any:
    """A condition image file as a (1, C, H, W) tensor in [0, 1] with the model's condition channels."""
    import torch

    from .images import read_image_array

    if path is None:
        return None
    if not pipe.config.network.cond_channels:  # before the file is read: it may be large
        _fail(f"--cond-image={path} was given, but this model was trained without image conditioning.")
    array = read_image_array(_existing(path, "--cond-image"), channels=pipe.config.network.cond_channels)
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _check_out_file(out: Path, suffix: str = ".png") -> None:
    """--out names a file to write (replaced atomically if it exists), never a folder."""
    if out.is_dir():
        _fail(f"--out={out} is a folder; expected a file path such as {out / ('result' + suffix)}.")


def _samples_file(out: Path | None, pipe: Any) -> Path:
    """--out of ``sample`` and ``infill``: samples.png (text models: samples.txt) by default; a text model's samples
    go to a .txt file."""
    suffix = pipe.space.suffix
    out = out if out is not None else Path("samples" + suffix)
    _check_out_file(out, suffix)
    if suffix != ".png" and out.suffix.lower() != suffix:
        _fail(f"--out={out}: this model writes its samples as {suffix} files; expected a path ending in {suffix}.")
    return out


def _check_out_dir(out_dir: Path | None) -> None:
    from .tasks import check_empty_folder
    from .tasks.distributed_sampling import world_size

    if out_dir is not None:
        if world_size() > 1:
            _fail("--out-dir is not supported when sampling with several processes; run one process.")
        check_empty_folder(out_dir)  # before sampling, not after


def _draw(pipe: Any, n: int, request: Any, out: Path, **kw: Any) -> tuple[Any, str]:
    """The n samples of a request, and a note on where else they went. Under torchrun / accelerate launch every
    process draws its share into a shard in OUT-shards/ and only the main one gets them all (None on the others)."""
    from .tasks.distributed_sampling import sample_shards, world_size

    if world_size() == 1:
        return pipe.sample(n, request=request, **kw), ""
    shards = out.parent / f"{out.stem}-shards"
    return sample_shards(pipe, n, shards, request=request, **kw), f" (and one shard per process in {shards}/)"


@app.command()
def sample(
    model: opt.ModelFolder,
    out: opt.SamplesFile = None,
    num_samples: opt.NumSamples = None,
    labels: opt.Labels = None,
    per_class: opt.PerClass = None,
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
    spacing: opt.Spacing = None,
    guidance: opt.Guidance = None,
    prompt: opt.Prompt = None,
    negative_prompt: opt.NegativePrompt = None,
    cond_image: opt.CondImage = None,
    guidance_rescale: opt.GuidanceRescale = opt.request_default(GuidanceSpec, "guidance_rescale"),
    guidance_interval: opt.GuidanceInterval = None,
    classifier_scale: opt.ClassifierScale = opt.request_default(GuidanceSpec, "classifier_scale"),
    eta: opt.Eta = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    cache: opt.Cache = None,
    thresholding: opt.Thresholding = None,
    seed: opt.Seed = 0,
    nrow: opt.Nrow = 8,
    batch_size: opt.BatchSize = 256,
    mixed_precision: opt.MixedPrecision = opt.request_default(GuidanceSpec, "mixed_precision"),
    out_dir: opt.OutDir = None,
    progress: opt.Progress = True,
) -> None:
    """Sample a trained model and save a PNG grid with the settings in its metadata (text models: print the samples
    and write them to a .txt file, the settings on its first line)."""
    from .pipeline import Pipeline
    from .sampling.request import SampleRequest
    from .tasks import write_image_folder
    from .tasks.distributed_sampling import end_process_group, world_size

    def run() -> None:
        if out is not None:
            _check_out_file(out)
        _check_out_dir(out_dir)
        pipe = Pipeline.load(model)
        path = _samples_file(out, pipe)
        if out_dir is not None and pipe.space.suffix != ".png":
            _fail(f"--out-dir={out_dir} writes one image per sample; this model's samples go to --out ({path}).")
        grid = _grid(pipe, labels, num_samples, per_class, nrow)
        request = SampleRequest.from_settings(
            **dict(labels=grid.labels, sampler=sampler, steps=steps, spacing=spacing, guidance=guidance, seed=seed),
            **dict(prompt=prompt, negative_prompt=negative_prompt, cond_image=_read_cond_image(cond_image, pipe)),
            guidance_interval=_parse_numbers("--guidance-interval", guidance_interval, 2),
            **dict(guidance_rescale=guidance_rescale, classifier_scale=classifier_scale, thresholding=thresholding),
            **dict(mixed_precision=mixed_precision, eta=eta, temperature=temperature, top_p=top_p, cache=cache),
        ).resolve(pipe.config.sample)
        shown = {"cond_image": cond_image, "guidance_interval": guidance_interval, **grid.shown}
        meta = text_metadata(model=model, **request.metadata(**shown))
        images, note = _draw(pipe, grid.n, request, path, batch_size=batch_size, progress=progress)
        if images is not None:
            texts = pipe.space.texts(images)
            for text in texts or []:
                typer.echo(text)
            pipe.space.save(images, path, nrow=grid.nrow, row_labels=grid.row_labels, metadata=meta)
            typer.echo(f"wrote {path}{note}", err=texts is not None)  # text models: only the samples on stdout
        if images is not None and out_dir is not None and hasattr(pipe.space, "write_files"):
            written = pipe.space.write_files(images, out_dir, grid.labels)  # signals: WAV files or a series CSV
            typer.echo(f"wrote {len(written)} file(s) to {out_dir}/")
        elif images is not None and out_dir is not None:
            write_image_folder(images, out_dir, grid.labels, pipe.config.data.class_names)
            typer.echo(f"wrote {len(images)} images to {out_dir}/")
        if world_size() > 1:
            end_process_group()

    _run(run, sample)


@app.command()
def infill(
    model: opt.ModelFolder,
    text: Annotated[str, typer.Argument(help="The text with a blank character (--blank) for each token to fill.")],
    num_samples: opt.NumSamples = 1,
    blank: Annotated[str, typer.Option(help="The character that marks a blank (one token to fill).")] = "_",
    labels: opt.Labels = None,
    guidance: opt.Guidance = None,
    steps: opt.Steps = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
    mixed_precision: opt.MixedPrecision = opt.request_default(GuidanceSpec, "mixed_precision"),
    out: Annotated[Path | None, typer.Option(help="Also write the completions to this .txt file.")] = None,
    progress: opt.Progress = True,
) -> None:
    """Fill the blanks of a text with a text model, keeping every given character; prints one completion per line.
    A text shorter than the model's sequences is a prefix: the rest is filled too."""
    from .io import atomic_write_text
    from .pipeline import Pipeline
    from .tasks import infill as fill

    def run() -> None:
        if out is not None:
            _check_out_file(out, ".txt")
        pipe = Pipeline.load(model)
        if out is not None:
            _samples_file(out, pipe)
        names = pipe.config.data.class_names
        settings = dict(labels=labels_for(_parse_labels(labels, names), num_samples), guidance=guidance, steps=steps)
        completions = fill(
            pipe, text, num_samples, blank=blank, batch_size=batch_size, progress=progress, seed=seed,
            temperature=temperature, top_p=top_p, mixed_precision=mixed_precision, **settings,
        )  # fmt: skip
        for completion in completions:
            typer.echo(completion)
        if out is not None:
            atomic_write_text(out, "\n\n".join(completions) + "\n")
            typer.echo(f"wrote {out}", err=True)

    _run(run, infill)


@app.command()
def impute(
    model: opt.ModelFolder,
    input: Annotated[
        Path, typer.Option("--input", help="A CSV with the model's columns (series: its value columns); gaps empty.")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the result (a .csv; never the input).")] = Path(
        "imputed.csv"
    ),
    columns: Annotated[str | None, typer.Option(help="Tables: fill only the missing cells of these columns.")] = None,
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-n", help="Series: samples behind the median and the interval.")
    ] = 100,
    level: Annotated[float, typer.Option(help="Series: the central interval written beside the median.")] = 0.9,
    plot: Annotated[Path | None, typer.Option(help="Series: also draw the median and its band (a PNG).")] = None,
    calibration: opt.CalibrationFile = None,
    steps: opt.Steps = None,
    guidance: opt.Guidance = None,
    temperature: opt.Temperature = None,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
    mixed_precision: opt.MixedPrecision = opt.request_default(GuidanceSpec, "mixed_precision"),
    progress: opt.Progress = True,
) -> None:
    """Fill the gaps of a table (every given cell written back exactly as read) or of a time series (the median of
    --num-samples draws with its --level interval, scaled by a --calibration from `calibrate`; observed points
    kept)."""
    from .pipeline import Pipeline

    def run() -> None:
        _check_csv_out(out, input, level)
        fitted = _calibration(calibration, level)
        pipe = Pipeline.load(model)
        request = dict(seed=seed, steps=steps, guidance=guidance, mixed_precision=mixed_precision)
        if pipe.space.name == "table":
            from .data.table import read_csv_table, write_csv_table
            from .tasks import impute as fill

            if fitted is not None:
                _fail(f"--calibration={calibration} scales a series model's draws; {model} is a table model.")

            wanted = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
            frame = read_csv_table(input)
            table, count = fill(
                pipe, frame, wanted, batch_size=batch_size, progress=progress, temperature=temperature, **request
            )
            write_csv_table(table, out)
            typer.echo(f"filled {count} cells of {len(table)} rows; wrote {out}")
            return
        series = _series_input(pipe, input)
        from .tasks import impute_series

        drawn = impute_series(
            pipe, series.values, series.mask, num_samples, batch_size=batch_size, progress=progress,
            calibration=fitted, **request,
        )  # fmt: skip
        _write_bands(pipe, drawn.samples, series, out, level, plot, given=input)
        typer.echo(f"filled {int((~series.mask).sum())} points with {num_samples} samples each; wrote {out}")

    _run(run, impute)


@app.command()
def forecast(
    model: opt.ModelFolder,
    input: Annotated[Path, typer.Option("--input", help="The history: a CSV with the model's value columns.")],
    horizon: Annotated[int, typer.Option(help="Steps to forecast after the history (shorter than the window).")],
    out: Annotated[Path, typer.Option(help="Where to write the forecast (a .csv).")] = Path("forecast.csv"),
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-n", help="Samples behind the median and the interval.")
    ] = 100,
    level: Annotated[float, typer.Option(help="The central interval written beside the median.")] = 0.9,
    plot: Annotated[Path | None, typer.Option(help="Also draw the median and its band (a PNG).")] = None,
    calibration: opt.CalibrationFile = None,
    steps: opt.Steps = None,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
    mixed_precision: opt.MixedPrecision = opt.request_default(GuidanceSpec, "mixed_precision"),
    progress: opt.Progress = True,
) -> None:
    """Forecast the next --horizon steps of a time series: the median of --num-samples draws and its interval
    (scaled by a --calibration from `calibrate`)."""
    from .pipeline import Pipeline
    from .tasks import forecast as predict

    def run() -> None:
        _check_csv_out(out, input, level)
        fitted = _calibration(calibration, level)
        pipe = Pipeline.load(model)
        series = _series_input(pipe, input)
        drawn = predict(
            pipe, series.values, horizon, num_samples, observed=series.mask, batch_size=batch_size,
            progress=progress, seed=seed, steps=steps, mixed_precision=mixed_precision, calibration=fitted,
        )  # fmt: skip
        _write_bands(pipe, drawn.samples, series._replace(time=None), out, level, plot)
        typer.echo(f"forecast {horizon} steps with {num_samples} samples; wrote {out}")

    _run(run, forecast)


@app.command()
def calibrate(
    model: opt.ModelFolder,
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="A series CSV in the model's value columns with no gaps, from --start on not trained on."
        ),
    ],
    task: Annotated[
        str, typer.Option(help="How held-out points are hidden: missing (random points), block or horizon.")
    ],
    size: Annotated[float, typer.Option(help="missing: the share hidden (0.1); block, horizon: its steps.")],
    out: Annotated[Path, typer.Option(help="Where to write the calibration (a .json).")] = Path("calibration.json"),
    start: Annotated[int, typer.Option(help="The first step of --input the model was not trained on.")] = 0,
    draws: Annotated[int, typer.Option(help="Masks drawn (horizon: origins spread over the held-out steps).")] = 5,
    level: Annotated[float, typer.Option(help="The central interval to calibrate.")] = 0.9,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Samples per held-out case.")] = 50,
    steps: opt.Steps = None,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
    mixed_precision: opt.MixedPrecision = opt.request_default(GuidanceSpec, "mixed_precision"),
) -> None:
    """Fit a series model's calibration (split-conformal scaling of its draws' spread, Romano et al. 2019) on
    held-out points hidden the way --task will hide them; `impute` and `forecast` take it as --calibration."""
    from .pipeline import Pipeline
    from .tasks import CALIBRATION_TASKS, calibrate_series

    def run() -> None:
        if task not in CALIBRATION_TASKS:
            _fail(f"--task={task} is not one of {', '.join(CALIBRATION_TASKS)}.")
        if not 0 < level < 1:
            _fail(f"--level={level} must lie in (0, 1), e.g. 0.9.")
        _check_out_file(out, ".json")
        if out.suffix.lower() != ".json":
            _fail(f"--out={out}: a calibration is written as JSON; expected a path ending in .json.")
        pipe = Pipeline.load(model)
        series = _series_input(pipe, input)
        if not bool(series.mask.all()):
            _fail(f"--input={input} has {int((~series.mask).sum())} empty cells; calibration needs every value.")
        fitted = calibrate_series(
            pipe, series.values, task, size, start=start, draws=draws, level=level, num_samples=num_samples,
            seed=seed, steps=steps, batch_size=batch_size, mixed_precision=mixed_precision,
        )  # fmt: skip
        fitted.save(out)
        typer.echo(f"spread scale {fitted.scale:.3f} from {fitted.points} held-out points; wrote {out}")

    _run(run, calibrate)


def _calibration(path: Path | None, level: float) -> Any:
    """--calibration read (None: none), fitted for --level."""
    if path is None:
        return None
    from .tasks import Calibration

    fitted = Calibration.load(path)
    if abs(fitted.level - level) > 1e-9:
        _fail(f"--calibration={path} was fitted for --level={fitted.level:g}; pass --level={fitted.level:g}.")
    return fitted


def _check_csv_out(out: Path, source: Path, level: float = 0.9) -> None:
    """--out is a .csv file other than the input; --level lies in (0, 1)."""
    if not 0 < level < 1:
        _fail(f"--level={level} must lie in (0, 1), e.g. 0.9.")
    _check_out_file(out, ".csv")
    if out.suffix.lower() != ".csv":
        _fail(f"--out={out}: the result is written as CSV; expected a path ending in .csv.")
    if source.exists() and out.exists() and out.resolve() == source.resolve():
        _fail(f"--out={out} is the --input file; write the result to another file.")


def _series_input(pipe: Any, path: Path) -> Any:
    """A series CSV read the model's way (its columns and standardisation); one clear line for another kind."""
    from .data.signals import read_series_input

    info = pipe.config.data.signal
    if info is None or info.kind != "series":
        _fail(f"this {pipe.space.name} model does not impute or forecast series; it takes tables or series models.")
    return read_series_input(path, info)


def _write_bands(
    pipe: Any, samples: Any, series: Any, out: Path, level: float, plot: Path | None, given: Path | None = None
) -> None:
    """The median and interval of the samples as a CSV (observed points as the input wrote them) and a plot."""
    from .data.table import read_csv_table
    from .signal_outputs import write_series_bands

    cells = None
    if given is not None:
        frame = read_csv_table(given)
        cells = {name: frame[name].tolist() for name in pipe.config.data.signal.columns or [] if name in frame}
    write_series_bands(
        samples, pipe.config.data.signal, out, level, time=series.time, time_name=series.time_name, plot=plot,
        given=cells, observed=series.mask if given is not None else None,
    )  # fmt: skip


# ---------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    model: opt.ModelFolder,
    metrics: opt.Metrics = None,
    num_samples: opt.NumSamples = 1000,
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
    guidance: opt.Guidance = None,
    features: opt.Features = None,
    inception_weights: opt.InceptionWeights = None,
    num_real: opt.NumReal = None,
    bpd_images: opt.BpdImages = 128,
    probe: opt.Probe = "rademacher",
    rtol: opt.Rtol = 1e-5,
    atol: opt.Atol = 1e-5,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
    out: opt.ResultsJson = None,
    real: Annotated[
        Path | None, typer.Option(help="Tables: a CSV of held-out rows to score against (test rows).")
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="Tables: rows the model never saw, for privacy (default: --real).")
    ] = None,
    progress: opt.Progress = True,
) -> None:
    """Score a trained model against its dataset's held-out data; prints a markdown table (and writes JSON; for a
    table model also a PNG of the marginals and association matrices beside it)."""
    from .evaluation import evaluate_model, format_results
    from .io import save_json
    from .pipeline import Pipeline

    def run() -> None:
        if out is not None:
            _check_out_file(out)
        pipe = Pipeline.load(model)
        plot = str(out.with_suffix(".png")) if out is not None and pipe.space.suffix == ".csv" else None
        result = evaluate_model(
            pipe,
            metrics,
            **dict(num_samples=num_samples, sampler=sampler, steps=steps, guidance=guidance, features=features),
            inception_weights=str(inception_weights) if inception_weights is not None else None,
            **dict(seed=seed, batch_size=batch_size, num_real=num_real, bpd_images=bpd_images, probe=probe),
            **dict(rtol=rtol, atol=atol, progress=progress),
            **_given(real=real, holdout=holdout, plot=plot),
            log=lambda msg: typer.echo(msg, err=True),
        )
        result = {"model": str(model), **result}
        typer.echo(format_results(result))
        if out is not None:
            save_json(result, out)
            typer.echo(f"wrote {out}", err=True)

    _run(run, evaluate)


# ---------------------------------------------------------------- inpaint, img2img, denoise, anomaly


def _inpaint_inputs(pipe: Any, image: Path, mask: Path | None, rect: str | None, outpaint: str | None) -> Any:
    """The image (1, C, H, W) and the region to fill, from exactly one of a mask, a rectangle or an outpaint."""
    from .tasks import check_images, outpaint_canvas, read_image, read_mask, rect_mask

    if outpaint is not None:
        pad = _parse_numbers("--outpaint", outpaint, 4, int)
        canvas, fill = outpaint_canvas(read_image(_existing(image, "--image"))[None], pad)
        try:
            return check_images(pipe, canvas), fill
        except ValueError as err:
            raise ValueError(f"{image} extended by --outpaint {outpaint}: {err}") from None
    images = _read_task_image(pipe, image)
    if rect is not None:
        return images, rect_mask(*images.shape[-2:], _parse_numbers("--rect", rect, 4, int))
    return images, read_mask(_existing(mask, "--mask"))


@app.command()
def inpaint(
    model: opt.ModelFolder,
    image: opt.TaskImage,
    out: opt.OutFile = Path("inpainted.png"),
    mask: opt.Mask = None,
    rect: opt.Rect = None,
    outpaint: opt.Outpaint = None,
    method: opt.InpaintMethod = "repaint",
    label: opt.Label = None,
    prompt: opt.Prompt = None,
    guidance: opt.Guidance = None,
    steps: opt.Steps = None,
    jump_length: opt.JumpLength = 10,
    jump_n_sample: opt.JumpNSample = 10,
    sampler: opt.Sampler = None,
    reconstruction_guidance: opt.ReconstructionGuidance = 0.0,
    seed: opt.Seed = 0,
    progress: opt.Progress = True,
) -> None:
    """Fill part of an image (inpainting) or extend it (outpainting); the known pixels are kept exactly.

    Give exactly one of --mask (white = fill, black = keep), --rect or --outpaint.
    """
    from .pipeline import Pipeline
    from .tasks import inpaint as inpaint_images
    from .tasks import save_image

    def run() -> None:
        _check_out_file(out)
        given = [name for name, v in (("--mask", mask), ("--rect", rect), ("--outpaint", outpaint)) if v is not None]
        if len(given) != 1:
            _fail(f"give exactly one of --mask, --rect or --outpaint (got {', '.join(given) or 'none'}).")
        pipe = Pipeline.load(model)
        images, fill = _inpaint_inputs(pipe, image, mask, rect, outpaint)
        result = inpaint_images(
            pipe,
            images,
            fill,
            **dict(method=method, labels=labels_for(label, 1), guidance=guidance, steps=steps, seed=seed),
            **dict(
                jump_length=jump_length, jump_n_sample=jump_n_sample, reconstruction_guidance=reconstruction_guidance
            ),
            progress=progress,
            **_given(sampler=sampler, prompt=prompt),
        )
        meta = text_metadata(
            model=model, task="inpaint", method=method, label=label, prompt=prompt, seed=seed, steps=steps
        )
        save_image(result[0], out, meta)
        typer.echo(f"wrote {out}")

    _run(run, inpaint)


@app.command("fill-frames")
def fill_frames(
    model: opt.ModelFolder,
    clip: Annotated[Path, typer.Option(help="The input clip: a GIF / WebP file or a folder of frame PNGs.")],
    known_frames: Annotated[
        str | None,
        typer.Option(help="Frames to keep, e.g. 0-3 (prediction) or 0,7 (interpolation); default: the clip's own."),
    ] = None,
    frames: Annotated[
        int | None, typer.Option(help="Frames of the result (default: the clip's); frames past the clip are drawn.")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Where to write the clip: a .gif or .webp (and a -frames.png strip).")
    ] = Path("filled.gif"),
    method: opt.InpaintMethod = "repaint",
    label: opt.Label = None,
    guidance: opt.Guidance = None,
    steps: opt.Steps = None,
    jump_length: opt.JumpLength = 10,
    jump_n_sample: opt.JumpNSample = 10,
    sampler: opt.Sampler = None,
    reconstruction_guidance: opt.ReconstructionGuidance = 0.0,
    seed: opt.Seed = 0,
    progress: opt.Progress = True,
) -> None:
    """Predict or interpolate the frames of a clip with a video model; the known frames are kept exactly."""
    from .data.clips import read_clip
    from .images import make_grid, save_animation, save_png
    from .pipeline import Pipeline
    from .tasks import check_clips, parse_frames
    from .tasks import fill_frames as fill_clip_frames

    def run() -> None:
        _check_out_file(out, ".gif")
        if out.suffix.lower() not in (".gif", ".webp"):
            _fail(f"--out={out}: a clip is written as a .gif or .webp file.")
        pipe = Pipeline.load(model)
        given = read_clip(clip, pipe.config.data.channels)
        total = len(given) if frames is None else frames
        if total < len(given) or total < 2:
            _fail(f"--frames={total} must be at least the clip's {len(given)} frames (and at least 2).")
        padded = given.new_zeros(total, *given.shape[1:])  # frames past the clip: unknown, drawn
        padded[: len(given)] = given
        known = parse_frames(known_frames, len(given)) if known_frames is not None else list(range(len(given)))
        clips = check_clips(pipe, padded[None])
        result = fill_clip_frames(
            pipe,
            clips,
            known,
            **dict(method=method, labels=labels_for(label, 1), guidance=guidance, steps=steps, seed=seed),
            **dict(
                jump_length=jump_length, jump_n_sample=jump_n_sample, reconstruction_guidance=reconstruction_guidance
            ),
            progress=progress,
            **_given(sampler=sampler),
        )
        meta = text_metadata(model=model, task="fill-frames", known_frames=",".join(map(str, known)), seed=seed)
        save_animation(result[0], out, scale=1)  # the clip at its own size: an input to fill-frames again
        strip = pipe.space.strip_path(out)
        save_png(make_grid(result[0], len(result[0]), scale=2), strip, meta)
        typer.echo(f"wrote {out} and {strip}")

    _run(run, fill_frames)


@app.command()
def img2img(
    model: opt.ModelFolder,
    image: opt.TaskImage,
    out: opt.OutFile = Path("img2img.png"),
    strength: opt.Strength = 0.6,
    label: opt.Label = None,
    prompt: opt.Prompt = None,
    guidance: opt.Guidance = None,
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
    seed: opt.Seed = 0,
    progress: opt.Progress = True,
) -> None:
    """Image-to-image (SDEdit): noise the input to --strength and denoise it, optionally towards --label."""
    from .pipeline import Pipeline
    from .tasks import check_strength, save_image
    from .tasks import img2img as img2img_images

    def run() -> None:
        _check_out_file(out)
        check_strength(strength)
        pipe = Pipeline.load(model)
        result = img2img_images(
            pipe,
            _read_task_image(pipe, image),
            strength,
            **dict(labels=labels_for(label, 1), guidance=guidance, sampler=sampler, steps=steps, seed=seed),
            progress=progress,
            **_given(prompt=prompt),
        )
        save_image(
            result[0], out, text_metadata(model=model, task="img2img", strength=strength, label=label, seed=seed)
        )
        typer.echo(f"wrote {out}")

    _run(run, img2img)


@app.command()
def interpolate(
    model: opt.ModelFolder,
    seeds: Annotated[tuple[int, int], typer.Option(help="The two seeds whose first samples are the ends.")] = (0, 1),
    frames: Annotated[int, typer.Option(help="Frames from one end to the other, both included.")] = 8,
    out: opt.OutFile = Path("interpolation.png"),
    gif: Annotated[Path | None, typer.Option(help="Also write the frames as an animation (.gif or .webp).")] = None,
    label: opt.Label = None,
    prompt: opt.Prompt = None,
    prompts: Annotated[
        tuple[str, str] | None,
        typer.Option(help="Instead: two prompts whose embeddings are mixed, from the first seed's noise."),
    ] = None,
    classes: Annotated[
        tuple[int, int] | None,
        typer.Option(help="Instead: two class labels whose embeddings are mixed, from the first seed's noise."),
    ] = None,
    path: Annotated[
        str, typer.Option(help="How --prompts or --classes embeddings move: linear or spherical.")
    ] = "linear",
    guidance: opt.Guidance = None,
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
) -> None:
    """Samples along the great circle between two seeds' noises, or (--prompts, --classes) from one noise between
    two prompts' or classes' embeddings: a strip of --frames images (and an animation)."""
    from .images import save_animation
    from .pipeline import Pipeline
    from .spaces import PixelImageSpace
    from .tasks import interpolate as along

    def run() -> None:
        _check_out_file(out)
        if frames < 2:
            _fail(f"--frames={frames} must be at least 2 (the two ends).")
        if gif is not None and gif.suffix.lower() not in (".gif", ".webp"):
            _fail(f"--gif={gif} must end in .gif or .webp.")
        pipe = Pipeline.load(model)
        if gif is not None and not isinstance(pipe.space, PixelImageSpace):
            _fail(f"--gif={gif} animates images; this is a {pipe.space.name} model (leave --gif off).")
        settings = dict(labels=label, guidance=guidance, sampler=sampler, steps=steps)
        if prompts is not None or classes is not None:
            between = {"prompts": prompts} if prompts is not None else {"classes": classes}
            images = along(pipe, frames, **between, path=path, seed=seeds[0], **settings, **_given(prompt=prompt))
        else:
            images = along(pipe, frames, seeds=seeds, **settings, **_given(prompt=prompt))
        meta = text_metadata(model=model, task="interpolate", seeds=list(seeds), frames=frames, label=label,
                             prompts=list(prompts) if prompts else None, classes=list(classes) if classes else None,
                             path=path if prompts or classes else None)  # fmt: skip
        pipe.space.save(images, out, nrow=frames, metadata=meta)  # images: a grid; audio: spectrograms
        if gif is not None:
            save_animation(images, gif)
        typer.echo(f"wrote {out}" + (f" and {gif}" if gif else ""))

    _run(run, interpolate)


@app.command()
def variations(
    model: opt.ModelFolder,
    seed: opt.Seed = 0,
    variation_seed: Annotated[int, typer.Option(help="The seed whose noise is mixed in.")] = 1,
    strength: Annotated[float, typer.Option(help="How much of it: 0 the sample itself, 1 the other seed's.")] = 0.2,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="How many variations.")] = 8,
    index: Annotated[int, typer.Option(help="Which sample of --seed to vary.")] = 0,
    out: opt.OutFile = Path("variations.png"),
    label: opt.Label = None,
    prompt: opt.Prompt = None,
    guidance: opt.Guidance = None,
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
) -> None:
    """Variations of one sample: its noise mixed with another seed's by --strength along the great circle."""
    from .images import save_grid
    from .pipeline import Pipeline
    from .tasks import variations as vary

    def run() -> None:
        _check_out_file(out)
        if not 0.0 <= strength <= 1.0:
            _fail(f"--strength={strength} must be in [0, 1].")
        if num_samples < 1 or index < 0:
            _fail(f"--num-samples={num_samples} must be positive and --index={index} not negative.")
        pipe = Pipeline.load(model)
        settings = dict(labels=label, guidance=guidance, sampler=sampler, steps=steps)
        images = vary(
            pipe, seed, variation_seed, strength, num_samples, index=index, **settings, **_given(prompt=prompt)
        )
        meta = text_metadata(
            model=model, task="variations", seed=seed, variation_seed=variation_seed, strength=strength, label=label
        )
        save_grid(images, out, nrow=min(8, num_samples), scale=2, metadata=meta)
        typer.echo(f"wrote {out}")

    _run(run, variations)


@app.command()
def invert(
    model: opt.ModelFolder,
    image: opt.TaskImage,
    out: opt.OutFile = Path("inverted.png"),
    to_t: Annotated[
        float | None, typer.Option(help="The noise level (time) to invert to (default: the top of the grid).")
    ] = None,
    label: opt.Label = None,
    as_label: Annotated[int | None, typer.Option(help="Regenerate as this class instead (an edit).")] = None,
    prompt: opt.Prompt = None,
    guidance: opt.Guidance = None,
    sampler: Annotated[str, typer.Option(help="A deterministic solver: ddim, euler, heun or dpmpp_2m.")] = "ddim",
    steps: opt.Steps = None,
    null_iterations: Annotated[
        int,
        typer.Option(
            help="Null-text inversion: optimise the unconditional branch this many steps per level "
            "(guided models, DDIM, guidance > 1; 0: plain inversion)."
        ),
    ] = 0,
) -> None:
    """Invert an image through the probability-flow ODE and regenerate it: as it was (prints the reconstruction's
    PSNR) and, with --as-label, as another class from --to-t (an edit)."""
    import math

    from .pipeline import Pipeline
    from .tasks import invert as up
    from .tasks import invert_null, regenerate, save_image

    def run() -> None:
        _check_out_file(out)
        if null_iterations < 0:
            _fail(f"--null-iterations={null_iterations} must be 0 (plain inversion) or more.")
        pipe = Pipeline.load(model)
        x = _read_task_image(pipe, image)
        settings = dict(guidance=guidance, sampler=sampler, steps=steps, **_given(prompt=prompt))
        nulls = None
        if null_iterations:
            nulls = invert_null(pipe, x, to_t=to_t, iterations=null_iterations, labels=labels_for(label, 1), **settings)
            state = nulls.noise
        else:
            state = up(pipe, x, to_t=to_t, labels=labels_for(label, 1), **settings)
        back = regenerate(pipe, state, from_t=to_t, nulls=nulls, labels=labels_for(label, 1), **settings)
        mse = float((back - x).pow(2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
        typer.echo(f"reconstruction from the inverted state: PSNR {psnr:.2f} dB")
        result = back
        if as_label is not None:
            result = regenerate(pipe, state, from_t=to_t, nulls=nulls, labels=labels_for(as_label, 1), **settings)
        meta = text_metadata(model=model, task="invert", to_t=to_t, label=label, as_label=as_label, sampler=sampler,
                             null_iterations=null_iterations or None)  # fmt: skip
        save_image(result[0], out, meta)
        typer.echo(f"wrote {out}")

    _run(run, invert)


def _noise_level(sigma: str) -> float | str:
    """--sigma as a number in pixel units, or 'auto'."""
    if sigma == "auto":
        return sigma
    try:
        return float(sigma)
    except ValueError:
        _fail(f"--sigma={sigma!r} must be a number in pixel units (images in [0, 1]), e.g. 0.1, or 'auto'.")
    return sigma


@app.command()
def denoise(
    model: opt.ModelFolder,
    image: opt.TaskImage,
    out: opt.OutFile = Path("denoised.png"),
    sigma: opt.Sigma = "auto",
    mode: opt.DenoiseMode = "mean",
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
    label: opt.Label = None,
    seed: opt.Seed = 0,
) -> None:
    """Denoise an image: map its noise level to the process's time and run the reverse process from there."""
    from .pipeline import Pipeline
    from .tasks import denoise as denoise_images
    from .tasks import estimate_noise_sigma, save_image

    def run() -> None:
        _check_out_file(out)
        level = _noise_level(sigma)
        pipe = Pipeline.load(model)
        images = _read_task_image(pipe, image)
        if level == "auto":
            level = float(estimate_noise_sigma(images)[0])
            typer.echo(f"estimated noise sigma = {level:.4f} (pixel units)")
        settings = dict(mode=mode, steps=steps, labels=labels_for(label, 1), seed=seed)
        result = denoise_images(pipe, images, level, **settings, **_given(sampler=sampler))
        save_image(result[0], out, text_metadata(model=model, task="denoise", sigma=level, mode=mode, seed=seed))
        typer.echo(f"wrote {out}")

    _run(run, denoise)


@app.command()
def anomaly(
    model: opt.ModelFolder,
    images: opt.ImageFolder,
    out: opt.OutFile = Path("scores.csv"),
    method: opt.AnomalyMethod = "recon",
    t: opt.NoiseTime = 0.35,
    repeats: opt.Repeats = 1,
    steps: opt.Steps = None,
    num_times: opt.NumTimes = 16,
    log_snr_range: opt.LogSnrRange = None,
    seed: opt.Seed = 0,
    batch_size: opt.BatchSize = 256,
) -> None:
    """Score images by how badly the model explains them and write a ranked CSV (rank,score,image; the highest
    score, the most anomalous, first)."""
    import torch

    from .data.folder import find_images
    from .pipeline import Pipeline
    from .tasks import anomaly_scores, write_scores_csv

    def run() -> None:
        _check_out_file(out)
        files, _, _ = find_images(images)
        pipe = Pipeline.load(model)
        batch = torch.cat([_read_task_image(pipe, f, "image") for f in files])
        scores = anomaly_scores(
            pipe,
            batch,
            method,
            **dict(t=t, repeats=repeats, steps=steps, num_times=num_times, seed=seed, batch_size=batch_size),
            log_snr_range=_parse_numbers("--log-snr-range", log_snr_range, 2),
        )
        names = [str(f.relative_to(images)) for f in files]
        write_scores_csv(names, scores, out)
        top = int(scores.argmax())
        typer.echo(f"wrote {out} ({len(files)} images; most anomalous: {names[top]}, score {float(scores[top]):.4g})")

    _run(run, anomaly)


# ---------------------------------------------------------------- serve


@app.command()
def distill(
    model: opt.ModelFolder,
    out: Annotated[Path, typer.Option(help="The student's model folder (each round's student in OUT/rounds/).")],
    steps: Annotated[int, typer.Option(help="Steps the student samples in (1, 2, 4, ...).")] = 4,
    method: Annotated[
        str,
        typer.Option(
            help="progressive (Salimans & Ho 2022): rounds that halve the steps; consistency (Song et al. 2023): "
            "one run, the student maps any point of the teacher's trajectories to its end; consistency_training "
            "(iCT): the same without the teacher's steps; reflow (Liu et al. 2023, flow-matching models): "
            "retrain on the teacher's own (noise, sample) pairs."
        ),
    ] = "progressive",
    teacher_steps: Annotated[int, typer.Option(help="progressive: the teacher's DDIM steps in the first round.")] = 64,
    iterations: Annotated[int, typer.Option(help="Training steps of each round.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Batch of each training step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the rounds.")] = 1e-4,
    scales: Annotated[int, typer.Option(help="consistency: noise levels (consistency_training: the most).")] = 40,
    from_scratch: Annotated[
        bool, typer.Option(help="consistency_training: start from fresh weights, not the model's.")
    ] = False,
    pairs: Annotated[int, typer.Option(help="reflow: (noise, sample) pairs drawn from the teacher.")] = 2048,
    pair_steps: Annotated[int, typer.Option(help="reflow: the teacher's dpmpp_2m steps for each pair.")] = 32,
    guidance: opt.Guidance = None,
    progress: opt.Progress = True,
) -> None:
    """Distil a model into one that samples in --steps steps (the teacher's guidance distilled in): progressive
    rounds that halve the steps from --teacher-steps, one run of consistency distillation or training, or reflow."""
    from .config import DistillConfig
    from .training.distill import distill_consistency, distill_progressively, distill_reflow, halvings

    def run() -> None:
        methods = DistillConfig.model_fields["method"].annotation.__args__  # type: ignore[union-attr]
        if method not in methods:
            _fail(f"--method={method!r} is not a distillation method; expected one of {', '.join(methods)}.")
        if method == "progressive":
            try:
                halvings(teacher_steps, steps)
            except ValueError as err:
                _fail(f"--teacher-steps / --steps: {err}")
        for name, value, least in (("--steps", steps, 1), ("--iterations", iterations, 1),
                                   ("--batch-size", batch_size, 1), ("--scales", scales, 2), ("--pairs", pairs, 1),
                                   ("--pair-steps", pair_steps, 1)):  # fmt: skip
            if value < least:
                _fail(f"{name}={value} must be an integer >= {least}.")
        if not lr > 0:
            _fail(f"--lr={lr} must be positive.")
        train = {"steps": iterations, "batch_size": batch_size, "lr": lr, "warmup_steps": min(100, iterations // 10)}
        common = {"guidance": guidance, "train": train, "progress": progress}
        if method == "progressive":
            distill_progressively(model, out, steps, teacher_steps=teacher_steps, **common)
        elif method == "reflow":
            distill_reflow(model, out, steps, pairs=pairs, pair_steps=pair_steps, **common)
        else:
            training = method == "consistency_training"
            distill_consistency(model, out, steps, scales=scales, training=training, from_scratch=from_scratch,
                                **common)  # fmt: skip
        typer.echo(f"student written to {out}/: samples in {steps} step(s) (`diffusionlab sample {out}`)")

    _run(run, distill)


@app.command("import")
def import_model(
    checkpoint: Annotated[
        Path, typer.Argument(help="A single-file Stable Diffusion checkpoint (.safetensors) or a diffusers folder.")
    ],
    out: Annotated[Path, typer.Option(help="The diffusers model folder to write.")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="For a single file: a local diffusers Stable Diffusion folder of the same architecture "
            "(model_index.json, the components' configs, tokenizer/, scheduler/) whose shapes and tokenizer the "
            "checkpoint's weights go into."
        ),
    ] = None,
    lora: Annotated[Path | None, typer.Option(help="LoRA weights (.safetensors) to fuse into the model.")] = None,
    lora_scale: Annotated[float, typer.Option(help="The LoRA's strength when fused.")] = 1.0,
) -> None:
    """Turn a single-file Stable Diffusion checkpoint (as community models are shared), optionally with a LoRA fused
    in, into a diffusers model folder that every command and the studio take. diffusers folders need no import
    (pass them as the model) unless a LoRA is to be fused."""
    from .interop import load_diffusers, load_single_file

    def run() -> None:
        if checkpoint.is_dir():
            pipe = load_diffusers(checkpoint)
        elif config is None:
            _fail(f"{checkpoint} is a single file: give --config, a diffusers folder of the same architecture.")
        else:
            pipe = load_single_file(checkpoint, config)
        if lora is not None:
            pipe.load_lora(lora, lora_scale)
        pipe.save(out)
        typer.echo(f"model written to {out}/ (`diffusionlab sample {out} --prompt ...`)")

    _run(run, import_model)


@app.command("tune-grid")
def tune_grid(
    model: opt.ModelFolder,
    sampler: Annotated[str, typer.Option(help="The ODE solver to tune the grid for (e.g. dpmpp_2m, deis, ipndm).")],
    nfe: Annotated[int | None, typer.Option(help="Network evaluations per sample: the most steps within them.")] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (instead of --nfe).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Calibration samples.")] = 32,
    evaluations: Annotated[
        int | None, typer.Option(help="Most solves of the search (default 40 per point of the grid it moves).")
    ] = None,
    seed: opt.Seed = 0,
) -> None:
    """Tune the time grid of one ODE sampler at one step count for this model (against a 200-step reference from
    the same noise) and store it in the model folder; sample on it with `--spacing tuned`."""
    from .pipeline import Pipeline
    from .sampling import nfe as count_nfe
    from .sampling.tuning import TUNABLE_SAMPLERS
    from .tasks import save_tuned_grid, tune_model_grid

    def run() -> None:
        if sampler not in TUNABLE_SAMPLERS:
            _fail(f"--sampler={sampler} cannot be tuned: give an ODE solver, one of {', '.join(TUNABLE_SAMPLERS)}.")
        if (nfe is None) == (steps is None):
            _fail("give exactly one of --nfe and --steps.")
        count = steps
        if nfe is not None:
            if nfe < 1 or count_nfe(sampler, 1) > nfe:
                _fail(f"--nfe={nfe} is too few for {sampler} (it spends {count_nfe(sampler, 1)} at one step).")
            count = 1
            while count_nfe(sampler, count + 1) <= nfe:
                count += 1
        pipe = Pipeline.load(model)
        result = tune_model_grid(pipe, sampler, count, num_samples, seed=seed, evaluations=evaluations)
        save_tuned_grid(model, sampler, count, result.times)
        typer.echo(
            f"{sampler} at {count} steps ({count_nfe(sampler, count)} evaluations): RMS error against the "
            f"reference {result.error_before:.4g} on the {result.start_spacing} grid, {result.error_after:.4g} "
            f"tuned ({result.solves} solves); stored in {model / 'config.json'} (sample with --spacing tuned)."
        )

    _run(run, tune_grid)


@app.command()
def serve(
    models: Annotated[
        Path, typer.Argument(help="A folder of model folders (each one served), or one model folder, e.g. runs/.")
    ],
    host: opt.Host = "127.0.0.1",
    port: opt.Port = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Where the job history (SQLite) and every job's output files are kept.")
    ] = Path("studio-data"),
    token: Annotated[
        str | None, typer.Option(help="Require this token on /api (Authorization: Bearer TOKEN, or ?token=TOKEN).")
    ] = None,
    max_waiting: Annotated[int, typer.Option(help="Jobs that may wait behind the running one; more are 429.")] = 8,
    time_limit: Annotated[float, typer.Option(help="Seconds a job may run before it is stopped.")] = 600.0,
    memory_budget_mb: Annotated[
        int, typer.Option(help="MB of model weights kept loaded; the least recently used model is unloaded beyond.")
    ] = 2048,
) -> None:
    """Serve the studio over HTTP: the web page at http://HOST:PORT/, the API under /api (docs at /docs)."""

    def run() -> None:
        if not 0 < port < 65536:
            _fail(f"--port={port} must be a TCP port, 1..65535.")
        if not models.is_dir():
            _fail(f"{models} is not a folder; give a model folder or a folder of model folders.")
        try:
            import uvicorn

            from .server import create_app
            from .server.registry import find_model_folders
        except ImportError:
            _fail("serving needs FastAPI and uvicorn: pip install 'diffusionlab[server]'.")
        if not find_model_folders(models):
            _fail(f"{models} holds no model folder (a folder with config.json and model.safetensors).")
        if host not in ("127.0.0.1", "localhost", "::1") and token is None:
            typer.secho(
                f"warning: --host={host} lets other machines in and no --token is set; anyone who reaches this "
                "port can run jobs.",
                err=True,
                fg=typer.colors.YELLOW,
            )
        options = dict(max_waiting=max_waiting, time_limit_s=time_limit, memory_budget_mb=memory_budget_mb)
        application = create_app(models, data_dir=data_dir, token=token, **options)
        served = ", ".join(application.state.registry.names())
        typer.echo(f"serving {served} at http://{host}:{port}/ (history in {data_dir}; Ctrl-C stops)")
        uvicorn.run(application, host=host, port=port, log_level="warning")

    _run(run, serve)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """A library warning (a stated fallback) as one ``warning:`` line on stderr."""
    typer.secho(f"warning: {str(message).splitlines()[0]}", err=True, fg=typer.colors.YELLOW)


def _usage_line(err: Any) -> str:
    """A click usage error (a flag's value of the wrong type, an unknown flag) as one line."""
    return " ".join(err.format_message().split())


def main() -> int:
    """Console-script entry point: every failure the user can cause ends in one ``error:`` line and exit 2."""
    import warnings

    click = sys.modules[typer.BadParameter.__module__]  # click's exceptions, wherever this typer keeps them

    warnings.showwarning = _show_warning
    try:
        code = app(prog_name="diffusionlab", standalone_mode=False)
    except click.NoArgsIsHelpError:  # the help is already shown
        return 0
    except click.UsageError as err:
        command = (
            f"diffusionlab {err.ctx.command_path.split(' ', 1)[1]}"
            if err.ctx and " " in err.ctx.command_path
            else "diffusionlab"
        )
        typer.secho(f"error: {_usage_line(err)} (see `{command} --help`)", err=True, fg=typer.colors.RED)
        return 2
    except click.ClickException as err:
        typer.secho(f"error: {_usage_line(err)}", err=True, fg=typer.colors.RED)
        return err.exit_code
    except typer.Abort:
        typer.secho("interrupted.", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug of ours: one line and exit 70, the traceback on request
        if os.environ.get("DIFFUSIONLAB_TRACEBACK"):
            raise
        typer.secho(
            f"error: internal error ({type(err).__name__}: {_one_line(err)}); this is a diffusionlab bug, please "
            "report it with the command line (DIFFUSIONLAB_TRACEBACK=1 shows where it happened).",
            err=True,
            fg=typer.colors.RED,
        )
        return 70
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
