"""The operator's scaling loop: Prometheus in, StatefulSet replicas and drain marks out.

Why it exists: voxfleet.autoscale.decide is pure; something has to feed it
measured load, remember its state between periods, and carry its decision
out. Per SttPool and period (spec.autoscaling.intervalSeconds, checked on the
operator's periodic resync) this module reads Prometheus (prometheus.py), asks
the policy, and hands the handler a `Step`: the replicas to apply, the pods
to mark or unmark draining, the status fields and conditions, the events.

The drain mark is the pod annotation `voxfleet.io/draining: "true"` on the
STT pod. Routers must stop placing new sessions on a pod that carries it
(sessions already there continue); the policy lowers replicas only once the
marked pods' sessions are gone (or drainTimeoutSeconds passed).

It must never scale on missing data: when Prometheus cannot be reached or a
required number is missing the policy holds the size (fail static), the
step says MetricsAvailable=False and warns once per outage. It never touches
replicas in autoscaling mode `external` (HPA/KEDA own spec.replicas there),
and the policy state lives in the SttPool's status (status.autoscaler), so an
operator restart loses nothing.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from stt_operator import prometheus as prom
from stt_operator import status as statusmod
from stt_operator.manifests import PoolRef, STT_COMPONENT, selector_string
from stt_operator.spec import SttPoolSpec
from voxfleet.autoscale import Decision, PoolPolicy, ScalerState, decide

logger = logging.getLogger(__name__)

DRAINING_ANNOTATION = "voxfleet.io/draining"
"""On an STT pod, "true": the autoscaler is draining it; routers place no new sessions there."""
STATUS_KEY = "autoscaler"
"""status.autoscaler: the policy state, when it last ran, and its last decision."""
SLACK_SECONDS = 1.0
"""A period is due this much early: the resync's ticks jitter."""

_SCALING_REASONS = {"scale-up": "ScaleUp", "undrain": "Undrain", "drain": "Drain", "remove": "ScaleDown",
                    "clamp": "Bounds"}


@dataclass(frozen=True)
class Step:
    """What one autoscaler period asks the handler to do."""

    replicas: int
    """StatefulSet replicas to apply."""
    mark: tuple[int, ...] = ()
    """Ordinals to annotate draining."""
    unmark: tuple[int, ...] = ()
    """Ordinals whose draining annotation goes."""
    status: dict[str, Any] = field(default_factory=dict)
    """Fields to merge into the SttPool's status (conditions apart)."""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    """Conditions that replace those of the same type."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type Normal|Warning, reason, message) to post on the SttPool."""
    decision: Decision | None = None


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def due(old_status: Mapping[str, Any] | None, spec: SttPoolSpec, now: float) -> bool:
    """True when a period (spec.autoscaling.intervalSeconds) has passed since the last run."""
    last = ((old_status or {}).get(STATUS_KEY) or {}).get("lastRun")
    return last is None or now - float(last) >= spec.autoscaling.interval_seconds - SLACK_SECONDS


