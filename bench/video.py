"""Video on moving digits: are class-conditional clips the right digit, do they move like the data, and can the model
predict the next frames?

    OMP_NUM_THREADS=1 python bench/video.py --model bench/out/video/model            # a model trained by:
    OMP_NUM_THREADS=1 diffusionlab train --dataset moving_digits --model-size compact --batch-size 16 --steps 900 \\
        --minutes 13 --sample-every 0 --checkpoint-every 0 --no-final-eval --mixed-precision auto --seed 0 \\
        --out bench/out/video/model

Moving digits: one 16x16 embedded digit bouncing in a 32x32 frame, 8 frames, 1 to 3 pixels a frame per axis. The
real reference clips are made from the held-out test digits (``moving_digits(split="test")``, another seed).

- per-frame accuracy: each frame is cropped to the 16x16 window centred on its centre of mass (clamped to the
  frame) and given to the library's shipped digits classifier (``digits_classifier(16)``, trained on 16x16 digits);
  the share of frames classified as the clip's label.
- motion: each clip's centre-of-mass trajectory, per axis, is fitted by a constant velocity with bounces
  (``bounce``: a start and a velocity on a 0.25 px x 0.125 px/frame grid, walls 16 px apart, plus an offset); the
  RMS residual in pixels (0 for the data up to the grid) and the mean fitted speed |v| (a still clip fits with 0).
  Reference rows: the real clips with their frames shuffled (incoherent motion), and still clips (frame 0 repeated).
- Frechet distance: features (64-d) of a small clip classifier trained here on real training clips (frames as
  channels; heads: the digit and the signs of the velocity, so the features see shape and motion), between
  ``--clips`` clips and 1000 real test clips; real-vs-real is ``--clips`` other real test clips.
- prediction 4 -> 4: real test clips' frames 0-3 are given, 4-7 drawn (``fill_frames``, no label: the content comes
  from the known frames); PSNR over frames 4-7 against copying frame 3 and linear extrapolation
  (f_3 + k (f_3 - f_2), clipped to [0, 1]).

Writes bench/results/video.png (PSNR by frames ahead; motion residuals) and bench/results/video-samples.gif (+ its
frame strip), and prints the table of bench/results/video.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.data.clips import bounce, moving_digits
from diffusionlab.evaluation import digits_classifier, predict
from diffusionlab.evaluation.metrics import frechet_distance
from diffusionlab.pipeline import Pipeline
from diffusionlab.tasks import fill_frames

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="A video model trained on moving_digits.")
    p.add_argument("--per-class", type=int, default=10, help="Class-conditional clips per digit.")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--predict", type=int, default=50, help="Real test clips for 4 -> 4 prediction.")
    p.add_argument("--predict-method", default="replace", choices=("replace", "repaint"))
    p.add_argument("--reconstruction-guidance", type=float, default=0.0, help="replace: Ho et al.'s w_r.")
    p.add_argument("--only-prediction", action="store_true", help="Skip the sampled clips; only the prediction rows.")
    p.add_argument(
        "--interpolate", action="store_true", help="With --only-prediction: frames 0, 1, 6, 7 given, 2-5 drawn."
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def centres(clips: Tensor) -> Tensor:
    """Centre of mass (x, y) in pixels of every frame of clips (N, F, 1, H, W) in [0, 1]: (N, F, 2)."""
    mass = clips[:, :, 0].clamp(min=0)
    total = mass.sum((-1, -2)).clamp(min=1e-6)
    grid = torch.arange(clips.shape[-1], dtype=torch.float32)
    return torch.stack([(mass.sum(-2) * grid).sum(-1) / total, (mass.sum(-1) * grid).sum(-1) / total], -1)


def frame_accuracy(clips: Tensor, labels: Tensor) -> float:
    """Share of frames the digits classifier reads as the clip's label, on 16x16 crops centred on each frame."""
    n, f = clips.shape[:2]
    corner = (centres(clips) - 7.5).round().clamp(0, clips.shape[-1] - 16).long()
    crops = torch.stack(
        [
            clips[i, t, :, corner[i, t, 1] : corner[i, t, 1] + 16, corner[i, t, 0] : corner[i, t, 0] + 16]
            for i in range(n)
            for t in range(f)
        ]
    )
    guess = predict(digits_classifier(16), crops * 2 - 1).reshape(n, f)
    return float((guess == labels[:, None]).float().mean())


def motion_fit(clips: Tensor) -> tuple[Tensor, Tensor]:
    """Per clip: the RMS residual (px) of the best constant-velocity-with-bounces fit of its centre trajectory
    (both axes together) and the fitted speed (mean |v| of the axes)."""
    c = centres(clips)  # (N, F, 2)
    frames = c.shape[1]
    starts = torch.arange(0, 16.001, 0.25)
    velocities = torch.arange(-4, 4.001, 0.125)
    s, v = torch.meshgrid(starts, velocities, indexing="ij")
    paths = bounce(s.flatten(), v.flatten(), frames, 16)  # (K, F)
    paths = paths - paths.mean(-1, keepdim=True)  # the offset is free: compare centred trajectories
    target = c - c.mean(1, keepdim=True)  # (N, F, 2)
    err = ((target.permute(0, 2, 1)[:, :, None, :] - paths[None, None]) ** 2).mean(-1)  # (N, 2, K)
    best, idx = err.min(-1)
    rms = best.mean(-1).sqrt()
    speed = v.flatten()[idx].abs().mean(-1)
    return rms, speed


