"""The ``diffusionlab`` command line (floor 6): train and sample.

Every option here has the same name as the config field or API keyword it sets.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, sample and evaluate diffusion models. Run `diffusionlab COMMAND --help` for each command.",
    pretty_exceptions_enable=False,
)


# options that several commands share, with one help text each
ModelFolder = Annotated[Path, typer.Argument(help="A model folder (config.json + *.safetensors), e.g. runs/digits.")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
Prompt = Annotated[str | None, typer.Option(help="Text prompt (text-conditional models).")]
ImageSeed = Annotated[int, typer.Option(help="Seed of the noise: same seed, same image.")]
Guidance = Annotated[
    float | None, typer.Option(help="Classifier-free guidance w: 0 unconditional, 1 conditional, >1 stronger.")
]


class ModelSize(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"
    large = "large"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from .data import DataError
    from .io import CheckpointError

    return (ValueError, DataError, CheckpointError, FileNotFoundError, ValidationError)


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call fn; a user error becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as err:
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            e = err.errors()[0]
            _fail(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})")
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        typer.secho("interrupted.", err=True)
        raise typer.Exit(130) from None


@app.command()
def train(
    dataset: Annotated[
        str,
        typer.Option(
            help="'digits' (embedded), 'captioned-digits' (with prompts), 'mnist:<folder>', 'cifar10:<folder>', "
            "'toy:<name>', or an image folder."
        ),
    ] = "digits",
    out: Annotated[Path, typer.Option(help="Output folder: the model, checkpoints/, samples/, tensorboard/.")] = Path(
        "runs/digits"
    ),
    image_size: Annotated[int, typer.Option(help="Train at this square size (digits: 8x8 upsampled).")] = 16,
    channels: Annotated[int | None, typer.Option(help="1 grayscale or 3 RGB; default: the dataset's own.")] = None,
    model_size: Annotated[ModelSize, typer.Option(help="UNet size preset.")] = ModelSize.small,
    conditional: Annotated[
        bool,
        typer.Option(help="Condition on class labels (with classifier-free guidance) if the data has them."),
    ] = True,
    text_encoder: Annotated[
        str,
        typer.Option(
            help="Text encoder for datasets with captions: 'minilm' (bundled all-MiniLM-L6-v2), a local Hugging "
            "Face folder (CLIP, T5, BERT), or 'none' to ignore captions."
        ),
    ] = "minilm",
    image_condition: Annotated[
        str | None,
        typer.Option(help="Train a paired image-to-image model made on the fly: superres or colourise."),
    ] = None,
    superres_factor: Annotated[int, typer.Option(help="Down-sampling factor of --image-condition superres.")] = 4,
    process: Annotated[str, typer.Option(help="Forward process: ddpm, vp, subvp, ve, edm or flow.")] = "ddpm",
    schedule: Annotated[
        str, typer.Option(help="Beta schedule of the ddpm process: linear, cosine or geometric.")
    ] = "cosine",
    parameterisation: Annotated[
        str, typer.Option(help="What the network predicts: eps, x0, v, edm or velocity.")
    ] = "v",
    steps: Annotated[int, typer.Option(help="Optimisation steps (the LR schedule's length).")] = 3000,
    minutes: Annotated[float | None, typer.Option(help="Stop early after this many minutes (and save).")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split across processes).")] = 64,
    grad_accumulation: Annotated[
        int, typer.Option(help="Micro-batches per process and step: less memory, same updates as one batch.")
    ] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 2e-3,
    lr_schedule: Annotated[str, typer.Option(help="cosine, constant or onecycle (after linear warm-up).")] = "cosine",
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the weights used for sampling.")] = 0.999,
    label_dropout: Annotated[
        float, typer.Option(help="Share of labels dropped per sample, for classifier-free guidance.")
    ] = 0.1,
    weighting: Annotated[str, typer.Option(help="Loss weighting: uniform, min_snr or edm.")] = "uniform",
    time_sampling: Annotated[str, typer.Option(help="Training times: uniform or lognormal (EDM).")] = "uniform",
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 (through accelerate).")] = "no",
    sample_every: Annotated[int, typer.Option(help="Write a sample grid every N steps (0: never).")] = 1000,
    checkpoint_every: Annotated[
        int, typer.Option(help="Write a checkpoint every N steps (0: only at the end).")
    ] = 1000,
    eval_every: Annotated[
        int, typer.Option(help="Evaluate the EMA model every N steps (0: never); logged as eval/* and eval/*.json.")
    ] = 0,
    eval_metrics: Annotated[
        str | None, typer.Option(help="Metrics of --eval-every, as `evaluate --metrics` (default: the model's kind's).")
    ] = None,
    eval_samples: Annotated[int, typer.Option(help="Samples per evaluation of --eval-every.")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random draw of the run.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    progress: Progress = True,
    autoencoder: Annotated[
        Path | None,
        typer.Option(
            help="Latent diffusion: train in this autoencoder's latent space (a train-autoencoder output folder, "
            "or a diffusers AutoencoderKL folder)."
        ),
    ] = None,
) -> None:
    """Train a diffusion model; writes OUT/config.json, model.safetensors, ema.safetensors and samples.png."""
    from .config import (
        MODEL_SIZES,
        DataConfig,
        DiffusionConfig,
        LatentConfig,
        ModelConfig,
        NetworkConfig,
        TextEncoderConfig,
        TrainConfig,
    )
    from .data import IMAGE_CONDITIONS
    from .processes import make_process
    from .training import Trainer

    def build() -> None:
        proc = {"name": process, **({"schedule": schedule} if process == "ddpm" else {})}
        make_process(**proc)  # validate early, with a clear message
        if image_condition is not None and image_condition not in IMAGE_CONDITIONS:
            _fail(f"--image-condition={image_condition!r} is not known; expected one of {', '.join(IMAGE_CONDITIONS)}.")
        config = ModelConfig(
            network=NetworkConfig(**MODEL_SIZES[model_size.value], num_classes=0 if conditional else None),
            diffusion=DiffusionConfig(process=proc, parameterisation=parameterisation),
            data=DataConfig(
                dataset=dataset,
                image_size=image_size,
                channels=channels,
                image_condition=image_condition,
                superres_factor=superres_factor,
            ),
            text_encoder=None if text_encoder.lower() == "none" else TextEncoderConfig(name=text_encoder),
            latent=None if autoencoder is None else LatentConfig(autoencoder=str(autoencoder)),
            train=TrainConfig(
                steps=steps,
                minutes=minutes,
                batch_size=batch_size,
                grad_accumulation=grad_accumulation,
                lr=lr,
                lr_schedule=lr_schedule,
                ema_decay=ema_decay,
                label_dropout=label_dropout,
                weighting=weighting,
                time_sampling=time_sampling,
                mixed_precision=mixed_precision,
                sample_every=sample_every,
                checkpoint_every=checkpoint_every,
                eval_every=eval_every,
                eval_metrics=None
                if eval_metrics is None
                else [m for m in eval_metrics.replace(" ", "").split(",") if m],
                eval_samples=eval_samples,
                seed=seed,
            ),
        )
        trainer = Trainer(config, out, resume=resume, progress=progress, cpu=cpu)
        trainer.train()
        if trainer.accelerator.is_main_process:
            typer.echo(f"model written to {out}/ (samples: {out / 'samples.png'})")
        # every process waits for the main one's last files, then leaves the process group before exiting:
        # a process that exits inside it can abort, and the launcher then kills the others
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()

    _run(build)


def _parse_floats(option: str, text: str | None, count: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        _fail(f"{option}={text!r} must be {count} comma-separated numbers.")
    return values


def _read_image(path: Path, channels: int) -> Any:
    """An image file as a (1, C, H, W) tensor in [0, 1], at its own size."""
    import numpy as np
    import torch
    from PIL import Image

    if not path.is_file():
        _fail(f"--cond-image {path} does not exist; expected an image file.")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except OSError as err:
        _fail(f"cannot read image {path}: {err}")
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _parse_labels(labels: str | None) -> list[int] | None:
    if labels is None:
        return None
    try:
        return [int(v) for v in labels.replace(" ", "").split(",") if v != ""]
    except ValueError:
        _fail(f"--labels={labels!r} must be comma-separated class indices, e.g. 3,3,7.")
    return None


def _sample_distributed(
    pipe: Any, out: Path, n: int, labels: list[int] | None, grid: dict[str, Any], kw: dict[str, Any]
) -> None:
    """Under torchrun / accelerate launch: every process draws its share of the n samples into a shard in
    OUT-shards/, and the main process saves the grid of all of them (the same images as one process)."""
    from .images import save_grid
    from .tasks.distributed_sampling import end_process_group, sample_shards

    shards = out.parent / f"{out.stem}-shards"
    images = sample_shards(pipe, n, shards, labels=labels, **kw)
    if images is not None:
        save_grid(images, out, **grid)
        typer.echo(f"wrote {out} (and one shard per process in {shards}/)")
    end_process_group()


def _write_sample_folder(images: Any, folder: Path, labels: list[int] | None, names: list[str] | None) -> None:
    """Every sample as its own PNG: FOLDER/<class name>/<index>.png when labelled, else FOLDER/<index>.png."""
    from .tasks import write_image_folder

    write_image_folder(images, folder, labels, names)
    typer.echo(f"wrote {len(images)} images to {folder}/")


def _bf16_autocast(enabled: bool) -> Any:
    """bfloat16 autocast of the network's matmuls and convolutions on the CPU (and the GPU, if any), or nothing."""
    import contextlib

    import torch

    stack = contextlib.ExitStack()
    if enabled:
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


