"""Stable Diffusion 1.5 through our samplers vs diffusers' own pipeline: same weights, scheduler, steps and noise.

    OMP_NUM_THREADS=1 python bench/sd_speed.py --size 512 --steps 1 2             # CPU, fp32 (the table)
    python bench/sd_speed.py --device cuda --dtype fp16 --size 512 --steps 20 --repeats 3   # a GPU

The networks have SD 1.5's architecture (the UNet, VAE and CLIP ViT-L/14 text encoder built from their config
dicts) with random weights: nothing is downloaded, and speed does not depend on the weights' values. The
tokenizer is a hand-built byte-level CLIP tokenizer (ids within CLIP's vocabulary). Both sides run DDIM on the
"trailing" grid with CFG 7.5 and a negative prompt, from the same initial latents, and decode with the VAE;
the times are whole calls (prompt encoding, the steps, decoding), best of the repeats, the two sides alternating.
On a CPU shared with other work the wall time is noisy; the process's CPU time (``time.process_time``, all
threads) is reported beside it and is the fairer comparison there. With two step counts the per-step time is the
difference of the two calls and the rest is fixed cost, so a 20-step call is estimated as fixed + 20 per-step.
The outputs are compared too (max |ours - theirs| over the images in [0, 1]).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusionlab.interop import stable_diffusion_pipeline
from diffusionlab.sampling import NoiseSource

UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}  # fmt: skip
VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "scaling_factor": 0.18215,
}  # fmt: skip
CLIP = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}  # fmt: skip
SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
    "prediction_type": "epsilon", "timestep_spacing": "trailing",
}  # fmt: skip
PROMPT, NEGATIVE = "a lighthouse on a cliff at dawn, oil painting", "blurry"


def byte_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    """A CLIP tokenizer over single bytes (no merges) with SD's special-token ids 49406 / 49407."""
    from transformers import CLIPTokenizer

    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]
    vocab = {w: i for i, w in enumerate([*chars, *(c + "</w>" for c in chars)])}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = ap.parse_args()
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    t = time.perf_counter()
    unet = diffusers.UNet2DConditionModel(**UNET).eval()
    vae = diffusers.AutoencoderKL(**VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**CLIP)).eval()
    tok = byte_tokenizer(Path(tempfile.mkdtemp()))
    for m in (unet, vae, text):
        m.to(args.device, dtype).requires_grad_(False)
    built = time.perf_counter() - t
    ours = stable_diffusion_pipeline(unet, vae, text, tok, SCHEDULER, image_size=args.size).to(args.device)
    theirs = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=diffusers.DDIMScheduler.from_config(SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    theirs.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"# SD 1.5-shaped, random weights: UNet {params:.0f}M parameters (built in {built:.0f} s)", file=sys.stderr)
    latent = (4, args.size // 8, args.size // 8)
    rows, cpu_rows = [], []
    with torch.no_grad():  # warm-up: one 1-step call each, so neither side pays the kernels' first-call setup
        ours.sample(1, prompt=PROMPT, sampler="ddim", steps=1, spacing="trailing", guidance=7.5, mixed_precision="no")
        x = NoiseSource(0, [0], args.device)(latent).to(dtype)
        theirs(PROMPT, num_inference_steps=1, latents=x, height=args.size, width=args.size, output_type="pt")
    for steps in args.steps:
        kw = {"sampler": "ddim", "steps": steps, "spacing": "trailing", "guidance": 7.5, "seed": 0}
        times = {"ours": float("inf"), "diffusers": float("inf")}
        cpu = {"ours": float("inf"), "diffusers": float("inf")}
        for _ in range(args.repeats):  # the two sides alternate, so a load that comes and goes hits both alike
            for side in ("ours", "diffusers"):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t, c = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    if side == "ours":
                        a = ours.sample(1, prompt=PROMPT, negative_prompt=NEGATIVE, mixed_precision="no", **kw)
                    else:
                        x = NoiseSource(0, [0], args.device)(latent).to(dtype)
                        b = theirs(
                            PROMPT,
                            negative_prompt=NEGATIVE,
                            num_inference_steps=steps,
                            guidance_scale=7.5,
                            latents=x,
                            height=args.size,
                            width=args.size,
                            output_type="pt",
                        ).images
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[side] = min(times[side], time.perf_counter() - t)  # best of the repeats
                cpu[side] = min(cpu[side], time.process_time() - c)
        diff = float((a.float().cpu() - b.float().cpu()).abs().max())
        rows.append((steps, times["ours"], times["diffusers"], diff))
        cpu_rows.append((steps, cpu["ours"], cpu["diffusers"]))
        print(f"steps={steps}: ours {times['ours']:.2f} s, diffusers {times['diffusers']:.2f} s, max|diff| {diff:.1e}",
              file=sys.stderr)  # fmt: skip
    print("| steps | ours (s) | diffusers (s) | diffusers / ours | max abs diff |\n|---|---|---|---|---|")
    for steps, o, d, diff in rows:
        print(f"| {steps} | {o:.2f} | {d:.2f} | {d / o:.3f} | {diff:.1e} |")
    if len(rows) >= 2:
        (s1, o1, d1, _), (s2, o2, d2, _) = rows[0], rows[-1]
        po, pd = (o2 - o1) / (s2 - s1), (d2 - d1) / (s2 - s1)
        fo, fd = o1 - s1 * po, d1 - s1 * pd
        print(f"| 20 (est.) | {fo + 20 * po:.1f} | {fd + 20 * pd:.1f} | {(fd + 20 * pd) / (fo + 20 * po):.3f} | |")
        print(f"\nper step: ours {po:.2f} s ({1 / po:.3f} it/s), diffusers {pd:.2f} s ({1 / pd:.3f} it/s); "
              f"fixed cost (prompts + VAE decode): ours {fo:.2f} s, diffusers {fd:.2f} s")  # fmt: skip

    print("\nCPU time of the process (s):\n\n| steps | ours | diffusers | diffusers / ours |\n|---|---|---|---|")
    for steps, o, d in cpu_rows:
        print(f"| {steps} | {o:.2f} | {d:.2f} | {d / o:.3f} |")


if __name__ == "__main__":
    main()
