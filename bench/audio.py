"""Audio: class-conditional spoken digits, judged by a digit classifier trained here (SC09's protocol, offline).

    OMP_NUM_THREADS=1 python bench/audio.py --table bench/results/audio.md
    OMP_NUM_THREADS=1 python bench/audio.py --audio-space spectrogram ... --table bench/results/audio-spectrogram.md

Data (``bench/spoken_digits.py``, eSpeak NG on this machine, nothing downloaded): the words "zero".."nine" at
8 kHz, 1 s clips, three sets of different seeds (so different draws of voice, speed and pitch from the same pool of
96 eSpeak voices): train (``--train-per-word``), held-out (``--heldout-per-word``) and a second real set
("real B", ``--samples-per-digit``, the size of the generated set) for the real-vs-real reference. Every set is read
by ``load_audio_folder`` at ``--sample-rate`` and centre-cropped to ``--clip-seconds``, the rate and length the
model learns.

The bench then

1. trains a spoken-digit classifier on the train set only: log-mel features (``--mels`` bands, 32 ms Hann
   windows, hop 8 ms, log(mel power + 1e-6)), normalised per band with the train set's statistics, then three 1-D
   conv layers over time (BatchNorm, ReLU, max-pool), mean and max pooled over time, a 64-wide ReLU layer (the
   penultimate features) and a linear layer to 10 digits; AdamW, ``--clf-epochs`` epochs, cosine LR, each clip
   shifted by up to 50 ms and scaled by a gain in [0.5, 1] at random. Fixed settings, nothing tuned on the held-out
   set, whose accuracy it then reports;
2. trains our class-conditional diffusion model (``--network`` unet1d or diffwave at ``--size``, v-prediction on
   the cosine DDPM process, the library's defaults) on the train folder through ``Trainer``, labels dropped 10% of
   the time for classifier-free guidance. ``--audio-space spectrogram`` trains it in the spectrogram space instead
   (``SpectrogramSpace``: |STFT|^0.3 with ``--n-fft``/``--hop-length``, normalised per bin, the 2-D UNet at
   ``--size``; samples decoded by ``--griffin-lim-iterations`` of fast Griffin-Lim);
3. draws ``--samples-per-digit`` clips of every digit with ``Pipeline.sample(labels=...)`` (DDIM, ``--steps``)
   at each ``--guidance`` and measures, per guidance: the share the classifier recognises as the asked digit; the
   Frechet distance in the classifier's penultimate features to the held-out set (squared, as FID; Heusel et al.
   2017 eq. 6), against the same distance from real B (as many clips as the samples) to the held-out set; an
   Inception-style score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, sec. 4; 10 at most), against real B's;
   and the wall seconds of generation per second of audio;
4. writes two WAVs per digit and a spectrogram grid (one row per digit: real held-out clips, then samples) of the
   first ``--guidance`` to ``bench/out/audio/``, and the same grid to ``--plot``.

The defaults are the scale that fits about 30 minutes on one thread of a 2-core AMD EPYC (see the module's
measured choices in ``bench/results/audio.md``). Progress goes to stderr; the markdown report to stdout (and to
``--table``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402
from spoken_digits import WORDS, make_spoken_digits  # noqa: E402

from diffusionlab.config import SIGNAL_SIZES, AudioSpace, DataConfig, ModelConfig, NetworkConfig, TrainConfig  # noqa: E402
from diffusionlab.data.signals import load_audio_folder  # noqa: E402
from diffusionlab.evaluation.metrics import fid_from_features  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.spaces import SpectrogramSpace  # noqa: E402
from diffusionlab.training import Trainer  # noqa: E402

SOURCE_RATE = 8000  # the synthesised clips' rate (Hz)
FEATURES = 64  # the classifier's penultimate width


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def mel_filters(n_fft: int, rate: int, n_mels: int) -> Tensor:
    """Triangular mel filters (n_mels, n_fft // 2 + 1) on the HTK mel scale m = 2595 log10(1 + f / 700)."""
    mel = np.linspace(0.0, 2595 * np.log10(1 + rate / 2 / 700), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    low, centre, high = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None] - low) / (centre - low)
    falling = (high - bins[None]) / (high - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None)).float()


