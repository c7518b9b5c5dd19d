"""The pods a router places sessions on, kept current (the I/O around placement).

Discovery says which pods exist; each pod's /status says whether it is ready,
draining, and how full; the router's own accounting fills the gap between two
polls. A pod whose connection dies under a session is unreachable at once; a
pod whose polls fail becomes unreachable only after `failure_threshold`
failures in a row: a poll's timeout also counts the router's own event-loop
backlog, so one slow round (the router behind, not the pods) must not empty
the pool. Either way it stays unreachable until a poll answers again.
`on_change` is called whenever a slot may have opened, so the queue can move.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable
from urllib.parse import urlsplit

from stt_router import placement
from stt_router.discovery import Target, status_url
from stt_router.placement import PodView

log = logging.getLogger(__name__)

MAX_STATUS_BYTES = 64 * 1024


class Pool:
    def __init__(self, policy: str, interval: float, timeout: float, on_change: Callable[[], None] = lambda: None,
                 failure_threshold: int = 3):
        self.policy = policy
        self.interval = interval
        self.timeout = timeout
        self.failure_threshold = max(1, failure_threshold)
        self.on_change = on_change
        self.pods: dict[str, PodView] = {}
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()

    # --- membership

    def set_targets(self, targets: list[Target]) -> None:
        names = {t.name for t in targets}
        for name in list(self.pods):
            if name not in names:
                log.info("pod %s left the pool", name)
                del self.pods[name]
        for t in targets:
            pod = self.pods.get(t.name)
            if pod is None:
                log.info("pod %s (ordinal %d) joined the pool at %s", t.name, t.ordinal, t.url)
                pod = self.pods[t.name] = PodView(t.name, t.url, t.ordinal)
            elif pod.url != t.url:
                pod.url = t.url
                pod.unreachable()  # a new address is a new pod process: ask it first
            pod.ordinal, pod.listed_ready, pod.terminating = t.ordinal, t.ready, t.terminating
        self._wake.set()
        self.on_change()

    def views(self) -> list[PodView]:
        return sorted(self.pods.values(), key=lambda p: (p.ordinal, p.name))

    def get(self, name: str) -> PodView | None:
        return self.pods.get(name)

    def choose(self, exclude: frozenset[str] = frozenset()) -> PodView | None:
        return placement.choose(self.pods.values(), self.policy, exclude)

    @property
    def free_slots(self) -> int:
        return placement.free_slots(self.pods.values())

    @property
    def ready_pods(self) -> int:
        return sum(1 for p in self.pods.values() if p.eligible)

    def lost(self, name: str) -> None:
        """A session's connection to the pod died: place nothing there until it answers again."""
        pod = self.pods.get(name)
        if pod is not None and pod.reachable:
            log.warning("pod %s lost; no placements there until its /status answers", name)
            pod.unreachable()
        self._wake.set()

    def refused(self, name: str, draining: bool) -> None:
        pod = self.pods.get(name)
        if pod is not None:
            pod.refused_full = True
            pod.draining = pod.draining or draining

    # --- polling

    async def run(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()  # before the round: a change during it (a lost pod, a stop) is not missed
            await self.poll_all()
            if self._stopped.is_set():
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    async def poll_all(self) -> None:
        pods = list(self.pods.values())
        if pods:
            await asyncio.gather(*(self.poll(p) for p in pods))
        self.on_change()

    async def poll(self, pod: PodView) -> None:
        url = pod.url
        try:
            status = await get_json(status_url(url), self.timeout)
            if pod.url != url:
                return
            was = pod.eligible
            pod.report(ready=bool(status.get("ready")), draining=bool(status.get("draining")),
                       capacity=int(status.get("capacity", 0)), active=int(status.get("active_sessions", 0)),
                       file_capacity=int(status.get("file_capacity", 0)), file_free=int(status.get("file_free", 0)))
            if pod.eligible != was:
                log.info("pod %s is %s", pod.name, "ready" if pod.eligible else "not taking sessions")
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            if pod.url != url:
                return
            pod.failed_polls += 1
            if not pod.reachable:
                return
            why = exc or type(exc).__name__
            if pod.failed_polls >= self.failure_threshold:
                log.warning("pod %s unreachable: %d /status polls failed in a row (last: %s)", pod.name,
                            pod.failed_polls, why)
                pod.unreachable()
            else:
                log.info("pod %s: /status poll failed (%d of %d before it counts as unreachable): %s", pod.name,
                         pod.failed_polls, self.failure_threshold, why)


async def get_json(url: str, timeout: float) -> dict:
    """GET a small JSON document (a pod's /status) over HTTP/1.1; raises OSError, TimeoutError or ValueError."""
    parts = urlsplit(url)
    ssl = parts.scheme == "https" or None
    port = parts.port or (443 if ssl else 80)

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ssl)
        try:
            writer.write(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            data = b""
            while len(data) <= MAX_STATUS_BYTES:
                chunk = await reader.read(16384)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            writer.close()

    data = await asyncio.wait_for(fetch(), timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or status_line[1] != b"200":
        raise ValueError(f"{url} answered {head[:60]!r}")
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return obj
