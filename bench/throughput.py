"""Training steps/s and sampling images/s of our UNet against diffusers' UNet2DModel of the same size, in one run.

    python bench/throughput.py --config small --precision fp32 bf16 --rounds 7
    python bench/throughput.py --config small base --rounds 7 --json bench/out/throughput.json
    python bench/throughput.py --config small --variants channels_last compile --rounds 5

Both sides build the same architecture (levels, residual blocks, attention levels, AdaGN scale-shift, one
attention block in the middle) from ``config.MODEL_SIZES``, class-conditional with 10 classes; their parameter
counts are printed. Training is what a user runs: our ``Trainer.train_step`` (batch draw, v-prediction loss,
backward, clipping, AdamW, LR schedule, EMA) against the loop of diffusers' ``train_unconditional.py`` example
(``add_noise``, v target, backward, clipping, AdamW, LR schedule, ``EMAModel.step``). Sampling is DDIM at
guidance 1 (one network call per step on both sides) against diffusers' ``DDIMScheduler`` loop. "network" rows
time the forward + backward pass alone. Measurements alternate ours / diffusers within every round (the order
flips each round) on the same threads, so a busy machine slows both alike; the ratio is the median of the
per-round ratios.

GFLOP/s counts the work of each call with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls,
attention) and divides by its median time; the share of peak compares it, round by round, with a 2048^3 matmul of
the same precision timed in the same round (the faster of BLAS and oneDNN), and takes the median. Peak
memory (resident set size) of training and sampling is read in a fresh subprocess per measurement
(Linux: VmHWM after resetting it, as ru_maxrss is inherited from the parent), next to the process's size
before its first step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.training import Trainer, TrainingData

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"size": "small", "image_size": 16, "channels": 1},  # the default digits model
    "base": {"size": "base", "image_size": 32, "channels": 3},
}
NUM_CLASSES = 10
VARIANTS = ("channels_last", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", default=["small"], choices=sorted(CONFIGS), help="model configs")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="autocast dtypes")
    p.add_argument("--variants", nargs="*", default=[], choices=VARIANTS, help="extra rows for our model")
    p.add_argument("--batch-size", type=int, default=64, help="training and sampling batch (default 64)")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps per sampling call (default 10)")
    p.add_argument("--train-steps", type=int, default=3, help="training steps per timed call (default 3)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds per measurement (default 7)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for both (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every number as JSON to PATH")
    p.add_argument("--memory-worker", nargs=4, metavar=("SIDE", "TASK", "CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--speed-worker", nargs=2, metavar=("CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch_size", "sample_steps", "train_steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    return args


# ---------------------------------------------------------------------------------------------- the two models
def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def synthetic_data(cfg: dict[str, Any], n: int = 2048) -> TrainingData:
    """Random images in [-1, 1] with 10 classes: throughput does not depend on the pictures."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, cfg["channels"], cfg["image_size"], cfg["image_size"]), generator=g) * 2 - 1
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    return TrainingData(x, labels, [str(c) for c in range(NUM_CLASSES)])


def our_trainer(cfg: dict[str, Any], precision: str, batch: int, out_dir: str) -> Trainer:
    """Our trainer on synthetic data, as ``diffusionlab train`` builds it (v-prediction, cosine DDPM)."""
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES[cfg["size"]], num_classes=0),
        data=DataConfig(dataset="synthetic", image_size=cfg["image_size"], channels=cfg["channels"]),
        train=TrainConfig(steps=10_000, batch_size=batch, mixed_precision="bf16" if precision == "bf16" else "no"),
    )
    return Trainer(config, out_dir, data=synthetic_data(cfg), progress=False, cpu=True, track=False)


