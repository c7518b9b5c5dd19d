"""Server processes on 127.0.0.1 that a benchmark starts, waits for, and stops.

A benchmark knows each server's PID (for CPU), port and log file. Every wait
here is bounded, and stopping always ends with the process gone (SIGTERM, then
SIGKILL). Only processes this benchmark started are ever signalled.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common.provenance import REPO
from voxfleet.cli import wait_ready


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def yield_on_wakeup() -> None:
    """Run the calling process (and every thread it starts later) as SCHED_BATCH: its wake-ups never
    preempt the task running on that CPU. For a benchmark's load generator and stand-in servers, which wake
    thousands of times a second: on one small machine each of their wake-ups would otherwise preempt the
    process under test, a cost that process would not pay with its clients and backends on other machines.
    Also a `preexec_fn` for subprocess.Popen."""
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


@dataclass
class ServerProcess:
    """One server on 127.0.0.1:port, run from the repository root with its output in log_path."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, env: dict, log_mode: str = "wb", new_session: bool = False, harness: bool = False) -> None:
        """Start argv; stdout and stderr go to log_path (opened with log_mode: "wb" or "ab").

        `new_session`: its own session, hence its own autogroup where the kernel has them (a CPU share of its
        own, as a server with its own CPU request would have). `harness`: part of the benchmark's load rather
        than what it measures: the caller's session (one autogroup with the caller), its own process group (no
        terminal signals), `yield_on_wakeup`."""
        with open(self.log_path, log_mode) as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                            start_new_session=new_session and not harness,
                                            process_group=0 if harness else None,
                                            preexec_fn=yield_on_wakeup if harness else None)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_http_ok(self, path: str, timeout: float) -> None:
        """Until GET path answers 200; RuntimeError if the process exits first, TimeoutError after `timeout` s."""
        try:
            wait_ready(self.http + path, timeout, self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{self.name}: {exc}:\n{self.log_tail()}") from None

    def wait_port(self, timeout: float, interval: float = 0.2) -> None:
        """Until something accepts connections on the port; RuntimeError if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(interval)
        raise TimeoutError(f"nothing listens on 127.0.0.1:{self.port} after {timeout:g} s")

    def get_json(self, path: str, timeout: float = 2.0) -> dict | None:
        """GET path as JSON; None when it cannot be had."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None
