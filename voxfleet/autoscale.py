"""The autoscaling policy: measured load in, desired pods and a reason out.

Why it exists: one decision shared by the operator (StatefulSet replicas from
Prometheus), `voxfleet up` (local pod processes) and bench/autoscale (the same
code on a simulated clock). Pure, so that all three agree and a fake clock can
test it.

It must never do I/O, read a clock, keep module state, or import stt_pod,
stt_router or stt_operator. The caller passes the time, the observations and
the state returned by the previous call, and applies the decision itself.

The rules it enforces:
- Capacity is session slots. Only warm pods serve. Pods still starting count
  as capacity on its way, so one burst is not answered twice.
- Never below min_replicas (the prewarmed pods), never above max_replicas.
- Reserved capacity (a priority class's share of all slots, rounded up, that
  only its sessions may take) is kept free on top of the buffer: the buffer is
  for everyone else, and the reserve stays free for its class until the class
  uses it (its use is subtracted when the caller measures it; unmeasured, the
  whole reserve counts as unused).
- Scale up at once when free slots fall below the buffer or anyone waits. The
  buffer covers the sessions that arrive before a pod asked for now can serve
  (Little's law: arrival rate x (reaction + start-to-ready time)), less those
  that leave meanwhile, plus a margin for randomness; never less than the
  configured buffer. A fixed guess would be too small for a busy pool with
  slow pods, and far too large for a quiet pool with fast ones.
- Sessions on draining pods stay there; only the rest need serving slots.
- Scale down only when the recommendation stayed low for the whole
  stabilization window and the surplus lasted idle_seconds, at most max_step
  pods per decision. Scale-down marks the highest ordinals draining and lowers
  replicas only once their sessions are gone or the drain timeout passed.
- When load returns during a drain, un-drain before starting new pods.
- A missing load observation (Prometheus down) holds the current size (fail
  static) and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

REQUIRED_OBSERVATIONS = ("ready_replicas", "active_sessions", "free_slots", "queue_length")
"""Without any of these the policy cannot tell load from silence, so it holds."""


@dataclass(frozen=True)
class PoolPolicy:
    """How one pool may scale: the SttPool spec's scaling fields, in one object."""

    min_replicas: int = 1
    """Prewarmed pods: always present, model loaded and warm; never drained."""
    max_replicas: int = 4
    """Most pods the pool may have; pods above it are drained and removed."""
    sessions_per_pod: int = 8
    """Session slots per pod, used when the pods do not report their capacity."""
    target_utilization: float = 0.8
    """Share of all session slots (and of model time) the policy aims to fill."""
    buffer: int = 2
    """Least free slots to keep for arrivals; the Little's-law buffer may be larger."""
    reserve: tuple[tuple[str, float], ...] = ()
    """Reserved capacity: (priority class, share of all session slots) pairs. Each class's share of the
    serving slots, rounded up, is kept free for that class on top of the buffer (less what it uses)."""
    scale_up_stabilization_seconds: float = 0.0
    """Scale up to the lowest recommendation of this window (0: at once)."""
    scale_up_max_step: int = 10
    """Most new pods started by one decision (un-draining is not limited)."""
    scale_down_stabilization_seconds: float = 300.0
    """Scale down only to the highest recommendation of this window."""
    scale_down_max_step: int = 1
    """Most pods marked draining by one decision."""
    idle_seconds: float = 300.0
    """Surplus must have lasted this long, without a break, before any drain starts."""
    drain_timeout_seconds: float = 4 * 3600.0  # a pod's longest session (stt_pod.settings): nobody is cut
    """A draining pod is removed after this long even if sessions remain (they are cut)."""
    default_pod_start_seconds: float = 60.0
    """Pod start-to-ready time assumed until the caller has measured one."""
    buffer_sigmas: float = 2.0
    """Standard deviations of random arrivals and departures the buffer covers beyond their mean."""
    reaction_seconds: float = 25.0
    """Time before a new pod is even asked for: how stale the load numbers may be (the metrics'
    scrape interval) plus the decision period. Arrivals during it need slots too, so the
    Little's-law buffer covers reaction_seconds + pod start."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be at least 0")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError("max_replicas must be at least 1 and at least min_replicas")
        if self.sessions_per_pod < 1:
            raise ValueError("sessions_per_pod must be at least 1")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if any(not 0 <= share < 1 for _, share in self.reserve) or self.reserve_share >= 1:
            raise ValueError("reserve shares must be in [0, 1) and add up to less than 1")
        if self.scale_up_max_step < 1 or self.scale_down_max_step < 1:
            raise ValueError("max steps must be at least 1")
        for name in ("buffer", "scale_up_stabilization_seconds", "scale_down_stabilization_seconds",
                     "idle_seconds", "drain_timeout_seconds", "default_pod_start_seconds", "reaction_seconds",
                     "buffer_sigmas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> "PoolPolicy":
        """Build from an object shaped like the SttPool spec (min_replicas, scale_up.max_step, ...).

        Duck-typed so that this module need not import the operator.
        """
        values = dict(
            min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
            sessions_per_pod=spec.sessions_per_pod, target_utilization=spec.target_utilization,
            buffer=spec.buffer,
            reserve=tuple(sorted((str(k), float(v)) for k, v in (getattr(spec, "reserve", None) or {}).items())),
            scale_up_stabilization_seconds=spec.scale_up.stabilization_seconds,
            scale_up_max_step=spec.scale_up.max_step,
            scale_down_stabilization_seconds=spec.scale_down.stabilization_seconds,
            scale_down_max_step=spec.scale_down.max_step,
            idle_seconds=spec.idle_seconds, drain_timeout_seconds=spec.drain_timeout_seconds,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def reserve_share(self) -> float:
        return sum(share for _, share in self.reserve)

    def reserved_slots(self, total: int) -> int:
        """Slots reserved in a pool of `total` slots: each class's share, rounded up (as the router counts)."""
        return sum(reserved_slots(total, share) for _, share in self.reserve)