def diffusers_unet(cfg: dict[str, Any]) -> Any:
    """diffusers' UNet2DModel with our architecture: same widths, blocks, attention levels and AdaGN."""
    from diffusers import UNet2DModel

    size = MODEL_SIZES[cfg["size"]]
    widths = tuple(size["base_channels"] * m for m in size["channel_mults"])
    attn = set(size["attention_levels"])
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(widths))))
    return UNet2DModel(
        sample_size=cfg["image_size"],
        in_channels=cfg["channels"],
        out_channels=cfg["channels"],
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=size["num_res_blocks"],
        attention_head_dim=widths[-1] // NetworkConfig().num_heads,  # our 4 heads
        norm_num_groups=min(32, widths[0] // 2),
        resnet_time_scale_shift="scale_shift",  # AdaGN, as ours
        num_class_embeds=NUM_CLASSES,
    )


class Ours:
    """Our training step, network pass and sampler (optionally channels-last or torch.compile'd)."""

    def __init__(self, cfg: dict[str, Any], precision: str, batch: int, variant: str | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="throughput-")
        self.trainer = our_trainer(cfg, precision, batch, self._tmp.name)
        self.precision, self.batch, self.step = precision, batch, 0
        if variant == "channels_last":
            self.trainer.model.to(memory_format=torch.channels_last)
            self.trainer.pipeline.ema.to(memory_format=torch.channels_last)
        if variant == "compile":
            self.trainer.model = torch.compile(self.trainer.model)
            self.trainer.pipeline.ema = torch.compile(self.trainer.pipeline.ema)
        self.net = self.trainer.model
        g = torch.Generator().manual_seed(1)
        shape = (batch, cfg["channels"], cfg["image_size"], cfg["image_size"])
        self.x, self.t = torch.randn(shape, generator=g), torch.rand(batch, generator=g)
        self.labels = torch.randint(NUM_CLASSES, (batch,), generator=g)
        if variant == "channels_last":
            self.x = self.x.contiguous(memory_format=torch.channels_last)

    def params(self) -> int:
        return sum(p.numel() for p in self.trainer.pipeline.network.parameters())

    def train(self) -> None:
        self.trainer.train_step(self.step)
        self.step += 1

    def network(self) -> None:
        with autocast(self.precision):
            out = self.net(self.x, self.t, self.labels)
        out.float().square().mean().backward()

    def sample(self, steps: int) -> None:
        pipe = self.trainer.pipeline
        with autocast(self.precision):
            pipe.sample(labels=self.labels.tolist(), sampler="ddim", steps=steps, guidance=1.0, batch_size=self.batch)


class Diffusers:
    """The loop of diffusers' examples/unconditional_image_generation/train_unconditional.py, and DDIM sampling."""

    def __init__(self, cfg: dict[str, Any], precision: str, batch: int) -> None:
        from accelerate import Accelerator
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.model = diffusers_unet(cfg)
        self.ema = EMAModel(self.model.parameters(), decay=0.999, use_ema_warmup=True, power=3 / 4)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
        )
        self.ddim = DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
        )
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=0.0)
        lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=100, num_training_steps=10_000)
        self.accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=True)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.model, optimizer, lr_scheduler)
        data = synthetic_data(cfg)
        self.data_x, self.data_labels = data.x, data.labels
        self.precision, self.batch, self.cfg = precision, batch, cfg
        self.gen = torch.Generator().manual_seed(0)
        g = torch.Generator().manual_seed(1)
        shape = (batch, cfg["channels"], cfg["image_size"], cfg["image_size"])
        self.x, self.t = torch.randn(shape, generator=g), torch.randint(0, 1000, (batch,), generator=g)
        self.labels = torch.randint(NUM_CLASSES, (batch,), generator=g)

    def params(self) -> int:
        return sum(p.numel() for p in self.accelerator.unwrap_model(self.model).parameters())

    def train(self) -> None:
        idx = torch.randint(len(self.data_x), (self.batch,), generator=self.gen)
        clean, labels = self.data_x[idx], self.data_labels[idx]
        noise = torch.randn(clean.shape, generator=self.gen)
        timesteps = torch.randint(0, 1000, (self.batch,), generator=self.gen)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        with self.accelerator.accumulate(self.model):
            out = self.model(noisy, timesteps, class_labels=labels).sample
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
            loss = F.mse_loss(out.float(), target.float())
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if self.accelerator.sync_gradients:
            self.ema.step(self.model.parameters())

    def network(self) -> None:
        with autocast(self.precision):
            out = self.model(self.x, self.t, class_labels=self.labels).sample
        out.float().square().mean().backward()

    def sample(self, steps: int) -> None:
        from diffusers.utils.torch_utils import randn_tensor

        shape = (self.batch, self.cfg["channels"], self.cfg["image_size"], self.cfg["image_size"])
        image = randn_tensor(shape, generator=torch.Generator().manual_seed(0))
        self.ddim.set_timesteps(steps)
        model = self.accelerator.unwrap_model(self.model).eval()
        with torch.no_grad(), autocast(self.precision):
            for t in self.ddim.timesteps:
                out = model(image, t, class_labels=self.labels).sample
                image = self.ddim.step(out, t, image, eta=0.0).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1)
        model.train()


