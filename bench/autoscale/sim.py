"""Discrete-event simulation of one STT pool under a scaling controller.

Why it exists: to compare scaling policies on the same sessions without a
cluster, with the mechanics that decide who waits and who is cut modelled the
way Kubernetes, the router and the pods behave:

- Pods are StatefulSet ordinals. A new pod serves only once warm
  (start-to-ready time, jittered per pod). Lowering replicas sends SIGTERM to
  the highest ordinals: the pod stops taking sessions, lets its sessions finish
  for its drain timeout, then closes the rest (those count as *cut*). A pod
  with no sessions exits at once. An ordinal whose old pod is still
  terminating cannot be recreated until that pod is gone (StatefulSet pod
  identity).
- Draining marks (voxfleet only) stop placement on a pod without terminating it.
- The router packs each new session onto the lowest-ordinal warm pod with a
  free slot. A session that finds none waits in the queue, served by priority
  then arrival. The queue holds at most `max_queue` sessions and a session waits
  at most `max_queue_wait_seconds` before it is refused (the router's bounds).
- Controllers see load the way they would in a cluster: Prometheus scrapes
  every `scrape_seconds` (load numbers are as of the last scrape), while
  replicas, readiness and marks come fresh from the API server.

It must stay deterministic for a given trace and seed, and bounded in time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from traces import Trace

QUEUED, RUNNING, DONE, CUT, REFUSED = 1, 2, 3, 4, 5
# Event kinds, in the order they run when simultaneous.
END, READY, DEADLINE, QTIMEOUT, SCRAPE, CONTROL, SAMPLE = range(7)


@dataclass(frozen=True)
class PoolModel:
    """The pool's mechanics, shared by every controller in a comparison."""

    sessions_per_pod: int = 8
    """Session slots per pod (the pod's max_sessions)."""
    pod_start_seconds: float = 1.5
    """Median start-to-ready time of a new pod."""
    pod_start_sigma: float = 0.2
    """Lognormal jitter of each pod's start time."""
    drain_timeout_seconds: float = 300.0
    """A terminating pod's sessions may continue this long, then they are cut."""
    scrape_seconds: float = 15.0
    """Prometheus scrape interval: load numbers are this stale at worst."""
    rate_window_seconds: float = 60.0
    """Window of the arrival-rate query (rate(...[1m]))."""
    max_queue: int = 200
    """Most sessions waiting (two router replicas of 100)."""
    max_queue_wait_seconds: float = 30.0
    """Longest wait before the router refuses a session (close 1013)."""
    sample_seconds: float = 60.0
    """Resolution of the time series kept for the plots."""


@dataclass(frozen=True)
class Snapshot:
    """What a controller can know at `now`."""

    now: float
    sampled_at: float
    """Time of the Prometheus scrape the load numbers come from."""
    replicas: int
    """StatefulSet replicas (fresh)."""
    ready_serving: int
    """Warm pods that take sessions: ready, not marked, not terminating (fresh)."""
    ready_pods: int
    """Warm pods below replicas, marked or not (fresh): what an HPA averages over."""
    starting: int
    """Pods below replicas not ready yet (fresh)."""
    marked: frozenset[int]
    """Ordinals marked draining (fresh)."""
    active: int
    """Sessions open on all pods (scraped)."""
    active_on_ready: int
    """Sessions on the warm pods below replicas (scraped)."""
    free: int
    """Free slots on the warm serving pods (scraped)."""
    queue: int
    """Sessions waiting (scraped)."""
    oldest_wait: float | None
    """Age of the oldest waiting session (scraped)."""
    arrival_rate: float | None
    """New sessions per second over the rate window (scraped); None until a window has passed."""
    departure_rate: float | None
    """Sessions ending (or cut) per second over the rate window (scraped)."""
    pod_sessions: dict[int, int]
    """Sessions per ordinal (scraped)."""
    pod_start_seconds: float
    """Median start-to-ready of the last pods that became ready (measured by the caller)."""


class Controller(Protocol):
    name: str
    interval: float

    def initial_replicas(self) -> int: ...

    def tick(self, snap: Snapshot) -> tuple[int, frozenset[int]]:
        """-> (StatefulSet replicas, ordinals marked draining)."""
        ...


class Pod:
    __slots__ = ("ordinal", "created", "ready", "marked", "terminating", "sessions", "inc")

    def __init__(self, ordinal: int, created: float, inc: int) -> None:
        self.ordinal = ordinal
        self.created = created
        self.inc = inc
        self.ready = False
        self.marked = False
        self.terminating = False
        self.sessions: set[int] = set()


@dataclass
class Result:
    name: str
    pod_seconds: float
    waits: np.ndarray
    state: np.ndarray
    pods_created: int
    replica_changes: int
    series: dict[str, list] = field(repr=False)
    events_processed: int = 0


