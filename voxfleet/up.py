"""`voxfleet up`: a router and N local pods on loopback, until Ctrl-C or SIGTERM.

The embedded local default runs the very processes a cluster runs (`voxfleet
pod` N times, `voxfleet router --pods ...` once), so it exercises the same
code paths; this module only spawns them, waits until they are ready and
stops them in order. It must never import stt_pod or stt_router: it spawns
processes.

Sizes: `--pods N` keeps N pods. `--min-pods M --max-pods N` scales between
them with the operator's policy (voxfleet.autoscale.decide), measured from the
pods' own /status and the router's /metrics (no Prometheus locally): a new pod
counts as serving only once its /status says ready (model loaded and warm);
scale-down SIGTERMs the highest ordinals, whose drain refuses new sessions
(the router sees `draining` in their /status and places nothing there) and
ends on its own once their sessions have. The router takes a static pod list
at start, so every ordinal up to N gets its loopback port at start and the
router is told all N addresses; one that is not running is just unreachable
(its /status polls fail) until a pod is started on that port.

Reserved capacity: `--reserve high=0.2` is given to the router as its own
`--reserve` (that share of the slots only sessions of the class take), and to
the autoscaling policy, which keeps the unused reserve free on top of its
buffer (the router's voxfleet_router_reserved_slots_in_use says what is used).

Stopping: the router drains first (no new sessions; active ones finish,
bounded), then the pods drain; a second Ctrl-C asks every process to stop at
once, a third kills them. The children run in their own process groups so a
terminal's Ctrl-C reaches only this process, which stops them in that order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from voxfleet.autoscale import Decision, Observations, PoolPolicy, ScalerState, decide

HOST = "127.0.0.1"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
DRAIN_SECONDS = "20"
"""Drain bound for `up`'s children unless the environment sets one: Ctrl-C should not wait 5 minutes."""
SCALE_INTERVAL = 5.0
"""Seconds between two scaling decisions of `up --min-pods/--max-pods` (reads are local and cheap)."""
LOCAL_IDLE_SECONDS = 60.0
"""Local scale-down stabilization and idle time: a laptop should not keep idle pods for 5 minutes."""
RATE_WINDOW_SECONDS = 60.0
"""Window over which session arrivals and departures are measured."""
RESERVE_CLASSES = ("high", "normal", "low")
"""Priority classes `--reserve` may name (the router's client classes)."""
DEFAULT_SESSIONS_PER_POD = 16
"""The pod's own default max_sessions, until the pods report their capacity."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    """RuntimeError when `port` is taken: else the fleet's readiness check would be answered by whoever holds it."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise RuntimeError(f"port {port} on {HOST} is in use ({exc.strerror}): another voxfleet up or demo? "
                               f"Stop it, or give --port") from None


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


# ------------------------------------------------------------------ pure parts (unit-tested)

