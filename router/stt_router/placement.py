"""Which pod gets a new session (pure policy: no sockets, no clock).

`pack` puts a session on the lowest-ordinal pod that can take it, so load
gathers on low ordinals and the highest ordinals empty first: the operator
scales a StatefulSet down from the top, and an empty pod goes without
cutting anyone. `spread` puts it on the least loaded pod instead (lowest
ordinal breaks ties), for the lowest latency when there is room to spare.

A pod that is not ready, draining or unreachable gets nothing. A pod's load
is the larger of what it last reported and what this router knows it has
placed since: between two polls, a router must not overfill a pod it just
filled, and other replicas' sessions show up in the next report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

PACK = "pack"
SPREAD = "spread"


@dataclass
class PodView:
    """What the router knows of one pod."""

    name: str  # stable identity: StatefulSet pod name, or the URL of a static pod
    url: str
    ordinal: int
    ready: bool = False  # last /status said ready (model warm, not draining)
    draining: bool = False
    reachable: bool = False  # its /status answered, and has not failed `status_failure_threshold` times in a row since
    failed_polls: int = 0  # consecutive /status polls that failed
    capacity: int = 0
    reported_active: int = 0  # active_sessions in the last /status
    placed_since_report: int = 0  # sessions this router placed after that report
    own_sessions: int = 0  # sessions this router relays to it now
    refused_full: bool = False  # it refused a session as full since the last report
    listed_ready: bool = True  # discovery lists it as ready (Kubernetes endpoint condition)
    terminating: bool = False  # discovery says it is being stopped
    # the file lane (POST /v1/audio/transcriptions), accounted apart from sessions
    file_capacity: int = 0  # file_capacity in the last /status
    reported_file_free: int = 0  # file_free in the last /status (0 when not ready or draining)
    files_placed_since_report: int = 0  # file jobs this router sent it after that report, still running
    own_files: int = 0  # file jobs this router has running there now
    refused_files: bool = False  # it refused a file job (429, 503) since the last report
    reports: int = 0  # /status answers so far: which report a file job was placed under

    @property
    def load(self) -> int:
        return max(self.reported_active + self.placed_since_report, self.own_sessions)

    @property
    def free_slots(self) -> int:
        if not self.eligible or self.refused_full:
            return 0
        return max(0, self.capacity - self.load)

    @property
    def file_free(self) -> int:
        """File slots a new job may take: the last report's, less what this router placed since."""
        if not self.eligible or self.refused_files:
            return 0
        return max(0, min(self.reported_file_free - self.files_placed_since_report, self.file_capacity - self.own_files))

    @property
    def eligible(self) -> bool:
        return self.ready and self.reachable and not self.draining and self.listed_ready and not self.terminating

    def report(self, *, ready: bool, draining: bool, capacity: int, active: int, file_capacity: int = 0,
               file_free: int = 0) -> None:
        """A fresh /status answer replaces the estimate."""
        self.reachable = True
        self.failed_polls = 0
        self.ready, self.draining, self.capacity, self.reported_active = ready, draining, capacity, active
        self.placed_since_report = 0
        self.refused_full = False
        self.file_capacity, self.reported_file_free = file_capacity, file_free
        self.files_placed_since_report = 0
        self.refused_files = False
        self.reports += 1

    def unreachable(self) -> None:
        self.reachable = False
        self.ready = False

    def placed(self) -> None:
        self.placed_since_report += 1
        self.own_sessions += 1

    def released(self) -> None:
        self.own_sessions = max(0, self.own_sessions - 1)

    def file_placed(self) -> int:
        """One file job sent here; returns the report it was placed under (for `file_released`)."""
        self.files_placed_since_report += 1
        self.own_files += 1
        return self.reports

    def file_released(self, placed_under: int) -> None:
        """A file job here ended. Placed since the last report, it was never in that report's count: its
        slot is free again at once. Placed earlier, the report may have counted it: the next one says."""
        self.own_files = max(0, self.own_files - 1)
        if placed_under == self.reports and self.files_placed_since_report > 0:
            self.files_placed_since_report -= 1


def choose(pods: Iterable[PodView], policy: str = PACK, exclude: frozenset[str] = frozenset()) -> PodView | None:
    """The pod for the next session, or None when no pod has a free slot."""
    candidates = [p for p in pods if p.free_slots > 0 and p.name not in exclude]
    if not candidates:
        return None
    if policy == PACK:
        return min(candidates, key=lambda p: (p.ordinal, p.name))
    if policy == SPREAD:
        return min(candidates, key=lambda p: (p.load / max(1, p.capacity), p.load, p.ordinal, p.name))
    raise ValueError(f"unknown placement policy {policy!r}")


def free_slots(pods: Iterable[PodView]) -> int:
    return sum(p.free_slots for p in pods)


def ordinal_of(name: str, default: int) -> int:
    """A StatefulSet pod `voxfleet-pod-3` has ordinal 3; anything else keeps `default`."""
    head, _, tail = name.rpartition("-")
    return int(tail) if head and tail.isdigit() else default


def total_slots(pods: Iterable[PodView]) -> int:
    """Session slots of the pods that take sessions now (used or free): what a reserve is a share of."""
    return sum(max(0, p.capacity) for p in pods if p.eligible)