@dataclass(frozen=True)
class Observations:
    """What the caller measured just now. None means "could not be measured"."""

    now: float
    """Seconds on the caller's clock (monotonic or wall); only differences matter."""
    replicas: int
    """Pods the pool has now (StatefulSet spec.replicas): ordinals 0 .. replicas-1."""
    ready_replicas: int | None
    """Warm pods that take new sessions: ready and not draining."""
    active_sessions: int | None
    """Sessions open on all pods, draining ones included."""
    free_slots: int | None
    """Free session slots over the warm, non-draining pods (what the router can place on now)."""
    queue_length: int | None
    """Sessions waiting in the routers' queues for a slot."""
    queue_oldest_wait_seconds: float | None = None
    """Age of the oldest waiting session; reported in the reason."""
    arrival_rate: float | None = None
    """New sessions per second (e.g. rate of the router's sessions counter over a minute)."""
    departure_rate: float | None = None
    """Sessions ending per second over the same window; None: the buffer assumes none end."""
    pod_start_seconds: float | None = None
    """Measured start-to-ready time of recent pods; None: the policy's default."""
    capacity_per_pod: int | None = None
    """Sessions one pod admits, as the pods report it; None: the policy's sessions_per_pod."""
    compute_per_audio_second: float | None = None
    """Model seconds spent per second of audio received, over the pool; None: not used."""
    reserved_in_use: int | None = None
    """Reserved slots their classes hold now (the routers' voxfleet_router_reserved_slots_in_use); None:
    unknown, the whole reserve counts as unused."""
    draining: frozenset[int] = frozenset()
    """Ordinals the cluster shows marked draining (adopted if the state does not know them)."""
    pod_sessions: Mapping[int, int] | None = None
    """Sessions per ordinal, at least for the draining ones (0 for a pod not running); None: drains
    end by timeout only."""
    sampled_at: float | None = None
    """When the load numbers were sampled (e.g. the Prometheus scrape), if older than `now`. A
    draining pod counts as empty only on a sample taken after it was marked."""


