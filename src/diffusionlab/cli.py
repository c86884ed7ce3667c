"""The ``diffusionlab`` command line (floor 6): train and sample.

Every option here has the same name as the config field or API keyword it sets.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, sample and evaluate diffusion models. Run `diffusionlab COMMAND --help` for each command.",
    pretty_exceptions_enable=False,
)


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
            help="'digits' (embedded), 'mnist:<folder>', 'cifar10:<folder>', 'toy:<name>', or an image folder."
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
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random draw of the run.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a diffusion model; writes OUT/config.json, model.safetensors, ema.safetensors and samples.png."""
    from .config import MODEL_SIZES, DataConfig, DiffusionConfig, ModelConfig, NetworkConfig, TrainConfig
    from .processes import make_process
    from .training import Trainer

    def build() -> None:
        proc = {"name": process, **({"schedule": schedule} if process == "ddpm" else {})}
        make_process(**proc)  # validate early, with a clear message
        config = ModelConfig(
            network=NetworkConfig(**MODEL_SIZES[model_size.value], num_classes=0 if conditional else None),
            diffusion=DiffusionConfig(process=proc, parameterisation=parameterisation),
            data=DataConfig(dataset=dataset, image_size=image_size, channels=channels),
            train=TrainConfig(
                steps=steps,
                minutes=minutes,
                batch_size=batch_size,
                lr=lr,
                lr_schedule=lr_schedule,
                ema_decay=ema_decay,
                label_dropout=label_dropout,
                weighting=weighting,
                time_sampling=time_sampling,
                mixed_precision=mixed_precision,
                sample_every=sample_every,
                checkpoint_every=checkpoint_every,
                seed=seed,
            ),
        )
        trainer = Trainer(config, out, resume=resume, progress=progress, cpu=cpu)
        trainer.train()
        if trainer.accelerator.is_main_process:
            typer.echo(f"model written to {out}/ (samples: {out / 'samples.png'})")

    _run(build)


def _parse_labels(labels: str | None) -> list[int] | None:
    if labels is None:
        return None
    try:
        return [int(v) for v in labels.replace(" ", "").split(",") if v != ""]
    except ValueError:
        _fail(f"--labels={labels!r} must be comma-separated class indices, e.g. 3,3,7.")
    return None


@app.command()
def sample(
    model: Annotated[Path, typer.Argument(help="A model folder (config.json + *.safetensors), e.g. runs/digits.")],
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
    guidance: Annotated[
        float | None,
        typer.Option(help="Classifier-free guidance w: 0 unconditional, 1 conditional, >1 stronger."),
    ] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM noise, in [0, 1] (ddim only).")] = None,
    thresholding: Annotated[
        str | None, typer.Option(help="Keep x0 in [-1, 1]: clip (default), dynamic (Imagen) or none.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sample i uses the noise of (seed, i): same seed, same images.")] = 0,
    nrow: Annotated[int, typer.Option(help="Images per row of the grid.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per network batch (does not change the images).")] = 256,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sample a trained model and save a PNG grid (with the settings in the PNG's metadata)."""
    from .images import save_grid
    from .pipeline import Pipeline

    def run() -> None:
        pipe = Pipeline.load(model)
        options = {"eta": eta} if eta is not None else {}
        kw = dict(
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            guidance=guidance,
            seed=seed,
            thresholding=thresholding,
            batch_size=batch_size,
            progress=progress,
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
        if per_class is not None:
            if per_class <= 0:
                _fail(f"--per-class={per_class} must be a positive integer.")
            pipe.sample_class_grid(out, per_class=per_class, metadata=meta, **kw)
        else:
            if lab is not None and len(lab) == 1 and num_samples:
                lab = lab * num_samples
            n = num_samples if lab is None else len(lab)
            if n is None:
                n = 16
            images = pipe.sample(n, labels=lab, **kw)
            if pipe.config.network.kind == "mlp":
                _fail("this is a point model (MLP); sample it from Python with Pipeline.sample.")
            meta["labels"] = ",".join(map(str, lab)) if lab else ""
            save_grid(images, out, nrow=min(nrow, n), scale=2, metadata=meta)
        typer.echo(f"wrote {out}")

    _run(run)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffusionlab")


if __name__ == "__main__":
    sys.exit(main())
