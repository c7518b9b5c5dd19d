"""Real pods in real processes, on loopback, with the real model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from voxfleet.cli import wait_ready

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A `voxfleet pod` or `voxfleet router` process on a loopback port, with its log."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


PodProcess = ServerProcess


def start_server(tmp_path: Path, command: str, *args: str, env: dict[str, str] | None = None, wait: bool = True,
                 ready_seconds: float = 120) -> ServerProcess:
    """`python -m voxfleet COMMAND --host 127.0.0.1 --port <free> ARGS`, waited for until /readyz says 200."""
    port = free_port()
    log = tmp_path / f"{command}-{port}.log"
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "voxfleet", command, "--host", "127.0.0.1", "--port", str(port),
                                    *args], stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = ServerProcess(process, port, log)
    if wait:
        try:
            wait_ready(f"{server.http}/readyz", ready_seconds, process)
        except Exception:
            server.stop(5)
            raise RuntimeError(f"{command} did not become ready:\n{server.log_text()}")
    return server


def start_pod(tmp_path: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> PodProcess:
    return start_server(tmp_path, "pod", *args, env=env, wait=wait)


@pytest.fixture(scope="session")
def pod(tmp_path_factory) -> PodProcess:
    """One shared pod for tests that do not change its settings."""
    p = start_pod(tmp_path_factory.mktemp("pod"), "--max-sessions", "16")
    yield p
    assert p.stop() == 0, p.log_text()


@pytest.fixture
def pod_factory(tmp_path):
    started: list[PodProcess] = []

    def make(*args: str, **kwargs) -> PodProcess:
        p = start_pod(tmp_path, *args, **kwargs)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop(10)
