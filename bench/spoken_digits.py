"""Spoken digits in the spirit of SC09, synthesised on this machine with eSpeak NG: nothing is downloaded.

    python bench/spoken_digits.py --out bench/out/spoken_digits --per-word 60

The ten words "zero".."nine" are spoken by ``/usr/bin/espeak-ng`` (Debian's package) with, per clip, a seeded
choice of English accent (``ACCENTS``, the ``gmw/`` voices of ``espeak-ng --voices=en``; the ``mb/`` ones need
MBROLA), voice variant (``VARIANTS``: the accent's default, +m1..+m7, +f1..+f4), speed (-s 120..200 words per
minute) and pitch (-p 20..80). Each clip is resampled from eSpeak's 22050 Hz to ``sample_rate``, trimmed of leading
and trailing silence (a 10 ms RMS envelope more than 35 dB below its peak), peak-normalised to 0.9 and centred in a
1 s clip of zeros; a word longer than the clip is drawn again with new settings (counted as a redraw). The clips are
16-bit WAVs in class sub-folders ``zero/`` .. ``nine/`` (what ``load_audio_folder`` reads), with ``manifest.csv``
(file, word, voice, speed, pitch, seconds spoken) and ``settings.json``: a folder already built with the same
settings is reused as it is.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from diffusionlab.data.signals import load_audio_folder, resample, write_wav

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4")
SPEEDS = (120, 200)  # words per minute, inclusive
PITCHES = (20, 80)  # eSpeak's 0..99 pitch scale, inclusive
ESPEAK = "/usr/bin/espeak-ng"
SILENCE_DB = 35.0  # trimmed: where the 10 ms RMS envelope is more than this far below its peak
PEAK = 0.9
MAX_DRAWS = 20


def espeak_path() -> str:
    """The espeak-ng binary: Debian's /usr/bin/espeak-ng, else the first on PATH; a clear error if none."""
    found = ESPEAK if Path(ESPEAK).is_file() else shutil.which("espeak-ng")
    if found is None:
        raise RuntimeError("espeak-ng is not installed (expected /usr/bin/espeak-ng: apt-get install espeak-ng).")
    return found


def speak(word: str, voice: str, speed: int, pitch: int, binary: str | None = None) -> tuple[np.ndarray, int]:
    """One word from eSpeak NG as (float32 mono samples, sample rate)."""
    import soundfile as sf

    command = [binary or espeak_path(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    done = subprocess.run(command, capture_output=True, check=False, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    data, rate = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def trim_silence(samples: np.ndarray, rate: int, silence_db: float = SILENCE_DB) -> np.ndarray:
    """The samples from the first to the last 10 ms window whose RMS is within ``silence_db`` of the loudest one."""
    width = max(1, rate // 100)
    envelope = np.sqrt(np.convolve(samples.astype(np.float64) ** 2, np.ones(width) / width, mode="same"))
    loud = np.flatnonzero(envelope >= envelope.max() * 10 ** (-silence_db / 20))
    if loud.size == 0:
        return samples[:0]
    return samples[loud[0] : loud[-1] + 1]


def centred_clip(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` peak-normalised to ``PEAK`` and centred in ``length`` zeros (the caller keeps it short enough)."""
    out = np.zeros(length, dtype=np.float32)
    start = (length - samples.size) // 2
    out[start : start + samples.size] = samples * (PEAK / max(float(np.abs(samples).max()), 1e-9))
    return out


def _one_clip(
    word_index: int, i: int, seed: int, sample_rate: int, length: int, binary: str
) -> tuple[np.ndarray, dict[str, object]]:
    """Clip ``i`` of word ``word_index``: its own seeded settings, redrawn while the spoken word is too long."""
    rng = np.random.default_rng([seed, word_index, i])
    for draw in range(MAX_DRAWS):
        voice = ACCENTS[rng.integers(len(ACCENTS))] + VARIANTS[rng.integers(len(VARIANTS))]
        speed = int(rng.integers(SPEEDS[0], SPEEDS[1] + 1))
        pitch = int(rng.integers(PITCHES[0], PITCHES[1] + 1))
        samples, rate = speak(WORDS[word_index], voice, speed, pitch, binary)
        spoken = trim_silence(resample(samples[None], rate, sample_rate)[0], sample_rate)
        if 0 < spoken.size <= length:
            meta = {"voice": voice, "speed": speed, "pitch": pitch, "seconds": round(spoken.size / sample_rate, 4)}
            return centred_clip(spoken, length), {**meta, "redraws": draw}
    raise RuntimeError(f"no draw of {WORDS[word_index]!r} in {MAX_DRAWS} fitted in {length} samples.")


def make_spoken_digits(
    out_folder: str | Path,
    per_word: int = 60,
    sample_rate: int = 8000,
    seed: int = 0,
    clip_seconds: float = 1.0,
    workers: int = 2,
) -> dict[str, int]:
    """Write ``per_word`` 1 s clips of each of "zero".."nine" into ``out_folder``/<word>/ (see the module docstring);
    returns the clip count per word. The same settings give the same files; a folder built with them is reused."""
    out = Path(out_folder)
    settings = {"per_word": per_word, "sample_rate": sample_rate, "seed": seed, "clip_seconds": clip_seconds}
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        counts = {w: len(list((out / w).glob("*.wav"))) for w in WORDS}
        if all(n == per_word for n in counts.values()):
            return counts
    binary = espeak_path()
    length = round(clip_seconds * sample_rate)
    for word in WORDS:  # an earlier build with other settings: its clips go
        for old in (out / word).glob(f"{word}_*.wav"):
            old.unlink()
    jobs = [(w, i) for w in range(len(WORDS)) for i in range(per_word)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        clips = list(pool.map(lambda job: _one_clip(*job, seed, sample_rate, length, binary), jobs))
    rows = []
    for (w, i), (clip, meta) in zip(jobs, clips, strict=True):
        name = f"{WORDS[w]}/{WORDS[w]}_{i:04d}.wav"
        write_wav(clip[None], out / name, sample_rate)
        rows.append({"file": name, "word": WORDS[w], **meta})
    with open(out / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    settings_file.write_text(json.dumps(settings) + "\n")
    return {w: per_word for w in WORDS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "spoken_digits"))
    p.add_argument("--per-word", type=int, default=60)
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    start = time.perf_counter()
    counts = make_spoken_digits(args.out, args.per_word, args.sample_rate, args.seed, workers=args.workers)
    built = time.perf_counter() - start
    print(f"{sum(counts.values())} clips in {built:.1f} s -> {args.out}")
    print("  " + ", ".join(f"{w} {n}" for w, n in counts.items()))
    with open(Path(args.out) / "manifest.csv", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    seconds = np.array([float(r["seconds"]) for r in manifest])
    print(
        f"  voices used {len({r['voice'] for r in manifest})}, redraws {sum(int(r['redraws']) for r in manifest)}, "
        f"spoken length {seconds.min():.2f}..{seconds.max():.2f} s (median {np.median(seconds):.2f})"
    )
    start = time.perf_counter()
    ds = load_audio_folder(args.out)
    print(
        f"  load_audio_folder: {tuple(ds.x.shape)} at {ds.info.sample_rate} Hz, classes {ds.class_names}, "
        f"{time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