def plan(spec: SttPoolSpec, old_status: Mapping[str, Any] | None, reading: prom.Reading, now: float) -> Step:
    """Pure: the policy's decision for this reading, as a Step. `now` is wall-clock seconds."""
    old_status = old_status or {}
    saved = old_status.get(STATUS_KEY) or {}
    state = ScalerState.from_dict(saved.get("state"))
    policy = PoolPolicy.from_spec(spec)
    decision = decide(reading.observations, policy, state)
    obs = reading.observations
    stamp = _iso(now)
    events: list[tuple[str, str, str]] = []
    conditions: list[dict[str, Any]] = []

    old_metrics = next((c for c in old_status.get("conditions") or () if c.get("type") == statusmod.METRICS), None)
    was_unavailable = old_metrics is not None and old_metrics.get("status") == "False"
    if decision.metrics_available:
        conditions.append(statusmod.condition(
            statusmod.METRICS, True, "Measured",
            f"{obs.active_sessions} active sessions, {obs.free_slots} free slots, {obs.queue_length} queued "
            f"(from {spec.prometheus.url})", stamp))
        if was_unavailable:
            events.append(("Normal", "MetricsAvailable", "load metrics are back: autoscaling resumes"))
    else:
        why = "; ".join(reading.errors) or "required load numbers missing"
        reason = "PrometheusUnreachable" if not reading.reachable else "MetricsMissing"
        message = f"{why} -- holding {decision.replicas} pods (fail static)"[:1000]
        conditions.append(statusmod.condition(statusmod.METRICS, False, reason, message, stamp))
        if not (was_unavailable and old_metrics.get("message") == message):
            events.append(("Warning", reason, message))

    status: dict[str, Any] = {
        STATUS_KEY: {
            "lastRun": now,
            "state": decision.state.to_dict(),
            "lastDecision": {"time": stamp, "action": decision.action, "replicas": decision.replicas,
                             "draining": sorted(decision.draining), "reason": decision.reason[:2000],
                             "inputs": dict(decision.inputs)},
        },
    }
    if obs.active_sessions is not None:
        status["activeSessions"] = obs.active_sessions
        slots = obs.active_sessions + (obs.free_slots or 0)
        if slots:
            status["utilization"] = f"{round(100 * obs.active_sessions / slots)}%"
    if obs.queue_length is not None:
        status["queuedSessions"] = obs.queue_length

    if decision.actions:
        status["lastScaleTime"] = stamp
        status["lastScaleReason"] = decision.reason[:2000]
        reason = _SCALING_REASONS.get(decision.actions[0], "Scaling")
        conditions.append(statusmod.condition(statusmod.SCALING, True, reason, decision.reason[:1000], stamp))
        events.append(("Normal", reason, f"{obs.replicas} -> {decision.replicas} pods: {decision.reason}"[:1000]))
        if decision.cut_sessions:
            events.append(("Warning", "SessionsCut",
                           f"{decision.cut_sessions} sessions were still on pods removed after their drain timeout"))
    elif decision.draining:
        conditions.append(statusmod.condition(statusmod.SCALING, True, "Draining", decision.reason[:1000], stamp))
    return Step(replicas=decision.replicas, mark=decision.mark_draining, unmark=decision.undrain, status=status,
                conditions=conditions, events=events, decision=decision)


class PodMarks:
    """Reads and writes the draining annotation on a pool's STT pods (CoreV1 pods: list, patch)."""

    def __init__(self, core_v1: Any | None = None):
        if core_v1 is None:
            from kubernetes import client

            core_v1 = client.CoreV1Api()  # the configuration apply.Cluster loaded
        self.api = core_v1

    def draining(self, pool: PoolRef) -> frozenset[int]:
        pods = self.api.list_namespaced_pod(pool.namespace, label_selector=selector_string(pool, STT_COMPONENT))
        out = set()
        for pod in pods.items:
            annotations = pod.metadata.annotations or {}
            ordinal = prom.ordinal_of(pod.metadata.name)
            if annotations.get(DRAINING_ANNOTATION) == "true" and ordinal is not None:
                out.add(ordinal)
        return frozenset(out)

    def set(self, pool: PoolRef, ordinal: int, draining: bool) -> None:
        body = {"metadata": {"annotations": {DRAINING_ANNOTATION: "true" if draining else None}}}
        try:
            self.api.patch_namespaced_pod(f"{pool.statefulset}-{ordinal}", pool.namespace, body)
        except Exception as exc:  # a pod not there (yet, or any more) needs no mark
            if getattr(exc, "status", None) != 404:
                raise


ClientFactory = Callable[[str], prom.PrometheusClient]


def step(pool: PoolRef, spec: SttPoolSpec, old_status: Mapping[str, Any] | None, replicas: int,
         marks: PodMarks, now: float, client_factory: ClientFactory = prom.PrometheusClient) -> Step:
    """One period: read the marks and Prometheus, decide, and return what to apply (marks applied here)."""
    draining = marks.draining(pool)
    if spec.prometheus.url:
        client = client_factory(spec.prometheus.url)
        queries = prom.queries_for(pool.name, pool.namespace, spec.prometheus.queries)
        reading = prom.read(client, queries, now, replicas, draining, routers=spec.router.replicas > 0)
    else:
        reading = prom.Reading(_empty(now, replicas, draining), ("spec.prometheus.url is empty",), False)
    result = plan(spec, old_status, reading, now)
    apply_marks(pool, marks, result.mark, result.unmark)
    logger.info("pool %s/%s: %s", pool.namespace, pool.name, result.decision.reason if result.decision else "")
    return result


def apply_marks(pool: PoolRef, marks: PodMarks, mark: Iterable[int], unmark: Iterable[int]) -> None:
    for o in mark:
        marks.set(pool, o, True)
    for o in unmark:
        marks.set(pool, o, False)


def _empty(now: float, replicas: int, draining: frozenset[int]) -> Any:
    from voxfleet.autoscale import Observations

    return Observations(now=now, replicas=replicas, ready_replicas=None, active_sessions=None, free_slots=None,
                        queue_length=None, draining=draining)
