"""A warm process that forks one bounded child per CLI run (``python tests/fuzz/zygote.py``).

Importing torch and the CLI takes seconds; forking a process that has already imported them takes milliseconds.
Each child is the CLI as ``python -m diffusionlab.cli ARGS`` runs it: its own working folder, environment, stdin
/dev/null, stdout and stderr to files, an address-space limit set before ``main()`` starts, and an uncaught
exception printed as Python prints it (a traceback, exit status 1). The parent kills a child that outlives its
wall-time limit and reports its exit status, wall time, CPU time and peak RSS (``os.wait4``).

Protocol: one JSON request per line on stdin ``{"args", "cwd", "env", "stdout", "stderr", "limit_as", "timeout"}``,
one JSON reply per line on stdout ``{"rc", "timed_out", "seconds", "cpu_s", "maxrss_kb"}``; "ready" first. A
request with ``"modules": PATH`` is a warm-up: its child lists the modules it imported in PATH and the zygote
imports them too.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

PRELOAD = (
    "numpy",
    "PIL.Image",
    "torch",
    "safetensors.torch",
    "diffusionlab.cli",
    "diffusionlab.pipeline",
    "diffusionlab.tasks",
    "diffusionlab.training",
)


def preload() -> None:
    """Import what every run needs, without running any torch op (a fork after one could deadlock)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)
    return 1


def child(request: dict[str, Any]) -> None:
    """The forked child: bound it, point it at its files and run the CLI's ``main()``; never returns."""
    code = 1
    try:
        os.setsid()
        limit = int(request["limit_as"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.chdir(request["cwd"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.update(request.get("env", {}))
        sys.argv = ["diffusionlab", *request["args"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from diffusionlab.cli import main

        try:
            code = main()
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - what `python -m` does with an uncaught exception
            traceback.print_exc()
            code = 1
        if request.get("modules"):
            with open(request["modules"], "w") as f:
                json.dump(sorted(sys.modules), f)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed or broken stream: nothing more to say
                pass
        os._exit(code if isinstance(code, int) else 1)


def kill_group(pid: int) -> None:
    """SIGKILL the process group a child leads (and the child itself, if it has not made its group yet)."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def learn(path: str) -> None:
    """Import the modules a warm-up child imported (listed in ``path``), so that later children start warm."""
    import importlib
    import warnings

    try:
        with open(path) as f:
            names = json.load(f)
    except (OSError, ValueError):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name not in sys.modules and not name.startswith("__"):
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001, S112 - a module only its own context can import
                    continue


def wait_bounded(pid: int, timeout: float, started: float) -> dict[str, Any]:
    """Wait for child ``pid`` (and kill its process group after ``timeout`` seconds); its status and usage."""
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > timeout:
            timed_out = True
            kill_group(pid)
            done, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    seconds = time.monotonic() - started
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kb": usage.ru_maxrss,
    }


def serve() -> None:
    """Answer requests from stdin until it closes."""
    preload()
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(request)
        reply = wait_bounded(pid, float(request["timeout"]), started)
        if request.get("modules"):
            learn(request["modules"])
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
