"""Anomaly detection with a diffusion model: a model of the digits 0-8 scores held-out 0-8 against held-out 9s.

    OMP_NUM_THREADS=1 python bench/anomaly.py --steps 2000 --recon-t 0.3 0.5 --repeats 1 4

The model (unconditional, 'small' UNet, 16x16, trained on the train split's 0-8 only) is trained once and
cached under bench/out/anomaly-model-<steps>/, so reruns skip training (``--train-only`` just trains). Held-out
test digits 0-8 are the normal class, held-out 9s the anomalies. Each scoring method of
``diffusionlab.tasks.anomaly`` ranks them and the table gives the AUROC (sklearn ``roc_auc_score``, 9 = positive):

- recon: AnoDDPM-style (Wyatt et al. 2022) partial noising to time t and reconstruction with DDIM, score = mean
  squared pixel error, averaged over ``repeats`` noise draws; one row per (t, repeats).
- denoising: the model's average denoising error over a fixed log-SNR grid of times and fixed noises (an ELBO
  proxy, VDM's continuous-time loss), over the whole log-SNR range or a band of mid noise levels; one row per
  setting.
- likelihood (``--methods ... likelihood``): bits/dim through the probability-flow ODE (slow).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.data import load_digits_dataset
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks import anomaly_scores
from diffusionlab.training import Trainer, TrainingData

ANOMALY = 9


# the recipe the README's anomaly figures were measured with (the 0.1 defaults, before issue 14)
RECIPE_0_1 = {"ema_decay": 0.999, "ema_start": 200, "mixed_precision": "no", "final_eval": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps of the 0-8 model (default 2000)")
    p.add_argument("--out", default="bench/out", help="where the trained model is cached (default bench/out)")
    p.add_argument("--train-only", action="store_true", help="train (or find) the cached model, then stop")
    p.add_argument("--recon-t", type=float, nargs="+", default=[0.35, 0.5, 0.65], help="noising times of recon")
    p.add_argument("--repeats", type=int, nargs="+", default=[1, 8], help="noise draws averaged by recon")
    p.add_argument(
        "--recon-steps", type=int, default=20, help="DDIM steps of a full run; a run from t takes those below t"
    )
    p.add_argument("--num-times", type=int, nargs="+", default=[32, 64], help="levels of the denoising score")
    p.add_argument("--band", type=float, nargs=2, default=[-3.0, 3.0], help="log-SNR band of the banded score")
    p.add_argument("--band-num-times", type=int, nargs="+", default=[16, 32], help="levels of the banded score")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["recon", "denoising"],
        choices=["recon", "denoising", "likelihood"],
        help="scoring methods to run (likelihood, bits/dim through the ODE, is slow: several minutes)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed of the scores (default 0)")
    return p.parse_args(argv)


def train_model(folder: Path, steps: int) -> Pipeline:
    """Train an unconditional digits model on the train split's 0-8, or load it if cached in ``folder``."""
    if (folder / "config.json").is_file():
        return Pipeline.load(folder)
    train = load_digits_dataset(16, split="train")
    keep = train.labels != ANOMALY
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["small"], num_classes=None),
        data=DataConfig(dataset="digits", image_size=16, channels=1),
        train=TrainConfig(steps=steps, batch_size=64, sample_every=0, checkpoint_every=0, seed=0, **RECIPE_0_1),
    )
    data = TrainingData(train.images[keep], None, None)
    trainer = Trainer(config, folder, data=data, progress=True, cpu=True, track=False)
    return trainer.train()


def main(argv: list[str] | None = None) -> int:
    """Train or load the model, score the held-out digits with every method, print the AUROC table."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(args.out) / f"anomaly-model-{args.steps}"
    started = time.perf_counter()
    pipe = train_model(folder, args.steps)
    print(f"model {folder} ready ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    if args.train_only:
        return 0
    test = load_digits_dataset(16, split="test")
    images = (test.images + 1) / 2
    is_anomaly = (test.labels == ANOMALY).numpy()
    rows = []

    def score(method: str, setting: str, **kw: object) -> None:
        start = time.perf_counter()
        scores = anomaly_scores(pipe, images, method=method, seed=args.seed, **kw)
        auroc = roc_auc_score(is_anomaly, scores.numpy())
        rows.append((method, setting, auroc, time.perf_counter() - start))
        print(f"{method}, {setting}: AUROC {auroc:.3f}", file=sys.stderr, flush=True)

    if "recon" in args.methods:
        for t in args.recon_t:
            for repeats in args.repeats:
                score("recon", f"t={t:g}, repeats={repeats}", t=t, repeats=repeats, steps=args.recon_steps)
    if "denoising" in args.methods:
        lo, hi = args.band
        for k in args.num_times:
            score("denoising", f"{k} log-SNR levels, whole range (ELBO)", num_times=k)
        for k in args.band_num_times:
            score("denoising", f"{k} log-SNR levels in [{lo:g}, {hi:g}]", num_times=k, log_snr_range=(lo, hi))
    if "likelihood" in args.methods:
        score("likelihood", "bits/dim, probability-flow ODE, tolerance 1e-3", ode_tolerance=1e-3)
    print(
        f"model: unconditional small UNet, {args.steps} steps on train digits 0-8; "
        f"held-out: {int((~torch.from_numpy(is_anomaly)).sum())} normal (0-8), {int(is_anomaly.sum())} anomalies (9)\n"
    )
    print("| method | setting | AUROC | time |")
    print("| --- | --- | --- | --- |")
    for method, setting, auroc, seconds in rows:
        print(f"| {method} | {setting} | {auroc:.3f} | {seconds:.0f}s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