@app.command()
def sample(
    model: ModelFolder,
    out: Annotated[Path, typer.Option(help="Output PNG grid.")] = Path("samples.png"),
    num_samples: Annotated[int | None, typer.Option("--num-samples", "-n", help="How many samples.")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated class labels, one per sample (or one for all).")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Sample this many of every class, one labelled row per class.")
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="ddpm, ddim, euler, heun, euler_ancestral, euler_maruyama, pc, annealed_langevin, dpm_2s, "
            "dpmpp_2m, dpmpp_3m, dpmpp_2m_sde or unipc (default: the model's)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default: the model's).")] = None,
    spacing: Annotated[
        str | None, typer.Option(help="Time grid: uniform, leading, trailing, linspace, karras or log_snr.")
    ] = None,
    guidance: Guidance = None,
    prompt: Prompt = None,
    negative_prompt: Annotated[
        str | None, typer.Option(help="Prompt to guide away from (replaces the empty prompt in guidance).")
    ] = None,
    cond_image: Annotated[
        Path | None,
        typer.Option(help="Condition image for super-resolution (the low-resolution image) or colourisation models."),
    ] = None,
    guidance_rescale: Annotated[
        float, typer.Option(help="CFG rescale phi in [0, 1] (Lin et al. 2024) against over-saturation.")
    ] = 0.0,
    guidance_interval: Annotated[
        str | None,
        typer.Option(help="Guide only at noise levels sigma/alpha in (low, high], e.g. 0.3,5 (Kynkaanniemi 2024)."),
    ] = None,
    classifier_scale: Annotated[
        float, typer.Option(help="Classifier guidance scale s (needs `diffusionlab train-classifier` first).")
    ] = 0.0,
    eta: Annotated[float | None, typer.Option(help="DDIM noise, in [0, 1] (ddim only).")] = None,
    thresholding: Annotated[
        str | None, typer.Option(help="Keep x0 in [-1, 1]: clip (default), dynamic (Imagen) or none.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sample i uses the noise of (seed, i): same seed, same images.")] = 0,
    nrow: Annotated[int, typer.Option(help="Images per row of the grid.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per network batch (does not change the images).")] = 256,
    mixed_precision: Annotated[
        str,
        typer.Option(help="no, or bf16: the network under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX)."),
    ] = "no",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also save every sample as its own PNG in this new folder: with labels (--per-class, --labels) as "
            "OUT_DIR/<class name>/<index>.png, an ImageFolder that `train --dataset OUT_DIR` reads with its labels."
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Sample a trained model and save a PNG grid (with the settings in the PNG's metadata)."""
    from .images import save_grid
    from .pipeline import Pipeline, write_class_grid
    from .tasks.distributed_sampling import world_size

    def run() -> None:
        if out_dir is not None:
            if world_size() > 1:
                _fail("--out-dir is not supported when sampling with several processes; run one process.")
            from .tasks import check_empty_folder

            check_empty_folder(out_dir)  # before sampling, not after
        pipe = Pipeline.load(model)
        options = {"eta": eta} if eta is not None else {}
        interval = _parse_floats("--guidance-interval", guidance_interval, 2)
        image = _read_image(cond_image, pipe.config.network.cond_channels or 1) if cond_image is not None else None
        kw = dict(
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            guidance=guidance,
            seed=seed,
            thresholding=thresholding,
            batch_size=batch_size,
            progress=progress,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cond_image=image,
            guidance_rescale=guidance_rescale,
            guidance_interval=interval,
            classifier_scale=classifier_scale,
            **options,
        )
        lab = _parse_labels(labels)
        meta = {
            "model": str(model),
            "sampler": sampler or pipe.config.sample.sampler,
            "steps": str(steps or pipe.config.sample.steps),
            "seed": str(seed),
            "guidance": str(pipe.config.sample.guidance if guidance is None else guidance),
            "options": json.dumps(options),
        }
        extra = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "cond_image": str(cond_image) if cond_image is not None else None,
            "guidance_rescale": str(guidance_rescale) if guidance_rescale else None,
            "guidance_interval": guidance_interval,
            "classifier_scale": str(classifier_scale) if classifier_scale else None,
            "mixed_precision": mixed_precision if mixed_precision != "no" else None,
        }
        meta.update({k: v for k, v in extra.items() if v is not None})
        if per_class is not None:
            if per_class <= 0:
                _fail(f"--per-class={per_class} must be a positive integer.")
            if world_size() > 1:
                k = pipe.config.network.num_classes
                every = [c for c in range(k) for _ in range(per_class)] if k else None
                names = (pipe.config.data.class_names or [str(c) for c in range(k)]) if k else None
                grid = {"nrow": per_class, "row_labels": names, "scale": 2, "metadata": meta}
                _sample_distributed(pipe, out, len(every) if every else per_class**2, every, grid, kw)
                return
            images = write_class_grid(pipe, out, per_class=per_class, metadata=meta, **kw)
            k = pipe.config.network.num_classes
            if out_dir is not None:
                every = [c for c in range(k) for _ in range(per_class)] if k else None
                _write_sample_folder(images, out_dir, every, pipe.config.data.class_names)
        else:
            if lab is not None and len(lab) == 1 and num_samples:
                lab = lab * num_samples
            n = num_samples if lab is None else len(lab)
            if n is None:
                n = 16
            if pipe.config.network.kind == "mlp":
                _fail("this is a point model (MLP); sample it from Python with Pipeline.sample.")
            meta["labels"] = ",".join(map(str, lab)) if lab else ""
            if world_size() > 1:
                _sample_distributed(pipe, out, n, lab, {"nrow": min(nrow, n), "scale": 2, "metadata": meta}, kw)
                return
            images = pipe.sample(n, labels=lab, **kw)
            save_grid(images, out, nrow=min(nrow, n), scale=2, metadata=meta)
            if out_dir is not None:
                _write_sample_folder(images, out_dir, lab, pipe.config.data.class_names)
        typer.echo(f"wrote {out}")

    if mixed_precision not in ("no", "bf16"):
        _fail(f"--mixed-precision={mixed_precision!r} is not known for sampling; expected no or bf16.")
    with _bf16_autocast(mixed_precision == "bf16"):
        _run(run)


