"""Measure a real pod's start-to-ready time: the simulation's default pod start.

Starts `python -m voxfleet pod` on 127.0.0.1 (a free port) a few times, polls
GET /readyz until it answers 200, and records the seconds from spawn to ready
(process start, imports, model load and warm-up). Stops each pod with SIGTERM
before the next run. Writes bench/autoscale/pod-start.json, which run.py reads
for its default pod start time.

    python bench/autoscale/measure_start.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "pod-start.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def one_start(timeout: float) -> float:
    port = free_port()
    env = dict(os.environ, VOXFLEET_POD_LOG_LEVEL="warning")
    t0 = time.monotonic()
    pod = subprocess.Popen([sys.executable, "-m", "voxfleet", "pod", "--host", HOST, "--port", str(port)],
                           env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if pod.poll() is not None:
                raise RuntimeError(f"pod exited with {pod.returncode} before it was ready")
            if ready(f"http://{HOST}:{port}/readyz"):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"pod not ready after {timeout:g} s")
            time.sleep(0.05)
    finally:
        pod.send_signal(signal.SIGTERM)
        try:
            pod.wait(30)
        except subprocess.TimeoutExpired:
            pod.kill()
            pod.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    samples = []
    for i in range(args.runs):
        seconds = one_start(args.timeout)
        samples.append(round(seconds, 3))
        print(f"run {i + 1}/{args.runs}: ready after {seconds:.2f} s", file=sys.stderr, flush=True)
    result = {
        "what": "seconds from spawning `python -m voxfleet pod` to GET /readyz == 200 (model tiny.en, int8, CPU)",
        "samples_seconds": samples,
        "median_seconds": round(statistics.median(samples), 3),
        "max_seconds": max(samples),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "load_average_before": round(load_before, 2),
        "command": "python bench/autoscale/measure_start.py --runs " + str(args.runs),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
