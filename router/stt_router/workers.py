"""The router on several cores: worker processes that serve one port together (SO_REUSEPORT).

One asyncio process is one core. `--workers K` runs K router processes that
each bind the same address with SO_REUSEPORT, so the kernel spreads new
connections over them; a session stays in the worker that accepted it. The
process started as `voxfleet router` is worker 0 and the parent of the
others: it binds first (so `--port 0` picks one port for all), starts workers
1..K-1 as `python -m voxfleet router` with its resolved settings in their
environment, starts a worker again if one dies, and passes SIGTERM and SIGINT
on, so one signal drains them all; it exits when they have.

Workers share nothing but the port and the token secrets: a resume token
issued by one verifies on any other, as between replicas. With no
`--token-secrets` the parent makes one random secret and hands it to the
workers in their environment, never on a command line (which any user can
read). Everything else is per worker: sessions, queue, per-key limits, pod
polling, remembered pinnings and /metrics (docs/router.md, "Several cores").

This module must never share a socket, a loop or a lock between processes:
each worker is a whole router. Linux only (SO_REUSEPORT balancing;
PR_SET_PDEATHSIG: a worker whose parent dies drains too).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping

from stt_router.settings import ENV_PREFIX, RouterSettings

log = logging.getLogger(__name__)

WORKER_ENV = ENV_PREFIX + "WORKER_INDEX"
"""Set by the parent for workers 1..K-1 (not a setting: nobody else should set it)."""
PARENT_ENV = ENV_PREFIX + "PARENT_PID"
"""The parent's pid, so a worker started after its parent died stops at once."""

RESTART_DELAY_SECONDS = 1.0
"""Wait before starting a worker that died again; doubles while it keeps dying young."""
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0
"""A worker that lived this long resets the restart delay."""
WATCH_INTERVAL_SECONDS = 0.5
"""How often the parent looks for workers that exited."""
EXIT_GRACE_SECONDS = 30.0
"""After the parent has drained, how much longer (past the drain timeout) workers get before they are killed."""

_PR_SET_PDEATHSIG = 1


def worker_index(environ: Mapping[str, str] = os.environ) -> int:
    """This process's index among the workers: 0 for the parent (or a router without workers)."""
    try:
        return max(0, int(environ.get(WORKER_ENV, "0")))
    except ValueError:
        return 0


def with_shared_secret(settings: RouterSettings) -> RouterSettings:
    """Settings whose token secrets every worker shares: the configured ones, or one made now."""
    if settings.secrets():
        return settings
    return dataclasses.replace(settings, token_secrets=secrets.token_urlsafe(32))


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def worker_environment(settings: RouterSettings, index: int, port: int, parent_pid: int,
                       base: Mapping[str, str]) -> dict[str, str]:
    """The environment of worker `index`: `base`, then every setting as its VOXFLEET_ROUTER_* variable.

    Flags win over the environment, and a worker gets no flags: so the worker runs with exactly the
    parent's resolved settings (secrets included), one worker, the parent's port."""
    env = dict(base)
    for f in dataclasses.fields(RouterSettings):
        env[ENV_PREFIX + f.name.upper()] = _env_value(getattr(settings, f.name))
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[ENV_PREFIX + "PORT"] = str(port)
    env[ENV_PREFIX + "ROUTER_ID"] = f"{settings.router_id or socket.gethostname()}-w{index}"
    env[WORKER_ENV] = str(index)
    env[PARENT_ENV] = str(parent_pid)
    return env


def die_with_parent(environ: Mapping[str, str] = os.environ) -> None:
    """In a worker: get SIGTERM (a drain) when the parent dies; stop now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent still stops its workers itself
        pass
    parent = environ.get(PARENT_ENV)
    if parent and parent.isdigit() and os.getppid() != int(parent):
        raise SystemExit(f"router worker {worker_index(environ)}: its parent {parent} is gone")


@dataclasses.dataclass
class _Worker:
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY_SECONDS  # before its next start, should it die young
    due: float = 0.0  # when to start it again after it died


class WorkerGroup:
    """Workers 1..K-1 of a router whose parent is worker 0: started, watched, signalled, waited for."""

    def __init__(self, settings: RouterSettings, port: int):
        self.settings = settings
        self.port = port
        self.workers = [_Worker(i) for i in range(1, settings.workers)]
        self.stopping = False
        self._watch: asyncio.Task | None = None

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        self._watch = asyncio.get_running_loop().create_task(self._keep_alive())

    def _spawn(self, worker: _Worker) -> None:
        env = worker_environment(self.settings, worker.index, self.port, os.getpid(), os.environ)
        worker.process = subprocess.Popen([sys.executable, "-m", "voxfleet", "router"], env=env,
                                          start_new_session=True)  # a terminal's Ctrl-C reaches the parent only
        worker.started = time.monotonic()
        log.info("router worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _keep_alive(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None:
                    lived = now - worker.started
                    if lived >= STABLE_SECONDS:
                        worker.delay = RESTART_DELAY_SECONDS
                    worker.due = now + worker.delay
                    log.warning("router worker %d (pid %d) exited with %s after %.0f s; starting it again in %.0f s",
                                worker.index, worker.process.pid, worker.process.returncode, lived, worker.delay)
                    worker.delay = min(MAX_RESTART_DELAY_SECONDS, worker.delay * 2)
                    worker.process = None
                if worker.process is None and now >= worker.due:
                    self._spawn(worker)
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    def signal(self, sig: int) -> None:
        """Pass a stop signal on to every worker (the first drains them, a second stops them at once)."""
        self.stopping = True
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                try:
                    worker.process.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def wait(self, timeout: float) -> None:
        """Wait for every worker to exit (after a signal); kill those still there after `timeout`."""
        if not self.stopping:
            self.signal(signal.SIGTERM)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        deadline = time.monotonic() + timeout
        running = [w.process for w in self.workers if w.process is not None]
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for process in running:
            if process.poll() is None:
                log.warning("router worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()


async def run_with_workers(settings: RouterSettings) -> None:
    """Worker 0: serve, start the other workers on the same port, drain with them."""
    from stt_router.server import RouterServer

    settings = with_shared_secret(settings)
    router = RouterServer(settings, worker=0, reuse_port=True)
    await router.start()
    group = WorkerGroup(settings, router.port)
    group.start()
    log.info("router serving port %d with %d worker processes", router.port, settings.workers)
    try:
        await router.run_until_stopped(on_signal=group.signal)
    finally:
        await group.wait(settings.drain_timeout_seconds + EXIT_GRACE_SECONDS)
