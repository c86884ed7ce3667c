"""The README's main job, measured: `diffusionlab train` on the digits in fp32 and in bf16, timed end to end.

    python bench/main_job.py --steps 3000 --out bench/out/main_job --table bench/results/main_job.md

For each precision it runs the README's training command (`--mixed-precision no|bf16`), and reports the wall
time, the smoothed training loss at the last step (TensorBoard's train/loss_smooth), and the share of samples the
digits classifier assigns to the asked label at guidance w = 1 and 2 (bench/digits_quality.py's measure). Then it
samples the fp32 model in fp32 and under bf16 autocast (`mixed_precision="bf16"`) with the same seeds and reports
their mean and largest absolute difference in [0, 1]. These are the README's "about eight minutes", "0.0720 at
step 3000", "99.6% / 100%" and "within 0.004" figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from digits_quality import evaluate  # noqa: E402

from diffusionlab.pipeline import Pipeline  # noqa: E402


def last_scalar(folder: Path, tag: str) -> float:
    """The last value of a TensorBoard scalar in a run's tensorboard/ folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return float(acc.Scalars(tag)[-1].value)


def cpu_name() -> str:
    """The CPU's model name and whether it has the bf16 units (AMX, AVX512-BF16) that make bf16 autocast fast."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    units = [u for u in ("amx_bf16", "avx512_bf16") if f" {u}" in info]
    return f"{name or platform.machine()} ({', '.join(units) or 'no bf16 units'})"


def train(out: Path, precision: str, steps: int) -> float:
    """Run the README's training command; return its wall time in seconds."""
    cmd = [sys.executable, "-m", "diffusionlab.cli", "train", "--out", str(out), "--steps", str(steps)]
    cmd += ["--mixed-precision", precision, "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def bf16_sampling_gap(model: Path, n: int) -> tuple[float, float]:
    """Mean and largest |bf16 - fp32| of n samples of a model (same seeds, default sampler), images in [0, 1]."""
    pipe = Pipeline.load(model)
    labels = [i % 10 for i in range(n)]
    fp32 = pipe.sample(labels=labels, seed=0)
    bf16 = pipe.sample(labels=labels, seed=0, mixed_precision="bf16")
    gap = (bf16 - fp32).abs()
    return float(gap.mean()), float(gap.max())


def main(argv: list[str] | None = None) -> int:
    """Train, measure, print the table (and write it to --table)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", type=Path, default=Path("bench/out/main_job"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--table", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    rows = [
        "| precision | wall time | loss_smooth at last step | accuracy w = 1 | accuracy w = 2 |",
        "|---|---|---|---|---|",
    ]
    for precision in ("no", "bf16"):
        folder = args.out / ("fp32" if precision == "no" else "bf16")
        seconds = train(folder, precision, args.steps)
        quality = evaluate(
            argparse.Namespace(
                model=str(folder),
                per_class=args.per_class,
                sampler="ddim",
                steps=50,
                guidance=[1.0, 2.0],
                seed=0,
                batch_size=256,
                cache_dir=None,
            )
        )
        acc = [r["overall"] for r in quality["rows"]]
        loss = last_scalar(folder, "train/loss_smooth")
        rows.append(f"| {precision} | {seconds / 60:.1f} min | {loss:.4f} | {acc[0]:.1%} | {acc[1]:.1%} |")
    mean_gap, max_gap = bf16_sampling_gap(args.out / "fp32", 100)
    head = (
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads: `python bench/main_job.py --steps {args.steps}`"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    tail = (
        f"Load average at the end (1, 5, 15 min): {load}. "
        f"bf16 vs fp32 sampling of the fp32 model (100 samples, ddim 50): mean |diff| {mean_gap:.4f}, max {max_gap:.4f}"
    )
    table = "\n".join([head, "", *rows, "", tail]) + "\n"
    print(table)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