class Rates:
    """Session arrivals and departures per second over a window, from a monotonic started-sessions counter."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS):
        self.window = window
        self.samples: deque[tuple[float, float, int]] = deque()

    def update(self, now: float, started_total: float | None, active: int | None) -> tuple[float | None, float | None]:
        """Add a sample; (arrival_rate, departure_rate), None until two samples span some time."""
        if started_total is None or active is None:
            return None, None
        if self.samples and started_total < self.samples[-1][1]:
            self.samples.clear()  # the counter restarted (a new router)
        self.samples.append((now, started_total, active))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        t0, c0, a0 = self.samples[0]
        if now - t0 <= 0:
            return None, None
        arrivals = (started_total - c0) / (now - t0)
        departures = max(0.0, arrivals - (active - a0) / (now - t0))
        return arrivals, departures


def reserve_shares(text: str) -> tuple[tuple[str, float], ...]:
    """`--reserve high=0.2,normal=0.05` as the policy's (class, share) pairs; ValueError for a wrong one.

    The router checks the same text itself (stt_router.reserve); this is the early, friendly check."""
    pairs: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in RESERVE_CLASSES or name in pairs:
            raise ValueError(f"--reserve {part!r}: expected CLASS=SHARE once per class ({', '.join(RESERVE_CLASSES)})")
        try:
            pairs[name] = float(value)
        except ValueError:
            raise ValueError(f"--reserve {part!r}: {value.strip()!r} is not a number") from None
        if not 0 <= pairs[name] < 1:
            raise ValueError(f"--reserve {part!r}: a share must be in [0, 1)")
    if sum(pairs.values()) >= 1:
        raise ValueError("--reserve: the shares must add up to less than 1")
    return tuple(sorted(pairs.items()))


def local_observations(now: float, replicas: int, statuses: Mapping[int, Mapping | None], draining: Iterable[int],
                       queue_length: int | None, queue_oldest_wait: float | None = None,
                       arrival_rate: float | None = None, departure_rate: float | None = None,
                       pod_start_seconds: float | None = None, reserved_in_use: int | None = None) -> Observations:
    """Observations from the pods' /status documents.

    `statuses`: every running pod's ordinal to its /status (None: the poll failed); an ordinal
    missing from it has no process (0 sessions). A running pod that did not answer makes the
    load unknown (the policy then holds); so does an unknown queue.
    """
    draining = frozenset(draining)
    unknown = any(v is None for o, v in statuses.items() if o < replicas)
    polled = {o: v for o, v in statuses.items() if v is not None and o < replicas}
    serving = {o: v for o, v in polled.items() if o not in draining and v.get("ready") and not v.get("draining")}
    capacities = [int(v.get("capacity") or 0) for v in polled.values()]
    pod_sessions = {o: int((polled.get(o) or {}).get("active_sessions") or 0) for o in range(replicas)}
    return Observations(
        now=now, replicas=replicas,
        ready_replicas=None if unknown else len(serving),
        active_sessions=None if unknown else sum(pod_sessions.values()),
        free_slots=None if unknown else sum(int(v.get("free_slots") or 0) for v in serving.values()),
        queue_length=queue_length, queue_oldest_wait_seconds=queue_oldest_wait,
        arrival_rate=arrival_rate, departure_rate=departure_rate, pod_start_seconds=pod_start_seconds,
        capacity_per_pod=max(capacities) if capacities and max(capacities) > 0 else None,
        draining=draining, pod_sessions=None if unknown else pod_sessions, reserved_in_use=reserved_in_use)


def process_plan(decision: Decision, running: Mapping[int, bool]) -> tuple[list[int], list[int]]:
    """(ordinals to start, ordinals to SIGTERM) for a decision.

    `running`: ordinal -> True if that pod process drains (was sent SIGTERM), False if it serves
    or starts. A drain cannot be taken back: a draining pod that the policy un-drains is started
    again once it has exited.
    """
    wanted = {o for o in range(decision.replicas) if o not in decision.draining}
    start = sorted(o for o in wanted if o not in running)
    stop = sorted(o for o, draining in running.items() if not draining and o not in wanted)
    return start, stop


def router_numbers(metrics_text: str) -> dict[str, float]:
    """Queue and session counters from a router's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"queued": 0.0, "oldest_wait": 0.0, "sessions_started": 0.0, "reserved_in_use": 0.0}
    names = {"voxfleet_router_sessions_queued": "queued", "voxfleet_router_queue_oldest_wait_seconds": "oldest_wait",
             "voxfleet_router_sessions_total": "sessions_started",
             "voxfleet_router_reserved_slots_in_use": "reserved_in_use"}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key == "sessions_started" and sample.labels.get("kind") != "start":
                continue  # a resume is a session that arrived before: arrivals are new sessions, as the operator counts
            if key:
                out[key] += sample.value
    return out


# ------------------------------------------------------------------ processes

