"""SttPool status: conditions and observed numbers, computed from what exists.

Why it exists: `kubectl get sttpools` and every user's first question ("is my pool
ready, is it scaling, is something wrong, can it see load?") are answered by
status; computing it is pure (objects and a timestamp in, a status dict out), so
it is unit-tested without a cluster.

It must never read the clock itself or call the API: the caller passes `now` and
the observed objects.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from stt_operator.manifests import PoolRef, selector_string
from stt_operator.spec import SttPoolSpec

READY = "Ready"
SCALING = "Scaling"
DEGRADED = "Degraded"
METRICS = "MetricsAvailable"
CONDITION_TYPES = (READY, SCALING, DEGRADED, METRICS)


def condition(kind: str, status: bool | None, reason: str, message: str, now: str,
              generation: int | None = None) -> dict[str, Any]:
    """One condition; status None means Unknown."""
    cond: dict[str, Any] = {
        "type": kind,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(old: Sequence[Mapping[str, Any]] | None,
                     new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """New conditions in CONDITION_TYPES order; a condition whose status did not
    change keeps its lastTransitionTime. Old conditions not renewed are kept."""
    previous = {c.get("type"): c for c in (old or ())}
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in previous.items() if k}
    for cond in new:
        cond = dict(cond)
        before = previous.get(cond["type"])
        if before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            cond["lastTransitionTime"] = before["lastTransitionTime"]
        merged[cond["type"]] = cond
    order = {k: i for i, k in enumerate(CONDITION_TYPES)}
    return sorted(merged.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


def already_reported(conditions: Sequence[Mapping[str, Any]] | None, kind: str, message: str) -> bool:
    """True if condition `kind` is already True with this very message."""
    return any(c.get("type") == kind and c.get("status") == "True" and c.get("message") == message
               for c in conditions or ())


def _int(obj: Mapping[str, Any] | None, *path: str) -> int:
    for key in path:
        if not isinstance(obj, Mapping):
            return 0
        obj = obj.get(key)
    return int(obj or 0)


def pool_status(pool: PoolRef, spec: SttPoolSpec, generation: int, desired: int,
                statefulset: Mapping[str, Any] | None, router: Mapping[str, Any] | None,
                old_conditions: Sequence[Mapping[str, Any]] | None, now: str,
                error: str | None = None) -> dict[str, Any]:
    """The status to write after a reconcile (or an observation) of the pool.

    `statefulset` and `router` are the live StatefulSet and router Deployment (or
    None when missing); `error` is why the last reconcile failed, if it did.
    """
    replicas = _int(statefulset, "status", "replicas")
    ready = _int(statefulset, "status", "readyReplicas")
    updated = _int(statefulset, "status", "updatedReplicas")
    sts_generation = _int(statefulset, "metadata", "generation")
    sts_observed = _int(statefulset, "status", "observedGeneration")
    router_wanted = spec.router.replicas
    router_ready = _int(router, "status", "readyReplicas")
    needed_ready = max(1, min(spec.min_replicas, desired)) if desired else 0

    conds = []
    if error:
        conds.append(condition(DEGRADED, True, "ReconcileFailed", error, now, generation))
    else:
        conds.append(condition(DEGRADED, False, "AsExpected", "all owned objects applied", now, generation))

    if statefulset is None:
        conds.append(condition(READY, False, "Creating", "the StatefulSet does not exist yet", now, generation))
    elif ready < needed_ready:
        conds.append(condition(READY, False, "PodsNotReady",
                               f"{ready} of {needed_ready} prewarmed STT pods ready", now, generation))
    elif router_wanted and router is None:
        conds.append(condition(READY, False, "Creating", "the router Deployment does not exist yet", now,
                               generation))
    elif router_wanted and router_ready < 1:
        conds.append(condition(READY, False, "RouterNotReady", f"0 of {router_wanted} routers ready", now,
                               generation))
    else:
        conds.append(condition(READY, True, "PoolReady",
                               f"{ready} STT pods and {router_ready} routers ready", now, generation))

    if statefulset is None:
        conds.append(condition(SCALING, True, "Creating", f"creating {desired} STT pods", now, generation))
    elif sts_observed < sts_generation:
        conds.append(condition(SCALING, True, "Progressing",
                               f"the StatefulSet controller has not seen generation {sts_generation} yet", now,
                               generation))
    elif updated < replicas:
        conds.append(condition(SCALING, True, "RollingUpdate",
                               f"{updated} of {replicas} STT pods run the current template", now, generation))
    elif replicas < desired:
        conds.append(condition(SCALING, True, "ScalingUp", f"{replicas} -> {desired} STT pods", now, generation))
    elif replicas > desired:
        conds.append(condition(SCALING, True, "ScalingDown", f"{replicas} -> {desired} STT pods", now, generation))
    else:
        conds.append(condition(SCALING, False, "Stable", f"{replicas} STT pods", now, generation))

    if spec.autoscaling.mode == "external":
        conds.append(condition(METRICS, None, "ExternalAutoscaling",
                               "replicas come from the scale subresource (HPA/KEDA)", now, generation))
    elif not spec.prometheus.url:
        conds.append(condition(METRICS, False, "NoPrometheus",
                               "spec.prometheus.url is empty: the pool holds its size", now, generation))
    else:
        # The autoscaler (stt_operator.autoscaler) sets it from what it read; keep its word until it reads again.
        measured = next((c for c in old_conditions or () if c.get("type") == METRICS
                         and c.get("reason") not in ("ExternalAutoscaling", "NoPrometheus", "NotMeasured")), None)
        conds.append(dict(measured) if measured else
                     condition(METRICS, None, "NotMeasured", "load has not been read yet", now, generation))

    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "selector": selector_string(pool),
        "conditions": merge_conditions(old_conditions, conds),
    }


def invalid_spec_status(generation: int, message: str, old_conditions: Sequence[Mapping[str, Any]] | None,
                        now: str) -> dict[str, Any]:
    """Status for a spec the operator refuses (the API server should have refused it first)."""
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(old_conditions, [
            condition(DEGRADED, True, "InvalidSpec", message, now, generation),
            condition(READY, False, "InvalidSpec", "the spec is invalid; nothing was changed", now, generation),
        ]),
    }
