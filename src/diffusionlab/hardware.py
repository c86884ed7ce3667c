"""What the machine runs fast, and the precision ``mixed_precision="auto"`` picks from it (floor 0).

bf16 autocast pays where the hardware has bf16 arithmetic: CPUs with AVX512-BF16 or AMX (1.5-2.6x faster training
on the digits, ``bench/throughput.py``) and CUDA GPUs that support bf16 (Ampere and later). Elsewhere it is
emulated and slower than fp32, so "auto" keeps fp32. ``DIFFUSIONLAB_AUTO_PRECISION=no|bf16`` overrides what "auto"
picks (the test suite pins it to "no" so results do not depend on the machine).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import torch

__all__ = ["PRECISIONS", "AUTO_ENV", "cpu_bf16_units", "fast_bf16", "resolve_precision", "describe_precision"]

PRECISIONS = ("auto", "no", "bf16", "fp16")
AUTO_ENV = "DIFFUSIONLAB_AUTO_PRECISION"
_CPU_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 arithmetic


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 units this CPU has (``amx_bf16``, ``avx512_bf16``), read from /proc/cpuinfo; () elsewhere."""
    info = Path("/proc/cpuinfo")
    try:
        flags = next((ln for ln in info.read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ()
    present = set(flags.partition(":")[2].split())
    return tuple(u for u in _CPU_UNITS if u in present)


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 arithmetic runs natively on ``device``: a CUDA GPU with bf16, or a CPU with AMX/AVX512-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_units())


def resolve_precision(mixed_precision: str, device: torch.device | str) -> Literal["no", "bf16", "fp16"]:
    """A precision setting made concrete: "auto" is bf16 where ``fast_bf16(device)`` (or ``$DIFFUSIONLAB_AUTO_
    PRECISION``), else "no"; any other value is returned as it is, once checked."""
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} is not known; expected one of {PRECISIONS}.")
    if mixed_precision != "auto":
        return mixed_precision  # type: ignore[return-value]
    forced = os.environ.get(AUTO_ENV, "").strip().lower()
    if forced:
        if forced not in ("no", "bf16"):
            raise ValueError(f"{AUTO_ENV}={forced!r} is not known; expected 'no' or 'bf16'.")
        return forced  # type: ignore[return-value]
    return "bf16" if fast_bf16(device) else "no"


def describe_precision(mixed_precision: str, device: torch.device | str) -> str:
    """One line saying which precision a setting gives on ``device``, and why: printed when a run starts."""
    chosen = resolve_precision(mixed_precision, device)
    shown = "fp32" if chosen == "no" else chosen
    if mixed_precision != "auto":
        return f"precision: {shown} (mixed_precision={mixed_precision!r})"
    if os.environ.get(AUTO_ENV, "").strip():
        return f"precision: {shown} (auto, set by {AUTO_ENV})"
    device = torch.device(device)
    if device.type == "cuda":
        why = "this GPU has bf16" if chosen == "bf16" else "this GPU lacks bf16"
    else:
        units = cpu_bf16_units()
        why = f"this CPU has {', '.join(u.upper() for u in units)}" if units else "this CPU has no bf16 units"
    return f"precision: {shown} (auto: {why})"