# ---------------------------------------------------------------------------------------------- measurements
def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_of(fn: Callable[[], None]) -> int:
    """Floating-point operations of one call (convolutions, matmuls, attention), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(precision: str, n: int = 2048) -> float:
    """GFLOP/s of an n x n x n matmul, the faster of BLAS (MKL: slow on AMD CPUs) and oneDNN (the library our
    convolutions run on; bf16 matmuls go there anyway): the machine's practical peak at these threads."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = timed(lambda: a @ b)
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        from torch.utils.mkldnn import to_mkldnn

        linear = torch.nn.Linear(n, n, bias=False)
        linear.weight.data = b.T.contiguous()
        dense, x = to_mkldnn(linear), a.to_mkldnn()
        dense(x)
        best = min(best, timed(lambda: dense(x)))
    return 2 * n**3 / best / 1e9


def measure(args: argparse.Namespace, name: str, precision: str) -> list[dict[str, Any]]:
    """Rows of the table for one config and precision: ours and diffusers alternating, round by round."""
    cfg = CONFIGS[name]
    ours, theirs = Ours(cfg, precision, args.batch_size), Diffusers(cfg, precision, args.batch_size)
    extra = {v: Ours(cfg, precision, args.batch_size, v) for v in args.variants}
    sides: dict[str, Any] = {"ours": ours, "diffusers": theirs, **{f"ours+{v}": o for v, o in extra.items()}}
    k, steps = args.train_steps, args.sample_steps
    tasks: dict[str, tuple[Callable[[Any], Callable[[], None]], int, str]] = {
        # task -> (call of a side, units per call, unit)
        "training": (lambda s: lambda: [s.train() for _ in range(k)], k, "steps/s"),
        "network fwd+bwd": (lambda s: s.network, 1, "passes/s"),
        "sampling": (lambda s: lambda: s.sample(steps), args.batch_size, "images/s"),
    }
    matmul_gflops(precision)  # warm-up
    rows = []
    for task, (call, units, unit) in tasks.items():
        fns = {side: call(obj) for side, obj in sides.items()}
        for fn in fns.values():  # warm-up (and compilation)
            fn()
        flops = {side: flops_of(fn) for side, fn in fns.items()}
        times: dict[str, list[float]] = {side: [] for side in fns}
        peaks: list[float] = []  # the matmul peak, timed in every round next to the models
        order = list(fns)
        for r in range(args.rounds):
            for side in order if r % 2 == 0 else order[::-1]:
                times[side].append(timed(fns[side]))
            peaks.append(matmul_gflops(precision))
        for side in fns:
            if side == "diffusers":
                continue
            ratios = [b / a for a, b in zip(times[side], times["diffusers"], strict=True)]
            med, med_d = statistics.median(times[side]), statistics.median(times["diffusers"])
            # share of the peak round by round, so a busy moment slows numerator and denominator alike
            share = {
                who: statistics.median(flops[who] / t / 1e9 / pk for t, pk in zip(times[who], peaks, strict=True))
                for who in (side, "diffusers")
            }
            rows.append(
                {
                    "config": name,
                    "precision": precision,
                    "task": task,
                    "unit": unit,
                    "ours_side": side,
                    "ours": units / med,
                    "diffusers": units / med_d,
                    "ratio": statistics.median(ratios),
                    "ours_gflops": flops[side] / med / 1e9,
                    "diffusers_gflops": flops["diffusers"] / med_d / 1e9,
                    "ours_peak_share": share[side],
                    "diffusers_peak_share": share["diffusers"],
                    "peak_gflops": statistics.median(peaks),
                    "params": [sides[side].params(), theirs.params()],
                }
            )
    return rows


