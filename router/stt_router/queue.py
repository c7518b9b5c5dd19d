"""The waiting line for sessions no pod can take yet (pure: the caller passes the time).

Order: priority class first (a session moving after its pod died, then
high, normal, low), then arrival. Bounded twice, because a queue nobody
leaves is worse than a clear refusal: at most `max_length` waiters (more are
refused at once), and none waits longer than `max_wait` (the caller asks
`expired()` and refuses those). Positions are 1-based, what a client is told.
Queue length and the age of the oldest waiter are what the operator scales on.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any

RANKS = {"failover": 0, "high": 1, "normal": 2, "low": 3}
"""Lower goes first. 'failover' is the router's own class, never a client's."""


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Waiter:
    item: Any
    priority: str
    enqueued: float
    deadline: float
    order: tuple[int, int] = field(default=(0, 0), repr=False)


class SessionQueue:
    def __init__(self, max_length: int, max_wait: float):
        self.max_length = max_length
        self.max_wait = max_wait
        self._waiters: list[Waiter] = []  # sorted by order
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self):
        return iter(list(self._waiters))

    def push(self, item: Any, priority: str, now: float, bounded: bool = True) -> Waiter:
        """Add a waiter; raises QueueFull when `bounded` and the line is at its limit."""
        if priority not in RANKS:
            raise ValueError(f"unknown priority {priority!r}")
        if bounded and len(self._waiters) >= self.max_length:
            raise QueueFull(f"{len(self._waiters)} sessions are already waiting")
        waiter = Waiter(item, priority, now, now + self.max_wait, (RANKS[priority], next(self._arrivals)))
        bisect.insort(self._waiters, waiter, key=lambda w: w.order)
        return waiter

    def peek(self) -> Waiter | None:
        return self._waiters[0] if self._waiters else None

    def pop(self) -> Waiter | None:
        return self._waiters.pop(0) if self._waiters else None

    def remove(self, waiter: Waiter) -> bool:
        i = self._index(waiter)
        if i is None:
            return False
        del self._waiters[i]
        return True

    def position(self, waiter: Waiter) -> int | None:
        i = self._index(waiter)
        return None if i is None else i + 1

    def positions(self) -> list[tuple[Waiter, int]]:
        return [(w, i + 1) for i, w in enumerate(self._waiters)]

    def expired(self, now: float) -> list[Waiter]:
        """Remove and return the waiters past their deadline."""
        gone = [w for w in self._waiters if w.deadline <= now]
        if gone:
            self._waiters = [w for w in self._waiters if w.deadline > now]
        return gone

    def oldest_wait(self, now: float) -> float:
        return max((now - w.enqueued for w in self._waiters), default=0.0)

    def _index(self, waiter: Waiter) -> int | None:
        i = bisect.bisect_left(self._waiters, waiter.order, key=lambda w: w.order)
        if i < len(self._waiters) and self._waiters[i] is waiter:
            return i
        return None
