"""The kopf handlers against a fake API: what is applied, deleted, reported."""

from __future__ import annotations

import asyncio
import types

import kopf
import pytest

from stt_operator import handlers


class FakeCluster:
    def __init__(self, existing: list[dict] | None = None, fail_on: str | None = None):
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in existing or []}
        self.applied: list[dict] = []
        self.deleted: list[tuple] = []
        self.fail_on = fail_on
        self.pools: dict[str | None, list[dict]] = {}
        self.statuses: list[tuple] = []
        self.posted: list[tuple] = []  # events posted directly (the resync, outside kopf)

    def get(self, api_version, kind, name, namespace):
        return self.objects.get((kind, name))

    def apply(self, obj):
        if obj["kind"] == self.fail_on:
            raise RuntimeError(f"{obj['kind']} refused")
        self.applied.append(obj)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    def delete(self, api_version, kind, name, namespace, owner_uid):
        if (kind, name) in self.objects:
            del self.objects[(kind, name)]
            self.deleted.append((kind, name))
            return True
        return False

    def list_objects(self, api_version, kind, namespace):
        if namespace == "broken":
            raise RuntimeError("forbidden")
        return self.pools.get(namespace, [])

    def patch_status(self, api_version, kind, name, namespace, status):
        self.statuses.append((api_version, kind, name, namespace, dict(status)))

    def post_event(self, body, type, reason, message):
        self.posted.append((type, reason, message))


