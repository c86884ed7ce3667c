"""Time to quality of training recipes on the digits: steps and minutes until a model reaches the bar.

    python bench/recipes.py --recipes current edm flow --horizon 1500 --eval-every 150 --out bench/out/recipes
    python bench/recipes.py --table bench/results/recipes.md --plot bench/results/recipes.png --out bench/out/recipes

A recipe is a set of settings over the library's defaults (``RECIPES``). Each run trains class-conditional on the
embedded digits with the library's own trainer (in memory, ``--threads`` threads), a cosine LR schedule over
``--horizon`` steps, and every ``--eval-every`` steps evaluates the EMA model as ``diffusionlab evaluate`` does:
``--samples`` samples at guidance 1 (ddim, 50 steps), the share the digits classifier assigns to the asked class
(``accuracy``), their FID in the classifier's features against the test split, and the FID of as many real
training images against the same test split (``fid_real``: FID's floor at that sample count). The bar is
accuracy >= 97% and FID <= 1.5 x fid_real; a run stops at the first evaluation that reaches it. Minutes count
training only (the evaluations are timed apart). Each run writes ``<out>/<recipe>.json``; ``--table`` and
``--plot`` gather every JSON in ``--out``. Runs that share a busy machine train at uneven speeds, so ``--speed``
measures every recipe's steps/s side by side, round-robin, in one process (``<out>/speed.json``), and the table and
plot then count minutes as steps to the bar at that speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

BAR_ACCURACY = 0.97
BAR_FID_RATIO = 1.5

SMALL = {"base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1}
TINY = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1}
COMPACT = {"base_channels": 16, "channel_mults": [1, 2, 2], "num_res_blocks": 1}
TINY_RES2 = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 2}
MID = {"base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1}
V_COSINE = {"process": {"name": "ddpm", "schedule": "cosine"}, "parameterisation": "v"}
EDM = {"process": {"name": "edm"}, "parameterisation": "edm"}
FLOW = {"process": {"name": "flow"}, "parameterisation": "velocity"}

EMA995 = {"ema_decay": 0.995, "ema_start": 100}
TINY_EMA = {"network": TINY, "train": EMA995}


def _tiny(train: dict[str, Any] | None = None, diffusion: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The tiny UNet with EMA 0.995 and the given changes."""
    out: dict[str, dict[str, Any]] = {"network": TINY, "train": {**EMA995, **(train or {})}}
    if diffusion is not None:
        out["diffusion"] = diffusion
    return out