@app.command("train-classifier")
def train_classifier_command(
    model: Annotated[Path, typer.Argument(help="A class-conditional or unconditional model folder to guide.")],
    dataset: Annotated[
        str | None, typer.Option(help="Labelled data (default: the model's own dataset, train split).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    progress: Progress = True,
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

    _run(run)


@app.command("train-autoencoder")
def train_autoencoder(
    dataset: Annotated[
        str, typer.Option(help="'digits' (embedded), 'mnist:<folder>', 'cifar10:<folder>', or an image folder.")
    ] = "digits",
    out: Annotated[Path, typer.Option(help="Output folder: the autoencoder, checkpoints/, samples/, tensorboard/.")] = (
        Path("runs/autoencoder")
    ),
    image_size: Annotated[int, typer.Option(help="Train at this square size (digits: 8x8 upsampled).")] = 16,
    channels: Annotated[int | None, typer.Option(help="1 grayscale or 3 RGB; default: the dataset's own.")] = None,
    latent_channels: Annotated[int, typer.Option(help="Channels of the latent (Stable Diffusion: 4).")] = 4,
    downsample_factor: Annotated[
        int, typer.Option(help="Latents are this many times smaller in height and width: 1, 2, 4 or 8.")
    ] = 2,
    base_channels: Annotated[int, typer.Option(help="Width of the first level (doubled at every further one).")] = 32,
    num_res_blocks: Annotated[int, typer.Option(help="Residual blocks per level.")] = 1,
    reconstruction_loss: Annotated[str, typer.Option(help="l1 or l2.")] = "l1",
    kl_weight: Annotated[float, typer.Option(help="Weight of the KL term per pixel (Stable Diffusion: 1e-6).")] = 1e-6,
    steps: Annotated[int, typer.Option(help="Optimisation steps (the LR schedule's length).")] = 1000,
    minutes: Annotated[float | None, typer.Option(help="Stop early after this many minutes (and save).")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split across processes).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 1e-3,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the weights used to encode and decode.")] = 0.999,
    sample_every: Annotated[int, typer.Option(help="Write a reconstruction grid every N steps (0: never).")] = 1000,
    checkpoint_every: Annotated[
        int, typer.Option(help="Write a checkpoint every N steps (0: only at the end).")
    ] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random draw of the run.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    progress: Progress = True,
) -> None:
    """Train the autoencoder of a latent diffusion model (then: train --autoencoder OUT); writes OUT/config.json,
    model.safetensors, ema.safetensors and reconstructions.png."""
    from .config import AutoencoderConfig, AutoencoderNetworkConfig, AutoencoderTrainConfig, DataConfig
    from .training.autoencoder import AutoencoderTrainer, reconstruction_psnr

    def build() -> None:
        if downsample_factor not in (1, 2, 4, 8):
            _fail(f"--downsample-factor={downsample_factor} must be 1, 2, 4 or 8.")
        levels = downsample_factor.bit_length()  # 1 -> 1 level, 2 -> 2, 4 -> 3, 8 -> 4
        config = AutoencoderConfig(
            network=AutoencoderNetworkConfig(
                latent_channels=latent_channels,
                base_channels=base_channels,
                channel_mults=[1] + [2] * (levels - 1),
                num_res_blocks=num_res_blocks,
            ),
            data=DataConfig(dataset=dataset, image_size=image_size, channels=channels),
            train=AutoencoderTrainConfig(
                steps=steps,
                minutes=minutes,
                batch_size=batch_size,
                lr=lr,
                ema_decay=ema_decay,
                reconstruction_loss=reconstruction_loss,
                kl_weight=kl_weight,
                sample_every=sample_every,
                checkpoint_every=checkpoint_every,
                seed=seed,
            ),
        )
        trainer = AutoencoderTrainer(config, out, resume=resume, progress=progress, cpu=cpu)
        autoencoder = trainer.train()
        if trainer.accelerator.is_main_process:
            value = reconstruction_psnr(autoencoder, trainer.data.x[:1024].to(autoencoder.device))
            typer.echo(
                f"autoencoder written to {out}/ (reconstructions: {out / 'reconstructions.png'}; "
                f"PSNR on training images {value:.1f} dB)"
            )

    _run(build)


@app.command()
def evaluate(
    model: ModelFolder,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: fid, kid, pr (precision/recall), dc (density/coverage), bpd (bits/dim, ODE), "
            "vlb (DDPM bound); points: swd, mmd, true_nll, nll. Default: fid,kid,pr,dc (points: swd,mmd,nll)."
        ),
    ] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Samples to generate.")] = 1000,
    sampler: Annotated[str | None, typer.Option(help="Sampler (default: the model's), as `sample` takes it.")] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default: the model's).")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance w (default: the model's); labels are balanced.")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Feature network: classifier (trained on the model's labelled dataset, cached), inception "
            "(the FID network; needs --inception-weights) or pixels. Default: classifier if labelled, else pixels."
        ),
    ] = None,
    inception_weights: Annotated[
        Path | None,
        typer.Option(help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors); nothing downloads."),
    ] = None,
    num_real: Annotated[
        int | None, typer.Option(help="Use at most this many real images (default: the whole test split).")
    ] = None,
    bpd_images: Annotated[int, typer.Option(help="Real images scored by bpd and vlb.")] = 128,
    probe: Annotated[str, typer.Option(help="bpd trace estimator: rademacher, gaussian or exact.")] = "rademacher",
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the likelihood ODE (RK45).")] = 1e-5,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the likelihood ODE (RK45).")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of the samples and of every random draw.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Sampling and feature batch size (results do not change).")] = 256,
    out: Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Score a trained model against its dataset's held-out data; prints a markdown table (and writes JSON)."""
    from .evaluation import evaluate_model, format_results
    from .io import save_json
    from .pipeline import Pipeline

    def run() -> None:
        pipe = Pipeline.load(model)
        result = evaluate_model(
            pipe,
            metrics,
            num_samples=num_samples,
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            features=features,
            inception_weights=str(inception_weights) if inception_weights is not None else None,
            seed=seed,
            batch_size=batch_size,
            num_real=num_real,
            bpd_images=bpd_images,
            probe=probe,
            rtol=rtol,
            atol=atol,
            progress=progress,
            log=lambda msg: typer.echo(msg, err=True),
        )
        result = {"model": str(model), **result}
        typer.echo(format_results(result))
        if out is not None:
            save_json(result, out)
            typer.echo(f"wrote {out}", err=True)

    _run(run)


