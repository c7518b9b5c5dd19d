"""The kopf handlers against a fake API: what is applied, deleted, reported."""

from __future__ import annotations

import kopf
import pytest

from stt_operator import handlers


class FakeCluster:
    def __init__(self, existing: list[dict] | None = None, fail_on: str | None = None):
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in existing or []}
        self.applied: list[dict] = []
        self.deleted: list[tuple] = []
        self.fail_on = fail_on

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
    handlers.sttpool_resync(body=body(minReplicas=5, maxReplicas=2), patch=kopf.Patch())  # quiet, no raise


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
    use(monkeypatch, FakeCluster(fail_on="Deployment"))
    first = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        handlers.sttpool_create(body=body(), patch=first)
    again = body()
    again["status"] = {"conditions": first.status["conditions"]}
    with pytest.raises(kopf.TemporaryError):
        handlers.sttpool_resync(body=again, patch=kopf.Patch())
    assert [e for e in events if e[0] == "Warning"] == [("Warning", "ReconcileFailed", "RuntimeError: Deployment refused")]