class LogMel(nn.Module):
    """Waveforms (B, 1, L) -> log-mel features (B, n_mels, frames): 32 ms Hann windows, hop 8 ms."""

    def __init__(self, rate: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft = 2 ** round(math.log2(0.032 * rate))
        self.register_buffer("window", torch.hann_window(self.n_fft))
        self.register_buffer("filters", mel_filters(self.n_fft, rate, n_mels))

    def forward(self, x: Tensor) -> Tensor:
        spec = torch.stft(x[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        return torch.log(self.filters @ spec.abs() ** 2 + 1e-6)


class DigitClassifier(nn.Module):
    """Log-mel features, normalised per band, through three conv layers over time, pooled, then 64 -> 10."""

    def __init__(self, rate: int, n_mels: int) -> None:
        super().__init__()
        self.features = LogMel(rate, n_mels)
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))

        def block(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.BatchNorm1d(cout), nn.ReLU())

        self.convs = nn.Sequential(block(n_mels, 64, 5), nn.MaxPool1d(2), block(64, 96, 5), nn.MaxPool1d(2))
        self.last = block(96, 128, 3)
        self.hidden = nn.Sequential(nn.Linear(256, FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, len(WORDS)))

    def fit_normalisation(self, x: Tensor) -> None:
        """Per-band mean and std of the log-mel features of the training clips."""
        with torch.no_grad():
            f = torch.cat([self.features(b) for b in x.split(256)])
        self.mean.copy_(f.mean(dim=(0, 2))[:, None])
        self.std.copy_(f.std(dim=(0, 2))[:, None] + 1e-5)

    def embed(self, x: Tensor) -> Tensor:
        """The penultimate features (B, 64)."""
        h = self.last(self.convs((self.features(x) - self.mean) / self.std))
        return self.hidden(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def augment(x: Tensor, rate: int, generator: torch.Generator) -> Tensor:
    """Each clip shifted by up to 50 ms (zeros fill in) and scaled by a gain in [0.5, 1]."""
    most = int(0.05 * rate)
    shifts = torch.randint(-most, most + 1, (len(x),), generator=generator)
    gains = 0.5 + 0.5 * torch.rand(len(x), 1, 1, generator=generator)
    out = torch.zeros_like(x)
    for i, s in enumerate(shifts.tolist()):
        if s >= 0:
            out[i, :, s:] = x[i, :, : x.shape[2] - s]
        else:
            out[i, :, :s] = x[i, :, -s:]
    return out * gains


def train_classifier(x: Tensor, digits: Tensor, rate: int, args: argparse.Namespace) -> DigitClassifier:
    """The digit classifier of the module docstring, trained on (x, digits) with fixed settings."""
    torch.manual_seed(args.seed)
    clf = DigitClassifier(rate, args.mels)
    clf.fit_normalisation(x)
    batches = math.ceil(len(x) / 64)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.clf_epochs * batches)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.clf_epochs):
        clf.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for idx in order.split(64):
            loss = F.cross_entropy(clf(augment(x[idx], rate, generator)), digits[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.clf_epochs:
            log(f"classifier epoch {epoch + 1}/{args.clf_epochs}: loss {total / len(x):.3f}, "
                f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return clf.eval()


@torch.no_grad()
def classify(clf: DigitClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """Penultimate features (N, 64) and class probabilities (N, 10) of clips (N, 1, L)."""
    feats = torch.cat([clf.embed(b) for b in x.split(256)])
    return feats, torch.softmax(clf.head(feats), dim=1)


def inception_score(probs: Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with p(y) the mean of p(y|x) over the set (Salimans et al. 2016, sec. 4)."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(dim=0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(dim=1).mean()))


def load_set(folder: Path, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """A synthesised folder as clips (N, 1, L) at the model's rate and length, and their digits 0..9."""
    ds = load_audio_folder(folder, sample_rate=args.sample_rate, clip_seconds=args.clip_seconds)
    to_digit = torch.tensor([WORDS.index(name) for name in ds.class_names])
    return ds.x, to_digit[ds.labels]


def network_kind(args: argparse.Namespace) -> str:
    """The network the model gets: --network on the waveform, the 2-D UNet on spectrograms."""
    return args.network if args.audio_space == "waveform" else SpectrogramSpace.network_kind


def network_config(args: argparse.Namespace) -> NetworkConfig:
    """The diffusion network: SIGNAL_SIZES[--size] of ``network_kind``, class-conditional (classes fitted to the
    data)."""
    shape = dict(SIGNAL_SIZES[args.size])
    if args.base_channels is not None:
        shape["base_channels"] = args.base_channels
    if args.channel_mults is not None:
        shape["channel_mults"] = args.channel_mults
    kind = network_kind(args)
    extra = {"dilation_cycle": args.dilation_cycle} if kind == "diffwave" else {}
    return NetworkConfig(**shape, num_classes=0, kind=kind, **extra)


def train_model(folder: Path, out: Path, args: argparse.Namespace) -> tuple[Pipeline, float, float]:
    """Train the class-conditional model on the train folder; returns it, the training seconds and the mean loss of
    the last 100 steps."""
    config = ModelConfig(
        network=network_config(args),
        data=DataConfig(
            dataset=f"audio:{folder}",
            sample_rate=args.sample_rate,
            clip_seconds=args.clip_seconds,
            audio_space=args.audio_space,
            n_fft=args.n_fft,
            hop_length=args.hop_length,
            griffin_lim_iterations=args.griffin_lim_iterations,
        ),
        train=TrainConfig(
            steps=args.train_steps,
            batch_size=args.batch,
            lr=args.lr,
            warmup_steps=args.warmup,
            seed=args.seed,
            mixed_precision=args.precision,
            log_with=[],
            sample_every=0,
            checkpoint_every=0,
            log_every=0,
            final_eval=False,
        ),
    )
    trainer = Trainer(config, out, progress=False)
    losses: list[float] = []
    start = time.perf_counter()
    step_fn = trainer.train_step

    def logged_step(step: int) -> tuple[float, float]:
        loss, grad_norm = step_fn(step)
        losses.append(float(loss))
        if (step + 1) % 100 == 0 or step + 1 == args.train_steps:
            recent = float(np.mean(losses[-100:]))
            log(f"diffusion step {step + 1}/{args.train_steps}: loss {recent:.4f}, {time.perf_counter() - start:.0f} s")
        return loss, grad_norm

    trainer.train_step = logged_step  # type: ignore[method-assign]
    # Trainer.finish() would also draw an 80-clip preview grid (minutes of a one-thread budget): save the model only
    trainer.finish = lambda: trainer.objective.save(out)  # type: ignore[method-assign]
    trainer.train()
    seconds = time.perf_counter() - start
    return Pipeline.load(out), seconds, float(np.mean(losses[-100:]))


def describe_space(args: argparse.Namespace, pipe: Pipeline) -> str:
    """The space the model diffuses in, as the report says it."""
    if args.audio_space == "waveform":
        return f"waveform ({pipe.sample_shape[-1]} samples)"
    c, h, w = pipe.sample_shape
    return (
        f"spectrogram (|STFT|^0.3 normalised per bin, n_fft {args.n_fft}, hop {args.hop_length}: {c}x{h}x{w} padded; "
        f"decoded by {args.griffin_lim_iterations} fast Griffin-Lim iterations)"
    )


def label_ids(pipe: Pipeline) -> list[int]:
    """The model's class id of each digit 0..9 (its classes are the folder names, sorted alphabetically)."""
    names = pipe.config.data.class_names
    return [names.index(word) for word in WORDS]


def write_outputs(pipe: Pipeline, clips: Tensor, digits: Tensor, real: Tensor, real_digits: Tensor, args) -> None:
    """Two WAVs per digit and a grid: per digit, two held-out real clips then four samples."""
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    pick = [int(i) for d in range(len(WORDS)) for i in torch.nonzero(digits == d)[:2, 0]]
    pipe.space.write_files(clips[pick], out / "wav", labels=[WORDS[int(digits[i])] for i in pick])
    rows = []
    for d in range(len(WORDS)):
        rows += [real[torch.nonzero(real_digits == d)[:2, 0]], clips[torch.nonzero(digits == d)[:4, 0]]]
    grid = torch.cat(rows)
    names = [f"{d} {WORDS[d]}" for d in range(len(WORDS))]
    pipe.space.save(grid, out / "spectrograms.png", nrow=6, row_labels=names)
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "spectrograms.png", args.plot)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print the markdown report (and write it to --table)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-per-word", type=int, default=100)
    p.add_argument("--heldout-per-word", type=int, default=50)
    p.add_argument("--samples-per-digit", type=int, default=20)
    p.add_argument("--sample-rate", type=int, default=4000)
    p.add_argument("--clip-seconds", type=float, default=0.75)
    p.add_argument("--mels", type=int, default=40)
    p.add_argument("--clf-epochs", type=int, default=30)
    p.add_argument("--audio-space", choices=get_args(AudioSpace), default=DataConfig().audio_space)
    p.add_argument("--n-fft", type=int, default=DataConfig().n_fft, help="spectrogram: samples per STFT window")
    p.add_argument("--hop-length", type=int, default=DataConfig().hop_length, help="spectrogram: samples per hop")
    p.add_argument("--griffin-lim-iterations", type=int, default=DataConfig().griffin_lim_iterations)
    p.add_argument("--network", choices=["unet1d", "diffwave"], default="unet1d", help="waveform: the 1-D network")
    p.add_argument("--size", choices=sorted(SIGNAL_SIZES), default="tiny")
    p.add_argument("--base-channels", type=int, default=None, help="unet1d: override the size's base channels")
    p.add_argument("--channel-mults", type=int, nargs="+", default=None, help="unet1d: override the size's levels")
    p.add_argument("--dilation-cycle", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--precision", choices=["auto", "no", "bf16"], default="no")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "diffusionlab-bench-audio")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "audio")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    folders = {}
    for name, per_word, seed in [
        ("train", args.train_per_word, args.seed),
        ("heldout", args.heldout_per_word, args.seed + 1),
        ("real_b", args.samples_per_digit, args.seed + 2),
    ]:
        t0 = time.perf_counter()
        folders[name] = args.work / f"{name}-{per_word}-seed{seed}"
        make_spoken_digits(folders[name], per_word=per_word, sample_rate=SOURCE_RATE, seed=seed, workers=args.threads)
        log(f"{name}: {per_word} clips per word (seed {seed}) in {time.perf_counter() - t0:.0f} s")
    x_train, d_train = load_set(folders["train"], args)
    x_held, d_held = load_set(folders["heldout"], args)
    x_b, d_b = load_set(folders["real_b"], args)

    t0 = time.perf_counter()
    clf = train_classifier(x_train, d_train, args.sample_rate, args)
    clf_seconds = time.perf_counter() - t0
    f_held, p_held = classify(clf, x_held)
    f_b, p_b = classify(clf, x_b)
    held_acc = float((p_held.argmax(1) == d_held).float().mean())
    b_acc = float((p_b.argmax(1) == d_b).float().mean())
    log(f"classifier: held-out accuracy {held_acc:.3f}, real B {b_acc:.3f}, {clf_seconds:.0f} s")

    model_dir = Path(tempfile.mkdtemp(prefix="model-", dir=args.work))
    pipe, train_seconds, final_loss = train_model(folders["train"], model_dir, args)
    params = sum(q.numel() for q in pipe.network.parameters())

    ids = label_ids(pipe)
    asked = torch.arange(len(WORDS)).repeat_interleave(args.samples_per_digit)
    audio_seconds = len(asked) * args.clip_seconds
    rows = []
    first = None
    for g in args.guidance:
        t0 = time.perf_counter()
        clips = pipe.sample(labels=[ids[int(d)] for d in asked], steps=args.steps, guidance=g, seed=args.seed)
        gen_seconds = time.perf_counter() - t0
        f_gen, p_gen = classify(clf, clips)
        per_digit = [float((p_gen[asked == d].argmax(1) == d).float().mean()) for d in range(len(WORDS))]
        rows.append(
            {
                "guidance": g,
                "share": float((p_gen.argmax(1) == asked).float().mean()),
                "per_digit": per_digit,
                "fd": fid_from_features(f_held, f_gen),
                "is": inception_score(p_gen),
                "rtf": gen_seconds / audio_seconds,
            }
        )
        log(f"guidance {g}: recognised {rows[-1]['share']:.3f}, FD {rows[-1]['fd']:.2f}, IS {rows[-1]['is']:.2f}, "
            f"{gen_seconds:.0f} s for {audio_seconds:.0f} s of audio")  # fmt: skip
        if first is None:
            first = clips
    write_outputs(pipe, first, asked, x_held, d_held, args)
    fd_real = fid_from_features(f_held, f_b)
    is_real = inception_score(p_b)
    total = time.perf_counter() - started

    n = len(asked)
    lines = [
        "# Audio: class-conditional spoken digits (bench/audio.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; "
        f"seed {args.seed}; whole run {total / 60:.1f} min.",
        "",
        f"Data: eSpeak NG spoken digits, {SOURCE_RATE} Hz 1 s clips read at {args.sample_rate} Hz, centre-cropped to "
        f"{args.clip_seconds} s ({x_train.shape[2]} samples): train {len(x_train)} clips (seed {args.seed}), held-out "
        f"{len(x_held)} (seed {args.seed + 1}), real B {len(x_b)} (seed {args.seed + 2}).",
        "",
        f"Classifier (log-mel, 3 conv layers, {args.clf_epochs} epochs on the train set, {clf_seconds:.0f} s): "
        f"accuracy {held_acc:.1%} on the held-out clips, {b_acc:.1%} on real B.",
        "",
        f"Model: {describe_space(args, pipe)}; {network_kind(args)} '{args.size}' "
        f"(base_channels {pipe.config.network.base_channels}, channel_mults {pipe.config.network.channel_mults}, "
        f"{params / 1e3:.0f}k parameters), class-conditional, {args.train_steps} "
        f"steps of batch {args.batch}, lr {args.lr}, precision {args.precision}: {train_seconds / 60:.1f} min, final "
        f"loss {final_loss:.4f}. Sampling: DDIM, {args.steps} steps, {args.samples_per_digit} clips per digit "
        f"({n} in all, {audio_seconds:.0f} s of audio).",
        "",
        "| set | guidance | recognised as the asked digit | FD to held-out | IS | generation s per s of audio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| samples | {r['guidance']:g} | {r['share']:.1%} | {r['fd']:.2f} | {r['is']:.2f} | {r['rtf']:.2f} |"
        )
    lines.append(f"| real B ({n} clips) | - | {b_acc:.1%} | {fd_real:.2f} | {is_real:.2f} | - |")
    lines += [
        "",
        "Per digit, share recognised (guidance " + ", ".join(f"{r['guidance']:g}" for r in rows) + "):",
        "",
        "| guidance | " + " | ".join(WORDS) + " |",
        "|---:|" + "---:|" * len(WORDS),
    ]
    for r in rows:
        lines.append(f"| {r['guidance']:g} | " + " | ".join(f"{s:.0%}" for s in r["per_digit"]) + " |")
    best = max(r["share"] for r in rows)
    lines += [
        "",
        f"Aim: at least 90% recognised: {'PASS' if best >= 0.9 else 'FAIL'} ({best:.1%} at best).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
