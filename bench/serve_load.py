"""The studio under load, on the loopback interface only: a burst of concurrent clients, then a long run for leaks.

    python bench/serve_load.py --table bench/results/serve_load.md --plot bench/results/serve_load.png

Starts ``diffusionlab serve`` in its own process (127.0.0.1, a free port, a temporary data folder, the default
queue of 8 waiting jobs) over one 8x8 class-conditional model (the test suite's "pets": untrained, so a request
costs what the network costs, not what the weights are), then:

1. **burst**: ``--burst`` requests (default 100) of ``POST /api/sample`` (``--samples`` images, ``--steps`` DDIM
   steps, a different seed each) from ``--clients`` concurrent clients (default 20), each sent once: a request the
   full queue refuses is counted as 429 and not retried. Reported: throughput (answered requests per second of
   the burst), p50/p95 latency of the answered ones, the share answered 429, the server's RSS before and after
   and its peak (VmHWM);
2. **soak**: ``--soak`` requests (default 1,000) from ``--soak-clients`` clients that wait ``Retry-After`` on a
   429 and try again, so every request is answered; the server's RSS every 50 requests. The bound: RSS after the
   soak at most ``--rss-bound-mb`` (default 150) MB above its value after the burst.

Every job also lands in the studio's history (SQLite and a folder of PNGs), as in production. The markdown report
goes to stdout (and ``--table``); the RSS curve to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from main_job import cpu_name  # noqa: E402

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig  # noqa: E402
from diffusionlab.io import atomic_path  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def post(url: str, body: dict) -> tuple[int, float, int]:
    """(status, seconds, Retry-After or 0) of one POST."""
    began = time.perf_counter()
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status, time.perf_counter() - began, 0
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, time.perf_counter() - began, int(err.headers.get("Retry-After") or 0)


def start_server(folder: Path, port: int, threads: int) -> subprocess.Popen:
    """``diffusionlab serve`` over ``folder/models`` in its own process; returns once it answers."""
    command = [sys.executable, "-c", "import sys; from diffusionlab.cli import main; sys.exit(main())"]
    args = ["serve", str(folder / "models"), "--port", str(port), "--data-dir", str(folder / "data")]
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "DIFFUSIONLAB_AUTO_PRECISION": "no"}
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=2).read()
            return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert process.poll() is None, (folder / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
    raise RuntimeError("the server did not start in 120 s")


def burst(url: str, args: argparse.Namespace) -> dict:
    """Each request sent once by ``--clients`` concurrent clients."""

    def one(i: int) -> tuple[int, float, int]:
        return post(url, {"num_samples": args.samples, "steps": args.steps, "seed": i, "labels": [i % 3]})

    began = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(args.burst)))
    seconds = time.perf_counter() - began
    ok = [s for code, s, _ in results if code == 200]
    codes = [code for code, _, _ in results]
    return {
        "seconds": seconds,
        "answered": len(ok),
        "throughput": len(ok) / seconds,
        "p50": float(np.percentile(ok, 50)) if ok else float("nan"),
        "p95": float(np.percentile(ok, 95)) if ok else float("nan"),
        "share_429": codes.count(429) / len(codes),
        "other": sorted({c for c in codes if c not in (200, 429)}),
    }


def soak(url: str, pid: int, args: argparse.Namespace) -> dict:
    """Every request answered (a 429 waits Retry-After and tries again); RSS every 50 requests."""
    done, lock, curve = [0], threading.Lock(), [(0, rss_mb(pid)[0])]
    retries = [0]

    def one(i: int) -> None:
        while True:
            code, _, wait = post(url, {"num_samples": args.samples, "steps": args.steps, "seed": 10_000 + i})
            if code != 429:
                assert code == 200, code
                break
            with lock:
                retries[0] += 1
            time.sleep(max(wait, 0.2))
        with lock:
            done[0] += 1
            if done[0] % 50 == 0:
                curve.append((done[0], rss_mb(pid)[0]))

    began = time.perf_counter()
    with ThreadPoolExecutor(args.soak_clients) as pool:
        list(pool.map(one, range(args.soak)))
    return {"seconds": time.perf_counter() - began, "curve": curve, "retries": retries[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--soak", type=int, default=1000)
    p.add_argument("--soak-clients", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rss-bound-mb", type=float, default=150.0)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    for name in ("burst", "clients", "soak", "soak_clients", "samples", "steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer.")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        config = ModelConfig(
            network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=3),
            data=DataConfig(image_size=8, channels=1, num_classes=3, class_names=["cat", "dog", "owl"]),
            sample=SampleConfig(steps=3),
        )
        Pipeline(config).save(folder / "models" / "pets")
        port = free_port()
        process = start_server(folder, port, args.threads)
        try:
            url = f"http://127.0.0.1:{port}/api/sample"
            post(url, {"num_samples": 1, "steps": 1})  # loads the model: not part of the figures
            before = rss_mb(process.pid)
            b = burst(url, args)
            after = rss_mb(process.pid)
            s = soak(url, process.pid, args)
            end = rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    growth = end[0] - after[0]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}: `python bench/serve_load.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}` (the server on {args.threads} thread(s); "
        f"each request {args.samples} 8x8 images, {args.steps} DDIM steps; queue of 8 waiting jobs)",
        "",
        "| phase | requests | clients | seconds | answered 200 | throughput (req/s) | p50 latency (s) | "
        "p95 latency (s) | answered 429 | RSS before (MB) | RSS after (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| burst | {args.burst} | {args.clients} | {b['seconds']:.1f} | {b['answered']} | {b['throughput']:.2f} | "
        f"{b['p50']:.2f} | {b['p95']:.2f} | {b['share_429']:.0%} | {before[0]:.0f} | {after[0]:.0f} | {after[1]:.0f} |",
        f"| soak | {args.soak} | {args.soak_clients} | {s['seconds']:.1f} | {args.soak} | "
        f"{args.soak / s['seconds']:.2f} | | | {s['retries']} retried | {after[0]:.0f} | {end[0]:.0f} | {end[1]:.0f} |",
        "",
        f"Other statuses in the burst: {b['other'] or 'none'}. RSS growth over the soak: {growth:+.1f} MB "
        f"(bound {args.rss_bound_mb:g} MB): {'pass' if growth <= args.rss_bound_mb else 'FAIL'}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.table is not None:
        args.table.write_text(text + "\n")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(6, 3))
        xs, ys = zip(*s["curve"], strict=True)
        ax.plot(xs, ys, marker="o", ms=3)
        ax.axhline(after[0] + args.rss_bound_mb, color="red", ls=":", label="bound")
        ax.set_xlabel("requests answered in the soak")
        ax.set_ylabel("server RSS (MB)")
        ax.legend()
        figure.tight_layout()
        with atomic_path(args.plot) as tmp_png:
            figure.savefig(tmp_png, format="png", dpi=90)
    return 0 if growth <= args.rss_bound_mb else 1


if __name__ == "__main__":
    raise SystemExit(main())
