"""Text: a masked diffusion language model against an autoregressive one of the same size and training compute.

    python bench/text.py --table bench/results/text.md

On the "pydocs" corpus (Python's own documentation, text8 alphabet of K = 27 symbols, ``--seq-len`` characters a
sequence) the bench trains two ``DiscreteTransformer``s with the same width, depth, heads, input vocabulary (K + 1)
and so the same parameters, on the same batches (``--batch`` windows at random offsets of the train split's
character stream), for the same ``--steps`` with AdamW, ``--lr`` warmed up linearly over ``--warmup`` steps then
cosine to 0, gradient norm clipped at 1, on ``--threads`` threads:

- masked: bidirectional, the absorbing process with the log-linear schedule, MDLM's NELBO at stratified times;
- autoregressive (AR): ``causal=True``, no time (t = None), next-token cross-entropy. Its input is the sequence
  shifted right behind a BOS (the id K, the masked model's MASK id, which the AR model otherwise never sees), so
  that position i predicts token i from tokens 0..i-1 and BOS: both models score all L characters, the AR model's
  first one from a learned distribution.

It then measures, each number by this script:

1. validation bits/char: masked = NELBO over the whole validation split at ``--eval-draws`` stratified draws of
   t in (0, 1] (an upper bound on -log2 p; mean +- standard error over the draws), AR = exact -log2 p; both / L;
2. ``--samples`` samples of each: masked by ``sample_tokens`` (seed 0, temperature 1) at each of ``--sample-steps``,
   AR left to right at temperature 1, with their times and the share of their complete words found in the train
   split's words (the validation text's own share is the reference);
3. infilling on ``--infill-windows`` validation windows with ``--infill-rates`` of the characters hidden at random
   positions (seeded): the share of hidden characters recovered exactly by the masked model (``sample_tokens`` with
   keep/given, ``--infill-steps`` steps, temperature 0 = argmax), by the AR model filling left to right (each hole
   the argmax of its next-token distribution given everything to its left, earlier fills in place) and by a
   trigram model counted on the train split (argmax P(c | two previous), falling back to bigram then unigram where
   the context was never seen; left to right, earlier fills in place).

The defaults fit about 10 minutes on one thread. Width 64 and depth 2 rather than a wider, deeper network: in
the same time width 128 and depth 4 train about 450 steps, in which the masked model barely leaves the unigram
level (4.0 bits/char after 300 steps, where width 64 and depth 2 reach 2.7 after 2400); lr 2e-3 learned fastest of
1e-3, 2e-3 and 5e-3 (5e-3 never left the unigram level). Progress goes to stderr; the markdown report to stdout
(and to ``--table``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402

from diffusionlab.data.text import load_text_dataset, pydocs_text  # noqa: E402
from diffusionlab.discrete import AbsorbingProcess, LogLinearSchedule  # noqa: E402
from diffusionlab.discrete.losses import nelbo  # noqa: E402
from diffusionlab.discrete.sampling import sample_tokens  # noqa: E402
from diffusionlab.networks import DiscreteTransformer  # noqa: E402
from diffusionlab.sampling import sample_seed  # noqa: E402

K = 27  # text8 alphabet
BOS = K  # the AR model's start symbol: the id the masked model uses for MASK
LN2 = math.log(2.0)
CHUNK = 64  # sequences per forward pass in evaluation


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def stratified_times(n: int, generator: torch.Generator, low: float = 0.0) -> Tensor:
    """n times covering (low, 1] evenly from one random offset: the NELBO's integral over t with little variance."""
    offset = torch.rand(1, generator=generator, dtype=torch.float64)
    u = 1.0 - (offset + torch.arange(n, dtype=torch.float64) / n) % 1.0  # in (0, 1]
    return (low + (1.0 - low) * u).to(torch.get_default_dtype())