def _read_task_image(pipe: Any, path: Path, what: str = "--image") -> Any:
    """An image file as a (1, C, H, W) tensor in [0, 1], checked against the model's image shape."""
    from .tasks import check_images, read_image

    try:
        return check_images(pipe, read_image(_existing(path, what))[None])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _conditioning(prompt: str | None) -> dict[str, Any]:
    return {"prompt": prompt} if prompt is not None else {}


def _task_meta(model: Path, **settings: Any) -> dict[str, str]:
    return {"model": str(model), **{k: str(v) for k, v in settings.items() if v is not None}}


@app.command()
def inpaint(
    model: ModelFolder,
    image: Annotated[Path, typer.Option(help="The image to complete: a PNG of the model's size and channels.")],
    out: Annotated[Path, typer.Option(help="Output PNG (the image's size).")] = Path("inpainted.png"),
    mask: Annotated[
        Path | None,
        typer.Option(help="Mask PNG of the image's size: WHITE = fill (generate), BLACK = keep (kept exactly)."),
    ] = None,
    rect: Annotated[
        str | None, typer.Option(help="Fill this rectangle instead of a mask: x0,y0,x1,y1 in pixels (x1, y1 excluded).")
    ] = None,
    outpaint: Annotated[
        str | None,
        typer.Option(help="Outpaint: extend the image by left,top,right,bottom pixels and fill the new border."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="repaint (RePaint, with resampling jumps) or replace (the replacement method).")
    ] = "repaint",
    label: Annotated[int | None, typer.Option(help="Class label to fill with (default: unconditional).")] = None,
    prompt: Prompt = None,
    guidance: Guidance = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default: the model's).")] = None,
    jump_length: Annotated[int, typer.Option(help="RePaint: levels of each jump back up (j).")] = 10,
    jump_n_sample: Annotated[int, typer.Option(help="RePaint: passes through each jump's levels (r).")] = 10,
    sampler: Annotated[str, typer.Option(help="replace: the sampler to run (any of `sample --sampler`).")] = "ddpm",
    reconstruction_guidance: Annotated[
        float, typer.Option(help="replace: weight w_r of reconstruction guidance (Ho et al. 2022), e.g. 16; 0 = off.")
    ] = 0.0,
    seed: ImageSeed = 0,
    progress: Progress = True,
) -> None:
    """Fill part of an image (inpainting) or extend it (outpainting); the known pixels are kept exactly.

    Give exactly one of --mask (white = fill, black = keep), --rect or --outpaint.
    """
    from .pipeline import Pipeline
    from .tasks import check_images, outpaint_canvas, read_image, read_mask, rect_mask, save_image
    from .tasks import inpaint as inpaint_images

    def run() -> None:
        given = [name for name, v in (("--mask", mask), ("--rect", rect), ("--outpaint", outpaint)) if v is not None]
        if len(given) != 1:
            _fail(f"give exactly one of --mask, --rect or --outpaint (got {', '.join(given) or 'none'}).")
        pipe = Pipeline.load(model)
        if outpaint is not None:
            pad = _parse_ints("--outpaint", outpaint, 4)
            canvas, fill = outpaint_canvas(read_image(_existing(image, "--image"))[None], pad)
            try:
                images = check_images(pipe, canvas)
            except ValueError as err:
                raise ValueError(f"{image} extended by --outpaint {outpaint}: {err}") from None
        else:
            images = _read_task_image(pipe, image)
            h, w = images.shape[-2:]
            if rect is not None:
                fill = rect_mask(h, w, _parse_ints("--rect", rect, 4))
            else:
                fill = read_mask(_existing(mask, "--mask"))
        result = inpaint_images(
            pipe,
            images,
            fill,
            method=method,
            labels=None if label is None else [label],
            guidance=guidance,
            steps=steps,
            jump_length=jump_length,
            jump_n_sample=jump_n_sample,
            sampler=sampler,
            reconstruction_guidance=reconstruction_guidance,
            seed=seed,
            progress=progress,
            **_conditioning(prompt),
        )
        meta = _task_meta(model, task="inpaint", method=method, label=label, prompt=prompt, seed=seed, steps=steps)
        save_image(result[0], out, meta)
        typer.echo(f"wrote {out}")

    _run(run)


