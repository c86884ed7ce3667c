"""Time to quality: the library's default recipe against diffusers' train_unconditional.py recipe, same network.

    python bench/time_to_quality.py --threads 2 --out bench/out/time_to_quality \
        --table bench/results/time_to_quality.md --plot bench/results/time_to_quality.png

Both sides train the default class-conditional UNet (``NetworkConfig()``'s, the one ``diffusionlab train`` builds)
on the embedded digits with the same batch size and threads, through the library's trainer:

- ours: ``ModelConfig()``'s recipe as it is, over its own ``steps``;
- diffusers: ``train_unconditional.py``'s recipe (epsilon, linear betas 1e-4..0.02 over 1000 steps, AdamW lr 1e-4
  with betas (0.95, 0.999) and weight decay 1e-6, 500 warm-up steps then cosine, EMA 0.9999 with the warm-up
  1 - (1 + n)^-3/4, no label dropout: a conditional model), over ``--diffusers-steps``.

Every ``--eval-every`` steps each side's EMA model is evaluated as ``bench/recipes.py`` does (guidance 1, ddim 50,
``--samples`` samples; the digits classifier's accuracy and FID in its features, against FID of real images), and
the table gives steps and training minutes to the bar (accuracy >= 97%, FID <= 1.5 x real-vs-real) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402
from recipes import RECIPES, fmt, plot, recipe_config, run_recipe  # noqa: E402


def ours_config() -> object:
    """The library's default digits recipe, exactly as ``diffusionlab train`` builds it (class-conditional)."""
    from diffusionlab.config import ModelConfig, NetworkConfig, TrainConfig

    train = TrainConfig(log_every=0, sample_every=0, checkpoint_every=0, final_eval=False)
    config = ModelConfig(network=NetworkConfig(num_classes=0), train=train)
    return config.model_copy(update={"train": train.model_copy(update={"mixed_precision": _precision()})})


def _precision() -> str:
    """What "auto" picks on this machine (both sides train in it)."""
    from diffusionlab.hardware import resolve_precision

    return resolve_precision("auto", "cpu")


def diffusers_config(steps: int) -> object:
    """diffusers' train_unconditional.py recipe on the default network (``bench/recipes.py``'s "diffusers")."""
    from diffusionlab.config import NetworkConfig

    config = recipe_config("diffusers", steps)
    network = NetworkConfig(num_classes=0)  # the same UNet as ours, whatever the default is
    train = config.train.model_copy(update={"mixed_precision": _precision()})
    return config.model_copy(update={"network": network, "train": train})


def main(argv: list[str] | None = None) -> int:
    """Train both recipes, write their curves, print the table (and write it and the plot)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffusers-steps", type=int, default=6000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--diffusers-eval-every", type=int, default=250)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", nargs="*", default=["ours", "diffusers"], choices=["ours", "diffusers"])
    p.add_argument("--out", type=Path, default=Path("bench/out/time_to_quality"))
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = {"ours": (ours_config(), args.eval_every), "diffusers": (diffusers_config(args.diffusers_steps), None)}
    for side in args.sides:
        config, every = configs[side]
        print(f"== {side}", file=sys.stderr, flush=True)
        result = run_recipe(config, every or args.diffusers_eval_every, args.samples)
        result.update(recipe=side, cpu=cpu_name(), date=time.strftime("%Y-%m-%d"))
        (args.out / f"{side}.json").write_text(json.dumps(result, indent=1))
    runs = {s: json.loads((args.out / f"{s}.json").read_text()) for s in ("ours", "diffusers")}
    ours, theirs = runs["ours"], runs["diffusers"]
    # the two sides train the same network on the same batch: a step costs the same, so minutes are counted at the
    # faster of the two measured speeds (the slower one shared a busier machine)
    rate = max(r["steps_per_second"] for r in runs.values())
    for r in runs.values():
        r["minutes"] = None if r["steps_to_bar"] is None else r["steps_to_bar"] / rate / 60
        r["last_minutes"] = r["curve"][-1]["step"] / rate / 60
    train = ours["config"]["train"]
    lines = [
        f"Measured {ours['date']} on {ours['cpu']}, {ours['threads']} threads, batch {train['batch_size']}, "
        f"precision {train['mixed_precision']}: `python bench/time_to_quality.py`",
        "",
        "| recipe | steps to bar | train min to bar | last: step, accuracy, FID / FID real |",
        "|---|---:|---:|---|",
    ]
    for name, r in runs.items():
        last = r["curve"][-1]
        lines.append(
            f"| {name} | {fmt(r['steps_to_bar'], 'd')} | {fmt(r['minutes'], '.2f')} | {last['step']}, "
            f"{last['accuracy']:.1%}, {last['fid']:.3f} / {last['fid_real']:.3f} |"
        )
    lines += ["", f"Minutes at {rate:.2f} steps/s, the faster side's measured speed (the same network and batch)."]
    if ours["minutes"] and theirs["minutes"]:
        lines.append(f"Ours reaches the bar {theirs['minutes'] / ours['minutes']:.1f}x sooner.")
    elif ours["minutes"]:
        lines.append(
            f"diffusers' recipe did not reach the bar in {theirs['curve'][-1]['step']} steps "
            f"({theirs['last_minutes']:.1f} min); ours took {ours['minutes']:.2f} min: "
            f"at least {theirs['last_minutes'] / ours['minutes']:.1f}x sooner."
        )
    lines += ["", f"diffusers' recipe: {RECIPES['diffusers'][0]}."]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    if args.plot is not None:
        plot(args.out, args.plot, per_step=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