@pytest.fixture
def events(monkeypatch):
    posted = []
    monkeypatch.setattr(kopf, "event", lambda body, *, type, reason, message: posted.append((type, reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: posted.append(("Warning", reason, message)))
    return posted


def use(monkeypatch, cluster: FakeCluster) -> FakeCluster:
    monkeypatch.setattr(handlers, "_cluster", cluster)
    return cluster


def body(**spec) -> dict:
    return {"metadata": {"name": "en", "namespace": "speech", "uid": "u-1", "generation": 2},
            "spec": {"image": "voxfleet:1", **spec}, "status": {}}


def conditions(patch) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in patch.status["conditions"]}


def test_create_applies_everything_and_reports(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    patch = kopf.Patch()
    handlers.sttpool_create(body=body(minReplicas=2), patch=patch)
    assert [(o["kind"], o["metadata"]["name"]) for o in api.applied] == [
        ("Service", "en-stt"), ("StatefulSet", "en-stt"), ("PodDisruptionBudget", "en-stt"),
        ("ServiceAccount", "en-router"), ("RoleBinding", "en-router"), ("Service", "en-router"),
        ("Deployment", "en-router")]
    assert api.applied[1]["spec"]["replicas"] == 2
    assert patch.status["desiredReplicas"] == 2 and patch.status["observedGeneration"] == 2
    assert conditions(patch)["Degraded"] == ("False", "AsExpected")
    assert conditions(patch)["Ready"][0] == "False"
    assert events[-1][:2] == ("Normal", "Reconciled")


def test_resume_keeps_the_current_size_and_posts_nothing(monkeypatch, events):
    live = {"kind": "StatefulSet", "metadata": {"name": "en-stt", "generation": 1},
            "spec": {"replicas": 3}, "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                                                "observedGeneration": 1}}
    api = use(monkeypatch, FakeCluster([live]))
    patch = kopf.Patch()
    handlers.sttpool_resume(body=body(minReplicas=1, maxReplicas=4), patch=patch)
    assert next(o for o in api.applied if o["kind"] == "StatefulSet")["spec"]["replicas"] == 3
    assert events == []


def test_invalid_spec_is_permanent_and_reported(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="minReplicas must be less than or equal to maxReplicas"):
        handlers.sttpool_update(body=body(minReplicas=5, maxReplicas=2), patch=patch)
    assert api.applied == []
    assert conditions(patch)["Degraded"] == ("True", "InvalidSpec")
    assert events[-1][:2] == ("Warning", "InvalidSpec")
    handlers.sttpool_resync(body=body(minReplicas=5, maxReplicas=2))  # quiet, no raise
    assert api.statuses[-1][4]["conditions"][0]["reason"] == "InvalidSpec"


def test_refused_apply_degrades_and_retries(monkeypatch, events):
    use(monkeypatch, FakeCluster(fail_on="PodDisruptionBudget"))
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        handlers.sttpool_create(body=body(), patch=patch)
    assert conditions(patch)["Degraded"] == ("True", "ReconcileFailed")
    assert "PodDisruptionBudget refused" in next(c["message"] for c in patch.status["conditions"]
                                                 if c["type"] == "Degraded")
    assert events[-1][:2] == ("Warning", "ReconcileFailed")


def test_turning_the_ingress_off_deletes_it(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    handlers.sttpool_create(body=body(router={"ingress": {"enabled": True, "host": "stt.test"}}), patch=kopf.Patch())
    assert ("Ingress", "en") in api.objects
    handlers.sttpool_update(body=body(), patch=kopf.Patch())
    assert api.deleted == [("Ingress", "en")]
    assert ("Normal", "Deleted", "Ingress en is no longer needed") in events


def test_a_persisting_failure_is_reported_once(monkeypatch, events):
    api = use(monkeypatch, FakeCluster(fail_on="Deployment"))
    first = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        handlers.sttpool_create(body=body(), patch=first)
    again = body()
    again["status"] = {"conditions": first.status["conditions"]}
    handlers.sttpool_resync(body=again)  # no raise: the next period retries
    assert [e for e in events if e[0] == "Warning"] == [("Warning", "ReconcileFailed", "RuntimeError: Deployment refused")]
    assert api.posted == []  # the resync's own events: none, the failure was reported already
    assert handlers.statusmod.already_reported(api.statuses[-1][4]["conditions"], "Degraded",
                                               "RuntimeError: Deployment refused")


def pool_body(name: str = "en", **extra) -> dict:
    b = body()
    b["metadata"]["name"] = name
    b.update(apiVersion="voxfleet.io/v1alpha1", kind="SttPool", **extra)
    return b


def test_resync_writes_status_itself_and_posts_no_reconciled_event(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    handlers.sttpool_resync(pool_body())
    assert [o["kind"] for o in api.applied][:2] == ["Service", "StatefulSet"]
    [(api_version, kind, name, namespace, status)] = api.statuses
    assert (api_version, kind, name, namespace) == ("voxfleet.io/v1alpha1", "SttPool", "en", "speech")
    assert status["desiredReplicas"] == 1 and status["observedGeneration"] == 2
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Scaling", "Degraded", "MetricsAvailable"}
    assert events == [] and api.posted == []  # kopf's queue is not used outside its handlers


def test_resync_posts_its_events_directly(monkeypatch, events):
    api = use(monkeypatch, FakeCluster(fail_on="Deployment"))
    handlers.sttpool_resync(pool_body())
    assert api.posted == [("Warning", "ReconcileFailed", "RuntimeError: Deployment refused")]
    assert events == []
    assert conditions(types.SimpleNamespace(status=api.statuses[-1][4]))["Degraded"] == ("True", "ReconcileFailed")


def test_resync_leaves_a_pool_being_deleted_alone(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    gone = pool_body()
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    handlers.sttpool_resync(gone)
    assert api.applied == [] and api.statuses == [] and api.posted == []


def test_resync_all_serves_every_namespace_and_survives_failures(monkeypatch, events):
    api = use(monkeypatch, FakeCluster())
    broken = pool_body("bad")
    del broken["metadata"]["uid"]  # reconcile raises, not just reports
    api.pools = {"a": [pool_body("one"), broken], "b": [pool_body("two")]}
    handlers.resync_all(["a", "broken", "b"])
    assert [s[2] for s in api.statuses] == ["one", "two"]
    api.statuses.clear()
    api.pools = {None: [pool_body("all")]}
    handlers.resync_all([])  # no namespaces: cluster-wide
    assert [s[2] for s in api.statuses] == ["all"]


def test_resync_task_runs_periodically_and_stops(monkeypatch):
    calls = []
    monkeypatch.setattr(handlers, "resync_all", lambda namespaces: calls.append(namespaces))
    monkeypatch.setattr(handlers, "_settings", handlers.OperatorSettings(namespaces="a,b", resync_seconds=0.01))

    async def run():
        memo = types.SimpleNamespace()
        await handlers.resync_start(memo=memo)
        await asyncio.sleep(0.2)
        await handlers.resync_stop(memo=memo)
        assert memo.resync_task.cancelled()
        n = len(calls)
        await asyncio.sleep(0.05)
        return n

    n = asyncio.run(run())
    assert n >= 2 and len(calls) == n and calls[0] == ["a", "b"]


def test_no_handler_needs_a_finalizer():
    """kopf puts its finalizer on objects served by timers, daemons or on.delete: none here."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, handlers.OperatorSettings())
    assert registry._spawning.get_all_handlers() == []
    changing = registry._changing.get_all_handlers()
    assert {h.fn.__name__ for h in changing} == {"sttpool_create", "sttpool_update", "sttpool_resume"}
    assert not any(h.requires_finalizer for h in changing)
    assert {h.fn.__name__ for h in registry._activities.get_all_handlers()} >= {"resync_start", "resync_stop"}
