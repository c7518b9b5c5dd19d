"""`voxfleet up`: a router and N local pods on loopback, until Ctrl-C or SIGTERM.

The embedded local default runs the very processes a cluster runs (`voxfleet
pod` N times, `voxfleet router --pods ...` once), so it exercises the same
code paths; this module only spawns them, waits until they are ready and
stops them in order. It must never import stt_pod or stt_router: it spawns
processes. Until the autoscaler exists it keeps N fixed.

Stopping: the router drains first (no new sessions; active ones finish,
bounded), then the pods drain; a second Ctrl-C asks every process to stop at
once, a third kills them. The children run in their own process groups so a
terminal's Ctrl-C reaches only this process, which stops them in that order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
DRAIN_SECONDS = "20"
"""Drain bound for `up`'s children unless the environment sets one: Ctrl-C should not wait 5 minutes."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass


class LocalFleet:
    def __init__(self, port: int = 8765, pods: int = 2, max_sessions: int | None = None, log_level: str = "warning",
                 env: dict[str, str] | None = None):
        if pods < 1:
            raise ValueError("--pods must be at least 1")
        self.port = port
        self.n_pods = pods
        self.max_sessions = max_sessions
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("VOXFLEET_POD_LOG_LEVEL", log_level)
        self.env.setdefault("VOXFLEET_ROUTER_LOG_LEVEL", log_level)
        self.env.setdefault("VOXFLEET_POD_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS)
        self.env.setdefault("VOXFLEET_ROUTER_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS)
        # N pods share the cores instead of each assuming all of them.
        self.env.setdefault("VOXFLEET_POD_CPU_THREADS", str(max(1, (os.cpu_count() or 1) // pods)))
        self.pods: list[Child] = []
        self.router: Child | None = None

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def _spawn(self, name: str, args: list[str], port: int) -> Child:
        process = subprocess.Popen([sys.executable, "-m", "voxfleet", *args], env=self.env, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        return Child(name, process, port)

    def start(self) -> None:
        """Spawn the pods and the router; return once all are ready (raises if one fails)."""
        for i in range(self.n_pods):
            port = free_port()
            args = ["pod", "--host", HOST, "--port", str(port), "--pod-id", f"local-pod-{i}"]
            if self.max_sessions:
                args += ["--max-sessions", str(self.max_sessions)]
            self.pods.append(self._spawn(f"pod {i}", args, port))
        self._wait_ready(self.pods)
        pods = ",".join(c.url for c in self.pods)
        self.router = self._spawn("router", ["router", "--host", HOST, "--port", str(self.port), "--pods", pods,
                                             "--anonymous"], self.port)
        self._wait_ready([self.router])

    def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited with {child.process.returncode} before it was ready")
                if _ready(f"http://{HOST}:{child.port}/readyz"):
                    waiting.remove(child)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(c.name for c in waiting)} not ready after {READY_TIMEOUT:g} s")
            time.sleep(0.2)

    @property
    def children(self) -> list[Child]:
        return [*self.pods, *([self.router] if self.router else [])]

    def failed(self) -> Child | None:
        """A child that exited on its own (the fleet is broken)."""
        return next((c for c in self.children if not c.alive()), None)

    def stop(self, hurry: "Hurry | None" = None) -> int:
        """Router first, then pods; each drains. Returns the worst exit code."""
        hurry = hurry or Hurry()
        codes = []
        for group in ([self.router] if self.router else [], self.pods):
            for child in group:
                child.signal(signal.SIGTERM)
            codes += self._wait(group, hurry)
        return 0 if all(c == 0 for c in codes) else 1

    def _wait(self, children: list[Child], hurry: "Hurry") -> list[int | None]:
        deadline = time.monotonic() + STOP_TIMEOUT
        level = hurry.level
        while any(c.alive() for c in children):
            if hurry.level != level:
                level = hurry.level
                for child in children:
                    child.signal(signal.SIGTERM if level == 1 else signal.SIGKILL)
            if time.monotonic() > deadline:
                for child in children:
                    child.signal(signal.SIGKILL)
            time.sleep(0.1)
        return [c.process.wait() for c in children]


class Hurry:
    """How many more stop signals came while stopping (1: stop now, 2+: kill)."""

    def __init__(self) -> None:
        self.level = 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def run_up(port: int = 8765, pods: int = 2, max_sessions: int | None = None, log_level: str = "warning",
           example: Path | str = "FILE") -> int:
    fleet = LocalFleet(port, pods, max_sessions, log_level)
    stopping = False
    hurry = Hurry()

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        if stopping:
            hurry.level += 1
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"voxfleet up: starting {pods} pod(s) and a router on {HOST} ...", file=sys.stderr, flush=True)
        try:
            fleet.start()
        except (RuntimeError, TimeoutError) as exc:
            print(f"voxfleet up: {exc}", file=sys.stderr)
            fleet.stop(Hurry())
            return 1
        print(f"voxfleet is up at {fleet.url}  (router + {pods} pod(s): "
              f"{', '.join(c.url for c in fleet.pods)})", flush=True)
        print(f"try:  voxfleet transcribe {fleet.url} {example}", flush=True)
        print("stop: Ctrl-C", flush=True)
        broken = None
        while not stopping:
            broken = fleet.failed()
            if broken is not None:
                print(f"voxfleet up: {broken.name} exited with {broken.process.returncode}; stopping", file=sys.stderr)
                break
            time.sleep(0.2)
        print("voxfleet up: stopping (the router drains, then the pods) ...", file=sys.stderr, flush=True)
        code = fleet.stop(hurry)
        print("voxfleet up: stopped", file=sys.stderr, flush=True)
        return 1 if broken is not None else code
    finally:
        if any(c.alive() for c in fleet.children):
            fleet.stop(Hurry())
        for sig, handler in previous.items():
            signal.signal(sig, handler)