def proc_status_mib(field: str) -> float:
    """A size field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/self/status has no {field} field.")


def memory_worker(side: str, task: str, name: str, precision: str, batch: int, steps: int) -> None:
    """In a fresh process: build one side, run its task twice, print its RSS before and at peak (MiB).

    ru_maxrss is inherited from the parent across fork and exec, so on Linux the peak is reset first
    (``clear_refs`` 5) and read from VmHWM; elsewhere it falls back to ru_maxrss.
    """
    cfg = CONFIGS[name]
    obj = Ours(cfg, precision, batch) if side == "ours" else Diffusers(cfg, precision, batch)
    linux = Path("/proc/self/clear_refs").exists()
    if linux:
        before = proc_status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)
    for _ in range(2):
        obj.train() if task == "training" else obj.sample(steps)
    if linux:
        peak = proc_status_mib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)
    print(json.dumps({"before_mib": before, "peak_mib": peak}))


def worker_options(args: argparse.Namespace) -> list[str]:
    """The options a worker subprocess needs to measure what this run measures."""
    out = ["--batch-size", str(args.batch_size), "--sample-steps", str(args.sample_steps)]
    out += ["--train-steps", str(args.train_steps), "--rounds", str(args.rounds), "--threads", str(args.threads)]
    return out + (["--variants", *args.variants] if args.variants else [])


def measure_speed(args: argparse.Namespace, name: str, precision: str) -> list[dict[str, Any]]:
    """``measure`` in a fresh process: accelerate allows one mixed-precision setting per process."""
    cmd = [sys.executable, __file__, "--speed-worker", name, precision, *worker_options(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(args), check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the speed measurement of {name} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    threads = str(args.threads)
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def measure_memory(args: argparse.Namespace, name: str, precision: str) -> list[dict[str, Any]]:
    """Peak RSS of training and of sampling at the bench's batch, one subprocess per measurement."""
    rows = []
    for task in ("training", "sampling"):
        for side in ("ours", "diffusers"):
            cmd = [sys.executable, __file__, "--memory-worker", side, task, name, precision, *worker_options(args)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(args), check=False)
            if out.returncode != 0:
                raise RuntimeError(f"the memory measurement {side} {task} failed:\n{out.stderr[-3000:]}")
            last = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"config": name, "precision": precision, "task": task, "side": side, **last})
    return rows


def format_tables(rows: list[dict[str, Any]], memory: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: the speed table, then the memory table."""
    lines = [
        f"batch {args.batch_size}, {args.threads} thread(s), DDIM {args.sample_steps} steps, "
        f"{args.rounds} alternating rounds; params (ours / diffusers): "
        + ", ".join(sorted({f"{r['config']} {r['params'][0]:,} / {r['params'][1]:,}" for r in rows})),
        "",
        "| config | precision | measurement | ours | diffusers | ours ÷ diffusers | ours GFLOP/s (% of peak) "
        "| diffusers GFLOP/s (% of peak) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        side = "" if r["ours_side"] == "ours" else f" [{r['ours_side'][5:]}]"
        ours_share = f"{r['ours_gflops']:.1f} ({100 * r['ours_peak_share']:.0f}%)"
        their_share = f"{r['diffusers_gflops']:.1f} ({100 * r['diffusers_peak_share']:.0f}%)"
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['task']}{side}, {r['unit']} | {r['ours']:.2f} | "
            f"{r['diffusers']:.2f} | {r['ratio']:.2f} | {ours_share} | {their_share} |"
        )
    peaks = {(r["config"], r["precision"]): r["peak_gflops"] for r in rows if r["task"] == "training"}
    lines.append("")
    listed = ", ".join(f"{c} {p} {g:.1f}" for (c, p), g in peaks.items())
    lines.append(f"matmul peak (2048^3, median over rounds), GFLOP/s: {listed}")
    if memory:
        lines += ["", "| config | precision | peak RSS | ours MiB (before first step) | diffusers MiB (before) |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for cfg_name in dict.fromkeys(m["config"] for m in memory):
            for prec in dict.fromkeys(m["precision"] for m in memory):
                for task in ("training", "sampling"):
                    key = (cfg_name, prec, task)
                    got = {m["side"]: m for m in memory if (m["config"], m["precision"], m["task"]) == key}
                    if got:
                        o, d = got["ours"], got["diffusers"]
                        lines.append(
                            f"| {cfg_name} | {prec} | {task}, batch {args.batch_size} | {o['peak_mib']:.0f} "
                            f"({o['before_mib']:.0f}) | {d['peak_mib']:.0f} ({d['before_mib']:.0f}) |"
                        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        side, task, name, precision = args.memory_worker
        memory_worker(side, task, name, precision, args.batch_size, args.sample_steps)
        return 0
    if args.speed_worker:
        print(json.dumps(measure(args, *args.speed_worker)))
        return 0
    rows, memory = [], []
    for name in args.config:
        for precision in args.precision:
            print(f"measuring {name} {precision} ...", file=sys.stderr, flush=True)
            rows += measure_speed(args, name, precision)
            if not args.no_memory:
                memory += measure_memory(args, name, precision)
    print(format_tables(rows, memory, args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"speed": rows, "memory": memory}, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