def shifted(x0: Tensor) -> Tensor:
    """The AR model's input: BOS then tokens 0..L-2, so that position i predicts token i."""
    return torch.cat([torch.full_like(x0[:, :1], BOS), x0[:, :-1]], dim=1)


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    name: str, net: DiscreteTransformer, loss_fn: Callable[[Tensor, torch.Generator], Tensor], stream: Tensor, args
) -> dict[str, float]:
    """Train ``net`` on random windows of ``stream`` with loss_fn(x0, generator) in nats per character; return the
    wall seconds and the mean training loss of the last 100 steps in bits/char."""
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, args.warmup, args.steps))
    batches = torch.Generator().manual_seed(args.seed)  # the same windows for both models
    noise = torch.Generator().manual_seed(args.seed + 1)
    offsets = torch.arange(args.seq_len)
    losses: list[float] = []
    net.train()
    start = time.perf_counter()
    for step in range(args.steps):
        starts = torch.randint(len(stream) - args.seq_len + 1, (args.batch,), generator=batches)
        x0 = stream[starts[:, None] + offsets]
        loss = loss_fn(x0, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            recent = sum(losses[-100:]) / len(losses[-100:]) / LN2
            log(f"{name} step {step + 1}/{args.steps}: {recent:.3f} bits/char, {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    net.eval()
    return {"seconds": seconds, "train_bits": sum(losses[-100:]) / len(losses[-100:]) / LN2}


@torch.no_grad()
def masked_bits(process: AbsorbingProcess, net: DiscreteTransformer, tokens: Tensor, draws: int) -> tuple[float, float]:
    """Validation NELBO in bits/char: mean and standard error over ``draws`` stratified draws of t in (0, 1]."""
    values = []
    for d in range(draws):
        gen = torch.Generator().manual_seed(1000 + d)
        t = stratified_times(len(tokens), gen)
        total = 0.0
        for i in range(0, len(tokens), CHUNK):
            nats = nelbo(process, lambda x, s, c: net(x, s), tokens[i : i + CHUNK], t[i : i + CHUNK], generator=gen)
            total += float(nats.sum())
        values.append(total / tokens.numel() / LN2)
    mean = sum(values) / draws
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (draws - 1) / draws) if draws > 1 else float("nan")
    return mean, spread


@torch.no_grad()
def ar_bits(net: DiscreteTransformer, tokens: Tensor) -> tuple[float, float]:
    """Validation -log2 p per character of the AR model: over all L characters (the first from BOS), and over
    characters 1..L-1 only."""
    all_nats, rest_nats = 0.0, 0.0
    for i in range(0, len(tokens), CHUNK):
        x0 = tokens[i : i + CHUNK]
        ce = F.cross_entropy(net(shifted(x0), None).transpose(1, 2), x0, reduction="none")
        all_nats += float(ce.sum())
        rest_nats += float(ce[:, 1:].sum())
    n, length = tokens.shape
    return all_nats / (n * length) / LN2, rest_nats / (n * (length - 1)) / LN2


@torch.no_grad()
def ar_sample(net: DiscreteTransformer, count: int, length: int, seed: int) -> Tensor:
    """``count`` sequences drawn left to right at temperature 1; sample i from the generator of (seed, i)."""
    generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(count)]
    x = torch.full((count, 1), BOS, dtype=torch.long)
    for _ in range(length):
        probs = torch.softmax(net(x, None)[:, -1].double(), dim=-1)
        nxt = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
        x = torch.cat([x, nxt[:, None]], dim=1)
    return x[:, 1:]


@torch.no_grad()
def ar_fill(net: DiscreteTransformer, x0: Tensor, holes: Tensor) -> Tensor:
    """Fill the holes left to right: each the argmax of the AR model's next-token distribution given everything to
    its left (earlier fills in place)."""
    x = torch.where(holes, torch.zeros_like(x0), x0)
    for j in range(x.shape[1]):
        rows = holes[:, j].nonzero().squeeze(-1)
        if len(rows):
            x[rows, j] = net(shifted(x[rows, : j + 1]), None)[:, -1].argmax(-1)
    return x


