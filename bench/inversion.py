"""Inversion, editing and interpolation through the probability-flow ODE of the trained digits model (issue 21).

    python bench/inversion.py --model runs/digits --table bench/results/inversion.md --out bench/out/inversion

1. **Reconstruction**: ``--images`` held-out test digits (the test split the training never saw) are inverted
   with their own label at guidance 1 (the conditional model; guidance > 1 is not the ODE of any distribution)
   to the top of the grid and regenerated on the same grid; PSNR in [0, 1] pixels at 10 / 25 / 50 / 100 steps for
   ddim, heun and dpmpp_2m (the aim: >= 30 dB at 50 steps), thresholding off (clipping x0 is not invertible).
2. **Editing**: each digit is inverted with its label to t = 0.3 / 0.5 / 0.7 / the top and regenerated as the next
   digit ((label + 1) mod 10) from there, 50 ddim steps; reported: the share the library's digits classifier
   reads as the new digit, and the mean absolute pixel change from the input.
3. **Null-text inversion under guidance** (Mokady et al. 2023): the first ``--null-images`` digits at guidance
   ``--null-guidance`` (50 ddim steps, thresholding off): PSNR of plain inversion at that guidance (invert and
   regenerate guided), of the unguided pivot regenerated guided, and of null-text inversion (``invert_null``,
   ``--null-iterations`` Adam steps per level, lr 0.1, the null label's soft weights optimised), against the
   unguided round trip, the pivot's own error; and the same edit as 2. from t = 0.7, guided, plain vs null-text.
4. **Interpolation**: strips of 9 frames between two seeds, between two inverted digits, and from one seed between
   two classes' label embeddings (linear and spherical) (PNG and GIF), to ``--out``.

CPU, one thread by default; a few minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402

from diffusionlab.data import load_digits_dataset  # noqa: E402
from diffusionlab.evaluation import digits_classifier, predict  # noqa: E402
from diffusionlab.images import save_animation, save_grid  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.tasks import interpolate, invert, invert_null, regenerate  # noqa: E402

STEPS = (10, 25, 50, 100)
SAMPLERS = ("ddim", "heun", "dpmpp_2m")
EDIT_TIMES = (0.3, 0.5, 0.7, None)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def null_text(pipe: Pipeline, x: torch.Tensor, labels: list[int], clf: object, args: argparse.Namespace) -> list[str]:
    """Section 3: reconstruction and editing under guidance, plain inversion against null-text inversion."""
    w, steps = args.null_guidance, 50
    guided = {"guidance": w, "thresholding": "none", "steps": steps}
    unguided = {**guided, "guidance": 1.0}
    began = time.perf_counter()
    found = invert_null(pipe, x, iterations=args.null_iterations, lr=0.1, labels=labels, **guided)
    seconds = time.perf_counter() - began
    rows = {
        f"plain inversion at guidance {w:g}": regenerate(
            pipe, invert(pipe, x, labels=labels, **guided), labels=labels, **guided
        ),  # fmt: skip
        f"unguided pivot, regenerated at guidance {w:g}": regenerate(
            pipe, invert(pipe, x, labels=labels, **unguided), labels=labels, **guided
        ),  # fmt: skip
        f"null-text inversion at guidance {w:g}": regenerate(pipe, found.noise, nulls=found, labels=labels, **guided),
        "unguided round trip (the pivot's own error)": regenerate(
            pipe, invert(pipe, x, labels=labels, **unguided), labels=labels, **unguided
        ),  # fmt: skip
    }
    lines = [
        "",
        f"## Null-text inversion: {len(x)} digits at guidance {w:g}, {steps} ddim steps",
        "",
        f"Null-text inversion took {seconds:.0f} s ({args.null_iterations} Adam steps per level at most, lr 0.1).",
        "",
        "| round trip | PSNR (dB) |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {psnr(out, x):.2f} |" for name, out in rows.items()]
    target = [(c + 1) % 10 for c in labels]
    t = 0.7
    plain_state = invert(pipe, x, to_t=t, labels=labels, **guided)
    null_state = invert_null(pipe, x, to_t=t, iterations=args.null_iterations, lr=0.1, labels=labels, **guided)
    edits = {
        "plain": regenerate(pipe, plain_state, from_t=t, labels=target, **guided),
        "null-text": regenerate(pipe, null_state.noise, from_t=t, nulls=null_state, labels=target, **guided),
    }
    lines += [
        "",
        f"Edit to the next digit from t = {t} at guidance {w:g}:",
        "",
        "| inversion | read as the new digit | mean abs pixel change |",
        "|---|---:|---:|",
    ]
    for name, edited in edits.items():
        hit = float((predict(clf, edited * 2 - 1) == torch.tensor(target)).float().mean())
        lines.append(f"| {name} | {hit:.1%} | {float((edited - x).abs().mean()):.3f} |")
    print("\n".join(lines), file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("runs/digits"))
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/out/inversion"))
    p.add_argument("--null-images", type=int, default=32)
    p.add_argument("--null-guidance", type=float, default=3.0)
    p.add_argument("--null-iterations", type=int, default=10)
    args = p.parse_args(argv)
    if not (args.model / "config.json").is_file():
        p.error(f"--model={args.model} is not a model folder; train one: diffusionlab train --out {args.model}")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    pipe = Pipeline.load(args.model)
    size = pipe.config.data.image_size
    test = load_digits_dataset(size, split="test")
    x = ((test.images[: args.images] + 1) / 2).clamp(0, 1)
    labels = test.labels[: args.images].tolist()
    common = {"guidance": 1.0, "thresholding": "none"}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {args.threads} thread(s): "
        f"`python bench/inversion.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"Model {args.model} ({pipe.process.name} {getattr(pipe.process, 'schedule', '')}); {len(x)} held-out test "
        "digits, inverted with their labels at guidance 1, thresholding off.",
        "",
        "## Reconstruction PSNR (dB), invert to the top of the grid and back",
        "",
        "| sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
        "|---|" + "---:|" * len(STEPS),
    ]
    at50 = {}
    for sampler in SAMPLERS:
        cells = []
        for steps in STEPS:
            state = invert(pipe, x, labels=labels, sampler=sampler, steps=steps, **common)
            back = regenerate(pipe, state, labels=labels, sampler=sampler, steps=steps, **common)
            value = psnr(back, x)
            cells.append(f"{value:.2f}")
            if steps == 50:
                at50[sampler] = value
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr)
    best = max(at50, key=at50.get)
    verdict = "pass" if at50[best] >= 30 else "FAIL"
    lines += ["", f"Aim >= 30 dB at 50 steps: best {best} {at50[best]:.2f} dB: {verdict}."]

    clf = digits_classifier(size)
    target = [(c + 1) % 10 for c in labels]
    lines += [
        "",
        "## Editing: invert with the label to t, regenerate as the next digit (50 ddim steps)",
        "",
        "| from t | read as the new digit | mean abs pixel change | read as the old digit after a plain round trip |",
        "|---|---:|---:|---:|",
    ]
    for t in EDIT_TIMES:
        state = invert(pipe, x, to_t=t, labels=labels, steps=50, **common)
        edited = regenerate(pipe, state, from_t=t, labels=target, steps=50, **common)
        kept = regenerate(pipe, state, from_t=t, labels=labels, steps=50, **common)
        hit = float((predict(clf, edited * 2 - 1) == torch.tensor(target)).float().mean())
        same = float((predict(clf, kept * 2 - 1) == torch.tensor(labels)).float().mean())
        change = float((edited - x).abs().mean())
        lines.append(f"| {'top' if t is None else t} | {hit:.1%} | {change:.3f} | {same:.1%} |")
        print(lines[-1], file=sys.stderr)
        if t == 0.5:
            args.out.mkdir(parents=True, exist_ok=True)
            save_grid(torch.cat([x[:10], edited[:10]]), args.out / "edits.png", nrow=10, scale=2)

    lines += null_text(pipe, x[: args.null_images], labels[: args.null_images], clf, args)

    args.out.mkdir(parents=True, exist_ok=True)
    for path in ("linear", "spherical"):
        frames = interpolate(pipe, 9, classes=(3, 8), path=path, seed=0, steps=50, guidance=2.0)
        save_grid(frames, args.out / f"classes-{path}.png", nrow=9, scale=2)
        save_animation(frames, args.out / f"classes-{path}.gif")
    frames = interpolate(pipe, 9, seeds=(0, 1), labels=[3], steps=50, guidance=2.0)
    save_grid(frames, args.out / "seeds.png", nrow=9, scale=2)
    save_animation(frames, args.out / "seeds.gif")
    pair = invert(pipe, x[:2], labels=labels[:2], steps=50, **common)
    between = interpolate(pipe, 9, noises=(pair[0], pair[1]), labels=[labels[0]], steps=50, **common)
    save_grid(between, args.out / "inverted.png", nrow=9, scale=2)
    save_animation(between, args.out / "inverted.gif")
    lines += [
        "",
        f"Interpolation strips and GIFs (between seeds 0 and 1 as a 3 at guidance 2; between two inverted test "
        f"digits; from seed 0 between the label embeddings of 3 and 8, linear and spherical, at guidance 2) and "
        f"the edits at t = 0.5 (inputs, then edits) in {args.out}. "
        f"{(time.perf_counter() - began) / 60:.1f} min in all.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
