"""Run ``diffusionlab ARGS`` in a child process bounded in memory (RLIMIT_AS) and wall time.

Two ways, the same answer: ``ForkRunner`` forks each run from a warm process that has already imported torch and
the CLI (milliseconds to start instead of seconds; used by the fuzz tests), ``ExecRunner`` starts
``python -m diffusionlab.cli`` afresh each time (the console script exactly; slower).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .zygote import wait_bounded

__all__ = ["RunResult", "Runner", "ForkRunner", "ExecRunner", "MEMORY_LIMIT", "TIMEOUT_S"]

MEMORY_LIMIT = 3 * 2**30  # address space of one run, bytes
TIMEOUT_S = 60.0  # wall time of one run, seconds
ZYGOTE = Path(__file__).with_name("zygote.py")
QUIET = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@dataclass(frozen=True)
class RunResult:
    """What one run of the CLI did: exit status (negative: killed by that signal), its output and its cost."""

    rc: int
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    cpu_s: float
    maxrss_kb: int


class Runner(Protocol):
    """Runs the CLI once: ``run(args, cwd, env)``."""

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> RunResult: ...

    def close(self) -> None: ...


def base_env() -> dict[str, str]:
    """This process's environment without DIFFUSIONLAB_* settings (a case sets its own), quiet and one-threaded."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DIFFUSIONLAB_")}, **QUIET}


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""


class ForkRunner:
    """Runs the CLI in children forked from one warm zygote process (``zygote.py``)."""

    def __init__(self, limit_as: int = MEMORY_LIMIT, timeout: float = TIMEOUT_S, python: str = sys.executable):
        self.limit_as, self.timeout = limit_as, timeout
        self._logs = Path(tempfile.mkdtemp(prefix="diffusionlab-fuzz-"))
        self._proc = subprocess.Popen(
            [python, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=base_env()
        )
        ready = self._proc.stdout.readline() if self._proc.stdout else ""
        if json.loads(ready or "null") != "ready":
            raise RuntimeError(f"the fuzz zygote did not start (said {ready!r})")

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> RunResult:
        """One bounded run of ``diffusionlab ARGS`` in folder ``cwd`` (``timeout``: this run's wall-time bound)."""
        out, err = self._logs / "stdout", self._logs / "stderr"
        request = {"args": args, "cwd": str(cwd), "env": env or {}, "stdout": str(out), "stderr": str(err)}
        request |= {"limit_as": self.limit_as, "timeout": timeout or self.timeout}
        return self._ask(request, out, err)

    def warm(self, args: list[str], cwd: Path) -> RunResult:
        """Run ``args`` once and import into the zygote whatever that run imported (later runs start warm)."""
        out, err = self._logs / "stdout", self._logs / "stderr"
        request = {"args": args, "cwd": str(cwd), "env": {}, "stdout": str(out), "stderr": str(err)}
        request |= {"limit_as": self.limit_as, "timeout": self.timeout, "modules": str(self._logs / "modules")}
        return self._ask(request, out, err)

    def _ask(self, request: dict[str, object], out: Path, err: Path) -> RunResult:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fuzz zygote stopped (exit status {self._proc.poll()})")
        return RunResult(stdout=_read(out), stderr=_read(err), **json.loads(line))

    def close(self) -> None:
        """Stop the zygote."""
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
        shutil.rmtree(self._logs, ignore_errors=True)


class ExecRunner:
    """Runs ``python -m diffusionlab.cli ARGS`` (or ``command`` + ARGS) as a fresh process each time."""

    def __init__(self, limit_as: int = MEMORY_LIMIT, timeout: float = TIMEOUT_S, command: list[str] | None = None):
        self.limit_as, self.timeout = limit_as, timeout
        self.command = command or [sys.executable, "-m", "diffusionlab.cli"]

    def _bound(self) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (self.limit_as, self.limit_as))

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> RunResult:
        """One bounded run of ``diffusionlab ARGS`` in folder ``cwd`` (``timeout``: this run's wall-time bound)."""
        with tempfile.TemporaryDirectory(prefix="diffusionlab-fuzz-") as logs:
            out, err = Path(logs) / "stdout", Path(logs) / "stderr"
            with out.open("wb") as fout, err.open("wb") as ferr:
                started = time.monotonic()
                proc = subprocess.Popen(
                    [*self.command, *args],
                    cwd=cwd,
                    env={**base_env(), **(env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=fout,
                    stderr=ferr,
                    preexec_fn=self._bound,
                    start_new_session=True,
                )
                reply = wait_bounded(proc.pid, timeout or self.timeout, started)
                proc.returncode = reply["rc"]
            return RunResult(stdout=_read(out), stderr=_read(err), **reply)

    def close(self) -> None:
        """Nothing to stop: each run cleans up after itself."""
