"""The README's main job, measured: `diffusionlab train` with the 0.1 default recipe and with today's, back to back.

    python bench/main_job.py --out bench/out/main_job --table bench/results/main_job.md

Runs the README's training command twice in a row on the same machine: once with the flags that restore the
0.1 default (``OLD_DEFAULT``: the small UNet, 3,000 steps, fp32, EMA 0.999 from step 200) and once as the README
gives it (today's defaults). For each it reports the wall time of the whole command, the training time (the
TensorBoard wall-clock span of the train/loss scalars, scaled to every step), and the final evaluation the command
prints (eval/step-N.json: the digits classifier's accuracy on 1,000 samples at guidance 1, their FID in its features
and the FID of as many real training images, both against the test split), and whether that reaches the bar of
issue 14 (accuracy >= 97%, FID <= 1.5 x FID of real images). Then it samples today's model in fp32 and under
bf16 autocast with the same seeds and reports their largest absolute difference in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusionlab.pipeline import Pipeline

# the flags that give the 0.1 default recipe under today's defaults
OLD_DEFAULT = [
    "--model-size", "small", "--steps", "3000", "--mixed-precision", "no", "--ema-decay", "0.999", "--ema-start", "200",
]  # fmt: skip
BAR_ACCURACY, BAR_FID_RATIO = 0.97, 1.5


def cpu_name() -> str:
    """The CPU's model name and whether it has the bf16 units (AMX, AVX512-BF16) that make bf16 autocast fast."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    units = [u for u in ("amx_bf16", "avx512_bf16") if f" {u}" in info]
    return f"{name or platform.machine()} ({', '.join(units) or 'no bf16 units'})"


def training_seconds(folder: Path) -> float:
    """Seconds the run spent training: the wall-clock span of its train/loss scalars, scaled from the logged
    steps to all of them (the first is logged after ``log_every`` steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    points = acc.Scalars("train/loss")
    first, last = points[0], points[-1]
    return (last.wall_time - first.wall_time) * last.step / (last.step - first.step)


def final_evaluation(folder: Path) -> dict[str, float]:
    """The metrics of the run's last evaluation (the one the command prints at the end)."""
    last = sorted((folder / "eval").glob("step-*.json"))[-1]
    return json.loads(last.read_text())["metrics"]


def train(out: Path, flags: list[str]) -> float:
    """Run the README's training command with ``flags``; return its wall time in seconds."""
    cmd = [sys.executable, "-m", "diffusionlab.cli", "train", "--out", str(out), "--no-progress", *flags]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def bf16_sampling_gap(model: Path, n: int) -> float:
    """Largest |bf16 - fp32| of n samples of a model (same seeds, default sampler), images in [0, 1]."""
    pipe = Pipeline.load(model)
    labels = [i % 10 for i in range(n)]
    fp32 = pipe.sample(labels=labels, seed=0, mixed_precision="no")
    bf16 = pipe.sample(labels=labels, seed=0, mixed_precision="bf16")
    return float((bf16 - fp32).abs().max())


def main(argv: list[str] | None = None) -> int:
    """Train both recipes, measure, print the table (and write it to --table)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/out/main_job"))
    p.add_argument("--table", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument("--only", choices=["old", "new"], default=None, help="run one recipe (the other's row is skipped)")
    args = p.parse_args(argv)
    rows = [
        "| recipe | whole command | training | steps | precision | accuracy w = 1 | FID | FID real images | bar |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    seconds: dict[str, float] = {}
    for name, flags in (("old", OLD_DEFAULT), ("new", [])):
        if args.only not in (None, name):
            continue
        folder = args.out / name
        wall = train(folder, flags)
        seconds[name] = training_seconds(folder)
        m = final_evaluation(folder)
        config = json.loads((folder / "config.json").read_text())["train"]
        bar = m["accuracy"] >= BAR_ACCURACY and m["fid"] <= BAR_FID_RATIO * m["fid_real"]
        label = "0.1 default" if name == "old" else "today's default"
        rows.append(
            f"| {label} | {wall / 60:.2f} min | {seconds[name] / 60:.2f} min | {config['steps']} | "
            f"{config['mixed_precision']} | {m['accuracy']:.1%} | {m['fid']:.3f} | {m['fid_real']:.3f} | "
            f"{'reached' if bar else 'not reached'} |"
        )
    head = (
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}: "
        "`python bench/main_job.py` (old and new back to back)"
    )
    tail = [f"Load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}."]
    if len(seconds) == 2:
        tail.append(f"Training time, new / old: {seconds['new'] / seconds['old']:.1%}.")
    if "new" in seconds:
        gap = bf16_sampling_gap(args.out / "new", 100)
        tail.append(f"bf16 vs fp32 sampling of today's model (100 samples, default sampler): max |diff| {gap:.4f}.")
    table = "\n".join([head, "", *rows, "", *tail]) + "\n"
    print(table)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