@dataclass(frozen=True)
class ScalerState:
    """What the policy remembers between decisions. Pass the previous decision's `state` back in."""

    recommendations: tuple[tuple[float, int], ...] = ()
    """(since, pods) each time the recommendation changed, trimmed to the longest stabilization window."""
    surplus_since: float | None = None
    """When the recommendation last fell below the serving pods, if it is still below."""
    drain_started: tuple[tuple[int, float], ...] = ()
    """(ordinal, since) of every pod marked draining."""
    last_scale_up: float | None = None
    """When the policy last added capacity (new pods or un-drain)."""
    last_scale_down: float | None = None
    """When the policy last marked a pod draining."""

    @property
    def draining(self) -> frozenset[int]:
        return frozenset(o for o, _ in self.drain_started)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (e.g. for an SttPool's status)."""
        return {
            "recommendations": [[t, n] for t, n in self.recommendations],
            "surplusSince": self.surplus_since,
            "drainStarted": {str(o): t for o, t in self.drain_started},
            "lastScaleUp": self.last_scale_up,
            "lastScaleDown": self.last_scale_down,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ScalerState":
        """Inverse of to_dict; None or {} gives a fresh state."""
        if not data:
            return cls()
        return cls(
            recommendations=tuple((float(t), int(n)) for t, n in data.get("recommendations", ())),
            surplus_since=data.get("surplusSince"),
            drain_started=tuple(sorted((int(o), float(t)) for o, t in data.get("drainStarted", {}).items())),
            last_scale_up=data.get("lastScaleUp"),
            last_scale_down=data.get("lastScaleDown"),
        )


@dataclass(frozen=True)
class Decision:
    """What to do now, why, and the state for the next call."""

    replicas: int
    """Pods the pool should have (StatefulSet replicas)."""
    draining: frozenset[int]
    """Every ordinal that should be marked draining after this decision."""
    mark_draining: tuple[int, ...]
    """Ordinals newly marked draining: the router stops placing there, the pod refuses new sessions."""
    undrain: tuple[int, ...]
    """Ordinals whose draining mark is lifted: they take sessions again."""
    actions: tuple[str, ...]
    """What changed: clamp, scale-up, undrain, drain, remove; empty when holding."""
    reason: str
    """One line for people (status, events, logs)."""
    inputs: Mapping[str, Any]
    """The numbers the decision was made from."""
    metrics_available: bool
    """False when a required observation was missing and the size was held."""
    state: ScalerState
    """Pass this back into the next call."""
    cut_sessions: int = 0
    """Sessions still on pods removed after their drain timeout (as last observed)."""

    @property
    def action(self) -> str:
        return "+".join(self.actions) if self.actions else ("fail-static" if not self.metrics_available else "hold")


# ------------------------------------------------------------------ internals

def reserved_slots(total: int, share: float) -> int:
    """A share of `total` slots, rounded up (stt_router.reserve counts the same way)."""
    if total <= 0 or share <= 0:
        return 0
    return min(total, math.ceil(share * total - 1e-9))


def pods_with_reserve(need: int, per_pod: int, policy: PoolPolicy, in_use: int) -> int:
    """Fewest pods whose slots hold `need` slots plus the reserve they carry that is not in use."""
    pods = max(0, math.ceil(need / per_pod))
    if not policy.reserve:
        return pods
    share = policy.reserve_share
    # The reserve grows with the pool: start near the fixed point (T - share x T >= need - in_use), then step up.
    pods = max(pods, math.ceil((need - in_use) / (1 - share) / per_pod - 1e-9) - 1)
    while pods * per_pod < need + max(0, policy.reserved_slots(pods * per_pod) - in_use):
        pods += 1
    return pods

def lead_buffer(arrival_rate: float, departure_rate: float | None, lead_seconds: float, sigmas: float) -> float:
    """Free slots that cover the change in demand before a pod asked for now can serve.

    Little's law: arrival_rate x lead_seconds sessions arrive meanwhile. Those that
    leave meanwhile free slots; unknown departures count as none (the safe bound).
    On top, `sigmas` standard deviations of both (Poisson) counts.
    """
    arrivals = max(0.0, arrival_rate) * lead_seconds
    departures = max(0.0, departure_rate or 0.0) * lead_seconds
    return max(0.0, arrivals - departures) + sigmas * math.sqrt(arrivals + departures)


def _window(history: list[tuple[float, int]], now: float, seconds: float) -> list[int]:
    """Recommendations in force at some moment of [now - seconds, now]."""
    start = now - seconds
    values = []
    for i, (_since, value) in enumerate(history):
        until = history[i + 1][0] if i + 1 < len(history) else math.inf
        if until > start or i + 1 == len(history):
            values.append(value)
    return values


def _record(history: tuple[tuple[float, int], ...], now: float, value: int, keep_seconds: float
            ) -> list[tuple[float, int]]:
    out = list(history)
    if not out or out[-1][1] != value:
        out.append((now, value))
    # Drop entries that ended before the window (keep the one in force at its start).
    while len(out) > 1 and out[1][0] <= now - keep_seconds:
        out.pop(0)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _ordinals(ordinals: list[int] | tuple[int, ...]) -> str:
    return ("pod " if len(ordinals) == 1 else "pods ") + ", ".join(str(o) for o in sorted(ordinals))


# ------------------------------------------------------------------ the policy

def decide(obs: Observations, policy: PoolPolicy, state: ScalerState | None = None) -> Decision:
    """One scaling decision. Pure: same inputs, same decision."""
    state = state or ScalerState()
    now = obs.now
    replicas = max(0, obs.replicas)
    actions: list[str] = []
    notes: list[str] = []
    mark: list[int] = []
    undrain: list[int] = []
    cut = 0

    # Drain bookkeeping: the state's marks are the truth. A fresh state (a restarted caller that lost
    # it) adopts the marks the cluster shows, their drain timeout counted from now.
    started = {o: t for o, t in state.drain_started if o < replicas}
    if not state.recommendations:
        for o in sorted(obs.draining):
            if o < replicas and o not in started:
                started[o] = now
                notes.append(f"adopted draining mark on pod {o}")
    before = set(started)
    shown = {o for o in obs.draining if o < obs.replicas}

    # Hard bounds first: they hold even without metrics.
    if replicas < policy.min_replicas:
        notes.append(f"below minReplicas: {replicas} -> {policy.min_replicas} pods")
        replicas = policy.min_replicas
        actions.append("clamp")
    low = [o for o in started if o < policy.min_replicas]
    for o in low:
        del started[o]
    if low:
        notes.append(f"{_ordinals(low)} within minReplicas: un-drained")
    high = [o for o in range(policy.max_replicas, replicas) if o not in started]
    for o in high:
        started[o] = now
    if high:
        notes.append(f"above maxReplicas {policy.max_replicas}: draining {_ordinals(high)}")
        actions.append("clamp")

    inputs: dict[str, Any] = {
        "replicas": obs.replicas, "readyReplicas": obs.ready_replicas, "activeSessions": obs.active_sessions,
        "freeSlots": obs.free_slots, "queueLength": obs.queue_length,
        "queueOldestWaitSeconds": obs.queue_oldest_wait_seconds, "arrivalRate": obs.arrival_rate,
        "departureRate": obs.departure_rate,
        "podStartSeconds": obs.pod_start_seconds, "capacityPerPod": obs.capacity_per_pod,
        "computePerAudioSecond": obs.compute_per_audio_second, "draining": sorted(started),
        "sampledAt": obs.sampled_at,
    }

    missing = [name for name in REQUIRED_OBSERVATIONS if getattr(obs, name) is None]
    if missing:
        text = (f"metrics unavailable ({', '.join(missing)}): holding {_plural(replicas, 'pod')} (fail static)")
        mark = sorted(set(started) - before)
        undrain = sorted((before | shown) - set(started))
        return Decision(
            replicas=replicas, draining=frozenset(started), mark_draining=tuple(mark), undrain=tuple(undrain),
            actions=tuple(actions), reason="; ".join([text, *notes]), inputs=inputs, metrics_available=False,
            state=replace(state, surplus_since=None, drain_started=tuple(sorted(started.items()))))

    active = max(0, obs.active_sessions)
    queue = max(0, obs.queue_length)
    free = max(0, obs.free_slots)
    per_pod = obs.capacity_per_pod if obs.capacity_per_pod and obs.capacity_per_pod > 0 else policy.sessions_per_pod
    start_s = obs.pod_start_seconds if obs.pod_start_seconds is not None and obs.pod_start_seconds >= 0 \
        else policy.default_pod_start_seconds
    serving = [o for o in range(replicas) if o not in started]
    n_serving = len(serving)
    pending = max(0, n_serving - max(0, obs.ready_replicas))

    # The buffer: sessions arriving while a new pod is asked for and starts, at least the configured floor.
    lead = start_s + policy.reaction_seconds
    if obs.arrival_rate is not None and obs.arrival_rate > 0:
        little = lead_buffer(obs.arrival_rate, obs.departure_rate, lead, policy.buffer_sigmas)
        buffer = max(policy.buffer, math.ceil(little - 1e-9))
        flow = f"{obs.arrival_rate:.2g}/s in" + (f", {obs.departure_rate:.2g}/s out"
                                                  if obs.departure_rate is not None else "")
        buffer_text = f"buffer {buffer} ({flow} over {lead:.0f} s to react and start a pod"
        buffer_text += ")" if buffer > policy.buffer else f"; floor {policy.buffer})"
    else:
        little = None
        buffer = policy.buffer
        buffer_text = f"buffer {buffer} (configured; no arrival rate)"

    # Sessions pinned on draining pods stay there until they end; the serving pods need slots for the rest.
    pinned = sum(max(0, obs.pod_sessions.get(o, 0)) for o in started) if obs.pod_sessions is not None else 0
    pinned = min(pinned, active)
    on_serving = active - pinned
    demand = on_serving + queue
    # Reserved capacity stays free for its classes on top of the buffer (less what they use of it).
    in_use = max(0, obs.reserved_in_use or 0)
    slots = max(math.ceil(demand / policy.target_utilization - 1e-9), demand + buffer)
    pods_for_slots = max(math.ceil(slots / per_pod), pods_with_reserve(demand + buffer, per_pod, policy, in_use))
    reserved = policy.reserved_slots(n_serving * per_pod)
    unused = max(0, reserved - in_use)
    if policy.reserve:  # the slots those pods have, their reserve on top of demand + buffer
        slots = max(slots, demand + buffer + max(0, policy.reserved_slots(pods_for_slots * per_pod) - in_use))
    # What the router sees: free slots now plus pods on their way, against the buffer, the reserve and the queue.
    shortfall = buffer + unused + queue - free - pending * per_pod
    per_new_pod = per_pod * (1 - policy.reserve_share)  # a new pod's slots, less the reserve they add
    pods_for_free = n_serving + math.ceil(shortfall / per_new_pod - 1e-9) if shortfall > 0 else 0
    cpas = obs.compute_per_audio_second
    pods_for_compute = math.ceil(on_serving * cpas / policy.target_utilization - 1e-9) if cpas and cpas > 0 else 0
    raw = max(pods_for_slots, pods_for_free, pods_for_compute)
    recommendation = min(max(raw, policy.min_replicas), policy.max_replicas)

    keep = max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
    seeded = not state.recommendations
    history = _record(state.recommendations, now, recommendation, keep)
    window_down = _window(history, now, policy.scale_down_stabilization_seconds)
    if seeded:
        # A fresh (or restarted) policy has seen no window yet: it may not scale down until it has.
        history = [(now, max(recommendation, n_serving))]
        window_down = [history[0][1]]
    up_to = min(_window(history, now, policy.scale_up_stabilization_seconds) + [recommendation])
    down_to = max(window_down)

    inputs.update({
        "demand": demand, "pinnedOnDraining": pinned, "capacityPerPodUsed": per_pod, "podStartSecondsUsed": start_s,
        "leadSeconds": lead,
        "littleBuffer": None if little is None else round(little, 2), "buffer": buffer,
        "reservedSlots": reserved, "reservedInUse": obs.reserved_in_use,
        "slotsNeeded": slots, "podsForSlots": pods_for_slots, "podsForFreeSlots": pods_for_free,
        "podsForCompute": pods_for_compute, "recommendation": recommendation,
        "scaleUpTo": up_to, "scaleDownTo": down_to, "serving": n_serving, "pending": pending,
    })

    why = []
    if queue:
        oldest = obs.queue_oldest_wait_seconds
        why.append(f"{queue} waiting" + (f" (oldest {oldest:.1f} s)" if oldest is not None else ""))
    if free < buffer + unused:
        why.append(f"{_plural(free, 'free slot')} < buffer {buffer}" + (f" + reserve {unused}" if unused else ""))
    if pods_for_compute > pods_for_slots:
        why.append(f"model busy {cpas:.2f} s per audio s x {on_serving} sessions")
    need_text = (f"need {slots} slots = {_plural(max(pods_for_slots, pods_for_free, pods_for_compute), 'pod')} "
                 f"of {per_pod} for {on_serving} active + {queue} queued"
                 + (f" ({pinned} more on draining pods)" if pinned else "") + f" + {buffer_text}"
                 + (f" + reserve {unused} of {reserved} unused" if policy.reserve else ""))

    surplus_since = state.surplus_since
    last_up, last_down = state.last_scale_up, state.last_scale_down
    if recommendation < n_serving:
        surplus_since = now if surplus_since is None else surplus_since
    else:
        surplus_since = None

    if up_to > n_serving:
        need = up_to - n_serving
        # Load returned: lift the lowest draining marks first (the rest stay the highest ordinals).
        back = sorted(o for o in started if o < policy.max_replicas)[:need]
        for o in back:
            del started[o]
        need -= len(back)
        add = min(need, policy.scale_up_max_step, policy.max_replicas - replicas) if need > 0 else 0
        parts = []
        if back:
            actions.append("undrain")
            parts.append(f"un-drain {_ordinals(back)}")
        if add > 0:
            actions.append("scale-up")
            parts.append(f"scale up {replicas} -> {replicas + add} pods"
                         + (f" (step {policy.scale_up_max_step} of {need} needed)" if add < need else ""))
            replicas += add
        if parts:
            last_up = now
            notes.insert(0, f"{' and '.join(parts)}: {', '.join(why) or 'load rose'}; {need_text}")
        surplus_since = None
    elif down_to < n_serving and surplus_since is not None and now - surplus_since >= policy.idle_seconds:
        k = min(n_serving - down_to, policy.scale_down_max_step)
        chosen = sorted(serving, reverse=True)[:k]
        for o in chosen:
            started[o] = now
        actions.append("drain")
        last_down = now
        notes.insert(0, f"drain {_ordinals(chosen)}: surplus for {now - surplus_since:.0f} s "
                        f"(idle {policy.idle_seconds:.0f} s), highest need over "
                        f"{policy.scale_down_stabilization_seconds:.0f} s is {_plural(down_to, 'pod')} "
                        f"< {n_serving} serving")
    else:
        if surplus_since is not None:
            state_text = (f"surplus for {now - surplus_since:.0f} s of idle {policy.idle_seconds:.0f} s, "
                          f"highest need over {policy.scale_down_stabilization_seconds:.0f} s is "
                          f"{_plural(down_to, 'pod')}")
        elif recommendation > n_serving:
            state_text = (f"load must stay high for {policy.scale_up_stabilization_seconds:.0f} s "
                          f"before pods are added")
        elif pending:
            state_text = f"{_plural(pending, 'pod')} starting"
        else:
            state_text = "capacity matches"
        notes.insert(0, f"hold {_plural(n_serving, 'serving pod')}: {state_text}; {need_text}"
                        + (f"; {', '.join(why)}" if why else ""))

    # Reclaim: lower replicas past the highest draining pods whose sessions are gone or whose time is up.
    # A mark must be older than this decision, so no session was placed between observing and marking.
    removed = []
    sampled = now if obs.sampled_at is None else min(obs.sampled_at, now)
    while replicas - 1 >= policy.min_replicas and (replicas - 1) in started:
        top = replicas - 1
        since = started[top]
        sessions = obs.pod_sessions.get(top) if obs.pod_sessions is not None else None
        if now <= since:
            break
        if sessions == 0 and sampled > since:
            removed.append(f"pod {top} (sessions ended)")
        elif now - since >= policy.drain_timeout_seconds:
            removed.append(f"pod {top} (drain timeout {policy.drain_timeout_seconds:.0f} s, "
                           + ("sessions unknown)" if sessions is None else f"{_plural(sessions, 'session')} cut)"))
            cut += sessions or 0
        else:
            break
        del started[top]
        replicas = top
    if removed:
        actions.append("remove")
        notes.append(f"remove {', '.join(removed)}: {_plural(replicas, 'pod')} left")
    waiting_drains = sorted(o for o in started if o < replicas)
    if waiting_drains and not removed and "drain" not in actions:
        notes.append(f"{_ordinals(waiting_drains)} draining")

    mark = sorted(set(started) - before)
    undrain = sorted((before | shown) - set(started) - set(range(replicas, obs.replicas)))
    new_state = ScalerState(
        recommendations=tuple(history), surplus_since=surplus_since,
        drain_started=tuple(sorted(started.items())), last_scale_up=last_up, last_scale_down=last_down)
    return Decision(
        replicas=replicas, draining=frozenset(started), mark_draining=tuple(mark), undrain=tuple(undrain),
        actions=tuple(actions), reason="; ".join(notes), inputs=inputs, metrics_available=True,
        state=new_state, cut_sessions=cut)
