"""The operator's scaling loop with a fake Prometheus and fake pods: replicas, marks, status, events."""

from __future__ import annotations

import kopf
import pytest

from stt_operator import autoscaler, handlers, prometheus as prom, spec as specmod
from stt_operator.manifests import PoolRef

from tests.unit.test_operator_handlers import FakeCluster
from tests.unit.test_operator_prometheus import BUSY, FakePrometheus, pod

POOL = PoolRef("en", "speech", "u-1")
SPEC = {"image": "voxfleet:1", "minReplicas": 1, "maxReplicas": 4, "sessionsPerPod": 4, "buffer": 2,
        "idleSeconds": 0, "drainTimeoutSeconds": 60, "scaleDown": {"stabilizationSeconds": 0},
        "prometheus": {"url": "http://prom:9090"}}

IDLE = {
    "readyReplicas": [(pod(0), 1), (pod(1), 1)],
    "activeSessions": [({}, 0)],
    "freeSlots": [(pod(0), 4), (pod(1), 4)],
    "capacityPerPod": [({}, 4)],
    "podSessions": [(pod(0), 0), (pod(1), 0)],
    "queueLength": [({}, 0)],
}


class FakeMarks:
    def __init__(self, draining=()):
        self.marked = set(draining)
        self.calls: list[tuple[int, bool]] = []

    def draining(self, pool):
        return frozenset(self.marked)

    def set(self, pool, ordinal, draining):
        self.calls.append((ordinal, draining))
        (self.marked.add if draining else self.marked.discard)(ordinal)


def spec(**changes) -> specmod.SttPoolSpec:
    return specmod.parse({**SPEC, **changes})


def factory(table, down=False):
    queries = prom.queries_for("en", "speech")
    fake = FakePrometheus(queries, table, down)
    return lambda url: prom.PrometheusClient(url, fetch=fake)


def run(table, status=None, replicas=2, marks=None, now=1000.0, down=False, **changes):
    marks = marks if marks is not None else FakeMarks()
    step = autoscaler.step(POOL, spec(**changes), status or {}, replicas, marks, now, factory(table, down))
    return step, marks


def test_free_slots_below_the_buffer_scale_up_with_reason_and_event():
    step, marks = run(BUSY)
    assert step.replicas > 2
    assert step.decision.actions == ("scale-up",)
    assert step.status["lastScaleTime"] == "1970-01-01T00:16:40Z"
    assert "scale up 2 ->" in step.status["lastScaleReason"]
    conds = {c["type"]: c for c in step.conditions}
    assert conds["MetricsAvailable"]["status"] == "True"
    assert conds["Scaling"]["reason"] == "ScaleUp"
    assert [e[:2] for e in step.events] == [("Normal", "ScaleUp")]
    assert step.status["activeSessions"] == 7 and step.status["queuedSessions"] == 0
    assert step.status["autoscaler"]["lastDecision"]["inputs"]["freeSlots"] == 1
    assert marks.calls == []


def test_prometheus_down_holds_the_size_and_warns_once_per_outage():
    step, _ = run(BUSY, down=True, replicas=3)
    assert step.replicas == 3 and step.decision.action == "fail-static"
    conds = {c["type"]: c for c in step.conditions}
    assert conds["MetricsAvailable"]["status"] == "False"
    assert conds["MetricsAvailable"]["reason"] == "PrometheusUnreachable"
    assert [e[:2] for e in step.events] == [("Warning", "PrometheusUnreachable")]
    assert "lastScaleTime" not in step.status
    # The next period, same outage: no new event.
    again, _ = run(BUSY, down=True, replicas=3, now=1010.0,
                   status={"conditions": step.conditions, **step.status})
    assert again.replicas == 3 and again.events == []
    # Back: an event says so.
    back, _ = run(IDLE, replicas=3, now=1020.0, status={"conditions": again.conditions, **again.status})
    assert ("Normal", "MetricsAvailable") in [e[:2] for e in back.events]


def test_surplus_drains_the_highest_ordinal_then_removes_it_once_empty():
    status: dict = {}
    now = 1000.0
    step, marks = run(IDLE, status=status, replicas=2, now=now)  # first period seeds the window
    assert step.replicas == 2 and marks.calls == []
    step, marks = run(IDLE, status=step.status, replicas=2, now=now + 10, marks=marks)
    assert step.decision.actions == ("drain",) and step.mark == (1,)
    assert marks.calls == [(1, True)] and step.replicas == 2
    assert {c["type"]: c["reason"] for c in step.conditions}["Scaling"] == "Drain"
    # Its sessions are gone on a later scrape: removed, mark lifted by the pod's deletion.
    table = dict(IDLE, sampledAt=[({}, now + 15)])
    step, marks = run(table, status=step.status, replicas=2, now=now + 20, marks=marks)
    assert step.replicas == 1 and "remove" in step.decision.actions