def _parse_ints(option: str, text: str, count: int) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        _fail(f"{option}={text!r} must be {count} comma-separated integers.")
    return values


def _existing(path: Path | None, option: str) -> Path:
    if path is None or not path.is_file():
        _fail(f"{option} {path} does not exist; expected an image file.")
    return path  # type: ignore[return-value]


@app.command()
def img2img(
    model: ModelFolder,
    image: Annotated[Path, typer.Option(help="The input image: a PNG of the model's size and channels.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")] = Path("img2img.png"),
    strength: Annotated[
        float, typer.Option(help="In (0, 1]: how far to noise the input (near 0 keeps it, 1 ignores it).")
    ] = 0.6,
    label: Annotated[int | None, typer.Option(help="Class label to steer towards (default: unconditional).")] = None,
    prompt: Prompt = None,
    guidance: Guidance = None,
    sampler: Annotated[str | None, typer.Option(help="Any of `sample --sampler` (default: the model's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Steps of a full run; strength s runs about s * steps.")] = None,
    seed: ImageSeed = 0,
    progress: Progress = True,
) -> None:
    """Image-to-image (SDEdit): noise the input to --strength and denoise it, optionally towards --label."""
    from .pipeline import Pipeline
    from .tasks import check_strength, save_image
    from .tasks import img2img as img2img_images

    def run() -> None:
        check_strength(strength)
        pipe = Pipeline.load(model)
        images = _read_task_image(pipe, image)
        result = img2img_images(
            pipe,
            images,
            strength,
            labels=None if label is None else [label],
            guidance=guidance,
            sampler=sampler,
            steps=steps,
            seed=seed,
            progress=progress,
            **_conditioning(prompt),
        )
        save_image(result[0], out, _task_meta(model, task="img2img", strength=strength, label=label, seed=seed))
        typer.echo(f"wrote {out}")

    _run(run)


