"""Latent diffusion on the digits: how well does the autoencoder reconstruct, and does a diffusion model trained
in its latent space draw the digit it is asked for as often as the pixel model?

    OMP_NUM_THREADS=1 python bench/latent.py --json bench/out/latent/result.json
    python bench/latent.py --autoencoder runs/ae --model runs/latent   # evaluate given folders

Trains (once, then cached under --out) a KL autoencoder on the digits' train split (16x16 -> 2x8x8 latents) and a
class-conditional latent diffusion model with the same UNet, process and training recipe as runs/digits (fewer
steps), unless folders are given. Prints two markdown tables: the autoencoder's reconstruction PSNR on the
held-out test split (next to a bilinear down- and up-sampling by the same factor), and, per guidance scale, the
share of samples of each class that the digits classifier assigns to the conditioning label, for the latent model
and for the pixel model (``--pixel-model``; the same classifier, sampler, steps and seed as
bench/digits_quality.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusionlab.config import (
    MODEL_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    AutoencoderTrainConfig,
    DataConfig,
    LatentConfig,
    ModelConfig,
    NetworkConfig,
    TrainConfig,
)
from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import accuracy, digits_classifier, predict
from diffusionlab.io import CheckpointError, save_json
from diffusionlab.networks.autoencoder import Autoencoder
from diffusionlab.pipeline import Pipeline
from diffusionlab.training import Trainer
from diffusionlab.training.autoencoder import AutoencoderTrainer, psnr

DIGIT_CLASSES = 10
IMAGE_SIZE = 16


# the recipe the README's latent figures were measured with (the 0.1 defaults, before issue 14)
RECIPE_0_1 = {"ema_decay": 0.999, "ema_start": 200, "mixed_precision": "no", "final_eval": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/out/latent", help="cache folder of the trained models (default %(default)s)")
    p.add_argument("--autoencoder", default=None, help="evaluate this autoencoder folder instead of training one")
    p.add_argument("--model", default=None, help="evaluate this latent model folder instead of training one")
    p.add_argument("--pixel-model", default="runs/digits", help="pixel model to compare with ('' to skip)")
    p.add_argument("--ae-steps", type=int, default=600, help="autoencoder training steps (default %(default)s)")
    p.add_argument("--latent-channels", type=int, default=2, help="latent channels (default %(default)s)")
    p.add_argument("--downsample-factor", type=int, default=2, choices=(2, 4), help="latent size = 16 / this")
    p.add_argument("--steps", type=int, default=2000, help="latent model training steps (default %(default)s)")
    p.add_argument("--per-class", type=int, default=50, help="samples per class (default %(default)s)")
    p.add_argument("--sampler", default="ddim", help="sampler (default %(default)s)")
    p.add_argument("--sample-steps", type=int, default=50, help="sampler steps (default %(default)s)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0], help="guidance scales w")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    for name in ("ae_steps", "steps", "per_class", "sample_steps", "latent_channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_autoencoder(args: argparse.Namespace, out: Path) -> float:
    """Train the digits autoencoder into ``out``; returns the seconds it took."""
    levels = args.downsample_factor.bit_length()
    config = AutoencoderConfig(
        network=AutoencoderNetworkConfig(
            latent_channels=args.latent_channels, base_channels=16, channel_mults=[1] + [2] * (levels - 1)
        ),
        data=DataConfig(dataset="digits", image_size=IMAGE_SIZE),
        train=AutoencoderTrainConfig(
            steps=args.ae_steps, lr=2e-3, warmup_steps=50, ema_start=100, sample_every=0, checkpoint_every=0
        ),
    )
    start = time.perf_counter()
    AutoencoderTrainer(config, out, progress=False, track=False).train()
    return time.perf_counter() - start


def train_latent_model(args: argparse.Namespace, autoencoder: str, out: Path) -> float:
    """Train the class-conditional latent model into ``out`` with runs/digits' recipe; returns the seconds."""
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["small"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=IMAGE_SIZE),
        train=TrainConfig(steps=args.steps, sample_every=0, checkpoint_every=0, **RECIPE_0_1),
        latent=LatentConfig(autoencoder=autoencoder),
    )
    start = time.perf_counter()
    Trainer(config, out, progress=False, track=False).train()
    return time.perf_counter() - start


def ensure_models(args: argparse.Namespace) -> tuple[str, str, dict[str, float | None]]:
    """The autoencoder and latent model folders: given, cached under --out, or trained now."""
    out = Path(args.out)
    seconds: dict[str, float | None] = {"autoencoder": None, "model": None}
    ae = args.autoencoder or str(out / "autoencoder")
    if args.autoencoder is None and not (Path(ae) / "config.json").is_file():
        log(f"training the autoencoder ({args.ae_steps} steps) into {ae} ...")
        seconds["autoencoder"] = train_autoencoder(args, Path(ae))
    model = args.model or str(out / "model")
    if args.model is None and not (Path(model) / "config.json").is_file():
        log(f"training the latent model ({args.steps} steps) into {model} ...")
        seconds["model"] = train_latent_model(args, ae, Path(model))
    return ae, model, seconds


