"""Load observations for the autoscaler, read from Prometheus' HTTP API.

Why it exists: the policy (voxfleet.autoscale.decide) needs numbers; in a
cluster they live in Prometheus, scraped from the STT pods and routers. This
module turns a pool into PromQL (defaults over the pod and router metrics,
each overridable by name from the SttPool's spec.prometheus.queries), runs the
queries against /api/v1/query and builds an `Observations`.

It must never guess: a query that fails, returns nothing or returns NaN gives
None for its field, and a Prometheus that cannot be reached gives None for
every load field. Holding the size on missing data (fail static) is the
policy's job, not this module's. It never talks to the Kubernetes API.

The HTTP call is plain urllib (no extra dependency), synchronous: kopf runs
sync handlers in a worker thread; `read_async` wraps it for asyncio callers.

Label conventions the default queries assume (the usual kubernetes_sd
relabelling, see docs): every series carries `namespace` and `pod` (the pod
name; an STT pod's name ends in its StatefulSet ordinal, `<pool>-3`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import string
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from voxfleet.autoscale import Observations

DEFAULT_TIMEOUT_SECONDS = 5.0
"""One query; a Prometheus slower than this counts as unreachable for this period."""

RATE_WINDOW = "1m"
"""Window of the rate() queries: long enough for a 15 s scrape interval to give 4 samples."""

# Templates: $pods and $routers become label matchers for the pool's STT pods and routers.
DEFAULT_QUERIES: dict[str, str] = {
    # Per-pod series (`by (pod)`): series of draining ordinals are left out where the
    # policy wants serving pods only (readyReplicas, freeSlots).
    "readyReplicas": "sum by (pod) (voxfleet_pod_ready{$pods} * (1 - voxfleet_pod_draining{$pods}))",
    "activeSessions": "sum(voxfleet_pod_sessions_active{$pods})",
    "freeSlots": "sum by (pod) (clamp_min(voxfleet_pod_sessions_capacity{$pods}"
                 " - voxfleet_pod_sessions_active{$pods}, 0)"
                 " * voxfleet_pod_ready{$pods} * (1 - voxfleet_pod_draining{$pods}))",
    "capacityPerPod": "max(voxfleet_pod_sessions_capacity{$pods})",
    "podSessions": "sum by (pod) (voxfleet_pod_sessions_active{$pods})",
    "sampledAt": "min(timestamp(voxfleet_pod_sessions_active{$pods}))",
    "queueLength": "sum(voxfleet_router_sessions_queued{$routers})",
    "queueWaitSeconds": "max(voxfleet_router_queue_oldest_wait_seconds{$routers})",
    # Reserved slots that key clients hold (spec.reserve): the policy keeps only the unused rest free on top.
    "reservedInUse": "sum(voxfleet_router_reserved_slots_in_use{$routers})",
    # New sessions per second, counted by the routers: they live longer than any burst pod, so a
    # session that reaches a pod before Prometheus' first scrape of it is counted all the same. A pool
    # without routers (or whose routers are not scraped) falls back to the pods' own counters.
    # Departures are the pods' arrivals less the growth of their active sessions.
    "arrivalRate": f'sum(rate(voxfleet_router_sessions_total{{$routers,kind="start"}}[{RATE_WINDOW}]))'
                   f" or sum(rate(voxfleet_pod_sessions_total{{$pods}}[{RATE_WINDOW}]))",
    "departureRate": f"sum(rate(voxfleet_pod_sessions_total{{$pods}}[{RATE_WINDOW}]))"
                     f" - sum(deriv(voxfleet_pod_sessions_active{{$pods}}[{RATE_WINDOW}]))",
    "computePerAudioSecond": f"sum(rate(voxfleet_pod_compute_seconds_total{{$pods}}[{RATE_WINDOW}]))"
                             f" / sum(rate(voxfleet_pod_audio_received_seconds_total{{$pods}}[{RATE_WINDOW}]))",
    "podStartSeconds": "",  # none by default: model load time alone would understate a pod's start
}
"""Query names are the SttPool spec's spec.prometheus.queries keys; an empty query is not run."""