class ClipNet(nn.Module):
    """A small clip classifier: frames as channels, three conv stages, heads for the digit and the velocity signs."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(frames, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.digit, self.motion = nn.Linear(64, 10), nn.Linear(64, 4)

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.body(clips[:, :, 0] * 2 - 1)
        return h, self.digit(h), self.motion(h)


def train_clip_net(frames: int, steps: int = 600, seed: int = 0) -> tuple[ClipNet, float, float]:
    """The feature network, trained on real training clips; with its digit and motion accuracy on test clips."""
    torch.manual_seed(seed)
    data = moving_digits(n=4096, frames=frames, seed=seed + 100)
    clips, labels = (data.clips + 1) / 2, data.labels
    signs = (data.velocities[:, 0, 0] > 0).long() * 2 + (data.velocities[:, 0, 1] > 0).long()
    net = ClipNet(frames)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(clips), (64,), generator=gen)
        _, d, m = net(clips[idx])
        loss = F.cross_entropy(d, labels[idx]) + F.cross_entropy(m, signs[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = moving_digits(n=500, frames=frames, seed=seed + 200, split="test")
    test_signs = (test.velocities[:, 0, 0] > 0).long() * 2 + (test.velocities[:, 0, 1] > 0).long()
    with torch.no_grad():
        _, d, m = net((test.clips + 1) / 2)
    return net, float((d.argmax(1) == test.labels).float().mean()), float((m.argmax(1) == test_signs).float().mean())


@torch.no_grad()
def fd(net: ClipNet, a: Tensor, b: Tensor) -> float:
    """Frechet distance between the ClipNet features of two sets of clips in [0, 1]."""
    fa, fb = net(a)[0].double(), net(b)[0].double()
    return frechet_distance(fa.mean(0).numpy(), torch.cov(fa.T).numpy(), fb.mean(0).numpy(), torch.cov(fb.T).numpy())


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR (dB) per clip and frame of clips in [0, 1]: (N, F)."""
    mse = ((a - b) ** 2).mean((-1, -2, -3)).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    pipe = Pipeline.load(args.model)
    frames = pipe.config.data.frames
    real = moving_digits(n=1000, frames=frames, seed=7, split="test")
    real_clips = (real.clips + 1) / 2
    labels = torch.arange(10).repeat_interleave(args.per_class)
    n = len(labels)

    if args.only_prediction:
        (interpolation if args.interpolate else prediction)(args, pipe, real_clips, frames)
        return
    start = time.perf_counter()
    gen = pipe.sample(labels=labels.tolist(), steps=args.steps, sampler=args.sampler, seed=args.seed)
    sample_s = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    pick = torch.arange(10) * args.per_class
    pipe.space.save(gen[pick], RESULTS / "video-samples.gif", nrow=10)

    shuffled = torch.stack([c[torch.randperm(frames, generator=torch.Generator().manual_seed(i))]
                            for i, c in enumerate(real_clips[:n])])  # fmt: skip
    still = real_clips[:n, :1].expand(-1, frames, -1, -1, -1)
    rows = {"generated": gen, "real (test digits)": real_clips[:n], "real, frames shuffled": shuffled,
            "real, still (frame 0)": still}  # fmt: skip
    clip_net, digit_acc, motion_acc = train_clip_net(frames, seed=args.seed)
    other = (moving_digits(n=n, frames=frames, seed=8, split="test").clips + 1) / 2
    table = []
    motion = {}
    for name, clips in rows.items():
        lab = labels if name == "generated" else real.labels[:n]
        rms, speed = motion_fit(clips)
        motion[name] = rms
        distance = fd(clip_net, clips, real_clips) if name != "real (test digits)" else fd(clip_net, other, real_clips)
        table.append((name, frame_accuracy(clips, lab), float(rms.mean()), float(speed.mean()), distance))

    print(f"model: {args.model}  ({sum(p.numel() for p in pipe.network.parameters()):,} parameters)")
    print(f"sampling: {n} clips of {frames} frames, {args.sampler} {args.steps} steps, guidance "
          f"{pipe.config.sample.guidance}: {sample_s:.0f} s ({sample_s / n:.2f} s a clip)")  # fmt: skip
    print(f"feature net: digit accuracy {digit_acc:.3f}, velocity-sign accuracy {motion_acc:.3f} on real test clips\n")
    print("| clips | per-frame digit accuracy | motion RMS residual (px) | fitted speed (px/frame) | FD |")
    print("| --- | --- | --- | --- | --- |")
    for name, acc, rms, speed, distance in table:
        print(f"| {name} | {acc:.3f} | {rms:.2f} | {speed:.2f} | {distance:.1f} |")
    scores = prediction(args, pipe, real_clips, frames)
    plot(scores, motion, frames)