# name -> (what it is, {"network": ..., "diffusion": ..., "train": ...}); every run is class-conditional, and
# takes the library's defaults where the recipe says nothing (v, cosine DDPM, uniform t, lr 2e-3, batch 64)
RECIPES: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "current": (
        "v, cosine DDPM, uniform t, lr 2e-3, batch 64, EMA 0.999 from 200, small UNet (the 0.1 recipe)",
        {"network": SMALL, "train": {"ema_decay": 0.999, "ema_start": 200}},
    ),
    "current-fp32": (
        "current in fp32",
        {"network": SMALL, "train": {"mixed_precision": "no", "ema_decay": 0.999, "ema_start": 200}},
    ),
    "small": ("small UNet (32 ch, 3 levels), EMA 0.995 from 100", {"network": SMALL, "train": EMA995}),
    "mid": ("32 ch, 2 levels, EMA 0.995", {"network": MID, "train": EMA995}),
    "tiny": ("tiny UNet (16 ch, 2 levels), EMA 0.995", TINY_EMA),
    "compact": ("compact UNet (16 ch, 3 levels), EMA 0.995 (today's default)", {"network": COMPACT, "train": EMA995}),
    "tiny-res2": ("16 ch, 2 levels, 2 residual blocks a level, EMA 0.995", {"network": TINY_RES2, "train": EMA995}),
    "compact-lr4e-3": ("compact, lr 4e-3", {"network": COMPACT, "train": {**EMA995, "lr": 4e-3}}),
    "tiny-ema999": ("tiny, EMA 0.999 from 200", {"network": TINY, "train": {"ema_decay": 0.999, "ema_start": 200}}),
    "tiny-ema99": ("tiny, EMA 0.99 from 50", _tiny({"ema_decay": 0.99, "ema_start": 50})),
    "tiny-min-snr": ("tiny, min-SNR-5 weighting (Hang et al. 2023)", _tiny({"weighting": "min_snr"})),
    "tiny-edm": (
        "tiny, EDM preconditioning, log-normal sigma, EDM weighting (Karras et al. 2022)",
        _tiny({"time_sampling": "lognormal", "weighting": "edm"}, EDM),
    ),
    "tiny-flow": ("tiny, flow matching, logit-normal t (SD3)", _tiny({"time_sampling": "logit_normal"}, FLOW)),
    "tiny-lr4e-3": ("tiny, lr 4e-3", _tiny({"lr": 4e-3})),
    "tiny-lr1e-3": ("tiny, lr 1e-3", _tiny({"lr": 1e-3})),
    "tiny-lr8e-3": ("tiny, lr 8e-3", _tiny({"lr": 8e-3})),
    "tiny-flow-lr4e-3": (
        "tiny, flow matching, logit-normal t, lr 4e-3",
        _tiny({"time_sampling": "logit_normal", "lr": 4e-3}, FLOW),
    ),
    "tiny-batch32": ("tiny, batch 32", _tiny({"batch_size": 32})),
    "tiny-batch128": ("tiny, batch 128", _tiny({"batch_size": 128})),
    "diffusers": (
        "diffusers' train_unconditional.py: eps, linear betas, lr 1e-4, 500 warm-up, EMA 0.9999 power 3/4, "
        "AdamW (0.95, 0.999) wd 1e-6, no label dropout; same UNet",
        {
            "network": TINY,
            "diffusion": {"process": {"name": "ddpm", "schedule": "linear"}, "parameterisation": "eps"},
            "train": {
                "lr": 1e-4,
                "warmup_steps": 500,
                "ema_decay": 0.9999,
                "ema_start": 0,
                "ema_power": 0.75,
                "adam_betas": (0.95, 0.999),
                "weight_decay": 1e-6,
                "label_dropout": 0.0,
            },
        },
    ),
}


def recipe_config(name: str, horizon: int, batch_size: int | None = None) -> Any:
    """The ``ModelConfig`` of a recipe trained over ``horizon`` steps (bf16 unless the recipe says otherwise)."""
    from diffusionlab.config import DiffusionConfig, ModelConfig, NetworkConfig, TrainConfig

    parts = RECIPES[name][1] if name in RECIPES else {}
    train = {"steps": horizon, "mixed_precision": "bf16", "log_every": 0, "sample_every": 0, "checkpoint_every": 0}
    train.update(parts.get("train", {}))
    if batch_size is not None and "batch_size" not in parts.get("train", {}):
        train["batch_size"] = batch_size
    return ModelConfig(
        network=NetworkConfig(num_classes=0, **parts.get("network", {})),
        diffusion=DiffusionConfig(**parts.get("diffusion", {})),
        train=TrainConfig(**train),
    )


def measure(pipeline: Any, samples: int, seed: int = 0) -> dict[str, float]:
    """accuracy, fid and fid_real of the EMA model at guidance 1, as ``diffusionlab evaluate`` computes them."""
    from diffusionlab.evaluation import evaluate_model

    result = evaluate_model(
        pipeline,
        ["accuracy", "fid", "fid_real"],
        num_samples=samples,
        guidance=1.0,
        sampler="ddim",
        steps=50,
        seed=seed,
        mixed_precision="bf16",
    )
    return {k: float(v) for k, v in result["metrics"].items()}


def at_bar(m: dict[str, float]) -> bool:
    """Whether an evaluation reaches the bar: accuracy >= 97% and FID <= 1.5 x real-vs-real."""
    return m["accuracy"] >= BAR_ACCURACY and m["fid"] <= BAR_FID_RATIO * m["fid_real"]


