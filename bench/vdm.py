"""VDM against the default fixed-schedule model on the digits: test-set bits/dim of 8-bit digits (issue 21).

    python bench/vdm.py --out bench/out/vdm --table bench/results/vdm.md

Trains two models with the README's recipe (the compact UNet, batch 64, lr 2e-3, ``--steps`` steps, bf16 where the
CPU has it) on the digits' train split, one after the other on the same machine: the default (cosine DDPM,
v-prediction, the denoising loss) and VDM (``--process vdm --parameterisation eps``: a learned monotone log-SNR
trained with the network on the continuous-time VLB, the schedule's shape by the variance-minimising gradient).
Then, on ``--images`` test digits rounded to 8 bits (the data space the evaluation uses): the continuous-time VLB
of both (``continuous_vlb``, ``--draws`` stratified times per image), DDPM's discrete VLB of the default model
(``ddpm_vlb``, its 1,000 steps) and the probability-flow ODE's bits/dim of both (``bits_per_dim``, uniformly
dequantised, Hutchinson with one Rademacher probe). Writes the table and a plot of the schedules (the learned
gamma(t) against its linear start and the cosine DDPM's -log SNR).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402

from diffusionlab.config import DiffusionConfig, ModelConfig, TrainConfig  # noqa: E402
from diffusionlab.data import load_dataset  # noqa: E402
from diffusionlab.evaluation.likelihood import bits_per_dim, continuous_vlb, ddpm_vlb  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.training import Trainer  # noqa: E402

QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}


def train(out: Path, steps: int, vdm: bool) -> float:
    """Train one model (unless ``out`` holds it); minutes of training (0 when reused)."""
    if (out / "config.json").is_file():
        return 0.0
    diffusion = DiffusionConfig(process={"name": "vdm"}, parameterisation="eps") if vdm else DiffusionConfig()
    config = ModelConfig(diffusion=diffusion, train=TrainConfig(steps=steps, **QUIET))
    began = time.perf_counter()
    Trainer(config, out, progress=False).train()
    return (time.perf_counter() - began) / 60


def mean_se(v: torch.Tensor) -> str:
    return f"{float(v.mean()):.3f} +- {float(v.std() / len(v) ** 0.5):.3f}"


def plot(pipes: dict[str, Pipeline], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusionlab.processes import LearnedVPProcess

    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    with torch.no_grad():
        for name, pipe in pipes.items():
            ax.plot(t, -pipe.process.log_snr(t.clamp(min=pipe.process.t_min)).float(), label=name)
        vdm = pipes["VDM (learned)"].config.diffusion.process
        ax.plot(t, -LearnedVPProcess(vdm.gamma_min, vdm.gamma_max).log_snr(t).float(), "--", label="VDM at its start")
    ax.set_xlabel("t")
    ax.set_ylabel("gamma(t) = -log SNR")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/out/vdm"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--draws", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    minutes = {
        "default": train(args.out / "default", args.steps, vdm=False),
        "vdm": train(args.out / "vdm", args.steps, vdm=True),
    }
    default, vdm = Pipeline.load(args.out / "default"), Pipeline.load(args.out / "vdm")
    test = load_dataset("digits", image_size=16, split="test")
    x = test.images[: args.images].float()
    rows = []
    began = time.perf_counter()
    for name, pipe in (("default (cosine DDPM, v)", default), ("VDM (learned schedule, eps)", vdm)):
        den = pipe.denoiser()
        cont = continuous_vlb(den, x, draws=args.draws)
        ode = bits_per_dim(den, x).bpd
        ddpm = ddpm_vlb(den, x).bpd if pipe.config.diffusion.process.name == "ddpm" else None
        rows.append((name, cont, ddpm, ode))
    eval_minutes = (time.perf_counter() - began) / 60
    plot({"default (cosine DDPM)": default, "VDM (learned)": vdm}, (args.table or Path("vdm.md")).with_suffix(".png"))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {args.threads} thread(s): "
        f"`python bench/vdm.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"Both models: the README's recipe (compact UNet, batch 64, lr 2e-3, {args.steps} steps) on the digits' train "
        f"split; training took {minutes['default']:.1f} min (default) and {minutes['vdm']:.1f} min (VDM), 0 if "
        f"reused. Bits/dim of {len(x)} test digits rounded to 8 bits (mean +- standard error); evaluation took "
        f"{eval_minutes:.1f} min.",
        "",
        "| model | continuous VLB (VDM eq. 17) | its diffusion / prior / reconstruction | DDPM VLB (1,000 steps) | "
        "ODE bits/dim |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cont, ddpm, ode in rows:
        means = (float(cont.diffusion.mean()), float(cont.prior.mean()), float(cont.decoder.mean()))
        parts = f"{means[0]:.3f} / {means[1]:.4f} / {means[2]:.3f}"
        ddpm_text = mean_se(ddpm) if ddpm is not None else "(not a discrete-time model)"
        lines.append(f"| {name} | {mean_se(cont.bpd)} | {parts} | {ddpm_text} | {mean_se(ode)} |")
    g = vdm.process.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))[0]
    lines += [
        "",
        f"The learned schedule's ends: gamma_0 = {float(g[0]):.2f}, gamma_1 = {float(g[1]):.2f} (started at "
        f"{vdm.config.diffusion.process.gamma_min:g}, {vdm.config.diffusion.process.gamma_max:g}); the plot beside "
        "this table shows gamma(t).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
