"""The file lane's policy: which uploaded file goes next, to which pod, and what a retried stream skips (pure).

File jobs (`POST /v1/audio/transcriptions`) wait in a line of their own: they
never take a WebSocket session slot, and pods transcribe them after all live
work (stt_pod's scheduler). Among themselves they go by the key's priority
class (a job sent back after its pod failed first, then high, normal, low),
then by arrival. The line is bounded three ways: jobs, bytes of audio held
(the router keeps every upload until its answer is sent), and the time a job
waits before it is refused.

A job goes to an eligible pod (ready, reachable, not draining) whose file
slots are not all taken (`PodView.file_free`: its last /status, corrected by
what this router placed since), the one with the most spare slots first.
This module reads no sockets and no clock: the caller passes the time.
"""

from __future__ import annotations

import bisect
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from stt_router.placement import PodView
from stt_router.queue import RANKS, QueueFull

__all__ = ["FileQueue", "FileWaiter", "QueueFull", "choose_file_pod", "SseEvents", "DeltaSkipper"]


@dataclass(eq=False)
class FileWaiter:
    item: Any
    priority: str
    size: int  # bytes this job holds (its upload)
    enqueued: float
    deadline: float
    order: tuple[int, int] = field(default=(0, 0), repr=False)


class FileQueue:
    """The waiting file jobs, ordered by priority class then arrival; bounded in jobs and bytes."""

    def __init__(self, max_jobs: int, max_bytes: int, max_wait: float):
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        self.bytes = 0
        self._waiters: list[FileWaiter] = []
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self):
        return iter(list(self._waiters))

    def push(self, item: Any, priority: str, size: int, now: float, deadline: float | None = None,
             bounded: bool = True) -> FileWaiter:
        """Add a job; raises QueueFull when `bounded` and it would pass the job or byte bound.

        A job sent back after its pod failed goes in with priority 'failover', `bounded=False` (it
        was admitted already) and the deadline it first had (`deadline`)."""
        if priority not in RANKS:
            raise ValueError(f"unknown priority {priority!r}")
        if bounded:
            if len(self._waiters) >= self.max_jobs:
                raise QueueFull(f"{len(self._waiters)} file jobs are already waiting")
            if self.bytes + size > self.max_bytes:
                raise QueueFull(f"the waiting file jobs hold {self.bytes} bytes; this one ({size} bytes) would pass "
                                f"the limit of {self.max_bytes}")
        waiter = FileWaiter(item, priority, size, now, now + self.max_wait if deadline is None else deadline,
                            (RANKS[priority], next(self._arrivals)))
        bisect.insort(self._waiters, waiter, key=lambda w: w.order)
        self.bytes += size
        return waiter

    def over_bounds(self) -> bool:
        """Whether the waiting jobs pass the job or byte bound (a job pushed unbounded may take it over)."""
        return len(self._waiters) > self.max_jobs or self.bytes > self.max_bytes

    def peek(self) -> FileWaiter | None:
        return self._waiters[0] if self._waiters else None

    def pop(self) -> FileWaiter | None:
        if not self._waiters:
            return None
        waiter = self._waiters.pop(0)
        self.bytes -= waiter.size
        return waiter

    def remove(self, waiter: FileWaiter) -> bool:
        i = bisect.bisect_left(self._waiters, waiter.order, key=lambda w: w.order)
        if i < len(self._waiters) and self._waiters[i] is waiter:
            del self._waiters[i]
            self.bytes -= waiter.size
            return True
        return False

    def oldest_wait(self, now: float) -> float:
        return max((now - w.enqueued for w in self._waiters), default=0.0)


def choose_file_pod(pods: Iterable[PodView], exclude: frozenset[str] = frozenset()) -> PodView | None:
    """The pod for the next file job: most spare file slots, then lowest ordinal; None when none has one."""
    candidates = [p for p in pods if p.file_free > 0 and p.name not in exclude]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (-p.file_free, p.ordinal, p.name))


class SseEvents:
    """Server-sent events split out of a byte stream as it arrives: whole events only, each with its data."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, dict | None]]:
        """The events completed by `data`: (the event's bytes as received, its JSON data or None)."""
        self._buffer += data.replace(b"\r\n", b"\n")
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            raw, self._buffer = self._buffer[:end + 2], self._buffer[end + 2:]
            lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            obj = None
            if lines:
                try:
                    obj = json.loads(b"\n".join(lines))
                except ValueError:
                    obj = None
            events.append((raw, obj if isinstance(obj, dict) else None))
        return events

    @property
    def pending(self) -> bytes:
        return self._buffer


class DeltaSkipper:
    """Which events of a streamed transcription reach the client, across attempts on several pods.

    The client has been sent the first `sent` `transcript.text.delta` events. An attempt on
    another pod starts the same transcription over; its deltas are counted and the first `sent`
    of them are not sent again, so the client sees each piece of text once. This assumes the
    pods split and decode the file alike (same model and settings: the same windows, the same
    text); the `transcript.text.done` event, sent once, carries the whole text of the pod that
    finished. Other events (done, error) always pass."""

    def __init__(self) -> None:
        self.sent = 0  # deltas the client has been sent
        self._seen = 0  # deltas seen in the current attempt
        self.done = False  # a done (or error) event was sent: the answer is complete

    def new_attempt(self) -> None:
        self._seen = 0

    def admit(self, obj: dict | None) -> bool:
        """Whether to send this event to the client."""
        kind = obj.get("type") if obj else None
        if kind == "transcript.text.delta":
            self._seen += 1
            if self._seen <= self.sent:
                return False
            self.sent += 1
            return True
        if kind in ("transcript.text.done", "error"):
            self.done = True
        return True