PER_POD = ("readyReplicas", "freeSlots", "podSessions")
"""Queries whose series are kept apart by the pod label."""

_ORDINAL = re.compile(r"-(\d+)$")


class PrometheusError(Exception):
    """Prometheus could not be asked, or said the query failed."""


def ordinal_of(pod: str | None) -> int | None:
    """`voxfleet-3` -> 3; None for a name without an ordinal."""
    m = _ORDINAL.search(pod or "")
    return int(m.group(1)) if m else None


def pool_matchers(pool: str, namespace: str | None = None) -> tuple[str, str]:
    """Label matchers ($pods, $routers) for a pool's STT pods and router pods.

    The names are manifests.PoolRef's: StatefulSet `<pool>-stt` (pods `<pool>-stt-N`) and
    Deployment `<pool>-router` (pods `<pool>-router-<hash>-<hash>`).
    """
    ns = f'namespace="{namespace}",' if namespace else ""
    # Pool names are DNS labels ([a-z0-9-]): nothing in them needs escaping in a regex.
    return f'{ns}pod=~"{pool}-stt-[0-9]+"', f'{ns}pod=~"{pool}-router-.+"'


def queries_for(pool: str, namespace: str | None = None, overrides: Mapping[str, str] | None = None,
                pods: str | None = None, routers: str | None = None) -> dict[str, str]:
    """The PromQL to run for one pool: defaults, then overrides (which may use $pods/$routers too)."""
    unknown = sorted(set(overrides or {}) - set(DEFAULT_QUERIES))
    if unknown:
        raise ValueError(f"unknown Prometheus query name(s): {', '.join(unknown)}")
    default_pods, default_routers = pool_matchers(pool, namespace)
    values = {"pods": default_pods if pods is None else pods,
              "routers": default_routers if routers is None else routers}
    merged = {**DEFAULT_QUERIES, **(overrides or {})}
    return {name: string.Template(q).safe_substitute(values) for name, q in merged.items()}


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


Fetch = Callable[[str, float], bytes]
"""(url, timeout) -> response body; raises OSError when Prometheus cannot be reached."""


