"""Does a text-conditioned digits model follow prompts phrased unlike anything it was trained on?

    diffusionlab train --dataset captioned-digits --out runs/text-digits       # ~3000 steps
    python bench/text_prompts.py --model runs/text-digits --per-prompt 5 --guidance 2 4

Prompts come in two sets: the training phrasings (data/captions.py CAPTION_TEMPLATES, e.g. "a thick seven")
and held-out paraphrases (HELDOUT_TEMPLATES, other words and other synonyms: "a bold seven written by hand",
"please draw the numeral seven"). For every prompt, ``per-prompt`` samples are drawn and scored:
- class: share the digits DomainClassifier assigns to the asked digit;
- weight: among prompts naming a stroke weight, share of samples whose ink is on the asked side of the real
  digits' class median (thick = more ink than the median training digit of that class; chance is 50%).
Writes a grid of held-out prompts to bench/out/text_prompts.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffusionlab.data import load_digits_dataset
from diffusionlab.data.captions import CAPTION_TEMPLATES, HELDOUT_TEMPLATES, caption
from diffusionlab.evaluation import digits_classifier, predict
from diffusionlab.images import save_grid
from diffusionlab.pipeline import Pipeline

OUT = Path(__file__).parent / "out"


def prompt_set(templates: tuple[str, ...], heldout: bool) -> list[tuple[str, int, bool | None]]:
    """(prompt, digit, thick or None when the prompt names no weight) for every template, digit and weight."""
    out = []
    for template in templates:
        names_weight = any(k in template for k in ("{weight}", "{stroke}", "{bold}"))
        for digit in range(10):
            if not names_weight:
                out.append((caption(template, digit, False), digit, None))
                continue
            for thick in (True, False):
                for variant in (0, 1) if heldout else (0,):
                    out.append((caption(template, digit, thick, variant), digit, thick))
    return out


def score(
    pipe: Pipeline, prompts: list[tuple[str, int, bool | None]], per_prompt: int, guidance: float, median: torch.Tensor
) -> tuple[float, float, torch.Tensor]:
    """(class share, weight share, images) for a prompt set."""
    texts = [p for p, _, _ in prompts for _ in range(per_prompt)]
    digits = torch.tensor([d for _, d, _ in prompts]).repeat_interleave(per_prompt)
    thick = [k for _, _, k in prompts for _ in range(per_prompt)]
    images = pipe.sample(prompt=texts, guidance=guidance, seed=0, batch_size=250)
    clf = digits_classifier(images.shape[-1])
    hit = predict(clf, images * 2 - 1) == digits
    ink = images.flatten(1).sum(1)
    named = torch.tensor([k is not None for k in thick])
    want = torch.tensor([bool(k) for k in thick])
    right_side = (ink > median[digits]) == want
    return float(hit.float().mean()), float(right_side[named].float().mean()), images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/text-digits")
    p.add_argument("--per-prompt", type=int, default=5)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    size = pipe.config.data.image_size
    real = load_digits_dataset(size, split="train")
    ink = ((real.images + 1) / 2).flatten(1).sum(1)
    median = torch.stack([ink[real.labels == c].median() for c in range(10)])
    train_prompts = prompt_set(CAPTION_TEMPLATES, heldout=False)
    heldout_prompts = prompt_set(HELDOUT_TEMPLATES, heldout=True)
    rows = []
    for w in args.guidance:
        for name, prompts in (("training phrasings", train_prompts), ("held-out paraphrases", heldout_prompts)):
            cls, weight, images = score(pipe, prompts, args.per_prompt, w, median)
            rows.append((w, name, len(prompts), cls, weight))
            print(f"w={w:g} {name}: class {cls:.3f} weight {weight:.3f}", file=sys.stderr, flush=True)
            if name.startswith("held") and w == args.guidance[0]:
                show = [i for i, (_, d, k) in enumerate(prompts) if k is not False and d in (0, 3, 7)][:8]
                picks = torch.cat([images[i * args.per_prompt : (i + 1) * args.per_prompt] for i in show])
                OUT.mkdir(exist_ok=True)
                save_grid(
                    picks, OUT / "text_prompts.png", nrow=args.per_prompt, row_labels=[prompts[i][0] for i in show]
                )
    print(
        f"\nmodel {args.model}, {pipe.config.sample.sampler} {pipe.config.sample.steps} steps, "
        f"{args.per_prompt} samples per prompt, seed 0"
    )
    print("\n| guidance | prompts | count | asked digit | asked stroke weight (chance 50%) |")
    print("|---|---|---|---|---|")
    for w, name, n, cls, weight in rows:
        print(f"| {w:g} | {name} | {n} | {cls:.1%} | {weight:.1%} |")
    print(f"\nwrote {OUT / 'text_prompts.png'}")


if __name__ == "__main__":
    main()