class LocalFleet:
    def __init__(self, port: int = 8765, pods: int = 2, max_sessions: int | None = None, log_level: str = "warning",
                 env: dict[str, str] | None = None, min_pods: int | None = None, max_pods: int | None = None,
                 scale_interval: float = SCALE_INTERVAL, reserve: str = ""):
        if pods < 1:
            raise ValueError("--pods must be at least 1")
        self.reserve = reserve.strip()
        shares = reserve_shares(self.reserve)
        self.autoscaling = min_pods is not None or max_pods is not None
        if self.autoscaling:
            min_pods = 1 if min_pods is None else min_pods
            max_pods = max(min_pods, pods) if max_pods is None else max_pods
            if min_pods < 1 or max_pods < min_pods:
                raise ValueError("need 1 <= --min-pods <= --max-pods")
            pods = min_pods
        self.port = port
        self.n_pods = pods
        self.min_pods = pods if min_pods is None else min_pods
        self.max_pods = pods if max_pods is None else max_pods
        self.max_sessions = max_sessions
        self.scale_interval = scale_interval
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("VOXFLEET_POD_LOG_LEVEL", log_level)
        self.env.setdefault("VOXFLEET_ROUTER_LOG_LEVEL", log_level)
        self.env.setdefault("VOXFLEET_POD_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS)
        self.env.setdefault("VOXFLEET_ROUTER_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS)
        # N pods share the cores instead of each assuming all of them.
        self.env.setdefault("VOXFLEET_POD_CPU_THREADS", str(max(1, (os.cpu_count() or 1) // self.max_pods)))
        self.ports = [free_port() for _ in range(self.max_pods)]
        """Every ordinal's port, fixed at start: the router is told all of them."""
        self.procs: dict[int, Child] = {}
        self.draining: set[int] = set()
        """Ordinals sent SIGTERM by the scaler (draining until they exit)."""
        self.started_at: dict[int, float] = {}
        self.pod_start_seconds: float | None = None
        self.router: Child | None = None
        self.policy = PoolPolicy(
            min_replicas=self.min_pods, max_replicas=self.max_pods,
            sessions_per_pod=max_sessions or DEFAULT_SESSIONS_PER_POD,
            scale_down_stabilization_seconds=LOCAL_IDLE_SECONDS, idle_seconds=LOCAL_IDLE_SECONDS,
            drain_timeout_seconds=float(self.env.get("VOXFLEET_POD_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS)) + 10,
            reaction_seconds=scale_interval + 1.0, reserve=shares)
        self.state = ScalerState()
        self.replicas = pods
        self.rates = Rates()
        self.last_decision: Decision | None = None

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def pods(self) -> list[Child]:
        return [self.procs[o] for o in sorted(self.procs)]

    def _spawn(self, name: str, args: list[str], port: int) -> Child:
        process = subprocess.Popen([sys.executable, "-m", "voxfleet", *args], env=self.env, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        return Child(name, process, port)

    def _spawn_pod(self, ordinal: int) -> Child:
        port = self.ports[ordinal]
        args = ["pod", "--host", HOST, "--port", str(port), "--pod-id", f"local-pod-{ordinal}"]
        if self.max_sessions:
            args += ["--max-sessions", str(self.max_sessions)]
        child = self._spawn(f"pod {ordinal}", args, port)
        self.procs[ordinal] = child
        self.started_at[ordinal] = time.monotonic()
        return child

    def start(self) -> None:
        """Spawn the pods and the router; return once all are ready (raises if one fails)."""
        check_port_free(self.port)
        for i in range(self.n_pods):
            self._spawn_pod(i)
        self._wait_ready(self.pods)
        self.pod_start_seconds = max(time.monotonic() - t for t in self.started_at.values())
        self.started_at.clear()
        pods = ",".join(f"ws://{HOST}:{p}" for p in self.ports)
        args = ["router", "--host", HOST, "--port", str(self.port), "--pods", pods, "--anonymous"]
        if self.reserve:
            args += ["--reserve", self.reserve]
        self.router = self._spawn("router", args, self.port)
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
        """A child that exited on its own (the fleet is broken); pods the scaler drained may exit."""
        return next((c for o, c in self.procs.items() if not c.alive() and o not in self.draining), None) or \
            (self.router if self.router and not self.router.alive() else None)

    # --- autoscaling (--min-pods/--max-pods)

    def observe(self, now: float) -> Observations:
        """Reap drained pods, then read every running pod's /status and the router's /metrics."""
        for o in [o for o, c in self.procs.items() if not c.alive() and o in self.draining]:
            del self.procs[o]
            self.draining.discard(o)
        statuses: dict[int, Mapping | None] = {}
        for o, child in self.procs.items():
            status = _get_json(f"http://{HOST}:{child.port}/status")
            if o in self.started_at and status is not None and status.get("ready"):
                self.pod_start_seconds = time.monotonic() - self.started_at.pop(o)
            if status is None and o in self.started_at:
                status = {"ready": False}  # still binding or loading its model: starting, no sessions
            elif status is None and o in self.draining:
                status = {"ready": False, "draining": True}  # closing its port on the way out: no sessions left
            statuses[o] = status
        numbers = None
        if self.router is not None:
            text = _get_text(f"http://{HOST}:{self.port}/metrics")
            numbers = router_numbers(text) if text is not None else None
        queued = None if numbers is None else int(numbers["queued"])
        active = None if any(v is None for v in statuses.values()) else \
            sum(int(v.get("active_sessions") or 0) for v in statuses.values())
        arrivals, departures = self.rates.update(now, None if numbers is None else numbers["sessions_started"], active)
        return local_observations(now, self.replicas, statuses, self.draining & set(self.procs), queued,
                                  None if numbers is None else numbers["oldest_wait"], arrivals, departures,
                                  self.pod_start_seconds, None if numbers is None else int(numbers["reserved_in_use"]))

    def scale_step(self, now: float | None = None) -> Decision:
        """One decision, carried out: start pods, SIGTERM the ones to drain. Returns the decision."""
        now = time.monotonic() if now is None else now
        obs = self.observe(now)
        decision = decide(obs, self.policy, self.state)
        self.state = decision.state
        self.replicas = decision.replicas
        start, stop = process_plan(decision, {o: o in self.draining for o in self.procs})
        for o in stop:
            self.procs[o].signal(signal.SIGTERM)
            self.draining.add(o)
        for o in start:
            self._spawn_pod(o)
        self.last_decision = decision
        return decision

    # --- stopping

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


def _get_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (OSError, ValueError):
        return None


def _get_json(url: str) -> dict | None:
    text = _get_text(url)
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def run_up(port: int = 8765, pods: int = 2, max_sessions: int | None = None, log_level: str = "warning",
           example: Path | str = "FILE", min_pods: int | None = None, max_pods: int | None = None,
           reserve: str = "") -> int:
    try:
        fleet = LocalFleet(port, pods, max_sessions, log_level, min_pods=min_pods, max_pods=max_pods, reserve=reserve)
    except ValueError as exc:
        print(f"voxfleet up: {exc}", file=sys.stderr)
        return 2
    pods = fleet.n_pods
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
        if fleet.autoscaling:
            print(f"autoscaling between {fleet.min_pods} and {fleet.max_pods} pod(s)", flush=True)
        print(f"try:  voxfleet transcribe {fleet.url} {example}", flush=True)
        print("stop: Ctrl-C", flush=True)
        broken = None
        next_scale = time.monotonic() + fleet.scale_interval
        while not stopping:
            broken = fleet.failed()
            if broken is not None:
                print(f"voxfleet up: {broken.name} exited with {broken.process.returncode}; stopping", file=sys.stderr)
                break
            if fleet.autoscaling and time.monotonic() >= next_scale:
                decision = fleet.scale_step()
                next_scale = time.monotonic() + fleet.scale_interval
                if decision.actions or not decision.metrics_available:
                    print(f"voxfleet up: {decision.action}: {decision.reason}", file=sys.stderr, flush=True)
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