def test_load_returning_during_a_drain_undrains():
    marks = FakeMarks(draining={1})
    status = {"autoscaler": {"state": {"recommendations": [[990.0, 1]], "drainStarted": {"1": 990.0}}}}
    step, marks = run(BUSY, status=status, replicas=2, marks=marks)
    assert step.unmark == (1,) and (1, False) in marks.calls
    assert "undrain" in step.decision.actions


def test_due_follows_the_interval():
    s = spec(autoscaling={"intervalSeconds": 30})
    assert autoscaler.due({}, s, 1000.0)
    assert not autoscaler.due({"autoscaler": {"lastRun": 990.0}}, s, 1000.0)
    assert autoscaler.due({"autoscaler": {"lastRun": 970.5}}, s, 1000.0)


# ------------------------------------------------------------ through the kopf handler

def sts(replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "en-stt", "generation": 1},
            "spec": {"replicas": replicas}, "status": {"replicas": replicas, "readyReplicas": replicas,
                                                     "observedGeneration": 1, "updatedReplicas": replicas}}


@pytest.fixture
def events(monkeypatch):
    posted = []
    monkeypatch.setattr(kopf, "event", lambda body, *, type, reason, message: posted.append((type, reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: posted.append(("Warning", reason, message)))
    return posted


def pool_body(**changes) -> dict:
    return {"metadata": {"name": "en", "namespace": "speech", "uid": "u-1", "generation": 2},
            "spec": {**SPEC, **changes}, "status": {}}


def serve(monkeypatch, table, down=False, replicas=2):
    api = FakeCluster([sts(replicas)])
    monkeypatch.setattr(handlers, "_cluster", api)
    monkeypatch.setattr(handlers, "_marks", FakeMarks())
    fake = FakePrometheus(prom.queries_for("en", "speech"), table, down)
    monkeypatch.setattr(prom, "_urlopen", fake)
    return api


def applied_replicas(api) -> int:
    return [o for o in api.applied if o["kind"] == "StatefulSet"][-1]["spec"]["replicas"]


def resync(api, body) -> dict:
    """One periodic resync of the pool: the status it wrote (a merge patch on the status subresource)."""
    handlers.sttpool_resync(body)
    return api.statuses[-1][4]


def test_resync_patches_the_statefulset_and_status(monkeypatch, events):
    api = serve(monkeypatch, BUSY)
    status = resync(api, pool_body())
    assert applied_replicas(api) > 2
    assert status["desiredReplicas"] == applied_replicas(api)
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds["MetricsAvailable"] == ("True", "Measured")
    assert conds["Scaling"] == ("True", "ScaleUp")
    assert status["lastScaleReason"].startswith("scale up")
    assert ("Normal", "ScaleUp") in [e[:2] for e in api.posted]  # posted by the resync itself
    assert events == []


def test_resync_with_prometheus_down_freezes_the_size(monkeypatch, events):
    api = serve(monkeypatch, BUSY, down=True, replicas=3)
    status = resync(api, pool_body())
    assert applied_replicas(api) == 3
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds["MetricsAvailable"] == ("False", "PrometheusUnreachable")
    assert ("Warning", "PrometheusUnreachable") in [e[:2] for e in api.posted]


def test_external_mode_leaves_replicas_alone(monkeypatch, events):
    api = serve(monkeypatch, BUSY)
    status = resync(api, pool_body(autoscaling={"mode": "external"}, replicas=2))
    assert applied_replicas(api) == 2
    assert status["desiredReplicas"] == 2
    assert "autoscaler" not in status
    assert not [e for e in api.posted if e[1] == "ScaleUp"]


def test_create_does_not_autoscale_and_keeps_the_measured_condition(monkeypatch, events):
    api = serve(monkeypatch, BUSY)
    body = pool_body()
    body["status"] = resync(api, pool_body())
    api.objects[("StatefulSet", "en-stt")] = sts(applied_replicas(api))
    patch = kopf.Patch()
    handlers.sttpool_update(body=body, patch=patch)
    conds = {c["type"]: (c["status"], c["reason"]) for c in patch.status["conditions"]}
    assert conds["MetricsAvailable"] == ("True", "Measured")
    assert "autoscaler" not in patch.status