def _urlopen(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:  # 400/422/503 carry a JSON error body
        body = exc.read()
        if body:
            return body
        raise


class PrometheusClient:
    """GET /api/v1/query, instant vectors and scalars as samples."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, fetch: Fetch | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._fetch = fetch or _urlopen

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            raw = self._fetch(url, self.timeout)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, bad URLs
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {exc}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} did not answer JSON") from None
        if doc.get("status") != "success":
            raise PrometheusError(f"query failed: {doc.get('errorType', 'error')}: {doc.get('error', doc)}")
        data = doc.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "vector":
            return [Sample(dict(r.get("metric") or {}), _float(r["value"][1])) for r in result or ()]
        if kind == "scalar":
            return [Sample({}, _float(result[1]))]
        raise PrometheusError(f"query gave a {kind}, not an instant vector or scalar")


def _float(text: str) -> float:
    return float(text)  # Prometheus writes NaN, +Inf, -Inf as Go does; float() reads them


@dataclass(frozen=True)
class Reading:
    """One read of a pool's load: the observations and what went wrong on the way."""

    observations: Observations
    errors: tuple[str, ...] = ()
    """One line per query that failed or returned nothing."""
    reachable: bool = True
    """False when Prometheus could not be reached at all (every load field is None)."""
    values: Mapping[str, float | None] = field(default_factory=dict)
    """Each query's value as used (per-pod queries summed), for status and events."""


def _finite(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if not math.isnan(s.value) and not math.isinf(s.value)]


def read(client: PrometheusClient, queries: Mapping[str, str], now: float, replicas: int,
         draining: Iterable[int] = (), pod_label: str = "pod", routers: bool = True) -> Reading:
    """Run the queries and build Observations (None for anything missing).

    `draining` are the ordinals marked draining (left out of readyReplicas and
    freeSlots); series of ordinals at or above `replicas` are ignored. With
    `routers` False (a pool without routers) the queue is empty by definition.
    """
    draining = frozenset(draining)
    errors: list[str] = []
    results: dict[str, list[Sample] | None] = {}
    reachable = True
    for name, promql in queries.items():
        if not promql:
            continue
        if not reachable:
            results[name] = None
            continue
        try:
            results[name] = _finite(client.query(promql, at=None))
        except PrometheusError as exc:
            results[name] = None
            errors.append(f"{name}: {exc}")
            if str(exc).startswith("cannot reach"):
                reachable = False
    if not reachable:
        errors = [e for e in errors if "cannot reach" in e][:1]

    def per_pod(name: str, skip_draining: bool) -> tuple[float | None, dict[int, float]]:
        samples = results.get(name)
        if not samples:
            return None, {}
        by_ordinal: dict[int, float] = {}
        total = 0.0
        for s in samples:
            o = ordinal_of(s.labels.get(pod_label))
            if o is not None:
                if o >= replicas:
                    continue
                by_ordinal[o] = by_ordinal.get(o, 0.0) + s.value
                if skip_draining and o in draining:
                    continue
            total += s.value
        return total, by_ordinal

    def scalar(name: str) -> float | None:
        samples = results.get(name)
        if not samples:
            return None
        return sum(s.value for s in samples)

    ready, _ = per_pod("readyReplicas", skip_draining=True)
    free, _ = per_pod("freeSlots", skip_draining=True)
    _, sessions_by_pod = per_pod("podSessions", skip_draining=False)
    active = scalar("activeSessions")
    queue = scalar("queueLength")
    wait = scalar("queueWaitSeconds")
    if not routers and reachable:
        queue = 0.0 if queue is None else queue
    arrivals = scalar("arrivalRate")
    departures = scalar("departureRate")
    capacity = scalar("capacityPerPod")
    sampled = scalar("sampledAt")
    start = scalar("podStartSeconds")
    cpas = scalar("computePerAudioSecond")
    reserved_in_use = scalar("reservedInUse")

    values = {"readyReplicas": ready, "activeSessions": active, "freeSlots": free, "queueLength": queue,
              "queueWaitSeconds": wait, "arrivalRate": arrivals, "departureRate": departures,
              "capacityPerPod": capacity, "computePerAudioSecond": cpas, "podStartSeconds": start,
              "sampledAt": sampled, "reservedInUse": reserved_in_use}
    if reachable:
        for name in ("readyReplicas", "activeSessions", "freeSlots", "queueLength"):
            if values[name] is None and not any(e.startswith(name + ":") for e in errors):
                errors.append(f"{name}: no data")

    pod_sessions = None
    if "podSessions" in results and results["podSessions"] is not None:
        # A pod without a series has no sessions there (not running, or not scraped since it started).
        pod_sessions = {o: int(round(sessions_by_pod.get(o, 0.0))) for o in range(replicas)}

    def whole(x: float | None) -> int | None:
        return None if x is None else max(0, int(round(x)))

    obs = Observations(
        now=now, replicas=replicas, ready_replicas=whole(ready), active_sessions=whole(active),
        free_slots=whole(free), queue_length=whole(queue), queue_oldest_wait_seconds=wait,
        arrival_rate=None if arrivals is None else max(0.0, arrivals),
        departure_rate=None if departures is None else max(0.0, departures),
        pod_start_seconds=start, capacity_per_pod=whole(capacity) or None,
        compute_per_audio_second=cpas if cpas is not None and cpas > 0 else None,
        draining=draining, pod_sessions=pod_sessions,
        sampled_at=None if sampled is None else min(sampled, now), reserved_in_use=whole(reserved_in_use),
    )
    return Reading(obs, tuple(errors), reachable, values)


async def read_async(client: PrometheusClient, queries: Mapping[str, str], now: float, replicas: int,
                     draining: Iterable[int] = (), pod_label: str = "pod", routers: bool = True) -> Reading:
    """`read` in a worker thread, for asyncio callers."""
    return await asyncio.to_thread(read, client, queries, now, replicas, frozenset(draining), pod_label, routers)