def ngram_counts(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unigram (K,), bigram (K, K) and trigram (K, K, K) counts of a token stream."""
    uni = np.bincount(stream, minlength=K)
    bi = np.bincount(stream[:-1] * K + stream[1:], minlength=K * K).reshape(K, K)
    tri = np.bincount((stream[:-2] * K + stream[1:-1]) * K + stream[2:], minlength=K**3).reshape(K, K, K)
    return uni, bi, tri


def trigram_fill(counts: tuple[np.ndarray, np.ndarray, np.ndarray], x0: Tensor, holes: Tensor) -> Tensor:
    """Fill the holes left to right with argmax P(c | two previous), else P(c | previous), else P(c), as counted."""
    uni, bi, tri = counts
    x = np.where(holes.numpy(), 0, x0.numpy())
    mask = holes.numpy()
    for row, j in zip(*np.nonzero(mask), strict=True):  # row-major: left to right within each window
        if j >= 2 and tri[x[row, j - 2], x[row, j - 1]].sum() > 0:
            x[row, j] = tri[x[row, j - 2], x[row, j - 1]].argmax()
        elif j >= 1 and bi[x[row, j - 1]].sum() > 0:
            x[row, j] = bi[x[row, j - 1]].argmax()
        else:
            x[row, j] = uni.argmax()
    return torch.from_numpy(x)


def word_share(texts: list[str], vocabulary: set[str]) -> float:
    """Share of complete words (between two spaces: each text's first and last piece dropped) in ``vocabulary``."""
    words = [w for text in texts for w in text.split(" ")[1:-1] if w]
    return sum(w in vocabulary for w in words) / len(words) if words else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Train both models, measure likelihood, samples and infilling, print the report (and write it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-draws", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--infill-windows", type=int, default=64)
    p.add_argument("--infill-rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    p.add_argument("--infill-steps", type=int, default=128)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)
    for name in ("seq_len", "width", "depth", "heads", "batch", "steps", "warmup", "threads", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer.")
    if args.eval_draws < 2:
        p.error(f"--eval-draws={args.eval_draws} must be at least 2 (the standard error needs two draws).")
    if not all(0.0 < r < 1.0 for r in args.infill_rates):
        p.error(f"--infill-rates={args.infill_rates} must each lie in (0, 1).")
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    length = args.seq_len

    train_set = load_text_dataset("pydocs", length, split="train")
    valid = load_text_dataset("pydocs", length, split="validation").tokens
    tokenizer = train_set.tokenizer
    if tokenizer.vocab_size != K:
        raise SystemExit(f"the pydocs tokenizer has {tokenizer.vocab_size} symbols; this bench expects {K}.")
    stream = train_set.tokens.reshape(-1)
    log(f"pydocs: {stream.numel()} train characters, {valid.shape[0]} validation windows of {length}")

    process = AbsorbingProcess(K, LogLinearSchedule())
    nets = {}
    for causal in (False, True):
        torch.manual_seed(args.seed)
        nets[causal] = DiscreteTransformer(
            K + 1, K, length, width=args.width, depth=args.depth, heads=args.heads, causal=causal
        )
    masked, ar = nets[False], nets[True]
    params = sum(q.numel() for q in masked.parameters())

    def masked_loss(x0: Tensor, gen: torch.Generator) -> Tensor:
        t = stratified_times(len(x0), gen, low=1e-3)
        return nelbo(process, lambda x, s, c: masked(x, s), x0, t, generator=gen).mean() / length

    def ar_loss(x0: Tensor, gen: torch.Generator) -> Tensor:
        return F.cross_entropy(ar(shifted(x0), None).transpose(1, 2), x0)

    fit = {"masked": train("masked", masked, masked_loss, stream, args), "AR": train("AR", ar, ar_loss, stream, args)}

    log("validation bits/char")
    m_bits, m_err = masked_bits(process, masked, valid, args.eval_draws)
    a_bits, a_rest = ar_bits(ar, valid)

    log("samples")
    vocabulary = set(pydocs_text("train").split())
    samples: list[tuple[str, int, float, list[str]]] = []
    for steps in args.sample_steps:
        start = time.perf_counter()
        x = sample_tokens(process, lambda x, s, c: masked(x, s), (args.samples, length), steps, seed=0)
        samples.append((f"masked, {steps} steps", steps, time.perf_counter() - start, tokenizer.decode_batch(x)))
    start = time.perf_counter()
    x = ar_sample(ar, args.samples, length, seed=0)
    samples.append(("AR, left to right", length, time.perf_counter() - start, tokenizer.decode_batch(x)))
    reference = word_share(tokenizer.decode_batch(valid), vocabulary)

    log("infilling")
    counts = ngram_counts(stream.numpy())
    windows = valid[torch.linspace(0, len(valid) - 1, min(args.infill_windows, len(valid))).long()]
    infill = []
    for r, rate in enumerate(args.infill_rates):
        hidden = max(1, round(rate * length))
        order = torch.rand(windows.shape, generator=torch.Generator().manual_seed(args.seed + 10 + r)).argsort(-1)
        holes = torch.zeros_like(windows, dtype=torch.bool).scatter(1, order[:, :hidden], True)
        row = {"rate": rate, "hidden": int(holes.sum())}
        start = time.perf_counter()
        filled = sample_tokens(
            process,
            lambda x, s, c: masked(x, s),
            windows.shape,
            args.infill_steps,
            seed=0,
            temperature=0.0,
            keep=~holes,
            given=windows,
        )
        row["masked_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ar_filled = ar_fill(ar, windows, holes)
        row["ar_s"] = time.perf_counter() - start
        tri_filled = trigram_fill(counts, windows, holes)
        for key, out in (("masked", filled), ("ar", ar_filled), ("trigram", tri_filled)):
            assert torch.equal(out[~holes], windows[~holes]), f"{key} changed a given character"
            row[key] = float((out[holes] == windows[holes]).double().mean())
        infill.append(row)
        log(f"infill {rate:.0%}: masked {row['masked']:.3f}, AR {row['ar']:.3f}, trigram {row['trigram']:.3f}")

    command = " ".join(["python bench/text.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}: "
        f"`{command}`",
        "",
        f'Corpus "pydocs" (text8 alphabet, {K} symbols): {stream.numel()} train characters, {valid.numel()} '
        f"validation characters ({valid.shape[0]} windows of {length}). Both models: DiscreteTransformer width "
        f"{args.width}, depth {args.depth}, heads {args.heads}, {params:,} parameters each, batch {args.batch} random "
        f"train windows (the same for both), {args.steps} steps, AdamW lr {args.lr:g} (warm-up {args.warmup}, cosine "
        f"to 0), {args.threads} thread(s).",
        "",
        "## Validation bits per character",
        "",
        "| model | train min | train bits/char (last 100 steps) | validation bits/char |",
        "|---|---:|---:|---:|",
        f"| masked diffusion (MDLM NELBO, an upper bound; {args.eval_draws} stratified t draws) "
        f"| {fit['masked']['seconds'] / 60:.2f} | {fit['masked']['train_bits']:.3f} | {m_bits:.3f} +- {m_err:.3f} |",
        f"| autoregressive, same network with causal=True (exact) | {fit['AR']['seconds'] / 60:.2f} "
        f"| {fit['AR']['train_bits']:.3f} | {a_bits:.3f} |",
        "",
        f"Both score all {length} characters of each window; the AR model predicts the first from a BOS token (the "
        f"id {BOS}, otherwise unused by it). Over characters 1..{length - 1} only, the AR model scores {a_rest:.3f} "
        f"bits/char. A uniform guess costs log2 {K} = {math.log2(K):.3f}. Masked minus AR: "
        f"{m_bits - a_bits:+.3f} bits/char.",
        "",
        f"## Samples ({args.samples} each, seed 0, temperature 1)",
        "",
        "| sampler | network calls | seconds for all | ms per call | words found in the train split |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, calls, seconds, texts in samples:
        lines.append(
            f"| {label} | {calls} | {seconds:.2f} | {1000 * seconds / calls:.1f} | "
            f"{word_share(texts, vocabulary):.1%} |"
        )
    lines += [
        f"| validation text (reference) | | | | {reference:.1%} |",
        "",
        "Words: complete words of each sample (its first and last piece dropped) that occur in the train split. The "
        "masked sampler calls the network once a step on all samples (no cache); the AR sampler once a character "
        "on the growing prefix (no key-value cache).",
        "",
        "```",
    ]
    for label, _, _, texts in samples:
        lines += [f"[{label}]", *texts[:2], ""]
    lines[-1] = "```"
    lines += [
        "",
        f"## Infilling: share of hidden characters recovered exactly ({len(windows)} validation windows)",
        "",
        f"| hidden | characters | masked model ({args.infill_steps} steps, argmax) | AR left to right | trigram "
        "| masked s | AR s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in infill:
        lines.append(
            f"| {row['rate']:.0%} | {row['hidden']} | {row['masked']:.1%} | {row['ar']:.1%} | {row['trigram']:.1%} "
            f"| {row['masked_s']:.1f} | {row['ar_s']:.1f} |"
        )
    lines += [
        "",
        "Hidden positions are drawn at random per window (seeded), the same for the three fillers. The masked model "
        "sees both sides of each hole; the AR model and the trigram model (counted on the train split, falling back "
        "to bigram then unigram for unseen contexts) see only the left side, with their earlier fills in place.",
        "",
        f"Total wall time of this run: {(time.perf_counter() - began) / 60:.1f} min.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
