"""SttPool status and conditions, computed from observed objects."""

from stt_operator import status as st
from stt_operator.manifests import PoolRef
from stt_operator.spec import parse

POOL = PoolRef("en", "speech", "uid-1")
SPEC = parse({"image": "i", "minReplicas": 2, "maxReplicas": 4})
T0, T1 = "2026-11-26T10:00:00Z", "2026-11-26T10:05:00Z"


def sts(replicas=2, ready=2, updated=2, generation=1, observed=1):
    return {"metadata": {"generation": generation},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
                       "observedGeneration": observed}}


def router(ready=2):
    return {"status": {"readyReplicas": ready}}


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_pool():
    s = st.pool_status(POOL, SPEC, 3, 2, sts(), router(), None, T0)
    assert s["replicas"] == 2 and s["readyReplicas"] == 2 and s["desiredReplicas"] == 2
    assert s["observedGeneration"] == 3
    assert s["selector"] == ("app.kubernetes.io/name=voxfleet,app.kubernetes.io/instance=en,"
                             "app.kubernetes.io/component=stt-pod")
    assert conds(s) == {"Ready": ("True", "PoolReady"), "Scaling": ("False", "Stable"),
                        "Degraded": ("False", "AsExpected"), "MetricsAvailable": ("False", "NoPrometheus")}
    assert [c["type"] for c in s["conditions"]] == ["Ready", "Scaling", "Degraded", "MetricsAvailable"]


def test_new_pool_is_creating():
    s = st.pool_status(POOL, SPEC, 1, 2, None, None, None, T0)
    assert conds(s)["Ready"] == ("False", "Creating") and conds(s)["Scaling"] == ("True", "Creating")


def test_not_enough_prewarmed_pods_or_no_router():
    assert conds(st.pool_status(POOL, SPEC, 1, 2, sts(ready=1), router(), None, T0))["Ready"] == \
        ("False", "PodsNotReady")
    assert conds(st.pool_status(POOL, SPEC, 1, 2, sts(), router(0), None, T0))["Ready"] == \
        ("False", "RouterNotReady")


def test_scaling_and_rollout():
    assert conds(st.pool_status(POOL, SPEC, 1, 3, sts(), router(), None, T0))["Scaling"] == ("True", "ScalingUp")
    assert conds(st.pool_status(POOL, SPEC, 1, 2, sts(updated=1), router(), None, T0))["Scaling"] == \
        ("True", "RollingUpdate")
    assert conds(st.pool_status(POOL, SPEC, 1, 2, sts(generation=2), router(), None, T0))["Scaling"] == \
        ("True", "Progressing")


def test_errors_degrade_and_metrics_modes():
    s = st.pool_status(POOL, SPEC, 1, 2, sts(), router(), None, T0, error="Forbidden: statefulsets")
    degraded = next(c for c in s["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["message"] == "Forbidden: statefulsets"
    external = parse({"image": "i", "autoscaling": {"mode": "external"}})
    assert conds(st.pool_status(POOL, external, 1, 1, sts(1, 1, 1), router(), None, T0))["MetricsAvailable"] == \
        ("Unknown", "ExternalAutoscaling")
    prom = parse({"image": "i", "prometheus": {"url": "http://127.0.0.1:9090"}})
    assert conds(st.pool_status(POOL, prom, 1, 1, sts(1, 1, 1), router(), None, T0))["MetricsAvailable"] == \
        ("Unknown", "NotMeasured")


def test_transition_time_kept_while_status_unchanged():
    first = st.pool_status(POOL, SPEC, 1, 2, sts(ready=1), router(), None, T0)
    same = st.pool_status(POOL, SPEC, 1, 2, sts(ready=1), router(), first["conditions"], T1)
    ready_same = next(c for c in same["conditions"] if c["type"] == "Ready")
    assert ready_same["lastTransitionTime"] == T0
    changed = st.pool_status(POOL, SPEC, 1, 2, sts(), router(), first["conditions"], T1)
    ready_changed = next(c for c in changed["conditions"] if c["type"] == "Ready")
    assert ready_changed["lastTransitionTime"] == T1 and ready_changed["status"] == "True"


def test_invalid_spec_status():
    s = st.invalid_spec_status(4, "spec: minReplicas must be ...", None, T0)
    assert conds(s) == {"Ready": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec")}
