"""What a golden output is compared by: the decoded pixels and text of a PNG, a fingerprint of each weight tensor.

Hashes of float outputs tie a recording to one CPU: oneDNN picks its kernels by instruction set (AVX2, AVX-512,
AMX), and each sums in its own order. These comparisons allow that rounding and nothing more; the tolerances and
how they were measured are in tests/README.md ("Golden outputs").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

REFERENCE = Path(__file__).parent / "reference"  # <group>/<file, '/' as '--'>.png and weights.json
VALUES_PER_TENSOR = 16

# pixel values (0..255): each within PIXEL_MAX levels, and at most this share of them differing at all. Sampled in
# bf16 (8 significant bits: a step of 1/256, one pixel level, just below 1) one value in ten moves a level between CPUs
PIXEL_MAX = 2
PIXEL_SHARE = {"no": 0.01, "bf16": 0.25}  # by the PNG's mixed_precision text ("no" when it has none)
# weights: sampled values, sum and sum of |x| within RTOL relative (ATOL absolute); the sum's error is measured
# against sum |x|, since a sum can cancel to near zero
WEIGHT_RTOL, WEIGHT_ATOL = 1e-3, 1e-5


def reference_png(group: str, file: str) -> Path:
    """Where the reference copy of the group's PNG ``file`` (a path relative to the group's folder) is kept."""
    return REFERENCE / group / (file.replace("/", "--"))


def fingerprint(path: Path) -> dict[str, dict]:
    """Per tensor of a safetensors file: shape, dtype, sum, sum of |x| (in float64) and 16 values at fixed
    positions, evenly spaced over the flattened tensor (all of them when it has 16 or fewer)."""
    out = {}
    for name, t in sorted(load_file(path).items()):
        flat = t.detach().reshape(-1).double()
        picks = torch.linspace(0, flat.numel() - 1, min(VALUES_PER_TENSOR, flat.numel())).round().long()
        out[name] = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "sum": flat.sum().item(),
            "abs_sum": flat.abs().sum().item(),
            "values": flat[picks].tolist(),
        }
    return out


def load_weights_reference() -> dict[str, dict[str, dict]]:
    """{'group/file': fingerprint} as record.py wrote it."""
    return json.loads((REFERENCE / "weights.json").read_text())


def _close(got: float, want: float, scale: float) -> bool:
    return abs(got - want) <= WEIGHT_ATOL + WEIGHT_RTOL * scale


def weight_differences(got: dict[str, dict], want: dict[str, dict]) -> list[str]:
    """One line per tensor whose fingerprint is not the reference's within the tolerances; [] when all match."""
    problems = [f"{n}: missing" for n in sorted(set(want) - set(got))]
    problems += [f"{n}: not in the reference" for n in sorted(set(got) - set(want))]
    for name in sorted(set(got) & set(want)):
        g, w = got[name], want[name]
        if (g["shape"], g["dtype"]) != (w["shape"], w["dtype"]):
            problems.append(f"{name}: {g['dtype']}{g['shape']}, expected {w['dtype']}{w['shape']}")
            continue
        bad = [
            f"{key} {g[key]:.6g} vs {w[key]:.6g}"
            for key, scale in (("sum", w["abs_sum"]), ("abs_sum", w["abs_sum"]))
            if not _close(g[key], w[key], scale)
        ]
        bad += [
            f"values[{i}] {a:.6g} vs {b:.6g}"
            for i, (a, b) in enumerate(zip(g["values"], w["values"], strict=True))
            if not _close(a, b, abs(b))
        ]
        if bad:
            problems.append(f"{name}: " + ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    return problems


def read_png(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """The decoded pixels (uint8, as stored) and the text chunks of a PNG."""
    with Image.open(path) as im:
        text = {k: v for k, v in im.info.items() if isinstance(v, str)}
        return np.asarray(im), text


def pixel_stats(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Largest and mean |difference| in pixel levels, and the share of pixel values that differ at all."""
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return {"max": int(diff.max(initial=0)), "share": float((diff > 0).mean()), "mean": float(diff.mean())}


def png_differences(got_path: Path, want_path: Path) -> list[str]:
    """What separates a PNG from its reference beyond rounding: mode, size, text, or pixels past the tolerances."""
    got, got_text = read_png(got_path)
    want, want_text = read_png(want_path)
    problems = []
    if got_text != want_text:
        problems.append(f"text {got_text}, expected {want_text}")
    if got.shape != want.shape:
        return [*problems, f"pixels of shape {got.shape}, expected {want.shape}"]
    s, share = pixel_stats(got, want), PIXEL_SHARE[want_text.get("mixed_precision", "no")]
    if s["max"] > PIXEL_MAX or s["share"] > share:
        problems.append(
            f"pixel values differ by up to {s['max']}/255, {s['share']:.2%} of them (mean {s['mean']:.3f}/255; "
            f"allowed {PIXEL_MAX}/255 and {share:.0%})"
        )
    return problems