def run_recipe(config: Any, eval_every: int, samples: int, log: Any = print, stop_at_bar: bool = True) -> dict:
    """Train ``config`` in memory, evaluating every ``eval_every`` steps; the curve and steps/minutes to the bar."""
    from accelerate.state import AcceleratorState

    from diffusionlab.training.diffusion import DiffusionObjective
    from diffusionlab.training.trainer import Trainer, make_accelerator

    AcceleratorState._reset_state(True)
    accelerator = make_accelerator(config.train.mixed_precision, cpu=True)
    objective = DiffusionObjective.prepare(config, None, None, accelerator.device)
    trainer = Trainer.in_memory(objective, accelerator, progress=False)
    curve, train_seconds, eval_seconds, reached = [], 0.0, 0.0, None
    for step in range(config.train.steps):
        start = time.perf_counter()
        loss, _ = trainer.train_step(step)
        train_seconds += time.perf_counter() - start
        done = step + 1
        if done % eval_every and done != config.train.steps:
            continue
        start = time.perf_counter()
        m = measure(objective.model, samples)
        eval_seconds += time.perf_counter() - start
        point = {"step": done, "train_minutes": train_seconds / 60, "loss": loss, **m}
        curve.append(point)
        log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}))
        if reached is None and at_bar(m):
            reached = point
            if stop_at_bar:
                break
    return {
        "config": config.model_dump(mode="json"),
        "samples": samples,
        "eval_every": eval_every,
        "curve": curve,
        "steps_per_second": curve[-1]["step"] / (60 * curve[-1]["train_minutes"]),
        "steps_to_bar": None if reached is None else reached["step"],
        "minutes_to_bar": None if reached is None else reached["train_minutes"],
        "eval_minutes": eval_seconds / 60,
        "threads": torch.get_num_threads(),
    }


def speed(names: list[str], steps: int = 40, rounds: int = 3) -> dict[str, float]:
    """Training steps per second of each recipe's network, batch and precision on this process's threads,
    measured round-robin (``rounds`` x ``steps`` steps each, the best round kept) so that load on a shared machine
    falls on every recipe alike; recipes that train the same thing share one measurement."""
    from accelerate.state import AcceleratorState

    from diffusionlab.training.diffusion import DiffusionObjective
    from diffusionlab.training.trainer import Trainer, make_accelerator

    def key(name: str) -> str:
        c = recipe_config(name, 1000)
        return json.dumps(
            [c.network.model_dump(), c.diffusion.model_dump(), c.train.batch_size, c.train.mixed_precision]
        )

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(key(name), []).append(name)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for members in groups.values():
            config = recipe_config(members[0], 1000)
            AcceleratorState._reset_state(True)
            accelerator = make_accelerator(config.train.mixed_precision, cpu=True)
            objective = DiffusionObjective.prepare(config, None, None, accelerator.device)
            trainer = Trainer.in_memory(objective, accelerator, progress=False)
            trainer.train_step(0)
            start = time.perf_counter()
            for step in range(1, steps + 1):
                trainer.train_step(step)
            rate = steps / (time.perf_counter() - start)
            for name in members:
                best[name] = max(best.get(name, 0.0), rate)
    return best


def fmt(value: float | None, spec: str, missing: str = "not reached") -> str:
    """A number, or what its absence means."""
    return missing if value is None else format(value, spec)