@app.command()
def denoise(
    model: Annotated[Path, typer.Argument(help="A pixel-space model folder, e.g. runs/digits.")],
    image: Annotated[Path, typer.Option(help="The noisy image: a PNG of the model's size and channels.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")] = Path("denoised.png"),
    sigma: Annotated[
        str, typer.Option(help="Noise std in pixel units (images in [0, 1]), e.g. 0.1, or 'auto' to estimate it.")
    ] = "auto",
    mode: Annotated[
        str, typer.Option(help="mean (posterior mean: one network call, smoothest) or sample (a posterior draw).")
    ] = "mean",
    sampler: Annotated[str, typer.Option(help="mode sample: a stochastic sampler, e.g. ddpm.")] = "ddpm",
    steps: Annotated[int | None, typer.Option(help="mode sample: steps of a full run (default: the model's).")] = None,
    label: Annotated[int | None, typer.Option(help="Class label of the image, if known.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise (mode sample).")] = 0,
) -> None:
    """Denoise an image: map its noise level to the process's time and run the reverse process from there."""
    from .pipeline import Pipeline
    from .tasks import denoise as denoise_images
    from .tasks import estimate_noise_sigma, save_image

    def run() -> None:
        if sigma != "auto":
            try:
                level: float | str = float(sigma)
            except ValueError:
                _fail(f"--sigma={sigma!r} must be a number in pixel units (images in [0, 1]), e.g. 0.1, or 'auto'.")
        else:
            level = "auto"
        pipe = Pipeline.load(model)
        images = _read_task_image(pipe, image)
        if level == "auto":
            level = float(estimate_noise_sigma(images)[0])
            typer.echo(f"estimated noise sigma = {level:.4f} (pixel units)")
        result = denoise_images(
            pipe,
            images,
            level,
            mode=mode,
            sampler=sampler,
            steps=steps,
            labels=None if label is None else [label],
            seed=seed,
        )
        save_image(result[0], out, _task_meta(model, task="denoise", sigma=level, mode=mode, seed=seed))
        typer.echo(f"wrote {out}")

    _run(run)


