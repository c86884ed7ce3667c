"""Sample quality and likelihood of the digits model: FID/KID/precision-recall/density-coverage per sampler and NFE.

    OMP_NUM_THREADS=1 python bench/evaluate_digits.py --model runs/digits --num-samples 1000 \
        --samplers ddim dpmpp_2m unipc --nfe 10 20 50 --bpd-images 64 --json bench/out/evaluate_digits.json

Features: the digits DomainClassifier (trained once on the train split, cached), as `diffusionlab evaluate`
uses for the digits; reference: the held-out test split (359 images). Two real-vs-real rows show what "as good as
real data" scores at these sample sizes: 1000 train images vs the test split (the same sizes as the sample
rows; FID and KID are biased at small N) and the two random halves of all 1797 digits. Bits/dim: the
unconditional model's NLL of test images through the probability-flow ODE (one Rademacher probe, RK45 at
rtol = atol = 1e-5, uniform dequantisation) and DDPM's variational bound on the same images.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import (
    ClassifierFeatures,
    density_coverage,
    digits_classifier,
    evaluate_model,
    extract_features,
    fid_from_features,
    kernel_inception_distance,
    precision_recall,
)
from diffusionlab.io import save_json
from diffusionlab.pipeline import Pipeline
from diffusionlab.sampling import nfe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/digits", help="model folder (default runs/digits)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per setting (default 1000)")
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m", "unipc"], help="samplers to compare")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50], help="network evaluations per sample")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--bpd-images", type=int, default=64, help="test images for bits/dim and the VLB (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def steps_for_nfe(sampler: str, target: int) -> int:
    """The step count at which ``sampler`` spends ``target`` network evaluations (``sampling.nfe``)."""
    for steps in range(1, target + 1):
        if nfe(sampler, steps) == target:
            return steps
    raise ValueError(f"{sampler} cannot spend exactly {target} evaluations.")


def scores(real: torch.Tensor, fake: torch.Tensor, seed: int) -> dict[str, float]:
    """Every feature metric of one pair of feature sets."""
    kid, kid_std = kernel_inception_distance(real, fake, seed=seed)
    precision, recall = precision_recall(real, fake)
    density, coverage = density_coverage(real, fake)
    return {
        "fid": fid_from_features(real, fake),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
    }


def run(args: argparse.Namespace) -> dict:
    """Evaluate every setting and the baselines; return a plain dict."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    pipe = Pipeline.load(args.model)
    size = pipe.config.data.image_size
    extractor = ClassifierFeatures(digits_classifier(size))
    test = load_digits_dataset(size, split="test")
    real = extract_features(extractor, torch.round((test.images + 1) * 127.5) / 255)
    rows = []
    train = load_digits_dataset(size, split="train")
    every = load_digits_dataset(size, split="all")
    perm = torch.randperm(len(every), generator=torch.Generator().manual_seed(args.seed))
    half = len(every) // 2
    f_train = extract_features(extractor, torch.round((train.images[: args.num_samples] + 1) * 127.5) / 255)
    f_all = extract_features(extractor, torch.round((every.images + 1) * 127.5) / 255)
    rows.append({"setting": f"real: {len(f_train)} train vs {len(real)} test", **scores(real, f_train, args.seed)})
    rows.append(
        {
            "setting": f"real: halves of all digits ({half} vs {len(every) - half})",
            **scores(f_all[perm[:half]], f_all[perm[half:]], args.seed),
        }
    )
    for sampler in args.samplers:
        for target in args.nfe:
            steps = steps_for_nfe(sampler, target)
            log(f"{sampler} NFE {target} ({steps} steps): sampling {args.num_samples} ...")
            result = evaluate_model(
                pipe,
                "fid,kid,pr,dc",
                num_samples=args.num_samples,
                sampler=sampler,
                steps=steps,
                guidance=args.guidance,
                extractor=extractor,
                seed=args.seed,
            )
            rows.append(
                {
                    "setting": f"{sampler}, NFE {target}",
                    **result["metrics"],
                    "seconds": result["seconds"]["sampling"],
                    "guidance": result["guidance"],
                }
            )
    out = {"model": args.model, "num_samples": args.num_samples, "real": len(real), "rows": rows}
    if args.bpd_images:
        log(f"bits/dim and VLB of {args.bpd_images} test images ...")
        lik = evaluate_model(pipe, "bpd,vlb", num_samples=args.num_samples, bpd_images=args.bpd_images, seed=0)
        out["likelihood"] = {**lik["metrics"], "seconds": lik["seconds"]}
    return out


def format_table(result: dict) -> str:
    """Markdown tables: feature metrics per setting, then the likelihoods."""
    cols = ["fid", "kid", "precision", "recall", "density", "coverage"]
    lines = [
        f"model {result['model']}: {result['num_samples']} samples per setting vs the {result['real']} test digits; "
        "features: digits classifier (128-d)",
        "",
        "| setting | FID | KID (± std over subsets) | precision | recall | density | coverage | sampling time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        cells = [f"{row['fid']:.3f}", f"{row['kid']:.4f} ± {row['kid_std']:.4f}"]
        cells += [f"{row[c]:.3f}" for c in cols[2:]]
        cells.append(f"{row['seconds']:.0f} s" if "seconds" in row else "")
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    lik = result.get("likelihood")
    if lik:
        s = lik["seconds"]
        lines += [
            "",
            "| likelihood (unconditional model, test images) | bits/dim | cost |",
            "| --- | ---: | ---: |",
            f"| probability-flow ODE, 1 Rademacher probe, {lik['bpd_images']} images | {lik['bpd']:.3f} ± "
            f"{lik['bpd_sem']:.3f} | {lik['bpd_nfe']} NFE (fwd+bwd), {s['bpd']:.0f} s |",
            f"| DDPM variational bound (prior {lik['vlb_prior']:.4f}, decoder L_0 {lik['vlb_decoder']:.3f}) | "
            f"{lik['vlb']:.3f} ± {lik['vlb_sem']:.3f} | 1000 NFE, {s['vlb']:.0f} s |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, optionally write JSON."""
    torch.set_num_threads(1)
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["total_seconds"] = time.perf_counter() - start
    print(format_table(result))
    print(f"\ntotal time {result['total_seconds'] / 60:.1f} min")
    if args.json:
        save_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