def table(folder: Path, names: list[str] | None = None) -> str:
    """The markdown table of every run in ``folder`` (or of ``names``), soonest to the bar first."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem != "speed"}
    if names:
        runs = {k: v for k, v in runs.items() if k in names}
    quiet = json.loads((folder / "speed.json").read_text()) if (folder / "speed.json").is_file() else {}
    for k, r in runs.items():  # minutes at the side-by-side speed where measured, else as the run went
        rate = quiet.get(k, r["steps_per_second"])
        r["rate"], r["minutes"] = rate, None if r["steps_to_bar"] is None else r["steps_to_bar"] / rate / 60
    order = sorted(runs, key=lambda k: (runs[k]["minutes"] is None, runs[k]["minutes"] or 0))
    lines = [
        "| recipe | what | horizon, eval every, samples | steps/s | steps to bar | train min to bar | last: step, "
        "accuracy, FID / FID real |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for k in order:
        r, last = runs[k], runs[k]["curve"][-1]
        what = RECIPES[k][0] if k in RECIPES else ""
        lines.append(
            f"| {k} | {what} | {r['horizon']}, {r['eval_every']}, {r['samples']} | {r['rate']:.2f} | "
            f"{fmt(r['steps_to_bar'], 'd')} | {fmt(r['minutes'], '.2f')} | "
            f"{last['step']}, {last['accuracy']:.1%}, {last['fid']:.3f} / {last['fid_real']:.3f} |"
        )
    return "\n".join(lines)


def plot(folder: Path, path: Path, names: list[str] | None = None, per_step: bool = False) -> None:
    """Accuracy and FID / FID real against training minutes (``per_step``: steps), one line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quiet = json.loads((folder / "speed.json").read_text()) if (folder / "speed.json").is_file() else {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [p for p in sorted(folder.glob("*.json")) if p.stem != "speed" and (not names or p.stem in names)]
    for i, p in enumerate(shown):
        style = {"color": plt.cm.tab20(i % 20), "marker": "os^"[i // 20 % 3], "label": p.stem}
        run = json.loads(p.read_text())
        curve, rate = run["curve"], quiet.get(p.stem)
        x = [c["step"] if per_step else c["step"] / rate / 60 if rate else c["train_minutes"] for c in curve]
        a.plot(x, [c["accuracy"] for c in curve], **style)
        b.plot(x, [c["fid"] / c["fid_real"] for c in curve], **style)
    a.axhline(BAR_ACCURACY, color="k", ls="--", lw=0.8)
    b.axhline(BAR_FID_RATIO, color="k", ls="--", lw=0.8)
    xlabel = "training steps" if per_step else "training minutes"
    a.set(xlabel=xlabel, ylabel="accuracy at guidance 1", ylim=(0.5, 1.0))
    b.set(xlabel=xlabel, ylabel="FID / FID of real images", yscale="log")
    a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Run the recipes asked for (one JSON each), then print (and write) the table and the plot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="*", default=[], choices=sorted(RECIPES))
    p.add_argument("--horizon", type=int, default=1500, help="steps of the LR schedule (the most a run trains)")
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/recipes"))
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--speed", action="store_true", help="measure every run's steps/s side by side (speed.json)")
    p.add_argument("--full", action="store_true", help="train the whole horizon (do not stop at the bar)")
    p.add_argument("--name", default=None, help="the JSON's name (default: the recipe's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        names = sorted(p.stem for p in args.out.glob("*.json") if p.stem in RECIPES)
        (args.out / "speed.json").write_text(json.dumps(speed(names), indent=1))
    for name in args.recipes:
        print(f"== {name}: {RECIPES[name][0]}", file=sys.stderr, flush=True)
        config = recipe_config(name, args.horizon, args.batch_size)
        result = run_recipe(config, args.eval_every, args.samples, stop_at_bar=not args.full)
        result.update(recipe=name, horizon=args.horizon, cpu=os.uname().machine)
        (args.out / f"{args.name or name}.json").write_text(json.dumps(result, indent=1))
    sys.path.insert(0, str(Path(__file__).parent))
    from main_job import cpu_name

    speeds = "steps/s measured side by side (--speed)" if (args.out / "speed.json").is_file() else "steps/s as run"
    head = (
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {args.threads} thread(s), bf16 and batch 64 unless "
        f"named, a cosine LR schedule over the horizon, evaluations at guidance 1; {speeds}: "
        "`python bench/recipes.py --recipes ... && python bench/recipes.py --speed`"
    )
    text = head + "\n\n" + table(args.out)
    print(text)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    if args.plot is not None:
        plot(args.out, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