@app.command()
def anomaly(
    model: Annotated[Path, typer.Argument(help="A model folder trained on normal images.")],
    images: Annotated[Path, typer.Option(help="Folder of PNG/JPEG images (flat or in class subfolders) to score.")],
    out: Annotated[Path, typer.Option(help="Output CSV: rank,score,image, most anomalous first.")] = Path("scores.csv"),
    method: Annotated[
        str,
        typer.Option(
            help="recon (noise to --t and reconstruct), denoising (ELBO-style denoising error) or likelihood "
            "(bits/dim through the probability-flow ODE; slow, pixel-space models)."
        ),
    ] = "recon",
    t: Annotated[float, typer.Option(help="recon: the noising time, in the process's time range.")] = 0.35,
    repeats: Annotated[int, typer.Option(help="recon: noise draws averaged per image.")] = 1,
    steps: Annotated[int | None, typer.Option(help="recon: steps of a full run (default: the model's).")] = None,
    num_times: Annotated[int, typer.Option(help="denoising: log-SNR levels averaged over.")] = 16,
    log_snr_range: Annotated[
        str | None, typer.Option(help="denoising: only log-SNR levels in low,high, e.g. -3,3 (default: all).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise: same seed, same scores.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per network batch (does not change the scores).")] = 256,
) -> None:
    """Score images by how badly the model explains them and write a ranked CSV (highest score = most anomalous)."""
    import torch

    from .data.folder import find_images
    from .pipeline import Pipeline
    from .tasks import anomaly_scores, write_scores_csv

    def run() -> None:
        files, _, _ = find_images(images)
        pipe = Pipeline.load(model)
        batch = torch.cat([_read_task_image(pipe, f, "image") for f in files])
        scores = anomaly_scores(
            pipe,
            batch,
            method,
            t=t,
            repeats=repeats,
            steps=steps,
            num_times=num_times,
            log_snr_range=_parse_floats("--log-snr-range", log_snr_range, 2),
            seed=seed,
            batch_size=batch_size,
        )
        names = [str(f.relative_to(images)) for f in files]
        write_scores_csv(names, scores, out)
        top = int(scores.argmax())
        typer.echo(f"wrote {out} ({len(files)} images; most anomalous: {names[top]}, score {float(scores[top]):.4g})")

    _run(run)


@app.command()
def serve(
    model: ModelFolder,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve a model over HTTP: the web page at http://HOST:PORT/, the API under /api (docs at /docs)."""

    def run() -> None:
        if not 0 < port < 65536:
            _fail(f"--port={port} must be a TCP port, 1..65535.")
        try:
            import uvicorn

            from .server import create_app
        except ImportError:
            _fail("serving needs FastAPI and uvicorn: pip install 'diffusionlab[server]'.")
        application = create_app(model)
        typer.echo(f"serving {model} at http://{host}:{port}/ (Ctrl-C stops)")
        uvicorn.run(application, host=host, port=port, log_level="warning")

    _run(run)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffusionlab")


if __name__ == "__main__":
    sys.exit(main())