def simulate(trace: Trace, model: PoolModel, controller: Controller, seed: int = 0) -> Result:
    rng = np.random.default_rng(10_000 + seed)
    c = model.sessions_per_pod
    n = len(trace)
    arrival, length, prio = trace.arrival, trace.length, trace.priority
    state = np.zeros(n, np.int8)
    placed_at = np.full(n, np.nan)
    session_pod = np.zeros(n, np.int64)  # pod incarnation

    pods: dict[int, Pod] = {}
    by_inc: dict[int, Pod] = {}
    order: list[int] = []  # sorted ordinals, rebuilt on change
    replicas = 0
    inc_counter = 0
    created_count = 0
    replica_changes = 0
    pod_seconds = 0.0
    last_account = 0.0
    start_samples: deque[float] = deque(maxlen=5)

    heap: list = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, kind, seq, a, b))

    queue: list[tuple[int, float, int]] = []  # (priority, arrival, sid)
    fifo: deque[int] = deque()
    queued = 0
    queue_max_in_sample = 0
    arrivals_seen = 0
    departures_seen = 0
    rate_history: deque[tuple[float, int, int]] = deque()
    snap: Snapshot | None = None

    def account(now: float) -> None:
        nonlocal pod_seconds, last_account
        pod_seconds += len(pods) * (now - last_account)
        last_account = now

    def resort() -> None:
        order[:] = sorted(pods)

    def create(o: int, now: float, warm: bool = False) -> None:
        nonlocal inc_counter, created_count
        account(now)
        inc_counter += 1
        p = Pod(o, now, inc_counter)
        pods[o] = p
        by_inc[p.inc] = p
        resort()
        if warm:
            p.ready = True
        else:
            created_count += 1
            start = model.pod_start_seconds * float(rng.lognormal(0.0, model.pod_start_sigma))
            push(now + start, READY, o, p.inc)

    def gone(o: int, now: float) -> None:
        account(now)
        del by_inc[pods.pop(o).inc]
        resort()
        if o < replicas:
            create(o, now)  # the StatefulSet recreates the ordinal once the old pod is gone

    def terminate(p: Pod, now: float) -> None:
        if p.terminating:
            return
        if not p.ready or not p.sessions:
            gone(p.ordinal, now)
            return
        p.terminating = True
        push(now + model.drain_timeout_seconds, DEADLINE, p.ordinal, p.inc)

    def serving_pod() -> Pod | None:
        for o in order:
            p = pods[o]
            if p.ready and not p.marked and not p.terminating and len(p.sessions) < c:
                return p
        return None

    def place(sid: int, p: Pod, now: float) -> None:
        p.sessions.add(sid)
        state[sid] = RUNNING
        placed_at[sid] = now
        session_pod[sid] = p.inc
        push(now + length[sid], END, sid, p.inc)

    def serve_queue(now: float) -> None:
        nonlocal queued
        while queued:
            p = serving_pod()
            if p is None:
                return
            while True:
                _, _, sid = heapq.heappop(queue)
                if state[sid] == QUEUED:
                    break
            queued -= 1
            place(sid, p, now)

    def oldest_wait(now: float) -> float | None:
        while fifo and state[fifo[0]] != QUEUED:
            fifo.popleft()
        return now - arrival[fifo[0]] if fifo else None

    def set_replicas(new: int, now: float) -> None:
        nonlocal replicas, replica_changes
        if new != replicas:
            replica_changes += 1
        replicas = new
        for o in range(replicas):
            if o not in pods:
                create(o, now)
        for o in [o for o in order if o >= replicas]:
            terminate(pods[o], now)

    def set_marks(marks: frozenset[int], now: float) -> None:
        lifted = False
        for o in order:
            p = pods[o]
            m = o in marks
            if p.marked and not m:
                lifted = True
            p.marked = m
        if lifted:
            serve_queue(now)

    def scrape(now: float) -> None:
        nonlocal snap
        rate_history.append((now, arrivals_seen, departures_seen))
        while len(rate_history) > 1 and rate_history[1][0] <= now - model.rate_window_seconds:
            rate_history.popleft()
        t0, a0, d0 = rate_history[0]
        full = now - t0 >= model.rate_window_seconds * 0.99
        rate = (arrivals_seen - a0) / (now - t0) if full else None
        out_rate = (departures_seen - d0) / (now - t0) if full else None
        active = 0
        active_ready = 0
        free = 0
        per_pod = {}
        for o in order:
            p = pods[o]
            k = len(p.sessions)
            active += k
            per_pod[o] = k
            if p.ready and not p.terminating and o < replicas:
                active_ready += k
                if not p.marked:
                    free += c - k
        snap = Snapshot(now=now, sampled_at=now, replicas=replicas, ready_serving=0, ready_pods=0, starting=0,
                        marked=frozenset(), active=active, active_on_ready=active_ready, free=free, queue=queued,
                        oldest_wait=oldest_wait(now), arrival_rate=rate, departure_rate=out_rate, pod_sessions=per_pod,
                        pod_start_seconds=float(np.median(start_samples)) if start_samples
                        else model.pod_start_seconds)

    def fresh(now: float) -> Snapshot:
        ready_serving = ready_pods = starting = 0
        marks = []
        for o in order:
            p = pods[o]
            if o >= replicas or p.terminating:
                continue
            if p.marked:
                marks.append(o)
            if p.ready:
                ready_pods += 1
                if not p.marked:
                    ready_serving += 1
            else:
                starting += 1
        return Snapshot(**{**snap.__dict__, "now": now, "replicas": replicas, "ready_serving": ready_serving,
                           "ready_pods": ready_pods, "starting": starting, "marked": frozenset(marks)})

    series: dict[str, list] = {"t": [], "replicas": [], "pods": [], "ready": [], "queue_max": [], "active": [],
                                 "starting": [], "draining": []}

    # Start: the controller's initial pods, already warm (prewarmed before the day starts).
    replicas = controller.initial_replicas()
    for o in range(replicas):
        create(o, 0.0, warm=True)
    push(0.0, SCRAPE)
    push(0.0, CONTROL)
    push(0.0, SAMPLE)
    end = trace.config.seconds
    i = 0
    processed = 0
    while True:
        next_arrival = arrival[i] if i < n else math.inf
        if heap and heap[0][0] <= next_arrival:
            t, kind, _, a, b = heapq.heappop(heap)
            if t > end:
                break
            processed += 1
            if kind == END:
                if state[a] == RUNNING and session_pod[a] == b:
                    state[a] = DONE
                    departures_seen += 1
                    p = by_inc[b]
                    p.sessions.discard(a)
                    if p.terminating:
                        if not p.sessions:
                            gone(p.ordinal, t)
                    elif queued and p.ready and not p.marked:
                        serve_queue(t)
            elif kind == READY:
                p = pods.get(a)
                if p is not None and p.inc == b and not p.terminating:
                    p.ready = True
                    start_samples.append(t - p.created)
                    serve_queue(t)
            elif kind == DEADLINE:
                p = pods.get(a)
                if p is not None and p.inc == b and p.terminating:
                    for sid in p.sessions:
                        state[sid] = CUT
                    departures_seen += len(p.sessions)
                    p.sessions.clear()
                    gone(a, t)
            elif kind == QTIMEOUT:
                if state[a] == QUEUED:
                    state[a] = REFUSED
                    queued -= 1
            elif kind == SCRAPE:
                scrape(t)
                push(t + model.scrape_seconds, SCRAPE)
            elif kind == CONTROL:
                new, marks = controller.tick(fresh(t))
                set_marks(marks, t)
                set_replicas(new, t)
                push(t + controller.interval, CONTROL)
            elif kind == SAMPLE:
                series["t"].append(t)
                series["replicas"].append(replicas)
                series["pods"].append(len(pods))
                series["ready"].append(sum(1 for p in pods.values() if p.ready and not p.marked
                                           and not p.terminating))
                series["queue_max"].append(max(queue_max_in_sample, queued))
                series["active"].append(sum(len(p.sessions) for p in pods.values()))
                series["starting"].append(sum(1 for p in pods.values() if not p.ready))
                series["draining"].append(sum(1 for p in pods.values() if p.ready and (p.marked or p.terminating)))
                queue_max_in_sample = queued
                push(t + model.sample_seconds, SAMPLE)
        else:
            if i >= n:
                break
            t = next_arrival
            if t > end:
                break
            sid = i
            i += 1
            processed += 1
            arrivals_seen += 1
            p = serving_pod() if not queued else None
            if p is not None:
                place(sid, p, t)
            elif queued >= model.max_queue:
                state[sid] = REFUSED
            else:
                state[sid] = QUEUED
                queued += 1
                queue_max_in_sample = max(queue_max_in_sample, queued)
                heapq.heappush(queue, (int(prio[sid]), float(t), sid))
                fifo.append(sid)
                push(t + model.max_queue_wait_seconds, QTIMEOUT, sid)
    account(end)
    waits = placed_at - arrival
    waits = np.where(state == REFUSED, model.max_queue_wait_seconds, waits)
    return Result(controller.name, pod_seconds, waits, state, created_count, replica_changes, series, processed)


def summarize(result: Result, trace: Trace) -> dict:
    """The numbers the comparison reports."""
    considered = ~np.isnan(result.waits)  # sessions still queued at the end are left out
    waits = result.waits[considered]
    n = len(waits)
    return {
        "policy": result.name,
        "pod_hours": round(result.pod_seconds / 3600.0, 2),
        "sessions": int(n),
        "waited_over_2s_share": round(float((waits > 2.0).sum()) / n, 5) if n else 0.0,
        "waited_over_2s": int((waits > 2.0).sum()),
        "p95_wait_seconds": round(float(np.percentile(waits, 95)), 3) if n else 0.0,
        "p99_wait_seconds": round(float(np.percentile(waits, 99)), 3) if n else 0.0,
        "max_wait_seconds": round(float(waits.max()), 2) if n else 0.0,
        "refused": int((result.state == REFUSED).sum()),
        "cut": int((result.state == CUT).sum()),
        "burst_waited_over_2s": int(((result.waits > 2.0) & trace.burst & considered).sum()),
        "pods_started": result.pods_created,
        "replica_changes": result.replica_changes,
        "peak_pods": int(max(result.series["pods"])) if result.series["pods"] else 0,
    }