def reconstruction_rows(autoencoder: Autoencoder, test: torch.Tensor) -> list[dict]:
    """PSNR (dB, in [0, 1]) of the held-out images through the autoencoder and through bilinear resampling."""
    with torch.no_grad():
        recon = autoencoder.decode(autoencoder.encode(test)).clamp(-1, 1)
    f = autoencoder.downsample_factor
    small = F.interpolate(test, scale_factor=1 / f, mode="bilinear", antialias=True)
    bilinear = F.interpolate(small, size=test.shape[-2:], mode="bilinear").clamp(-1, 1)
    shape = autoencoder.latent_shape(tuple(test.shape[1:]))
    rows = []
    for name, images, dims in (
        (f"autoencoder ({shape[0]}x{shape[1]}x{shape[2]} latent)", recon, shape[0] * shape[1] * shape[2]),
        (f"bilinear down/up x{f} (1x{shape[1]}x{shape[2]})", bilinear, shape[1] * shape[2]),
    ):
        values = psnr((images + 1) / 2, (test + 1) / 2)
        rows.append(
            {
                "method": name,
                "numbers_per_image": dims,
                "psnr_mean": values.mean().item(),
                "psnr_min": values.min().item(),
            }
        )
    return rows


def guidance_rows(pipe: Pipeline, clf: torch.nn.Module, args: argparse.Namespace, name: str) -> list[dict]:
    """Per guidance scale: the share of each class's samples classified as the conditioning label."""
    labels = torch.arange(DIGIT_CLASSES).repeat_interleave(args.per_class)
    rows = []
    for w in args.guidance:
        log(f"{name}: sampling {len(labels)} images, {args.sampler} {args.sample_steps} steps, guidance {w}")
        start = time.perf_counter()
        images = pipe.sample(
            labels=labels.tolist(), sampler=args.sampler, steps=args.sample_steps, guidance=w, seed=args.seed
        )
        seconds = time.perf_counter() - start
        hit = predict(clf, images * 2 - 1) == labels
        per_class = hit.view(DIGIT_CLASSES, args.per_class).float().mean(dim=1)
        rows.append(
            {
                "model": name,
                "guidance": w,
                "per_class": [round(v, 4) for v in per_class.tolist()],
                "overall": hit.float().mean().item(),
                "seconds": seconds,
            }
        )
    return rows


def format_tables(result: dict) -> str:
    """Both tables as markdown."""
    lines = [
        f"Autoencoder reconstruction of the {result['test_images']} held-out test digits ({IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"PSNR in dB on [0, 1]):",
        "",
        "| method | numbers per image | mean PSNR | worst PSNR |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in result["reconstruction"]:
        lines.append(f"| {r['method']} | {r['numbers_per_image']} | {r['psnr_mean']:.2f} | {r['psnr_min']:.2f} |")
    lines += [
        "",
        f"Share of samples the digits classifier assigns to the asked class ({result['per_class']} per class, "
        f"{result['sampler']} {result['sample_steps']} steps, seed {result['seed']}; classifier test accuracy "
        f"{result['classifier_test_accuracy']:.3f}):",
        "",
        "| model | w | " + " | ".join(str(c) for c in range(DIGIT_CLASSES)) + " | overall | sampling |",
        "| --- | ---: | " + " | ".join("---:" for _ in range(DIGIT_CLASSES)) + " | ---: | ---: |",
    ]
    for r in result["quality"]:
        cells = " | ".join(f"{v:.2f}" for v in r["per_class"])
        lines.append(f"| {r['model']} | {r['guidance']:g} | {cells} | {r['overall']:.3f} | {r['seconds']:.0f} s |")
    t = result["train_seconds"]
    lines += [
        "",
        f"latent model: {result['model']} (scaling factor {result['scaling_factor']:.4f}, sample shape "
        f"{result['sample_shape']}); training seconds this run: autoencoder {t['autoencoder'] or 'cached'}, "
        f"latent model {t['model'] or 'cached'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train what is missing, evaluate, print the tables (and write JSON if asked)."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        ae_dir, model_dir, seconds = ensure_models(args)
        pipe = Pipeline.load(model_dir)
        if pipe.config.latent is None or pipe.config.network.num_classes != DIGIT_CLASSES:
            raise ValueError(f"{model_dir} is not a class-conditional latent digits model.")
        test = load_digits_dataset(IMAGE_SIZE, split="test")
        log("digits classifier (trained once, then cached) ...")
        clf = digits_classifier(IMAGE_SIZE)
        result = {
            "autoencoder": ae_dir,
            "model": model_dir,
            "scaling_factor": pipe.config.latent.scaling_factor,
            "sample_shape": list(pipe.sample_shape),
            "test_images": len(test),
            "classifier_test_accuracy": accuracy(clf, test.images, test.labels),
            "reconstruction": reconstruction_rows(Autoencoder.load(ae_dir), test.images),
            "per_class": args.per_class,
            "sampler": args.sampler,
            "sample_steps": args.sample_steps,
            "seed": args.seed,
            "train_seconds": {k: (round(v) if v is not None else None) for k, v in seconds.items()},
        }
        quality = guidance_rows(pipe, clf, args, "latent")
        if args.pixel_model:
            quality += guidance_rows(Pipeline.load(args.pixel_model), clf, args, "pixel")
        result["quality"] = quality
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_tables(result))
    if args.json:
        save_json(result, args.json)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
