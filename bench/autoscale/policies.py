"""The controllers compared: static peak, HPA-like, KEDA-like and voxfleet's own policy.

Why it exists: each baseline is written down once, with how it was modelled,
so that the comparison in docs/benchmarks.md can be checked against it. The
voxfleet controller is a thin shell over voxfleet.autoscale.decide, the very
function the operator runs; nothing here re-implements it.

HPA and KEDA are modelled as they would drive this pool in the SttPool's
`autoscaling.mode: external`: they write the StatefulSet's replicas and know
nothing of draining marks, so a scale-down sends SIGTERM to the highest pods
at once (their sessions get the pod's drain timeout, then are cut).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from sim import Snapshot
from voxfleet.autoscale import Observations, PoolPolicy, ScalerState, decide


class Static:
    """Provisioned for the peak: a fixed number of pods, all day."""

    interval = 3600.0

    def __init__(self, replicas: int, name: str = "static-peak") -> None:
        self.replicas = replicas
        self.name = name

    def initial_replicas(self) -> int:
        return self.replicas

    def tick(self, snap: Snapshot) -> tuple[int, frozenset[int]]:
        return self.replicas, frozenset()


@dataclass
class HpaLike:
    """Kubernetes HPA (autoscaling/v2) on a pods metric: sessions per pod, target sessions_per_pod x utilization.

    Every 15 s: ratio = sessions on ready pods / (ready pods x target). Scaling
    up, pods not ready yet count as 0 sessions (the HPA's rule for missing
    metrics); within the 10 % tolerance nothing changes. desired =
    ceil(ratio x pods). Scale-up at most max(100 %, 4 pods) per period;
    scale-down to the highest recommendation of the last 300 s (the default
    stabilization window). Waiting sessions are invisible to it: full pods read
    as 100 % of capacity.
    """

    sessions_per_pod: int
    min_replicas: int
    max_replicas: int
    target_utilization: float = 0.75
    interval: float = 15.0
    down_window: float = 300.0
    tolerance: float = 0.1
    name: str = "hpa-like"
    history: deque = field(default_factory=deque)

    def initial_replicas(self) -> int:
        return self.min_replicas

    def recommend(self, snap: Snapshot) -> int:
        current = snap.replicas
        target = self.sessions_per_pod * self.target_utilization
        ready = snap.ready_pods
        if ready == 0:
            return current
        ratio = snap.active_on_ready / (ready * target)
        if ratio > 1 and snap.starting:
            with_unready = snap.active_on_ready / ((ready + snap.starting) * target)
            if with_unready <= 1 + self.tolerance:
                return current
            return math.ceil(with_unready * (ready + snap.starting))
        if abs(ratio - 1) <= self.tolerance:
            return current
        return math.ceil(ratio * ready)

    def tick(self, snap: Snapshot) -> tuple[int, frozenset[int]]:
        current = snap.replicas
        desired = min(max(self.recommend(snap), self.min_replicas), self.max_replicas)
        self.history.append((snap.now, desired))
        while self.history and self.history[0][0] < snap.now - self.down_window:
            self.history.popleft()
        if desired > current:
            return min(desired, max(2 * current, current + 4), self.max_replicas), frozenset()
        stabilized = max(d for _, d in self.history)
        return min(current, stabilized), frozenset()


@dataclass
class KedaLike:
    """KEDA ScaledObject with a Prometheus trigger on the session queue, polled every 30 s, cooldown 300 s.

    "Queue length" counts what a queue scaler counts for a work queue: items
    waiting plus items in flight (RabbitMQ's QueueLength mode counts
    unacknowledged messages too); here sessions waiting plus sessions open.
    KEDA feeds it to an HPA as an AverageValue external metric of
    sessions_per_pod x utilization per pod: desired = ceil(queue / target),
    unchanged within the 10 % tolerance, scale-up at most max(100 %, 4 pods)
    per poll, scale-down to the highest recommendation of the last 300 s.
    """

    sessions_per_pod: int
    min_replicas: int
    max_replicas: int
    target_utilization: float = 0.75
    interval: float = 30.0
    cooldown: float = 300.0
    tolerance: float = 0.1
    waiting_only: bool = False
    """Count only waiting sessions (a literal queue-length trigger, threshold 1 per pod)."""
    name: str = "keda-like"
    history: deque = field(default_factory=deque)

    def initial_replicas(self) -> int:
        return self.min_replicas

    def tick(self, snap: Snapshot) -> tuple[int, frozenset[int]]:
        current = snap.replicas
        if self.waiting_only:
            metric, target = snap.queue, 1.0
        else:
            metric, target = snap.active + snap.queue, self.sessions_per_pod * self.target_utilization
        ratio = metric / (target * max(current, 1))
        desired = current if abs(ratio - 1) <= self.tolerance else math.ceil(metric / target)
        desired = min(max(desired, self.min_replicas), self.max_replicas)
        self.history.append((snap.now, desired))
        while self.history and self.history[0][0] < snap.now - self.cooldown:
            self.history.popleft()
        if desired > current:
            return min(desired, max(2 * current, current + 4), self.max_replicas), frozenset()
        return min(current, max(d for _, d in self.history)), frozenset()


class Voxfleet:
    """voxfleet.autoscale.decide every 10 s, as the operator runs it."""

    interval = 10.0

    def __init__(self, policy: PoolPolicy, sessions_per_pod: int, name: str = "voxfleet",
                 departures: bool = True) -> None:
        self.policy = policy
        self.departures = departures
        self.sessions_per_pod = sessions_per_pod
        self.state = ScalerState()
        self.name = name
        self.reasons: list[tuple[float, str]] = []
        self.cut_reported = 0

    def initial_replicas(self) -> int:
        return self.policy.min_replicas

    def tick(self, snap: Snapshot) -> tuple[int, frozenset[int]]:
        obs = Observations(
            now=snap.now, sampled_at=snap.sampled_at, replicas=snap.replicas, ready_replicas=snap.ready_serving,
            active_sessions=snap.active, free_slots=snap.free, queue_length=snap.queue,
            queue_oldest_wait_seconds=snap.oldest_wait, arrival_rate=snap.arrival_rate,
            departure_rate=snap.departure_rate if self.departures else None,
            pod_start_seconds=snap.pod_start_seconds, capacity_per_pod=self.sessions_per_pod,
            draining=snap.marked, pod_sessions=snap.pod_sessions)
        d = decide(obs, self.policy, self.state)
        self.state = d.state
        self.cut_reported += d.cut_sessions
        if d.actions:
            self.reasons.append((snap.now, d.reason))
        return d.replicas, d.draining
