"""The oracle: what one run of the CLI on one fuzz case did, in one of a few outcomes.

A refused input must end in exit status 2 and exactly one ``error:`` line on stderr (``warning:`` lines may come
before it) that names the option or value the case corrupted. An accepted input must end in exit status 0 with
its output files there and sound: PNGs without an all-black sample, weights and JSON all finite. Either way no
file that was there before may change, except the outputs a successful run was asked to replace.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runner import RunResult

__all__ = [
    "Output",
    "Case",
    "Outcome",
    "classify",
    "snapshot",
    "changed_files",
    "error_line",
    "check_output",
    "KINDS",
    "FAILURES",
    "ONE_LINE",
    "SUCCESS",
    "TRACEBACK",
    "KILLED",
    "WRONG_OUTPUT",
    "UNNAMED",
    "REFUSED_VALID",
]

ONE_LINE, SUCCESS, TRACEBACK, KILLED = "one line", "success", "traceback", "killed"
WRONG_OUTPUT, UNNAMED, REFUSED_VALID = "wrong output", "unnamed", "refused valid"
KINDS = (ONE_LINE, SUCCESS, TRACEBACK, KILLED, WRONG_OUTPUT, UNNAMED, REFUSED_VALID)
FAILURES = frozenset({TRACEBACK, KILLED, WRONG_OUTPUT, UNNAMED, REFUSED_VALID})
# what a case's input is: "ok" must be accepted, "bad" refused, "either" may be either, "warn" refused or accepted
# with a `warning:` line (a stated fallback)
EXPECTS = ("ok", "bad", "either", "warn")
OUT_OF_MEMORY = re.compile(r"MemoryError|out of memory|can't allocate memory|Cannot allocate memory|std::bad_alloc")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Output:
    """A file a successful run must leave: ``png`` (no all-black sample of side ``cell`` pixels; ``mean``: the
    image's mean in [0, 1] within ``tol``), ``weights`` (safetensors, all finite), ``json`` (all finite),
    ``folder`` (of PNGs, each not all black) or ``exists``."""

    path: str
    kind: str = "png"
    cell: int = 0
    mean: float | None = None
    tol: float = 0.2


@dataclass
class Case:
    """One fuzz case: the CLI arguments, run in a fresh folder that ``prepare`` fills first.

    ``names``: fragments of which the error line must hold one (the options and values the case corrupted);
    ``expect``: one of EXPECTS; ``may_change``: path prefixes a successful run may replace or remove;
    ``leftovers``: path prefixes any run may remove (stale temporary folders the issue says to clean at start);
    ``forbidden``: paths that must not exist afterwards (a pickled payload's marker).
    """

    group: str
    args: list[str]
    names: tuple[str, ...]
    expect: str
    note: str = ""
    outputs: tuple[Output, ...] = ()
    may_change: tuple[str, ...] = ()
    leftovers: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    prepare: Callable[[Path], None] | None = field(default=None, repr=False, compare=False)
    env: dict[str, str] = field(default_factory=dict)

    def command(self) -> str:
        """The command line, as run in the case's folder."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + "diffusionlab " + shlex.join(self.args)


@dataclass
class Outcome:
    """What one case did: its outcome kind, why, and what it cost."""

    case: Case
    kind: str
    detail: str
    rc: int
    seconds: float
    maxrss_kb: int
    changed: list[str] = field(default_factory=list)
    folder: Path | None = None

    @property
    def failed(self) -> bool:
        """Whether this outcome is one the project must not have."""
        return self.kind in FAILURES or bool(self.changed)

    @property
    def refused(self) -> bool:
        """Whether the CLI refused the input (exit status 2)."""
        return self.rc == 2

    def line(self) -> str:
        """One line for a report: the outcome, the command and why."""
        files = f" [files changed: {', '.join(self.changed[:3])}]" if self.changed else ""
        return f"{self.kind}{files}: `{self.case.command()}` ({self.case.note}) -> {self.detail}"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it (links not followed)."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[str(path.relative_to(folder))] = digest.hexdigest()
    return hashes


def changed_files(
    before: dict[str, str], after: dict[str, str], allowed: Iterable[str] = (), removable: Iterable[str] = ()
) -> list[str]:
    """The files of ``before`` changed or gone in ``after``, except those under an ``allowed`` prefix and those
    under a ``removable`` prefix that are gone."""
    allowed, removable = tuple(allowed), tuple(removable)
    return sorted(
        p
        for p, h in before.items()
        if after.get(p) != h
        and not (allowed and p.startswith(allowed))
        and not (removable and p.startswith(removable) and p not in after)
    )


def error_line(stderr: str) -> tuple[str | None, str]:
    """The one ``error:`` line of stderr (``warning:`` lines may come first), or None and why not."""
    lines = [ANSI.sub("", ln).strip() for ln in stderr.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("warning: ")]
    if len(lines) != 1:
        return None, f"stderr has {len(lines)} lines besides warnings: {' | '.join(lines[:3])[:300]}"
    if not lines[0].startswith("error: "):
        return None, f"stderr line does not start with 'error: ': {lines[0][:300]}"
    return lines[0], ""


def _holds(low: str, name: str) -> bool:
    if re.fullmatch(r"[^\W_]+", name):  # a plain word: only as a whole word
        return re.search(rf"(?<![^\W_]){re.escape(name)}(?![^\W_])", low) is not None
    return name in low


def names_any(line: str, names: Iterable[str]) -> bool:
    """Whether the line holds one of the fragments (case-insensitive): a plain word (``prompt``, ``mask``) as a
    whole word, anything else (``--batch-size``, ``batch_size``, a path) anywhere."""
    low = line.casefold()
    return any(_holds(low, n.casefold()) for n in names if n)


def _png_black(path: Path, cell: int) -> str:
    """Why the PNG is wrong (unreadable, or a ``cell`` x ``cell`` sample in it all black), or ''."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"))
    except Exception as err:  # noqa: BLE001 - any failure to read it is a wrong output
        return f"{path.name} is not a readable image ({type(err).__name__}: {err})"
    if not cell or gray.shape[0] <= cell + 4:
        return f"{path.name} is all black" if not gray.any() else ""
    zero = gray == 0
    for y in range(2, gray.shape[0] - cell + 1, cell + 2):  # the rows of a grid: padding 2, cells of side `cell`
        cols = zero[y : y + cell].all(axis=0).astype(np.int8)
        run = np.convolve(cols, np.ones(cell, dtype=np.int8), mode="valid")
        if (run >= cell).any():
            return f"{path.name} holds an all-black {cell}x{cell} sample (row at y={y})"
    return ""


def _png_mean(path: Path, mean: float, tol: float) -> str:
    from PIL import Image

    with Image.open(path) as img:
        got = float(np.asarray(img.convert("L"), dtype=np.float64).mean() / 255)
    return "" if abs(got - mean) <= tol else f"{path.name} has mean {got:.3f}, expected {mean:.3f} +- {tol}"


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _weights(path: Path) -> str:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - unreadable weights are a wrong output
        return f"{path.name} is not readable ({type(err).__name__}: {err})"
    bad = [k for k, v in tensors.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    return f"{path.name}: non-finite tensors {bad[:3]}" if bad else ""


def check_output(folder: Path, out: Output) -> str:
    """Why output ``out`` of a successful run in ``folder`` is wrong, or ''."""
    path = folder / out.path
    if out.kind == "folder":
        pngs = sorted(path.rglob("*.png")) if path.is_dir() else []
        if not pngs:
            return f"{out.path}/ holds no PNG"
        return next((why for why in (_png_black(p, 0) for p in pngs) if why), "")
    if not path.is_file():
        return f"{out.path} was not written"
    if out.kind == "png":
        why = _png_black(path, out.cell)
        return why or (_png_mean(path, out.mean, out.tol) if out.mean is not None else "")
    if out.kind == "weights":
        return _weights(path)
    if out.kind == "json":
        try:
            ok = _finite(json.loads(path.read_text()))
        except ValueError as err:
            return f"{out.path} is not JSON ({err})"
        return "" if ok else f"{out.path} holds a non-finite number"
    return ""


def _crashed(result: RunResult) -> tuple[str, str] | None:
    """Killed (time or memory bound) or crashed (a traceback, a signal, another exit status), with why."""
    err = result.stderr
    if result.timed_out:
        return KILLED, f"still running after {result.seconds:.0f} s (wall-time bound)"
    if result.rc < 0:
        return (KILLED if result.rc == -9 else TRACEBACK), f"killed by signal {-result.rc}"
    if result.rc != 0 and OUT_OF_MEMORY.search(err + result.stdout):
        line = next((ln for ln in err.splitlines() if OUT_OF_MEMORY.search(ln)), "")
        return KILLED, f"hit the memory bound (exit {result.rc}): {line.strip()[:300]}"
    if "Traceback" in err or "Traceback" in result.stdout:
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
        return TRACEBACK, f"exit {result.rc}, traceback ending {last[0].strip()[:300]}"
    if result.rc not in (0, 2):
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
        return TRACEBACK, f"exit {result.rc}: {last[0].strip()[:300]}"
    return None


def _accepted(case: Case, result: RunResult, folder: Path) -> tuple[str, str]:
    if case.expect == "bad":
        return WRONG_OUTPUT, "exit 0 on an input that must be refused"
    if case.expect == "warn" and not any(ln.startswith("warning: ") for ln in result.stderr.splitlines()):
        return WRONG_OUTPUT, "exit 0 without a warning on an input it cannot trust (a silent fallback)"
    for out in case.outputs:
        why = check_output(folder, out)
        if why:
            return WRONG_OUTPUT, why
    return SUCCESS, "exit 0, outputs sound"


def classify(case: Case, result: RunResult, folder: Path, before: dict[str, str]) -> Outcome:
    """The outcome of ``case``'s run ``result`` in ``folder``, whose files were ``before`` it."""
    after = snapshot(folder)
    allowed = case.may_change if result.rc == 0 else ()
    changed = changed_files(before, after, allowed, case.leftovers)
    kind, detail = _crashed(result) or ("", "")
    if not kind and result.rc == 0:
        kind, detail = _accepted(case, result, folder)
    elif not kind:
        line, why = error_line(result.stderr)
        if line is None:
            kind, detail = UNNAMED, why
        elif case.expect == "ok":
            kind, detail = REFUSED_VALID, line
        elif not names_any(line, case.names):
            kind, detail = UNNAMED, f"{line[:300]} (names none of {list(case.names)[:4]})"
        else:
            kind, detail = ONE_LINE, line
    ran = [path for path in case.forbidden if (folder / path).exists()]
    if ran:
        kind, detail = WRONG_OUTPUT, f"{ran[0]} exists: a pickled payload ran ({kind}: {detail})"
    return Outcome(case, kind, detail, result.rc, result.seconds, result.maxrss_kb, changed, folder)