def prediction(args: argparse.Namespace, pipe: Pipeline, real_clips: Tensor, frames: int) -> dict[str, Tensor]:
    """4 -> 4 prediction of real clips by the model, copying the last frame and linear extrapolation: PSNR (N, 4)
    per clip and frame ahead, printed as a table."""
    known = list(range(4))
    given = real_clips[: args.predict].clone()
    start = time.perf_counter()
    kw = {"sampler": "ddim", "reconstruction_guidance": args.reconstruction_guidance}
    kw = kw if args.predict_method == "replace" else {"jump_length": 5, "jump_n_sample": 2}
    pred = fill_frames(pipe, given, known, method=args.predict_method, steps=args.steps, seed=args.seed, **kw)
    predict_s = time.perf_counter() - start
    truth = given[:, 4:]
    copy = given[:, 3:4].expand_as(truth)
    ahead = torch.arange(1, frames - 3, dtype=torch.float32)[None, :, None, None, None]
    linear = (given[:, 3:4] + ahead * (given[:, 3:4] - given[:, 2:3])).clamp(0, 1)
    scores = {"model": psnr(pred[:, 4:], truth), "copy last frame": psnr(copy, truth), "linear extrapolation":
              psnr(linear, truth)}  # fmt: skip
    assert torch.equal(pred[:, :4], given[:, :4])

    method = args.predict_method + (f", w_r {args.reconstruction_guidance:g}" if args.reconstruction_guidance else "")
    print(f"\nprediction 4 -> 4 on {args.predict} real test clips ({method}, {args.steps} steps, "
          f"{predict_s:.0f} s); PSNR (dB) by frames ahead:\n")  # fmt: skip
    print("| method | mean | " + " | ".join(f"+{k}" for k in range(1, frames - 3)) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in range(frames - 4)) + " |")
    for name, s in scores.items():
        print(f"| {name} | {float(s.mean()):.2f} | " + " | ".join(f"{float(v):.2f}" for v in s.mean(0)) + " |")
    return scores


def interpolation(args: argparse.Namespace, pipe: Pipeline, real_clips: Tensor, frames: int) -> dict[str, Tensor]:
    """Interpolation of real clips: frames 0, 1, F-2, F-1 given, the middle drawn by the model, against the nearer
    known frame and a linear cross-fade from frame 1 to frame F-2: PSNR (N, F-4), printed as a table."""
    known = [0, 1, frames - 2, frames - 1]
    given = real_clips[: args.predict].clone()
    start = time.perf_counter()
    kw = {"sampler": "ddim", "reconstruction_guidance": args.reconstruction_guidance}
    kw = kw if args.predict_method == "replace" else {"jump_length": 5, "jump_n_sample": 2}
    pred = fill_frames(pipe, given, known, method=args.predict_method, steps=args.steps, seed=args.seed, **kw)
    seconds = time.perf_counter() - start
    assert torch.equal(pred[:, known], given[:, known])
    truth, a, b = given[:, 2 : frames - 2], given[:, 1:2], given[:, frames - 2 : frames - 1]
    w = (torch.arange(2, frames - 2, dtype=torch.float32) - 1)[None, :, None, None, None] / (frames - 3)
    nearer = torch.where(w <= 0.5, a, b)
    scores = {"model": psnr(pred[:, 2 : frames - 2], truth), "nearer known frame": psnr(nearer, truth),
              "linear cross-fade": psnr((1 - w) * a + w * b, truth)}  # fmt: skip
    method = args.predict_method + (f", w_r {args.reconstruction_guidance:g}" if args.reconstruction_guidance else "")
    print(f"\ninterpolation of frames 2-{frames - 3} on {args.predict} real test clips ({method}, {args.steps} steps, "
          f"{seconds:.0f} s); PSNR (dB) by frame:\n")  # fmt: skip
    print("| method | mean | " + " | ".join(str(k) for k in range(2, frames - 2)) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in range(frames - 4)) + " |")
    for name, s in scores.items():
        print(f"| {name} | {float(s.mean()):.2f} | " + " | ".join(f"{float(v):.2f}" for v in s.mean(0)) + " |")
    return scores


def plot(scores: dict[str, Tensor], motion: dict[str, Tensor], frames: int) -> None:
    """bench/results/video.png: PSNR by frames ahead, and the motion residuals of each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, s in scores.items():
        a1.plot(range(1, frames - 3), s.mean(0).numpy(), marker="o", label=name)
    a1.set_xlabel("frames ahead")
    a1.set_ylabel("PSNR (dB)")
    a1.set_title("prediction 4 -> 4, moving digits")
    a1.legend()
    a2.hist([m.numpy() for m in motion.values()], bins=20, label=list(motion), histtype="step")
    a2.set_xlabel("RMS residual of a bouncing constant-velocity fit (px)")
    a2.set_title("motion consistency")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "video.png", dpi=110)


if __name__ == "__main__":
    main()
